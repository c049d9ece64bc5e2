# frozen_string_literal: true

require "json"

module TaskerWorker
  # Creating and inspecting tasks, and registering task templates, with or without a worker
  # in this process. One connection pool per database URL per process (a forked child makes
  # its own).
  #
  #   uuid = TaskerWorker::Client.create_task(namespace: "orders", name: "fulfill", context: { order_id: 7 })
  #   TaskerWorker::Client.wait(uuid, timeout: 30)  # => { state: "complete", steps: [...], ... }
  class Client
    SETTLED = %w[complete error cancelled resolved_manually].freeze
    POOL_SIZE = 4

    @mutex = Mutex.new
    @clients = {}

    class << self
      # The client for `database_url` (default: the configured one), made once per process.
      def for(database_url = TaskerWorker.configuration.database_url)
        unless database_url
          raise ConfigurationError,
                "database_url is not set: TaskerWorker.configure { |c| c.database_url = ... } or DATABASE_URL"
        end

        @mutex.synchronize do
          @clients = {} if @pid != Process.pid
          @pid = Process.pid
          @clients[database_url] ||= new(Native::Client.connect(database_url, POOL_SIZE), database_url)
        end
      end

      %i[create_task task wait register_templates register_template_file].each do |name|
        define_method(name) { |*args, **kwargs| self.for.public_send(name, *args, **kwargs) }
      end
    end

    # The database this client works on.
    attr_reader :database_url

    def initialize(native, database_url = nil)
      @native = native
      @database_url = database_url
    end

    # Inside an open ActiveRecord transaction on the same database (Rails), the task is written
    # on that transaction's connection: it commits or rolls back with the app's rows, and its
    # steps are announced only on commit. Otherwise it is created at once, in a transaction
    # of its own. Returns the task's uuid (for a repeated idempotency_key, the first task's).
    def create_task(namespace:, name:, version: "1.0.0", context: {}, idempotency_key: nil)
      args = [namespace.to_s, name.to_s, version.to_s, context, idempotency_key&.to_s]
      connection = Hooks.transaction_connection&.call(self)
      return @native.create_task(*args) unless connection

      create_on(connection, @native.task_plan(*args))
    end

    # { task_uuid:, namespace:, name:, version:, state:, complete:, context:, created_at:,
    #   completed_at:, steps: [{ step_uuid:, name:, state:, attempts:, max_attempts:, results: }] }
    def task(task_uuid)
      @native.task(task_uuid.to_s)
    end

    # Polls until the task is complete or failed; raises TimeoutError after `timeout` seconds.
    def wait(task_uuid, timeout: 30, interval: 0.05)
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
      loop do
        summary = task(task_uuid)
        return summary if SETTLED.include?(summary[:state])
        raise TimeoutError, "task #{task_uuid} is still #{summary[:state]} after #{timeout}s" if past?(deadline)

        sleep interval
      end
    end

    # Registers every *.yml / *.yaml template in `dir`; returns what was registered.
    def register_templates(dir)
      files = Dir[File.join(dir, "*.{yml,yaml}")].sort
      raise ConfigurationError, "no task templates (*.yml, *.yaml) in #{dir}" if files.empty?

      files.map { |path| register_template_file(path) }
    end

    def register_template_file(path)
      @native.register_template(File.read(path), path)
    end

    private

    # `connection` answers exec_params (a PG::Connection); the plan is the core's, as JSON.
    def create_on(connection, plan)
      created = connection.exec_params("SELECT tasker.create_task($1::jsonb)", [plan]).getvalue(0, 0)
      created || connection.exec_params("SELECT task_uuid FROM tasker.tasks WHERE identity_hash = $1",
                                        [JSON.parse(plan).fetch("identity_hash")]).getvalue(0, 0)
    end

    def past?(deadline)
      Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
    end
  end
end
