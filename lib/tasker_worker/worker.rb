# frozen_string_literal: true

module TaskerWorker
  # A worker in this process: the Rust core (claiming, leases, commits) plus `concurrency`
  # Ruby threads running handlers, one per core handler slot
  # (worker.mpsc_channels.handler_dispatch.max_concurrent_handlers). It owns:
  # 1. booting the core with the configuration (TaskerWorker.configure, then keyword options,
  #    over the core's defaults, the config file and the environment);
  # 2. keeping `concurrency` processor threads alive (a killed thread is replaced);
  # 3. the lifecycle: `start`, `quiet!` (stop claiming), `stop(timeout:)`, `status`.
  #
  #   worker = TaskerWorker::Worker.new(concurrency: 10, namespaces: ["orders"]).start
  #   ...
  #   worker.stop
  class Worker
    # What the core runs with: the thread count, the namespaces served and the graceful-stop
    # wait in seconds, whichever layer set them.
    attr_reader :concurrency, :namespaces, :shutdown_timeout

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
      @stopping = false
    end

    def start
      LogForwarder.start(@config)
      Hooks.worker_starting&.call(self)
      Client.for(@database_url).register_templates(@templates_path) if @templates_path
      @native = Native::Worker.start(@config.to_core_overrides, @config.config_path, @orchestrate)
      @mutex.synchronize { @concurrency.times { |i| spawn(i) } }
      @events = EventDispatcher.new(@native).start
      self
    end

    # Stops claiming new steps; steps already claimed still run.
    def quiet!
      @native&.quiet
      self
    end

    # Graceful stop: no new claims; waits up to `timeout` seconds (default: the configured
    # shutdown timeout) for running steps, then gives their leases back so other workers take
    # them at once. Returns { finished:, released: }.
    def stop(timeout: nil)
      return unless @native

      @stopping = true
      report = @native.stop(timeout&.to_f)
      join_processors(1.0)
      @events.join(1.0)
      report
    end

    def status
      return { running: false } unless @native

      @native.status.merge(threads: alive_threads, subscribers: { delivered: @events.delivered,
                                                                  errors: @events.subscriber_errors })
    end

    def running?
      !@native.nil? && !@native.stopped?
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
  end
end
