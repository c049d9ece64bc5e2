# frozen_string_literal: true

module TaskerWorker
  # The batch a batch worker step runs (`context.batch`): read from the inputs the orchestrator
  # gave the step when it created it (`cursor`, `batch_metadata`, `is_no_op`).
  class BatchContext
    attr_reader :batch_id, :start_cursor, :end_cursor, :size, :cursor_field, :failure_strategy

    # nil when the inputs are not a batch worker's.
    def self.from_inputs(inputs)
      cursor = inputs["cursor"]
      return nil unless cursor.is_a?(Hash)

      new(cursor, inputs["batch_metadata"].is_a?(Hash) ? inputs["batch_metadata"] : {}, inputs["is_no_op"] == true)
    end

    def initialize(cursor, metadata, no_op)
      @batch_id = cursor["batch_id"].to_s
      @start_cursor = cursor["start_cursor"]
      @end_cursor = cursor["end_cursor"]
      @size = cursor["batch_size"]
      @cursor_field = metadata["cursor_field"]
      @failure_strategy = metadata["failure_strategy"]
      @no_op = no_op
      freeze
    end

    # The placeholder worker of a batchable step that found nothing to do (`<template>_000`).
    def no_op? = @no_op

    # `start_cursor...end_cursor` when both are Integers (nil otherwise).
    def range
      (start_cursor...end_cursor) if start_cursor.is_a?(Integer) && end_cursor.is_a?(Integer)
    end

    def to_h
      { batch_id: batch_id, start_cursor: start_cursor, end_cursor: end_cursor, size: size,
        cursor_field: cursor_field, failure_strategy: failure_strategy, no_op: no_op? }
    end

    def inspect = "#<#{self.class.name} #{batch_id} #{start_cursor.inspect}...#{end_cursor.inspect}>"
  end

  # The handler of a batch worker (template `type: batch_worker`; the orchestrator creates one
  # step per batch from it). A subclass implements #process(batch, context), where `batch` is
  # the step's BatchContext, and returns its result like any handler. The no-op placeholder
  # worker (a batchable step that found no batches) does not call #process: its result is
  # `{"batch_id" => "000", "no_op" => true, "processed_count" => 0}`.
  #
  #   class ScanSlice < TaskerWorker::BatchWorkerHandler
  #     def process(batch, context)
  #       skus = Sku.where(id: batch.range).count
  #       { "scanned" => skus }
  #     end
  #   end
  #
  # The convergence step reads every worker's result with `context.batch_results("scan_slice")`.
  class BatchWorkerHandler < StepHandler
    # `register("Slice", TaskerWorker::BatchWorkerHandler) { |batch, context| ... }`: the block
    # is #process.
    def self.hook = :process

    def call(context)
      batch = context.batch
      return { "batch_id" => batch.batch_id, "no_op" => true, "processed_count" => 0 } if batch.no_op?

      process(batch, context)
    end

    def process(_batch, _context)
      raise PermanentError, "#{self.class.name || self.class} must implement #process(batch, context)"
    end
  end
end
