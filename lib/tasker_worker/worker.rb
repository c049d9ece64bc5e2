# frozen_string_literal: true

module TaskerWorker
  # A worker in this process: the Rust core (claiming, leases, commits) plus `concurrency`
  # Ruby threads running handlers, one per core handler slot
  # (worker.mpsc_channels.handler_dispatch.max_concurrent_handlers). It owns:
  # 1. booting the core with the configuration (TaskerWorker.configure, then keyword options,
  #    over the core's defaults, the config file and the environment);
  # 2. keeping `concurrency` processor threads available: a thread that dies is replaced, and
  #    so is one whose handler is still running after its step timed out in the core (the
  #    supervisor thread abandons it: HandlerAbandoned in the handler, killed after a grace);
  # 3. the lifecycle: `start`, `quiet!` (stop claiming), `stop(timeout:)`, `status`;
  # 4. fork safety: in a forked child every public method raises ForkError.
  #
  #   worker = TaskerWorker::Worker.new(concurrency: 10, namespaces: ["orders"]).start
  #   ...
  #   worker.stop
  class Worker
    # How often the supervisor asks the core for steps that timed out with a handler running.
    SUPERVISE_SECONDS = 0.1

    # What the core runs with: the thread count, the namespaces served and the graceful-stop
    # wait in seconds, whichever layer set them.
    def concurrency = not_forked { @concurrency }
    def namespaces = not_forked { @namespaces }
    def shutdown_timeout = not_forked { @shutdown_timeout }
    # The database it works on, with any password hidden (for log lines).
    def database = not_forked { Database.redact(@database_url) }

    # Options are those of TaskerWorker::Configuration (concurrency:, namespaces:, ...);
    # they override the global configuration for this worker. `orchestrate: true` also runs
    # the embedded orchestrator. `templates_path` (default: config/tasks when it exists) is
    # a directory of task templates registered at start.
    def initialize(registry: TaskerWorker.handler_registry, orchestrate: false, templates_path: default_templates, **options)
      @orchestrate = orchestrate
      @templates_path = templates_path
      @config = configuration_with(options)
      effective = @config.effective
      @concurrency = effective.dig(:worker, :mpsc_channels, :handler_dispatch, :max_concurrent_handlers)
      @namespaces = effective.dig(:worker, :namespaces).freeze
      @shutdown_timeout = effective.dig(:worker, :shutdown_timeout_ms) / 1000.0
      @database_url = effective.dig(:database, :url)
      @registry = registry
      @mutex = Mutex.new
      @processors = []
      @abandoned = [] # [thread, kill_at] of abandoned processors still alive
      @abandoned_total = 0
      @stopping = false
    end

    def start
      not_forked do
        LogForwarder.start(@config)
        Hooks.worker_starting&.call(self)
        boot_core
        @pid = Process.pid
        @mutex.synchronize { @concurrency.times { |i| spawn(i) } }
        @events = EventDispatcher.new(@native).start
        @supervisor = Thread.new { supervise }
        self
      end
    end

    # Stops claiming new steps; steps already claimed still run.
    def quiet!
      not_forked { @native&.quiet }
      self
    end

    # Graceful stop: no new claims; waits up to `timeout` seconds (default: the configured
    # shutdown timeout) for running steps, then gives their leases back so other workers take
    # them at once. Fast domain events still queued are delivered until the same deadline;
    # those left are counted as dropped. Returns { finished:, released: }.
    def stop(timeout: nil)
      not_forked do
        next unless @native

        @stopping = true
        deadline = monotonic + (timeout || @shutdown_timeout).to_f
        @events.deliver_until(deadline)
        report = @native.stop(timeout&.to_f)
        @events.core_stopped!
        join_processors(1.0)
        @supervisor&.join(1.0)
        kill_abandoned(all: true)
        @events.join([deadline - monotonic, 0].max + 1.0)
        @native.drop_fast_events
        LogForwarder.flush # the core's last lines (worker_stopped) reach the log before stop returns
        report
      end
    end

    # The core's status, plus `threads` (processor threads alive), `abandoned_threads` (hung
    # handlers' threads replaced since start) and the subscribers' counters.
    def status
      not_forked do
        next { running: false } unless @native

        @native.status.merge(threads: alive_threads, abandoned_threads: @abandoned_total,
                             subscribers: { delivered: @events.delivered, errors: @events.subscriber_errors })
      end
    end

    def running?
      not_forked { !@native.nil? && !@native.stopped? }
    end

    private

    def default_templates
      "config/tasks" if Dir.exist?("config/tasks")
    end

    def configuration_with(options)
      TaskerWorker.configuration.dup.tap do |config|
        options.each { |option, value| config.public_send(:"#{option}=", value) }
      end
    end

    def spawn(index)
      @processors[index] = Processor.new(@native, @registry, index, method(:processor_exited)).start
    end

    # Called from a processor thread's `ensure`: replace it unless the worker is stopping.
    def processor_exited(processor)
      return if @stopping || @native.stopped?

      @mutex.synchronize do
        index = @processors.index(processor)
        spawn(index) if index
      end
    end

    # By now the core has stopped: every thread's next_step returns nil within a slice.
    def join_processors(timeout)
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout.to_f
      @processors.each do |p|
        p.terminate
        remaining = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
        p.thread&.join([remaining, 0.1].max)
      end
    end

    def alive_threads
      @processors.count { |p| p.thread&.alive? }
    end

    # A database error names the database it tried (with no password): a worker started with
    # no DATABASE_URL and no configuration uses the core's default, which may surprise.
    def boot_core
      Client.for(@database_url).register_templates(@templates_path) if @templates_path
      @native = Native::Worker.start(@config.to_core_overrides, @config.config_path, @orchestrate)
    rescue DatabaseError => e
      raise DatabaseError, "#{e.message} (database #{Database.redact(@database_url)})"
    end

    # A worker started in another process (this one is a forked child) cannot be used here.
    def not_forked
      if @pid && @pid != Process.pid
        raise ForkError, "this worker was started in process #{@pid} and cannot be used in the forked process " \
                         "#{Process.pid}; start a new TaskerWorker::Worker in the child"
      end

      yield
    end

    # The supervisor thread: replaces the thread of each step the core timed out while its
    # handler still runs, and kills abandoned threads past their grace.
    def supervise
      Thread.current.name = "tasker_worker.supervisor"
      until @stopping
        @native.take_timed_out.each { |event_id| abandon(event_id) }
        kill_abandoned
        @native.report_threads(@mutex.synchronize { alive_threads }) # for /ready
        sleep SUPERVISE_SECONDS
      end
    rescue Exception => e # rubocop:disable Lint/RescueException -- logged; a dead supervisor must be visible
      TaskerWorker.logger.error("the supervisor thread failed: #{e.class}: #{e.message}")
    end

    def abandon(event_id)
      @mutex.synchronize do
        index = @processors.index { |p| p.abandon(event_id) }
        next unless index

        hung = @processors[index]
        spawn(index)
        @abandoned << [hung.thread, monotonic + Processor::ABANDON_GRACE_SECONDS]
        @abandoned_total += 1
        TaskerWorker.logger.warn("processor thread #{index} was still in a handler after its step " \
                                 "timed out (event #{event_id}); interrupted it and started a fresh thread")
      end
    end

    def kill_abandoned(all: false)
      now = monotonic
      @mutex.synchronize do
        @abandoned.reject! do |thread, kill_at|
          next true unless thread.alive?
          next false unless all || now >= kill_at

          thread.kill
          true
        end
      end
    end

    def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end
end
