# frozen_string_literal: true

require "json"

module TaskerWorker
  # Creating and inspecting tasks, and registering task templates, with or without a worker
  # in this process. One connection pool per database URL per process (a forked child makes
  # its own).
  #
  #   uuid = TaskerWorker::Client.create_task(namespace: "orders", name: "fulfill", context: { order_id: 7 })
  #   TaskerWorker::Client.wait(uuid, timeout: 30)  # => { state: "complete", steps: [...], ... }
  #
  # Operations (safe from several processes at once and against running workers; what the
  # state machine does not allow raises InvalidStateError, an unknown uuid NotFoundError):
  #   Client.tasks(state: "blocked_by_failures")    # => [{ task_uuid:, state:, steps_in_error:, ... }]
  #   Client.cancel_task(uuid)                      # steps not started never run; the task ends cancelled
  #   Client.retry_step(step_uuid) / retry_task(uuid) # steps in error get fresh attempts; the task resumes
  #   Client.resolve_step_manually(step_uuid, result: { ... }) # resolved_manually; children released
  #   Client.dead_letters / replay_dead_letter(id) / workers / status
  class Client
    SETTLED = %w[complete blocked_by_failures error cancelled resolved_manually].freeze
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

      %i[create_task task wait register_templates register_template_file
         tasks task_detail cancel_task retry_step retry_task resolve_step_manually
         dead_letters replay_dead_letter workers status activity failed_steps task_transitions prune].each do |name|
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

    # Tasks, newest first, narrowed by state, namespace and template name; `before` (a Time or
    # an RFC 3339 string) pages back from a row's created_at. At most 1000 rows.
    def tasks(state: nil, namespace: nil, name: nil, limit: 50, before: nil)
      before = before.utc.strftime("%Y-%m-%dT%H:%M:%S.%6NZ") if before.is_a?(Time)
      @native.tasks(state&.to_s, namespace&.to_s, name&.to_s, Integer(limit), before&.to_s)
    end

    # `task`, plus `dag:` [{ step_uuid:, name:, parents: [names], state:, attempts:, max_attempts:, error: }].
    def task_detail(task_uuid)
      @native.task_detail(task_uuid.to_s)
    end

    # => { task_uuid:, task_state: "cancelled", steps: <steps cancelled> }
    def cancel_task(task_uuid)
      @native.cancel_task(task_uuid.to_s)
    end

    # => { task_uuid:, task_state:, steps: <messages sent> }
    def retry_step(step_uuid)
      @native.retry_step(step_uuid.to_s)
    end

    # Retries every step of the task in error. => { task_uuid:, task_state:, steps: }
    def retry_task(task_uuid)
      @native.retry_task(task_uuid.to_s)
    end

    # `result` is stored as the step's result, which its children read like a handler's.
    def resolve_step_manually(step_uuid, result: {})
      @native.resolve_step_manually(step_uuid.to_s, result)
    end

    # Newest first: [{ id:, queue_name:, msg_id:, read_ct:, message:, reason:, worker_id:, created_at:, replayed_at: }]
    def dead_letters(limit: 50)
      @native.dead_letters(Integer(limit))
    end

    # Sends the dead letter's message to its queue again; returns the new message id.
    def replay_dead_letter(id)
      @native.replay_dead_letter(id.to_s)
    end

    # Worker processes, newest first; state is running, quiet, stopped or gone (no heartbeat
    # for 30 s). Rows silent for an hour are deleted.
    def workers
      @native.workers
    end

    # { schema_up_to_date:, schema_problem:, workers:, queues: [{ queue_name:, length:,
    #   oldest_message_age_seconds: }], tasks_by_state: {}, steps_by_state: {} }
    def status
      @native.status
    end

    # The dashboard's views (TaskerWorker::Web):
    # { completed_last_hour:, failed_last_hour:, steps_per_second:, minutes: [{ minute:, completed:, failed: }] }
    def activity
      @native.activity
    end

    # Steps in error or waiting_for_retry, most recently failed first: [{ step_uuid:, step_name:,
    # task_uuid:, namespace:, task_name:, state:, attempts:, error_type:, message:, failed_at: }]
    def failed_steps(limit: 200)
      @native.failed_steps(Integer(limit))
    end

    # The task's and its steps' transitions, oldest first: [{ step_name: (nil for the task),
    # from_state:, to_state:, created_at: }]
    def task_transitions(task_uuid)
      @native.task_transitions(task_uuid.to_s)
    end

    # One retention round now, with the configured ages (TaskerWorker.configuration: its
    # retention_* options, the file, the defaults): deletes completed (and, when
    # retention_failed_after is set, failed) tasks older than their age with their steps, edges
    # and transitions, and archived queue messages older than retention_archive_after. With
    # dry_run: counts them, deletes nothing. Returns { ran:, dry_run:, batches:,
    # deleted: { "tasker.tasks" => n, ..., "pgmq.a_<queue>" => n } }; ran is false when another
    # process was pruning (nothing done).
    def prune(dry_run: false, configuration: TaskerWorker.configuration)
      retention = configuration.effective.fetch(:retention)
      @native.prune(*retention.values_at(:completed_after_seconds, :failed_after_seconds, :archive_after_seconds,
                                         :batch_size), dry_run ? true : false)
    end

    # Polls until the task is complete, blocked by failures (a step in error), cancelled or
    # resolved; raises TimeoutError after `timeout` seconds.
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
