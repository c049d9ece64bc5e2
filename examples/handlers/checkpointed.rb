# frozen_string_literal: true

module Examples
  module Checkpointed
    # Sums the items 1..count, one at a time (`seconds` each), saving a checkpoint after every
    # item: the cursor (the next item), the count so far, and the sum and the items seen as
    # accumulated results. Run again after a crash, a retry or a reclaim, it starts at the
    # saved cursor with the saved sum, so every item counts once in the result. Each run adds
    # the cursor it started at to `runs`, to show where it resumed.
    class SumItems < TaskerWorker::StepHandler
      def call(context)
        count = Integer(context.input(:count) || 10)
        seconds = Float(context.input(:seconds) || 0)
        saved = context.accumulated_results || { "sum" => 0, "items" => [], "runs" => [] }
        cursor = context.checkpoint_cursor || 1
        state = saved.merge("runs" => saved["runs"] + [{ "started_at" => cursor, "attempt" => context.attempt }])
        (cursor..count).each do |item|
          sleep seconds
          state = state.merge("sum" => state["sum"] + item, "items" => state["items"] + [item])
          context.checkpoint(cursor: item + 1, items_processed: item, accumulated: state)
        end
        state.merge("items_processed" => count)
      end
    end

    # tasker-core's style: handles a batch of `batch` items per run and returns a checkpoint
    # yield until it is done; the worker saves each one and runs it again at once (same claim,
    # no new attempt).
    class SumInBatches < TaskerWorker::StepHandler
      def call(context)
        count = Integer(context.input(:count) || 100)
        batch = Integer(context.input(:batch) || 10)
        start = context.checkpoint_cursor || 1
        totals = context.accumulated_results || { "sum" => 0, "runs" => 0 }
        last = [start + batch - 1, count].min
        totals = { "sum" => totals["sum"] + (start..last).sum, "runs" => totals["runs"] + 1 }
        return checkpoint_yield(cursor: last + 1, items_processed: last, accumulated_results: totals) if last < count

        totals.merge("items_processed" => count, "attempt" => context.attempt)
      end
    end
  end
end
