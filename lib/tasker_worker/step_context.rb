# frozen_string_literal: true

require "json"
require "logger"
require "securerandom"

module TaskerWorker
  # What a handler gets for one claimed step: read-only access to the event the core
  # delivered (the task's context, the step's inputs, its ancestors' results, the attempt),
  # and the step's checkpoint, which `checkpoint(cursor:, ...)` saves (README "Checkpointed
  # steps"). Data that came from JSON has String keys; lookups here accept Symbols as well.
  class StepContext
    EVENT_DEFAULTS = {
      namespace: "default", task_name: "test_task", task_version: "1.0.0", step_name: "step",
      task_context: {}, inputs: {}, handler: { callable: nil, initialization: {} }, dependency_results: {},
      attempts: 1, max_attempts: 3, retryable: true, timeout_seconds: nil, checkpoint: nil
    }.freeze
    # The event fields the core decodes from JSON, so `build` gives them the same shape.
    JSON_FIELDS = %i[task_context inputs dependency_results checkpoint].freeze
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
        value = json(value) if JSON_FIELDS.include?(key) && !value.nil?
        value = { callable: value[:callable], initialization: json(value[:initialization] || {}) } if key == :handler
        [key, value]
      end
    end

    def self.json(value) = JSON.parse(JSON.generate(value))
    private_class_method :generated_ids, :as_delivered, :json

    # `checkpointer` saves a checkpoint: called with the data Hash and whether it is a yield,
    # it returns `{saved:, checkpoint:}` (the worker passes the core's). Without one (contexts
    # from `build`), checkpoints are kept in this object only.
    def initialize(event, checkpointer = nil)
      @event = event
      @checkpointer = checkpointer
      @checkpoint = event[:checkpoint]
    end

    def self.check_items_processed!(value)
      return if value.is_a?(Integer) && value >= 0

      raise ArgumentError, "items_processed must be an Integer >= 0 (the total so far), got #{value.inspect}"
    end

    # Without arguments: the step's saved checkpoint, a Hash with String keys ("cursor",
    # "items_processed", "timestamp", "accumulated_results", "history"), or nil. With
    # `cursor:` and `items_processed:` (the total so far) and optionally `accumulated:` (any
    # JSON value carried to the run that resumes): saves it durably under this step's claim and
    # returns true, or false when it came sooner than `worker.checkpoints.min_interval_ms` after
    # the last written one (coalesced: the readers see it, the next save writes it). Raises
    # StaleClaimError when this claim lost the step, CheckpointLimitError over a limit.
    def checkpoint(**options)
      return @checkpoint if options.empty?

      save_checkpoint(**options)
    end

    def save_checkpoint(cursor:, items_processed:, accumulated: nil)
      store_checkpoint({ cursor: cursor, items_processed: items_processed, accumulated_results: accumulated }, false)
    end

    # The processor's half of StepHandler#checkpoint_yield: saves it as a yield.
    def yield_checkpoint(checkpoint_yield)
      store_checkpoint(checkpoint_yield.to_h, true)
    end

    def checkpoint? = !@checkpoint.nil?
    alias has_checkpoint? checkpoint?

    # Where to resume (the saved cursor), nil without a checkpoint.
    def checkpoint_cursor = checkpoint_field("cursor")
    # Items processed before this run (0 without a checkpoint).
    def checkpoint_items_processed = checkpoint_field("items_processed").to_i
    # The results the last checkpoint carried, nil without one.
    def accumulated_results = checkpoint_field("accumulated_results")

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

    # A field of the checkpoint; nil without one (or when a foreign writer stored a non-object).
    def checkpoint_field(key) = @checkpoint.is_a?(Hash) ? @checkpoint[key] : nil

    def store_checkpoint(data, yielded)
      self.class.check_items_processed!(data[:items_processed])
      unless @checkpointer
        @checkpoint = in_memory_checkpoint(data)
        return true
      end

      outcome = @checkpointer.call(data, yielded)
      @checkpoint = outcome[:checkpoint]
      outcome[:saved]
    end

    # What the core would store, for contexts without a worker (tests).
    def in_memory_checkpoint(data)
      stamp = Time.now.utc.strftime("%Y-%m-%dT%H:%M:%S.%6NZ")
      cursor = json_copy(data[:cursor])
      history = ((@checkpoint && @checkpoint["history"]) || []) + [{ "cursor" => cursor, "timestamp" => stamp }]
      { "cursor" => cursor, "items_processed" => data[:items_processed], "timestamp" => stamp,
        "accumulated_results" => json_copy(data[:accumulated_results]), "history" => history }
    end

    def json_copy(value) = JSON.parse(JSON.generate([value])).first

    def lookup(node, key)
      case node
      when Hash then node.fetch(key.to_s) { node[key.to_s.to_sym] }
      when Array then key.is_a?(Integer) ? node[key] : nil
      end
    end
  end
end
