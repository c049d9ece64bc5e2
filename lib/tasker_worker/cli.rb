# frozen_string_literal: true

require "io/wait"
require "optparse"
require_relative "../tasker_worker"

module TaskerWorker
  # `tasker_worker`, the worker process. It owns:
  # 1. options (`--help` lists them) and loading the application (`-r`);
  # 2. starting a Worker (and the embedded orchestrator with --orchestrate);
  # 3. signals: INT/TERM stop gracefully (no new claims, up to -t seconds for running steps,
  #    the rest released to other workers), TSTP stops claiming, TTIN prints threads and
  #    status. Traps only write to a pipe; the main thread acts.
  #
  # Exit codes: 0 stopped gracefully, 1 could not start (configuration, database, template
  # or application error), 2 bad command line, 3 crashed after starting (an exception in the
  # main thread, or the core stopped on its own; logged with its cause). An `exit` in a
  # handler does not end the process (the step fails with handler_exit); an `exit` elsewhere
  # in the application stops the worker gracefully and exits with its status.
  class CLI
    EXIT_OK = 0
    EXIT_BOOT_FAILED = 1
    EXIT_USAGE = 2
    EXIT_CRASHED = 3
    SIGNALS = %w[INT TERM TSTP TTIN].freeze
    # How often the main thread checks, between signals, that the core still runs.
    HEALTH_SECONDS = 1.0

    def initialize(argv, out: $stdout)
      @argv = argv.dup
      @out = out
      @options = {}
    end

    def run
      $stdout.sync = true # log lines reach a pipe or file as they happen
      worker = start
      worker.is_a?(Integer) ? worker : serve(worker)
    end

    private

    # The started worker, or the exit code when it could not start.
    def start
      parse!
      boot
      start_worker
    rescue OptionParser::ParseError => e
      warn "tasker_worker: #{e.message} (see --help)"
      EXIT_USAGE
    rescue TaskerWorker::Error, LoadError, SystemCallError => e
      warn "tasker_worker: could not start: #{e.class}: #{e.message}"
      EXIT_BOOT_FAILED
    end

    def serve(worker)
      wait_for_signals(worker)
    rescue SystemExit => e
      TaskerWorker.logger.warn("the application called exit(#{e.status}) outside a handler; stopping")
      stop_after_crash(worker)
      e.status
    rescue Exception => e # rubocop:disable Lint/RescueException -- a crash is logged with its cause and exits non-zero
      TaskerWorker.logger.error("crashed: #{e.class}: #{e.message}\n  #{Array(e.backtrace).first(20).join("\n  ")}")
      stop_after_crash(worker)
      EXIT_CRASHED
    end

    # Steps in flight are given back rather than waited for; a failure here changes nothing.
    def stop_after_crash(worker)
      worker.stop(timeout: 0)
    rescue Exception => e # rubocop:disable Lint/RescueException -- already exiting non-zero
      TaskerWorker.logger.error("stopping after the crash failed: #{e.class}: #{e.message}")
    end

    def parse!
      parser.parse!(@argv)
      raise OptionParser::InvalidArgument, "unexpected argument #{@argv.first}" unless @argv.empty?
    end

    # One line per option.
    def parser
      OptionParser.new do |o|
        o.banner = "Usage: tasker_worker [options]   (runs a worker)\n" \
                   "       tasker_worker COMMAND ...   (status, tasks, task, cancel, retry, resolve, dead-letters, " \
                   "replay, workers, web, migrate; `tasker_worker help` for each)"
        o.on("-c", "--concurrency N", Integer, "Ruby threads running handlers (default: max_concurrent_handlers in worker.toml, 10)") do |v|
          @options[:concurrency] = v
        end
        o.on("-n", "--namespaces A,B", Array, "namespaces to serve (default: worker.namespaces, [\"default\"])") { |v| @options[:namespaces] = v }
        o.on("-r", "--require PATH", "file, or Rails app directory, to load (default ./config/environment.rb if present)") { |v| @require = v }
        o.on("-C", "--config PATH", "TOML configuration file (keys of config/tasker/base/worker.toml)") { |v| @options[:config_path] = v }
        o.on("-t", "--timeout SECONDS", Float, "graceful-stop wait for running steps (default: worker.shutdown_timeout_ms, 30 s)") do |v|
          @options[:shutdown_timeout] = v
        end
        o.on("-T", "--templates DIR", "task templates to register (default ./config/tasks if present)") { |v| @templates = v }
        o.on("--orchestrate", "also run the embedded orchestrator") { @orchestrate = true }
        o.on("-v", "--verbose", "debug logging") { @options[:log_level] = :debug }
        o.on("--log-format FORMAT", %w[text json], "log lines as text (default) or one JSON object each") { |v| @options[:log_format] = v }
        o.on("--metrics-port PORT", Integer, "serve /metrics, /health, /ready on PORT (default: metrics.port, 0: off)") do |v|
          @options[:metrics_port] = v
        end
        o.on("--metrics-bind ADDR", "address for --metrics-port (default: metrics.bind, 127.0.0.1)") { |v| @options[:metrics_bind] = v }
        o.on("-V", "--version", "print the version") { @out.puts(TaskerWorker::VERSION) || exit(EXIT_OK) }
        o.on("-h", "--help", "this help") { @out.puts(o.help) || exit(EXIT_OK) }
      end
    end

    def boot
      path = @require || ("./config/environment.rb" if File.exist?("./config/environment.rb"))
      return unless path

      path = File.join(path, "config/environment.rb") if File.directory?(path)
      load_railtie_for(path)
      require File.expand_path(path)
    end

    # This file was required before the app's Rails, so it could not define the Railtie; a
    # Rails app's config/application.rb (which requires Rails, then defines the app without
    # initializing it) is loaded first, then the Railtie, then the environment initializes it.
    def load_railtie_for(environment)
      application = File.join(File.dirname(File.expand_path(environment)), "application.rb")
      return unless File.basename(environment) == "environment.rb" && File.exist?(application)

      require application
      require_relative "railtie" if defined?(::Rails::Railtie)
    end

    def start_worker
      # The level is global, so that the core's records and this process's own lines follow -v.
      level = @options.delete(:log_level)
      format = @options.delete(:log_format)
      TaskerWorker.configure { |c| c.log_level = level } if level
      TaskerWorker.configure { |c| c.log_format = format } if format
      templates = @templates || ("config/tasks" if Dir.exist?("config/tasks"))
      worker = Worker.new(orchestrate: @orchestrate || false, templates_path: templates, **@options).start
      TaskerWorker.logger.info("tasker_worker #{VERSION}: pid #{Process.pid}, #{worker.concurrency} threads, " \
                               "namespaces #{worker.namespaces.join(",")}, database #{worker.database}, " \
                               "shutdown timeout #{worker.shutdown_timeout} s" \
                               "#{", orchestrating" if @orchestrate}; INT/TERM to stop, TSTP to quiet, TTIN to dump")
      worker
    end

    # Returns EXIT_OK after a graceful stop; raises when the core stopped without being asked.
    def wait_for_signals(worker)
      reader, writer = IO.pipe
      SIGNALS.each { |sig| Signal.trap(sig) { writer.write_nonblock("#{sig}\n", exception: false) } }
      loop do
        unless reader.wait_readable(HEALTH_SECONDS)
          raise Error, "the worker core stopped on its own" unless worker.running?

          next
        end
        return EXIT_OK if handle(reader.gets.strip, worker) == :stop
      end
    end

    def handle(signal, worker)
      case signal
      when "INT", "TERM"
        report = worker.stop
        TaskerWorker.logger.info("stopped (#{report.inspect})")
        :stop
      when "TSTP"
        worker.quiet! # the core logs "worker quiet"
      when "TTIN"
        dump(worker)
      end
    end

    def dump(worker)
      Thread.list.each do |thread|
        TaskerWorker.logger.info("thread #{thread.name || thread.object_id} #{thread.status}\n  " \
                                 "#{(thread.backtrace || []).first(10).join("\n  ")}")
      end
      TaskerWorker.logger.info("status #{worker.status.inspect}")
    end
  end
end
