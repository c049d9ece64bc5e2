# frozen_string_literal: true

module Examples
  # Squares its input: the task's even_number for a root step, else the sum of the results of
  # the steps listed in its `from` setting (so a join of b and c gives (b + c)^2).
  class Square < TaskerWorker::StepHandler
    def call(context)
      sources = Array(config["from"])
      input = sources.empty? ? context.input(:even_number) : sources.sum { |name| context.dependency_result(name) }
      unless input.is_a?(Integer) && input.even?
        raise TaskerWorker::PermanentError,
              "even_number must be an even Integer"
      end

      input * input
    end
  end
end
