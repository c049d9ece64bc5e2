# frozen_string_literal: true

require "stringio"
require "tmpdir"

RSpec.describe TaskerWorker::Configuration do
  subject(:config) { described_class.new }

  around do |example|
    saved = ENV.to_h.slice("DATABASE_URL", "TASKER_CONFIG_PATH", "TASKER_WORKER_NAMESPACES")
    %w[DATABASE_URL TASKER_CONFIG_PATH TASKER_WORKER_NAMESPACES].each { |name| ENV.delete(name) }
    example.run
  ensure
    %w[DATABASE_URL TASKER_CONFIG_PATH TASKER_WORKER_NAMESPACES].each { |name| ENV.delete(name) }
    ENV.update(saved)
    TaskerWorker.reset_configuration!
  end

  describe "defaults" do
    # The core owns the defaults (worker.toml): every core option starts unset here.
    it "leaves every core option unset" do
      expect(config).to have_attributes(
        database_url: nil, config_path: nil, concurrency: nil, namespaces: nil, deployment_mode: nil,
        visibility_timeout: nil, poll_interval: nil, claim_batch_size: nil, completion_batch_size: nil,
        max_delivery_attempts: nil, shutdown_timeout: nil, handler_timeout: nil, completion_timeout: nil,
        starvation_warning_threshold: nil, pool_size: nil, prefetch: nil, log_level: :info
      )
    end

    it "sends nothing that was not set" do
      expect(config.to_core_overrides).to eq({})
    end

    it "runs with the core's defaults when nothing is set" do
      expect(config.effective[:worker]).to include(namespaces: ["default"], shutdown_timeout_ms: 30_000)
      expect(config.effective.dig(:worker, :mpsc_channels, :handler_dispatch, :max_concurrent_handlers)).to eq(10)
    end

    it "reads DATABASE_URL, TASKER_CONFIG_PATH and TASKER_WORKER_NAMESPACES" do
      ENV["DATABASE_URL"] = "postgres://db.example/app"
      ENV["TASKER_CONFIG_PATH"] = "/etc/tasker.toml"
      ENV["TASKER_WORKER_NAMESPACES"] = "default, payments"

      expect(described_class.new).to have_attributes(database_url: "postgres://db.example/app",
                                                     config_path: "/etc/tasker.toml", namespaces: nil)
      expect(described_class.new.to_core_overrides).to eq("database.url" => "postgres://db.example/app")
      ENV.delete("TASKER_CONFIG_PATH")
      # The core reads TASKER_WORKER_NAMESPACES, below any namespaces set here.
      expect(described_class.new.effective.dig(:worker, :namespaces)).to eq(%w[default payments])
    end

    it "treats an empty environment variable as unset" do
      ENV["DATABASE_URL"] = ""

      expect(described_class.new.database_url).to be_nil
    end

    it "logs to stdout at info" do
      expect { described_class.new.logger.info("ready") }
        .to output(/\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO  tasker_worker: ready\n\z/).to_stdout
      expect { described_class.new.logger.debug("hidden") }.not_to output.to_stdout
    end

    it "formats a line with the UTC time in milliseconds, the level and the program" do
      line = config.logger.formatter.call("INFO", Time.utc(2026, 11, 26, 10, 0, 0.123r), nil, "ready")

      expect(line).to eq("2026-11-26T10:00:00.123Z INFO  tasker_worker: ready\n")
      expect(config.logger.level).to eq(Logger::INFO)
    end

    it "logs a Hash message as its message followed by key=value pairs" do
      line = config.logger.formatter.call("WARN", Time.utc(2026, 1, 1), "x", { message: "slow", step: "a b", ms: 3 })

      expect(line).to eq(%(2026-01-01T00:00:00.000Z WARN  x: slow step="a b" ms=3\n))
    end

    it "writes one JSON object per line with log_format :json, for Ruby lines and core records alike" do
      config.log_format = :json
      time = Time.utc(2026, 1, 1)
      ruby = JSON.parse(config.logger.formatter.call("INFO", time, nil, { message: "slow", step: "a b" }))
      core = TaskerWorker::LogForwarder::Line.new("step failed", { "attempt" => 1, "error" => "card\ndeclined" })
      record = JSON.parse(config.logger.formatter.call("WARN", time, "tasker_worker::worker", core))

      expect(ruby).to eq("time" => "2026-01-01T00:00:00.000Z", "level" => "INFO", "target" => "tasker_worker",
                         "message" => "slow", "fields" => { "step" => "a b" })
      expect(record).to include("level" => "WARN", "target" => "tasker_worker::worker", "message" => "step failed",
                                "fields" => { "attempt" => 1, "error" => "card\ndeclined" })
      expect(core).to eq(%(step failed attempt=1 error="card\\ndeclined")) # what any other logger gets
    end

    it "takes log_format text or json, and TASKER_WORKER_LOG_FORMAT" do
      expect { config.log_format = :yaml }.to raise_error(TaskerWorker::ConfigurationError, /log_format must be one of text, json/)
      ENV["TASKER_WORKER_LOG_FORMAT"] = "json"
      expect(described_class.new.log_format).to eq(:json)
    ensure
      ENV.delete("TASKER_WORKER_LOG_FORMAT")
    end

    it "maps metrics_port and metrics_bind to the core's metrics keys, checked there" do
      config.metrics_port = 9394
      config.metrics_bind = "0.0.0.0"

      expect(config.to_core_overrides).to eq("metrics.port" => 9394, "metrics.bind" => "0.0.0.0")
      expect { config.metrics_bind = "localhost" }.to raise_error(TaskerWorker::ConfigurationError, /metrics\.bind/)
      expect { config.metrics_port = 70_000 }.to raise_error(TaskerWorker::ConfigurationError, /metrics_port|metrics\.port/)
    end
  end

  describe "#to_core_overrides" do
    it "maps every option to its core key, in the core's units" do
      config.database_url = "postgresql://u@h:5432/db"
      config.concurrency = 12
      config.namespaces = [:payments, "default"]
      config.deployment_mode = :event_driven
      config.visibility_timeout = 60
      config.poll_interval = 0.25
      config.claim_batch_size = 20
      config.completion_batch_size = 200
      config.completion_concurrency = 2
      config.max_delivery_attempts = 4
      config.shutdown_timeout = 10.5
      config.handler_timeout = 45
      config.completion_timeout = 50
      config.starvation_warning_threshold = 2
      config.pool_size = 16
      config.prefetch = 0

      expect(config.to_core_overrides).to eq(
        "database.url" => "postgresql://u@h:5432/db",
        "database.max_connections" => 16,
        "worker.namespaces" => %w[payments default],
        "worker.deployment_mode" => "event_driven",
        "worker.visibility_timeout_seconds" => 60,
        "worker.poll_interval_ms" => 250,
        "worker.claim_batch_size" => 20,
        "worker.completion_batch_size" => 200,
        "worker.completion_concurrency" => 2,
        "worker.max_delivery_attempts" => 4,
        "worker.shutdown_timeout_ms" => 10_500,
        "worker.mpsc_channels.handler_dispatch.max_concurrent_handlers" => 12,
        "worker.prefetch" => 0,
        "worker.mpsc_channels.handler_dispatch.handler_timeout_ms" => 45_000,
        "worker.mpsc_channels.ffi_dispatch.completion_timeout_ms" => 50_000,
        "worker.mpsc_channels.ffi_dispatch.starvation_warning_threshold_ms" => 2_000
      )
    end

    it "sends lean_claim as a boolean and refuses anything else, naming the core key" do
      config.lean_claim = true
      expect(config.to_core_overrides).to eq("worker.lean_claim" => true)
      expect(config.effective[:worker][:lean_claim]).to be(true)
      expect { config.lean_claim = "yes" }.to raise_error(TaskerWorker::ConfigurationError, /lean_claim must be true or false/)
      config.lean_claim = nil
      expect(config.effective[:worker][:lean_claim]).to be(false)
    end

    it "sends complete_in_commit as a boolean (default true) and refuses anything else" do
      expect(config.effective[:orchestration][:complete_in_commit]).to be(true)
      config.complete_in_commit = false
      expect(config.to_core_overrides).to eq("orchestration.complete_in_commit" => false)
      expect(config.effective[:orchestration][:complete_in_commit]).to be(false)
      expect { config.complete_in_commit = 0 }
        .to raise_error(TaskerWorker::ConfigurationError, /complete_in_commit must be true or false, got 0/)
    end

    it "sends ack_mode as a String; delete needs lean_claim, checked when the worker's settings are read" do
      config.ack_mode = :delete
      expect(config.to_core_overrides).to eq("worker.ack_mode" => "delete")
      expect { config.effective }.to raise_error(TaskerWorker::ConfigurationError, /worker\.ack_mode.*lean_claim/)
      config.lean_claim = true
      expect(config.effective[:worker][:ack_mode]).to eq("delete")
      expect { config.ack_mode = :shred }.to raise_error(TaskerWorker::ConfigurationError, /ack_mode/)
    end

    it "gives Integer milliseconds" do
      config.poll_interval = 1.0 / 3

      expect(config.to_core_overrides["worker.poll_interval_ms"]).to eql(333)
    end

    it "omits options set back to nil" do
      config.concurrency = nil
      config.namespaces = nil
      config.shutdown_timeout = nil

      expect(config.to_core_overrides).to eq({})
    end

    it "leaves out the Ruby-side options" do
      config.log_level = :debug
      config.config_path = "/tmp/x.toml"

      expect(config.to_core_overrides.keys).to all(match(/\A(worker|database)\./))
    end
  end

  describe "validation" do
    {
      concurrency: [0, 10_001, 2.5, "5"],
      pool_size: [1, 0, "10"],
      prefetch: [-1, 100_001, 1.5, "2"],
      claim_batch_size: [0, 1_001],
      completion_batch_size: [0, 10_001],
      max_delivery_attempts: [0, -1],
      visibility_timeout: [0, 43_201, 1.5],
      poll_interval: [0, 0.001, -1, "1", Float::NAN],
      shutdown_timeout: [-1, Float::INFINITY, :soon],
      handler_timeout: [0, -5],
      completion_timeout: [0, "30"],
      starvation_warning_threshold: [0, -0.5],
      deployment_mode: ["push", :fast, 1],
      namespaces: [[], "default", ["Payments"], ["a" * 41], %w[ok bad-name], %w[a a], [1]],
      log_level: [:verbose, nil, 3],
      logger: [nil, "stdout"],
      config_path: [""],
      database_url: ["mysql://localhost/db", "", 42]
    }.each do |option, values|
      values.each do |value|
        it "rejects #{option} = #{value.inspect}, naming the option" do
          expect { config.public_send(:"#{option}=", value) }
            .to raise_error(TaskerWorker::ConfigurationError, /\A#{option} must be /)
        end
      end
    end

    # The range is the core's; the message names the option and the core key.
    it "says what it expected and what it got" do
      expect { config.concurrency = 0 }.to raise_error(
        TaskerWorker::ConfigurationError,
        "concurrency must be between 1 and 10000, got 0 (worker.mpsc_channels.handler_dispatch.max_concurrent_handlers)"
      )
    end

    it "names the core key when the core refuses a converted value" do
      expect { config.poll_interval = 0.005 }.to raise_error(
        TaskerWorker::ConfigurationError, "poll_interval must be at least 10, got 5 (worker.poll_interval_ms)"
      )
      expect { config.namespaces = %w[a a] }
        .to raise_error(TaskerWorker::ConfigurationError, /\Anamespaces must be valid for worker\.namespaces\[1\]: .*twice/)
    end

    it "accepts the core's boundaries" do
      config.concurrency = 10_000
      config.poll_interval = 0.01
      config.shutdown_timeout = 0

      expect(config.to_core_overrides).to include("worker.poll_interval_ms" => 10, "worker.shutdown_timeout_ms" => 0)
    end

    it "does not repeat a database URL, which may hold a password" do
      expect { config.database_url = "mysql://root:secret@db/app" }
        .to raise_error(TaskerWorker::ConfigurationError) { |error| expect(error.message).not_to include("secret") }
    end

    it "accepts Strings as well as Symbols for named values" do
      config.log_level = "warn"
      config.deployment_mode = "polling"

      expect(config).to have_attributes(log_level: :warn, deployment_mode: "polling")
      expect(config.logger.level).to eq(Logger::WARN)
    end

    it "raises ConfigurationError naming an unknown option" do
      expect { config.concurency = 5 }
        .to raise_error(TaskerWorker::ConfigurationError, /unknown option concurency/)
    end

    it "still raises NoMethodError for an unknown reader" do
      expect { config.concurency }.to raise_error(NoMethodError)
    end
  end

  describe "logger" do
    it "uses a logger given as is, leaving its level alone" do
      logger = Logger.new(StringIO.new, level: Logger::ERROR)
      config.logger = logger
      config.log_level = :debug

      expect(config.logger).to equal(logger)
      expect(logger.level).to eq(Logger::ERROR)
    end

    it "maps trace to the default logger's debug level" do
      config.log_level = :trace

      expect(config.logger.level).to eq(Logger::DEBUG)
    end
  end

  describe "TaskerWorker.configure" do
    it "sets options in a block and keeps them" do
      result = TaskerWorker.configure do |c|
        c.concurrency = 3
        c.namespaces = %i[payments]
      end

      expect(result).to equal(TaskerWorker.configuration)
      expect(TaskerWorker.configuration).to have_attributes(concurrency: 3, namespaces: ["payments"])
    end

    it "changes nothing when a value is rejected" do
      expect do
        TaskerWorker.configure do |c|
          c.concurrency = 3
          c.namespaces = []
        end
      end.to raise_error(TaskerWorker::ConfigurationError, /namespaces/)
      expect(TaskerWorker.configuration.concurrency).to be_nil
    end

    it "fails inside configure for a value out of the core's range, naming the option and the key" do
      expect { TaskerWorker.configure { |c| c.claim_batch_size = 1_001 } }.to raise_error(
        TaskerWorker::ConfigurationError, /\Aclaim_batch_size must be between 1 and 1000, got 1001 \(worker\.claim_batch_size\)/
      )
      expect(TaskerWorker.configuration.claim_batch_size).to be_nil
    end

    it "leaves the global log level alone when a copy's is set" do
      TaskerWorker.reset_configuration! # the default logger, not the suite's
      copy = TaskerWorker.configuration.dup
      copy.log_level = :debug

      expect([copy.logger.level, TaskerWorker.logger.level]).to eq([Logger::DEBUG, Logger::INFO])
    end

    it "raises ConfigurationError for an unknown option" do
      expect { TaskerWorker.configure { |c| c.worker_count = 2 } }
        .to raise_error(TaskerWorker::ConfigurationError, /unknown option worker_count/)
    end

    it "starts again from the defaults and the environment after reset_configuration!" do
      TaskerWorker.configure { |c| c.concurrency = 9 }
      ENV["DATABASE_URL"] = "postgres://after-reset/db"
      TaskerWorker.reset_configuration!

      expect(TaskerWorker.configuration).to have_attributes(concurrency: nil, database_url: "postgres://after-reset/db")
    end
  end

  describe "a Worker started from Ruby", :worker do
    let(:toml) do
      <<~TOML
        [worker]
        namespaces = ["toml_a", "toml_b"]
        shutdown_timeout_ms = 500
        [worker.mpsc_channels.handler_dispatch]
        max_concurrent_handlers = 3
      TOML
    end

    it "runs exactly what the TOML file at config_path sets" do
      Dir.mktmpdir do |dir|
        File.write(File.join(dir, "worker.toml"), toml)
        TaskerWorker.configure { |c| c.config_path = File.join(dir, "worker.toml") }
        started = false
        release = Queue.new
        registry = TaskerWorker::HandlerRegistry.new
        registry.register("SpecBlock") do |_context|
          started = true
          release.pop # held until the stop is measured
          {}
        end
        worker = start_worker(registry: registry)

        expect([worker.concurrency, worker.namespaces, worker.shutdown_timeout]).to eq([3, %w[toml_a toml_b], 0.5])
        # capacity is the handlers plus the prefetch, which starts at the handler count (unset,
        # it adapts once steps run; none has yet).
        expect(worker.status).to include(namespaces: %w[toml_a toml_b], threads: 3, capacity: 6)

        WorkflowRows.create(db, namespace: "toml_b", steps: [{ name: "only", callable: "SpecBlock" }]).enqueue("only")
        wait_until("the toml_b step to start") { started }
        clock = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        report = worker.stop # no timeout given: the file's 500 ms, not the default 30 s
        waited = Process.clock_gettime(Process::CLOCK_MONOTONIC) - clock
        release << true

        expect(report).to include(released: 1)
        expect(waited).to be_between(0.4, 5)
      end
    end

    it "sends the file's keys nowhere: an unset option leaves them to the core" do
      Dir.mktmpdir do |dir|
        File.write(File.join(dir, "worker.toml"), toml)
        config = TaskerWorker.configuration.dup.tap { |c| c.config_path = File.join(dir, "worker.toml") }

        expect(config.to_core_overrides.keys).not_to include("worker.namespaces", "worker.shutdown_timeout_ms")
        config.concurrency = 4
        expect(config.effective.dig(:worker, :mpsc_channels, :handler_dispatch, :max_concurrent_handlers)).to eq(4)
      end
    end
  end
end
