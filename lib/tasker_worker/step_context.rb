# frozen_string_literal: true

require "json"
require "logger"
require "securerandom"

module TaskerWorker
  # What a handler gets for one claimed step: read-only access to the event the core
  # delivered (the task's context, the step's inputs, its ancestors' results, the attempt).
  # Data that came from JSON has String keys; lookups here accept Symbols as well.
  class StepContext
    EVENT_DEFAULTS = {
      namespace: "default", task_name: "test_task", task_version: "1.0.0", step_name: "step",
      task_context: {}, inputs: {}, handler: { callable: nil, initialization: {} }, dependency_results: {},
      attempts: 1, max_attempts: 3, retryable: true, timeout_seconds: nil
    }.freeze
    # The event fields the core decodes from JSON, so `build` gives them the same shape.
    JSON_FIELDS = %i[task_context inputs dependency_results].freeze
    # Without a device a Logger writes nothing and holds no file descriptor.
    NULL_LOGGER = Logger.new(nil)
    private_constant :EVENT_DEFAULTS, :JSON_FIELDS, :NULL_LOGGER

    # A context for tests, without a database: missing event fields get defaults, and the
    # JSON-sourced ones are round-tripped through JSON as the core would deliver them.
    def self.build(**fields)
      unknown = fields.keys - EVENT_DEFAULTS.keys - %i[event_id task_uuid step_uuid correlation_id]
      raise ArgumentError, "unknown event field(s): #{unknown.join(", ")}" unless unknown.empty?

      new(generated_ids.merge(EVENT_DEFAULTS, as_delivered(fields)))
    end

    def self.generated_ids
      %i[event_id task_uuid step_uuid correlation_id].to_h { |key| [key, SecureRandom.uuid] }
    end

    def self.as_delivered(fields)
      fields.to_h do |key, value|
        value = json(value) if JSON_FIELDS.include?(key)
        value = { callable: value[:callable], initialization: json(value[:initialization] || {}) } if key == :handler
        [key, value]
      end
    end

    def self.json(value) = JSON.parse(JSON.generate(value))
    private_class_method :generated_ids, :as_delivered, :json

    def initialize(event)
      @event = event
    end

    %i[event_id task_uuid step_uuid correlation_id namespace task_name task_version step_name
       max_attempts timeout_seconds].each do |field|
      define_method(field) { @event[field] }
    end

    def attempt = @event[:attempts]
    def retry? = attempt.to_i > 1
    def last_attempt? = attempt.to_i >= max_attempts.to_i
    # Whether the template lets the orchestrator retry this step at all.
    def retryable? = @event[:retryable] != false

    def handler_callable = handler[:callable]
    # The template's `handler.initialization`.
    def config = handler[:initialization] || {}

    # The task's whole input (`tasks.context`).
    def task_context = @event[:task_context] || {}
    # The step's own inputs (`workflow_steps.inputs`).
    def inputs = @event[:inputs] || {}

    # A value of the task's input; several keys dig into nested hashes and arrays:
    # `input(:order, :items, 0)`. nil when any level is missing.
    def input(*path)
      raise ArgumentError, "input needs at least one key" if path.empty?

      path.reduce(task_context) { |node, key| lookup(node, key) }
    end

    # The stored result of an ancestor step (success, result, metadata, ...), nil when absent.
    def dependency(name)
      lookup(@event[:dependency_results] || {}, name)
    end

    # What an ancestor step's handler returned; nil when there is no such ancestor.
    def dependency_result(name)
      lookup(dependency(name), "result")
    end

    # Every ancestor's handler result, by step name.
    def dependency_results
      (@event[:dependency_results] || {}).transform_values { |stored| lookup(stored, "result") }
    end

    # The batch this step runs when it is a batch worker (a BatchContext); raises
    # PermanentError for any other step.
    def batch
      @batch ||= BatchContext.from_inputs(inputs) ||
                 raise(PermanentError.new("step #{step_name} is not a batch worker: its inputs carry no cursor",
                                          error_code: "not_a_batch_worker"))
    end

    # For a convergence step: the results of the batch workers created from `worker_template`
    # (steps named `<worker_template>_<batch id>`), by step name, in batch order. The no-op
    # placeholder of a batchable step that found no batches is left out, so none gives {}.
    def batch_results(worker_template)
      prefix = "#{worker_template}_"
      dependency_results.select { |name, result| name.start_with?(prefix) && !no_op_result?(result) }
                        .sort_by(&:first).to_h
    end

    def logger
      TaskerWorker.respond_to?(:logger) ? TaskerWorker.logger : NULL_LOGGER
    end

    # The event as the core delivered it.
    def to_h = @event

    def inspect
      "#<#{self.class.name} #{namespace}/#{task_name}##{step_name} step=#{step_uuid} " \
        "attempt=#{attempt}/#{max_attempts}>"
    end

    private

    def handler = @event[:handler] || {}

    def no_op_result?(result) = result.is_a?(Hash) && result["no_op"] == true

    def lookup(node, key)
      case node
      when Hash then node.fetch(key.to_s) { node[key.to_s.to_sym] }
      when Array then key.is_a?(Integer) ? node[key] : nil
      end
    end
  end
end
