# frozen_string_literal: true

require "json"

module TaskerWorker
  module Testing
    # The outcome of Testing.run_task: the task's state ("complete", or "blocked_by_failures" as
    # the orchestrator leaves a task with a step in error) and each step's
    # state ("complete", "error", or tasker's "pending", the state of a step that never ran
    # because a parent did not complete), attempts and
    # Outcome (nil for a step that never ran).
    TaskOutcome = Struct.new(:state, :steps, keyword_init: true) do
      def complete? = state == "complete"
      def step(name) = steps.fetch(name.to_s)
      # A completed step's result, as its children read it.
      def result(name) = step(name).outcome&.result
    end

    StepRun = Struct.new(:state, :attempts, :outcome, keyword_init: true)

    # Runs a template's steps in this process in dependency order, each the way Testing.run
    # runs a handler (resolution, result mapping, the JSON check), each given its ancestors'
    # results. A retryable failure is run again at once, up to the step's max_attempts; a step
    # whose parent did not complete never runs. Nothing is written to the tasker tables and no
    # worker, queue or orchestrator is involved; handlers use whatever database they use.
    class TaskRun
      # Step types whose outcome makes the orchestrator create steps at run time.
      DYNAMIC_TYPES = %w[decision deferred_convergence batchable batch_worker].freeze

      def initialize(template, context)
        dynamic = template.fetch("steps").select { |step| DYNAMIC_TYPES.include?(step["type"] || step["step_type"]) }
        unless dynamic.empty?
          raise ConfigurationError, "run_task runs static workflows only; #{template["name"]} has dynamic steps " \
                                    "(#{dynamic.map { |s| s["name"] }.join(", ")}): test their handlers with " \
                                    "Testing.run, and the workflow with a worker and the embedded orchestrator"
        end
        @template = template
        @context = context
        @steps = template.fetch("steps").to_h { |step| [step.fetch("name"), step] }
      end

      def run
        runs = {}
        in_dependency_order.each { |name| runs[name] = run_step(@steps.fetch(name), runs) }
        TaskOutcome.new(state: runs.values.all? { |r| r.state == "complete" } ? "complete" : "blocked_by_failures",
                        steps: runs)
      end

      private

      def run_step(step, runs)
        parents = step.fetch("dependencies")
        # "pending" is the step state name (a step not run), as the orchestrator leaves it.
        return StepRun.new(state: "pending", attempts: 0, outcome: nil) unless parents.all? { |p| runs[p].state == "complete" }

        retry_policy = step.fetch("retry") # the core filled in every default
        max_attempts = retry_policy.fetch("max_attempts")
        attempt = 0
        loop do
          attempt += 1
          outcome = attempt_step(step, runs, attempt, max_attempts)
          again = outcome.failure? && outcome.retryable? && retry_policy.fetch("retryable") && attempt < max_attempts
          return StepRun.new(state: outcome.success? ? "complete" : "error", attempts: attempt, outcome: outcome) unless again
        end
      end

      def attempt_step(step, runs, attempt, max_attempts)
        handler = step.fetch("handler")
        Testing.run(handler.fetch("callable"), context: @context, config: handler["initialization"] || {},
                                               dependency_results: ancestor_results(step.fetch("name"), runs),
                                               attempt: attempt, max_attempts: max_attempts, step_name: step.fetch("name"))
      end

      # Every ancestor's result, by step name (the worker hands a step all of them).
      def ancestor_results(name, runs)
        seen = {}
        to_visit = @steps.fetch(name).fetch("dependencies").dup
        until to_visit.empty?
          parent = to_visit.shift
          next if seen.key?(parent)

          seen[parent] = runs.fetch(parent).outcome.result
          to_visit.concat(@steps.fetch(parent).fetch("dependencies"))
        end
        seen
      end

      # The core has refused cycles and unknown dependencies; this only orders.
      def in_dependency_order
        done = []
        until done.size == @steps.size
          ready = @steps.keys.find { |n| !done.include?(n) && @steps[n].fetch("dependencies").all? { |d| done.include?(d) } }
          done << ready
        end
        done
      end
    end
  end
end
