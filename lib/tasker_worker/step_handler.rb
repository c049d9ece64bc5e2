# frozen_string_literal: true

module TaskerWorker
  # Base class of Ruby step handlers. A subclass implements #call(context) and returns the
  # step's result: any JSON-able value, #success (to add metadata) or #failure (to fail
  # without raising). A new instance runs each step, so instance state is never shared
  # between threads.
  #
  #   class ChargeCard < TaskerWorker::StepHandler
  #     def call(context)
  #       charge = Gateway.new(config["gateway"]).charge(context.input(:order, :total))
  #       success(result: { charge_id: charge.id }, metadata: { gateway_ms: charge.ms })
  #     end
  #   end
  class StepHandler
    # A successful result with metadata for the orchestrator.
    Success = Struct.new(:result, :metadata, keyword_init: true) do
      def initialize(result: nil, metadata: {})
        StepHandler.require_hash!(:metadata, metadata)
        super
        freeze
      end

      def success? = true
    end

    # A failure reported by returning it rather than raising.
    Failure = Struct.new(:message, :error_type, :retryable, :retry_after, :error_code, :metadata, :context,
                         keyword_init: true) do
      def initialize(message:, error_type:, retryable:, retry_after: nil, error_code: nil, metadata: {}, context: {})
        StepHandler.require_hash!(:metadata, metadata)
        StepHandler.require_hash!(:context, context)
        super(message: message.to_s, error_type: error_type.to_s, retryable: retryable ? true : false,
              retry_after: RetryableError.coerce_retry_after(retry_after), error_code: error_code&.to_s,
              metadata: metadata, context: context)
        freeze
      end

      def success? = false
    end

    # Returned by a handler (#checkpoint_yield) to save its progress and be run again at once
    # with the new checkpoint in its context (same claim, no new attempt); see README
    # "Checkpointed steps".
    CheckpointYield = Struct.new(:cursor, :items_processed, :accumulated_results, keyword_init: true) do
      def initialize(cursor:, items_processed:, accumulated_results: nil)
        StepContext.check_items_processed!(items_processed)
        super
        freeze
      end

      def checkpoint? = true
      def success? = false
    end

    # The core stores metadata and context as JSON objects; anything else is a handler bug.
    def self.require_hash!(name, value)
      raise ArgumentError, "#{name} must be a Hash, got #{value.inspect}" unless value.is_a?(Hash)
    end

    # The name a handler is known by in logs: "OrderFulfillment::ChargeCard" -> "charge_card".
    # Anonymous classes have none.
    def self.handler_name
      return nil unless name

      name.split("::").last.gsub(/(?<=[a-z\d])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])/, "_").downcase
    end

    # The step template's `handler.initialization` (String keys).
    attr_reader :config

    def initialize(config: {})
      @config = config || {}
    end

    def call(_context)
      raise PermanentError, "#{self.class.name || self.class} must implement #call(context)"
    end

    def success(result: nil, metadata: {})
      Success.new(result: result, metadata: metadata)
    end

    # Return this to save a checkpoint and run again from it at once (tasker-core's
    # `checkpoint_yield`): `return checkpoint_yield(cursor: 500, items_processed: 500,
    # accumulated_results: { "total" => 1234 })`.
    def checkpoint_yield(cursor:, items_processed:, accumulated_results: nil)
      CheckpointYield.new(cursor: cursor, items_processed: items_processed, accumulated_results: accumulated_results)
    end

    def failure(message:, error_type: "handler_failure", retryable: false, retry_after: nil, error_code: nil,
                metadata: {}, context: {})
      Failure.new(message: message, error_type: error_type, retryable: retryable, retry_after: retry_after,
                  error_code: error_code, metadata: metadata, context: context)
    end
  end
end
