# frozen_string_literal: true

require_relative "tasker_worker/version"
require_relative "tasker_worker/errors"

begin
  require_relative "tasker_worker/tasker_worker_ext"
rescue LoadError => e
  raise LoadError, "tasker_worker: the native extension is not built (#{e.message}). " \
                   "In a checkout run `rake compile` (or bin/setup); as a gem, reinstall it."
end

require_relative "tasker_worker/database"
require_relative "tasker_worker/hooks"
require_relative "tasker_worker/step_handler"
require_relative "tasker_worker/step_context"
require_relative "tasker_worker/decision_handler"
require_relative "tasker_worker/batchable_handler"
require_relative "tasker_worker/batch_worker_handler"
require_relative "tasker_worker/result_mapper"
require_relative "tasker_worker/handler_registry"
require_relative "tasker_worker/configuration"
require_relative "tasker_worker/log_forwarder"
require_relative "tasker_worker/processor"
require_relative "tasker_worker/domain_events"
require_relative "tasker_worker/worker"
require_relative "tasker_worker/client"
require_relative "tasker_worker/railtie" if defined?(Rails::Railtie)

# Runs the steps of Tasker workflows: a Rust engine claims steps from PostgreSQL PGMQ
# queues and hands them to Ruby handler classes.
module TaskerWorker
end
