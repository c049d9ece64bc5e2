# frozen_string_literal: true

# Handlers of the dynamic sample workflows: a decision point (tasks/expense_review.yaml) and a
# batch fan-out (tasks/inventory_scan.yaml).
module Examples
  module Expenses
    class Intake < TaskerWorker::StepHandler
      def call(context) = { "amount" => context.input(:amount), "by" => context.input(:employee) }
    end

    # Chooses the path: only the chosen step is created.
    class Classify < TaskerWorker::DecisionHandler
      def decide(context)
        amount = context.dependency_result(:intake)["amount"]
        route(amount > config.fetch("committee_over") ? "committee" : "fast_track", result: { "amount" => amount })
      end
    end

    class Approve < TaskerWorker::StepHandler
      def call(_context) = { "approved_by" => "policy", "path" => "fast_track" }
    end

    class Committee < TaskerWorker::StepHandler
      def call(_context) = { "approved_by" => "committee", "path" => "committee" }
    end

    # Runs once, after whichever branch was created.
    class CloseOut < TaskerWorker::StepHandler
      def call(context)
        branch = context.dependency_result(:committee) || context.dependency_result(:fast_track)
        { "closed" => true, "path" => branch["path"], "amount" => context.dependency_result(:classify)["amount"] }
      end
    end
  end

  module Inventory
    # The task's `rows` (0...rows) in up to `workers` batches; no rows, no batches.
    class CountRows < TaskerWorker::BatchableHandler
      def batches(context) = split(context.input(:rows), workers: config.fetch("workers"))
    end

    class SumSlice < TaskerWorker::BatchWorkerHandler
      def process(batch, _context) = { "sum" => batch.range.sum, "rows" => batch.size }
    end

    # Every worker's sum: 0 when there were no rows (the no-op worker is left out).
    class Total < TaskerWorker::StepHandler
      def call(context)
        slices = context.batch_results(:sum_slice)
        { "total" => slices.values.sum { |r| r["sum"] }, "rows" => slices.values.sum { |r| r["rows"] },
          "workers" => slices.size }
      end
    end
  end
end
