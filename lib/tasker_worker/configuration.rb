# frozen_string_literal: true

require "json"
require "logger"

module TaskerWorker
  # The Ruby-facing settings. The core owns every default and range: an option left nil is
  # not sent, so worker.toml, the file at `config_path` (-C, TASKER_CONFIG_PATH) and the
  # environment apply. A setter converts its value (seconds here, milliseconds in the core),
  # checks its Ruby type, and asks the core whether the value is acceptable, so a mistake
  # still fails in `TaskerWorker.configure`, naming the option and the core key.
  class Configuration
    # Option => the core's dotted config key.
    CORE_KEYS = {
      database_url: "database.url",
      pool_size: "database.max_connections",
      namespaces: "worker.namespaces",
      deployment_mode: "worker.deployment_mode",
      visibility_timeout: "worker.visibility_timeout_seconds",
      poll_interval: "worker.poll_interval_ms",
      claim_batch_size: "worker.claim_batch_size",
      completion_batch_size: "worker.completion_batch_size",
      completion_concurrency: "worker.completion_concurrency",
      max_delivery_attempts: "worker.max_delivery_attempts",
      shutdown_timeout: "worker.shutdown_timeout_ms",
      lean_claim: "worker.lean_claim",
      ack_mode: "worker.ack_mode",
      concurrency: "worker.mpsc_channels.handler_dispatch.max_concurrent_handlers",
      prefetch: "worker.prefetch",
      handler_timeout: "worker.mpsc_channels.handler_dispatch.handler_timeout_ms",
      completion_timeout: "worker.mpsc_channels.ffi_dispatch.completion_timeout_ms",
      starvation_warning_threshold: "worker.mpsc_channels.ffi_dispatch.starvation_warning_threshold_ms",
      metrics_port: "metrics.port",
      metrics_bind: "metrics.bind",
      retention_completed_after: "retention.completed_after_seconds",
      retention_failed_after: "retention.failed_after_seconds",
      retention_archive_after: "retention.archive_after_seconds",
      retention_interval: "retention.interval_seconds",
      retention_batch_size: "retention.batch_size",
      checkpoint_max_bytes: "worker.checkpoints.max_bytes",
      checkpoint_min_interval: "worker.checkpoints.min_interval_ms",
      checkpoint_max_history: "worker.checkpoints.max_history",
      checkpoint_max_yields_per_claim: "worker.checkpoints.max_yields_per_claim",
      max_steps_per_decision: "orchestration.max_steps_per_decision",
      max_batch_workers: "orchestration.max_batch_workers",
      complete_in_commit: "orchestration.complete_in_commit"
    }.freeze
    MILLISECOND_OPTIONS = %i[poll_interval shutdown_timeout handler_timeout completion_timeout
                             starvation_warning_threshold checkpoint_min_interval].freeze
    INTEGER_OPTIONS = %i[pool_size visibility_timeout claim_batch_size completion_batch_size completion_concurrency
                         max_delivery_attempts concurrency prefetch metrics_port
                         retention_completed_after retention_failed_after retention_archive_after
                         retention_interval retention_batch_size checkpoint_max_bytes checkpoint_max_history
                         checkpoint_max_yields_per_claim max_steps_per_decision max_batch_workers].freeze
    OPTIONS = (CORE_KEYS.keys + %i[log_level log_format logger config_path]).freeze
    LOG_FORMATS = %i[text json].freeze
    LOG_LEVELS = { trace: Logger::DEBUG, debug: Logger::DEBUG, info: Logger::INFO, warn: Logger::WARN,
                   error: Logger::ERROR }.freeze

    attr_reader(*OPTIONS)

    def initialize
      self.database_url = presence(ENV["DATABASE_URL"])
      self.config_path = presence(ENV["TASKER_CONFIG_PATH"])
      @logger = @default_logger = Logger.new($stdout, formatter: Formatter.new)
      self.log_level = :info
      self.log_format = presence(ENV["TASKER_WORKER_LOG_FORMAT"]) || :text
    end

    # A copy gets its own default logger, so setting log_level on it (a Worker's options, a
    # `configure` that fails) leaves the original's level alone.
    def initialize_copy(source)
      super
      return unless @default_logger

      copy = @default_logger.dup
      @logger = copy if @logger.equal?(@default_logger)
      @default_logger = copy
    end

    # Hash{dotted core key => value} for every option that is set.
    def to_core_overrides
      CORE_KEYS.each_with_object({}) do |(option, key), overrides|
        value = public_send(option)
        overrides[key] = core_value(option, value) unless value.nil?
      end
    end

    # What the core runs with these options: its defaults < the file at config_path < the
    # environment < the options set here, as a Hash with Symbol keys (e.g.
    # effective[:worker][:namespaces]). Raises ConfigurationError naming the key.
    def effective
      Native.effective_config(to_core_overrides, config_path, true)
    rescue ConfigurationError => e
      raise ConfigurationError, core_message(e.message)
    end

    def to_h
      OPTIONS.to_h { |option| [option, public_send(option)] }
    end

    def database_url=(value)
      @database_url = optional(value) do
        next core_checked(:database_url, value) if value.is_a?(String) && value.match?(%r{\Apostgres(ql)?://[^\s]})

        # The URL may hold a password: name only what it starts with.
        got = value.is_a?(String) ? "one starting with #{value[/\A[^:]*/].inspect}" : value.class
        raise ConfigurationError, "database_url must be a postgres:// or postgresql:// URL, got #{got}"
      end
    end

    def config_path=(value)
      @config_path = optional(value) { value.to_s.empty? ? reject(:config_path, value, "a file path") : value.to_s }
    end

    INTEGER_OPTIONS.each do |option|
      define_method(:"#{option}=") do |value|
        instance_variable_set(:"@#{option}", optional(value) do
          reject(option, value, "an Integer") unless value.is_a?(Integer)
          core_checked(option, value)
        end)
      end
    end

    MILLISECOND_OPTIONS.each do |option|
      define_method(:"#{option}=") do |value|
        instance_variable_set(:"@#{option}", optional(value) do
          reject(option, value, "a finite number of seconds") unless value.is_a?(Numeric) && value.real? && value.finite?
          core_checked(option, value)
        end)
      end
    end

    # lean_claim true: the lease-only claim (no in_progress transition until the result
    # commits). complete_in_commit (default true): with `orchestrate: true`, a plain step's
    # success completes in the worker's result transaction, not through a results message.
    BOOLEAN_OPTIONS = %i[lean_claim complete_in_commit].freeze
    BOOLEAN_OPTIONS.each do |option|
      define_method(:"#{option}=") do |value|
        instance_variable_set(:"@#{option}", optional(value) do
          reject(option, value, "true or false") unless [true, false].include?(value)
          core_checked(option, value)
        end)
      end
    end

    # :archive (default) or :delete (needs lean_claim): a committed result's worker message.
    def ack_mode=(value)
      @ack_mode = optional(value) do
        reject(:ack_mode, value, "a String or Symbol") unless value.is_a?(String) || value.is_a?(Symbol)
        # The value alone (delete needs lean_claim, which may be set next: `effective` and the
        # worker's start check the two together).
        Native.check_config({ CORE_KEYS[:ack_mode] => value.to_s, CORE_KEYS[:lean_claim] => true })
        value.to_s
      rescue ConfigurationError => e
        raise ConfigurationError, core_message(e.message)
      end
    end

    def metrics_bind=(value)
      @metrics_bind = optional(value) do
        reject(:metrics_bind, value, "an IP address String") unless value.is_a?(String)
        core_checked(:metrics_bind, value)
      end
    end

    def deployment_mode=(value)
      @deployment_mode = optional(value) do
        reject(:deployment_mode, value, "a String or Symbol") unless value.is_a?(String) || value.is_a?(Symbol)
        core_checked(:deployment_mode, value.to_s)
      end
    end

    def namespaces=(value)
      @namespaces = optional(value) do
        names = value.map { |name| name.is_a?(Symbol) ? name.to_s : name } if value.is_a?(Array)
        reject(:namespaces, value, "an Array of Strings or Symbols") unless names&.all?(String)
        core_checked(:namespaces, names).freeze
      end
    end

    def log_level=(value)
      level = value.to_s.to_sym if value.is_a?(String) || value.is_a?(Symbol)
      reject(:log_level, value, "one of #{LOG_LEVELS.keys.join(", ")}") unless LOG_LEVELS.key?(level)
      @log_level = level
      @default_logger.level = LOG_LEVELS.fetch(level)
    end

    # The default logger's lines: :text ("time LEVEL target: message key=value") or :json
    # (one object per line: time, level, target, message, fields), for the core's records and
    # Ruby's alike. Your own logger keeps its own formatter.
    def log_format=(value)
      format = value.to_s.to_sym if value.is_a?(String) || value.is_a?(Symbol)
      reject(:log_format, value, "one of #{LOG_FORMATS.join(", ")}") unless LOG_FORMATS.include?(format)
      @log_format = format
      # A new formatter, not a changed one: a copy's logger shares its original's formatter.
      @default_logger.formatter = Formatter.new(format)
    end

    # Your logger is used as given; log_level only sets the level of the default one.
    def logger=(value)
      reject(:logger, value, "a Logger (an object answering debug, info, warn and error)") unless logger?(value)
      @logger = value
    end

    # Whether the logger is still the default one (a framework may then put its own in).
    def default_logger?
      @logger.equal?(@default_logger)
    end

    # `configure { |c| c.concurency = 5 }` names the misspelt option instead of a NoMethodError.
    def method_missing(name, *args)
      return super unless name.end_with?("=")

      raise ConfigurationError, "unknown option #{name.to_s.chomp("=")} (options: #{OPTIONS.join(", ")})"
    end

    def respond_to_missing?(name, include_private = false) = super

    private

    def presence(value)
      value unless value.nil? || value.empty?
    end

    # nil leaves the option to the core.
    def optional(value)
      value.nil? ? nil : yield
    end

    def reject(option, value, expected)
      raise ConfigurationError, "#{option} must be #{expected}, got #{value.inspect}"
    end

    def core_value(option, value)
      MILLISECOND_OPTIONS.include?(option) ? (value * 1000).round : value
    end

    # The core's verdict on this one value over its defaults (no file, no environment: those
    # are read when the worker starts). Returns the value to keep.
    def core_checked(option, value)
      Native.check_config({ CORE_KEYS.fetch(option) => core_value(option, value) })
      value
    rescue ConfigurationError => e
      raise ConfigurationError, core_message(e.message)
    end

    # "configuration error: worker.x: must be ... (set by overrides)" becomes
    # "option must be ... (worker.x)", naming the Ruby option the user set.
    def core_message(message)
      detail = message.delete_prefix("configuration error: ")
      option, key = CORE_KEYS.find { |_, k| detail.start_with?("#{k}:", "#{k}[") }
      return detail unless option

      rest = detail.delete_prefix("#{key}: ").delete_suffix(" (set by overrides)")
      rest.start_with?("must be ") ? "#{option} #{rest} (#{key})" : "#{option} must be valid for #{detail.delete_suffix(" (set by overrides)")}"
    end

    def logger?(value)
      %i[debug info warn error].all? { |level| value.respond_to?(level) }
    end
  end

  class Configuration
    # The default logger's line. Text: "2026-11-26T10:00:00.123Z INFO  tasker_worker: message
    # key=value". JSON: {"time":..,"level":..,"target":..,"message":..,"fields":{..}}. A Hash
    # message is its :message and its other pairs as fields; a core record
    # (LogForwarder::Line) carries its own.
    class Formatter < Logger::Formatter
      attr_reader :format

      def initialize(format = :text)
        super()
        @format = format
      end

      def call(severity, time, progname, message)
        stamp = time.getutc.strftime("%Y-%m-%dT%H:%M:%S.%LZ")
        text, fields = parts(message)
        target = progname || "tasker_worker"
        if @format == :json
          "#{JSON.generate({ time: stamp, level: severity, target: target, message: text, fields: fields })}\n"
        else
          "#{stamp} #{severity.ljust(5)} #{target}: #{[text, *pairs(fields)].join(" ")}\n"
        end
      end

      private

      def parts(message)
        case message
        when LogForwarder::Line then [message.message, message.fields]
        when Hash
          fields = message.reject { |key, _| key.to_s == "message" }.transform_keys(&:to_s)
          [(message[:message] || message["message"]).to_s, fields]
        when Exception then [message.message, { "error_class" => message.class.name }]
        else [msg2str(message), {}]
        end
      end

      def pairs(fields)
        fields.map { |key, value| "#{key}=#{LogForwarder::Line.value_text(value)}" }
      end
    end
  end

  CONFIGURATION_LOCK = Mutex.new
  private_constant :CONFIGURATION_LOCK

  class << self
    def configuration
      CONFIGURATION_LOCK.synchronize { @configuration ||= Configuration.new }
    end

    # The block configures a copy, which replaces the configuration only when every setter
    # accepted its value: a failed `configure` changes nothing.
    def configure
      candidate = configuration.dup
      yield candidate
      CONFIGURATION_LOCK.synchronize { @configuration = candidate }
    end

    # For tests: the next `configuration` reads the environment again.
    def reset_configuration!
      CONFIGURATION_LOCK.synchronize { @configuration = nil }
    end
  end
end
