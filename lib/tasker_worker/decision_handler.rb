# frozen_string_literal: true

module TaskerWorker
  # The handler of a decision point (a template step with `type: decision`): it chooses, at run
  # time, which of the steps that depend on it the orchestrator creates. A subclass implements
  # #decide(context) and returns the names of the steps to create: a String, an Array of
  # Strings, or nil / [] to create none. Steps not chosen never exist, so they never block the
  # task; a `deferred_convergence` step below the branches runs once the chosen ones are done.
  #
  #   class Classify < TaskerWorker::DecisionHandler
  #     def decide(context)
  #       context.input(:amount) > 1_000 ? "committee" : "fast_track"
  #     end
  #   end
  #
  # #route and #no_branches add result data next to the outcome:
  # `route("committee", result: { score: 0.4 })`. The stored result carries
  # `decision_point_outcome` in tasker-core's shape, so tasker-core's orchestrator reads it too:
  # `{"type":"create_steps","step_names":[...]}` or `{"type":"no_branches"}`.
  # Anything else returned (a Hash, a number, an empty name) fails the step for good: a
  # decision that cannot be read would be the same on every retry.
  class DecisionHandler < StepHandler
    OUTCOME_KEY = "decision_point_outcome"

    # What #decide returned, made into the step's result.
    Decision = Struct.new(:step_names, :result) do
      def to_success
        outcome = if step_names.empty?
                    { "type" => "no_branches" }
                  else
                    { "type" => "create_steps", "step_names" => step_names }
                  end
        Success.new(result: result.merge(OUTCOME_KEY => outcome),
                    metadata: { "decision_point" => true, "outcome_type" => outcome["type"],
                                "branches_created" => step_names.size })
      end
    end

    # `register("Classify", TaskerWorker::DecisionHandler) { |context| ... }`: the block is
    # #decide.
    def self.hook = :decide

    # Builds the Decision for `names` (what #decide may return); raises PermanentError with
    # error_code "invalid_decision_outcome" for anything that is not step names.
    def self.decision(names, result: {})
      StepHandler.require_hash!(:result, result)
      invalid!("the result data must not carry its own #{OUTCOME_KEY}") if result.key?(OUTCOME_KEY) || result.key?(OUTCOME_KEY.to_sym)
      Decision.new(step_names(names), result.transform_keys(&:to_s))
    end

    def self.step_names(names)
      list = case names
             when nil then []
             when String, Symbol then [names]
             when Array then names.flatten
             else invalid!("#decide must return step names (a String, an Array of Strings or nil), " \
                           "got #{names.inspect}")
             end
      list.map do |name|
        invalid!("step names must be non-empty Strings, got #{name.inspect}") unless (name.is_a?(String) || name.is_a?(Symbol)) && !name.to_s.strip.empty?
        name.to_s
      end.uniq
    end

    def self.invalid!(why)
      raise PermanentError.new("invalid decision: #{why}", error_code: "invalid_decision_outcome")
    end
    private_class_method :step_names, :invalid!

    def call(context)
      decided = decide(context)
      decided = DecisionHandler.decision(decided) unless decided.is_a?(Decision)
      decided.to_success
    end

    def decide(_context)
      raise PermanentError, "#{self.class.name || self.class} must implement #decide(context)"
    end

    # Create these steps (names of the decision's dependent steps in the template).
    def route(*step_names, result: {})
      DecisionHandler.decision(step_names, result: result)
    end

    # Create none of the branches.
    def no_branches(result: {})
      DecisionHandler.decision(nil, result: result)
    end
  end
end
