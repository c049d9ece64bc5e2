# frozen_string_literal: true

require "logger"

module TaskerWorker
  # The Ruby-facing settings. Each setter checks its value at once, so a mistake fails in
  # `TaskerWorker.configure` with the option's name rather than later in the core. Options
  # left nil are not sent to the core, where the defaults, TASKER_CONFIG_PATH and the
  # environment apply. Times are seconds here and milliseconds in the core.
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
      max_delivery_attempts: "worker.max_delivery_attempts",
      shutdown_timeout: "worker.shutdown_timeout_ms",
      concurrency: "worker.mpsc_channels.handler_dispatch.max_concurrent_handlers",
      prefetch: "worker.prefetch",
      handler_timeout: "worker.mpsc_channels.handler_dispatch.handler_timeout_ms",
      completion_timeout: "worker.mpsc_channels.ffi_dispatch.completion_timeout_ms",
      starvation_warning_threshold: "worker.mpsc_channels.ffi_dispatch.starvation_warning_threshold_ms"
    }.freeze
    MILLISECOND_OPTIONS = %i[poll_interval shutdown_timeout handler_timeout completion_timeout
                             starvation_warning_threshold].freeze
    OPTIONS = (CORE_KEYS.keys + %i[log_level logger config_path]).freeze
    DEPLOYMENT_MODES = %w[hybrid event_driven polling].freeze
    LOG_LEVELS = { trace: Logger::DEBUG, debug: Logger::DEBUG, info: Logger::INFO, warn: Logger::WARN,
                   error: Logger::ERROR }.freeze
    NAMESPACE_FORMAT = /\A[a-z0-9_]{1,33}\z/.freeze
    # PGMQ takes the visibility timeout in seconds; the core refuses more than 12 hours.
    MAX_VISIBILITY_TIMEOUT = 12 * 60 * 60

    attr_reader(*OPTIONS)

    def initialize
      self.database_url = presence(ENV["DATABASE_URL"])
      self.config_path = presence(ENV["TASKER_CONFIG_PATH"])
      self.concurrency = 5
      self.namespaces = default_namespaces
      self.shutdown_timeout = 25
      @logger = @default_logger = Logger.new($stdout, formatter: Formatter.new)
      self.log_level = :info
    end

    # Hash{dotted core key => value} for every option that is set.
    def to_core_overrides
      CORE_KEYS.each_with_object({}) do |(option, key), overrides|
        value = public_send(option)
        next if value.nil?

        overrides[key] = MILLISECOND_OPTIONS.include?(option) ? (value * 1000).round : value
      end
    end

    def to_h
      OPTIONS.to_h { |option| [option, public_send(option)] }
    end

    def database_url=(value)
      @database_url = optional(value) do
        next value if value.is_a?(String) && value.match?(%r{\Apostgres(ql)?://[^\s]})

        # The URL may hold a password: name only what it starts with.
        got = value.is_a?(String) ? "one starting with #{value[/\A[^:]*/].inspect}" : value.class
        raise ConfigurationError, "database_url must be a postgres:// or postgresql:// URL, got #{got}"
      end
    end

    def config_path=(value)
      @config_path = optional(value) { value.to_s.empty? ? reject(:config_path, value, "a file path") : value.to_s }
    end

    def concurrency=(value)
      @concurrency = integer(:concurrency, value, 1..10_000)
    end

    # Steps claimed ahead of the threads, waiting for a free one (nil: as many as concurrency).
    def prefetch=(value)
      @prefetch = integer(:prefetch, value, 0..100_000)
    end

    def pool_size=(value)
      # Migrations hold two connections at once.
      @pool_size = integer(:pool_size, value, 2..)
    end

    def claim_batch_size=(value)
      @claim_batch_size = integer(:claim_batch_size, value, 1..1_000)
    end

    def completion_batch_size=(value)
      @completion_batch_size = integer(:completion_batch_size, value, 1..10_000)
    end

    def max_delivery_attempts=(value)
      @max_delivery_attempts = integer(:max_delivery_attempts, value, 1..)
    end

    def visibility_timeout=(value)
      @visibility_timeout = integer(:visibility_timeout, value, 1..MAX_VISIBILITY_TIMEOUT)
    end

    def poll_interval=(value)
      # Below 10 ms the fallback poller would be a busy loop against the database.
      @poll_interval = seconds(:poll_interval, value, at_least: 0.01)
    end

    def shutdown_timeout=(value)
      @shutdown_timeout = seconds(:shutdown_timeout, value, at_least: 0)
    end

    def handler_timeout=(value)
      @handler_timeout = seconds(:handler_timeout, value, at_least: 0.001)
    end

    def completion_timeout=(value)
      @completion_timeout = seconds(:completion_timeout, value, at_least: 0.001)
    end

    def starvation_warning_threshold=(value)
      @starvation_warning_threshold = seconds(:starvation_warning_threshold, value, at_least: 0.001)
    end

    def deployment_mode=(value)
      @deployment_mode = optional(value) do
        next value.to_s if DEPLOYMENT_MODES.include?(value.to_s)

        reject(:deployment_mode, value, "one of #{DEPLOYMENT_MODES.join(', ')}")
      end
    end

    def namespaces=(value)
      @namespaces = optional(value) { namespace_list(value) }
    end

    def log_level=(value)
      level = value.to_s.to_sym if value.is_a?(String) || value.is_a?(Symbol)
      reject(:log_level, value, "one of #{LOG_LEVELS.keys.join(', ')}") unless LOG_LEVELS.key?(level)
      @log_level = level
      @default_logger.level = LOG_LEVELS.fetch(level)
    end

    # Your logger is used as given; log_level only sets the level of the default one.
    def logger=(value)
      reject(:logger, value, "a Logger (an object answering debug, info, warn and error)") unless logger?(value)
      @logger = value
    end

    # `configure { |c| c.concurency = 5 }` names the misspelt option instead of a NoMethodError.
    def method_missing(name, *args)
      return super unless name.end_with?("=")

      raise ConfigurationError, "unknown option #{name.to_s.chomp('=')} (options: #{OPTIONS.join(', ')})"
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

    def integer(option, value, range)
      optional(value) do
        next value if value.is_a?(Integer) && range.cover?(value)

        bounds = range.end ? "between #{range.begin} and #{range.end}" : ">= #{range.begin}"
        reject(option, value, "an Integer #{bounds}")
      end
    end

    def seconds(option, value, at_least:)
      optional(value) do
        next value if value.is_a?(Numeric) && value.real? && value.finite? && value >= at_least

        reject(option, value, "a number of seconds >= #{at_least}")
      end
    end

    # The core reads TASKER_WORKER_NAMESPACES too, but an override would hide it.
    def default_namespaces
      presence(ENV["TASKER_WORKER_NAMESPACES"])&.split(",", -1)&.map(&:strip) || ["default"]
    end

    def namespace_list(value)
      names = value.map { |name| name.is_a?(Symbol) ? name.to_s : name } if value.is_a?(Array)
      unless names&.any? && names.all? { |name| name.is_a?(String) && name.match?(NAMESPACE_FORMAT) }
        reject(:namespaces, value, "a non-empty Array of names of 1-33 characters of a-z, 0-9 and _")
      end
      reject(:namespaces, value, "a list without duplicates") if names.uniq.size < names.size
      names.freeze
    end

    def logger?(value)
      %i[debug info warn error].all? { |level| value.respond_to?(level) }
    end
  end

  # The default logger's line: "2026-11-26T10:00:00.123Z INFO  tasker_worker: message key=value".
  # A Hash message is logged as its :message followed by its other pairs.
  class Configuration::Formatter < Logger::Formatter
    def call(severity, time, progname, message)
      "#{time.getutc.strftime('%Y-%m-%dT%H:%M:%S.%LZ')} #{severity.ljust(5)} #{progname || 'tasker_worker'}: " \
        "#{text(message)}\n"
    end

    private

    def text(message)
      case message
      when Hash then fields(message)
      when Exception then "#{message.message} (#{message.class})"
      else msg2str(message)
      end
    end

    def fields(hash)
      pairs = hash.reject { |key, _| key.to_s == "message" }.map { |key, value| "#{key}=#{field_value(value)}" }
      [hash[:message] || hash["message"], *pairs].compact.join(" ")
    end

    # Quoted only when needed, so the line stays easy to grep and to parse.
    def field_value(value)
      text = value.to_s
      text.match?(/\A[^\s"=]+\z/) ? text : text.inspect
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
