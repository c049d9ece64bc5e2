# frozen_string_literal: true

require "json"
require "tasker_worker"
require_relative "testing/task_run"

module TaskerWorker
  # Runs one handler in a spec, without a database or a worker: it resolves, calls and maps
  # the handler the way the worker does, including the JSON check the core makes when it
  # stores the result. Load it with `require "tasker_worker/testing"`.
  #
  #   outcome = TaskerWorker::Testing.run(ChargeCard, context: { order: { total: 10 } })
  #   expect(outcome).to be_success
  #   expect(outcome.result).to eq(charge_id: "ch_1")
  module Testing
    # The completion the handler produced, with readers for specs.
    class Outcome
      attr_reader :completion

      def initialize(completion)
        @completion = completion
        freeze
      end

      def success? = completion[:success]
      def failure? = !success?
      def result = completion[:result]
      def metadata = completion[:metadata]
      # message, error_type, retryable, error_class, backtrace, retry_after, error_code, context.
      def error = completion[:error]
      def retryable? = error ? error[:retryable] : false
      def error_type = error&.fetch(:error_type)
      def message = error&.fetch(:message)

      def inspect
        details = success? ? "result=#{result.inspect}" : "#{error_type}: #{message}"
        "#<#{self.class.name} #{success? ? "success" : "failure"} #{details}>"
      end
    end

    UNDER_TEST = "handler_under_test"
    private_constant :UNDER_TEST

    module_function

    # `handler` is a handler class, an instance or another callable, or a callable name
    # resolved by TaskerWorker.handler_registry; or give a block. `context` is the task's
    # input and `dependency_results` the ancestors' handler results, by step name.
    # `checkpoint` is a saved checkpoint to start from (as a retried or reclaimed step would);
    # a returned StepHandler#checkpoint_yield is kept in the context and the handler runs again,
    # as on a worker (up to the configured `worker.checkpoints.max_yields_per_claim` times, then
    # the step fails as `checkpoint_yield_limit`).
    def run(handler = nil, context: {}, dependency_results: {}, config: {}, attempt: 1, max_attempts: 3,
            step_name: "step", inputs: {}, checkpoint: nil, &block)
      callable = handler || block
      raise ArgumentError, "pass a handler or a block" unless callable

      step = StepContext.build(task_context: context, inputs: inputs, step_name: step_name, attempts: attempt,
                               max_attempts: max_attempts, dependency_results: stored_results(dependency_results),
                               handler: { callable: callable_name(callable), initialization: config },
                               checkpoint: checkpoint)
      Outcome.new(checked(ResultMapper.capture { run_yielding(callable, step) }))
    end

    def run_yielding(callable, step)
      max_yields = TaskerWorker.configuration.effective.dig(:worker, :checkpoints, :max_yields_per_claim)
      (max_yields + 1).times do
        value = resolve(callable, step.config).call(step)
        return value unless value.is_a?(StepHandler::CheckpointYield)

        step.yield_checkpoint(value)
      end
      StepHandler::Failure.new(message: "Checkpoint yield failed: more than #{max_yields} yields " \
                                        "(worker.checkpoints.max_yields_per_claim)",
                               error_type: "checkpoint_yield_limit", retryable: true)
    end

    # Runs a whole task from its template in this process, step by step (TaskRun says how),
    # and returns a TaskOutcome. The template is found in `templates` (a directory of YAML
    # templates, default config/tasks) by namespace and name (and version, when several).
    #
    #   task = TaskerWorker::Testing.run_task(namespace: "orders", name: "fulfill", context: { order_id: 7 })
    #   expect(task).to be_complete
    #   expect(task.result(:ship)).to include("tracking" => String)
    def run_task(namespace:, name:, context: {}, version: nil, templates: "config/tasks")
      TaskRun.new(find_template(templates, namespace.to_s, name.to_s, version&.to_s), context).run
    end

    def find_template(dir, namespace, name, version)
      files = Dir[File.join(dir, "*.{yml,yaml}")]
      raise ConfigurationError, "no task templates (*.yml, *.yaml) in #{dir}" if files.empty?

      found = files.map { |path| JSON.parse(Native.parse_template(File.read(path), path)) }.select do |t|
        t["namespace_name"] == namespace && t["name"] == name && (version.nil? || t["version"] == version)
      end
      return found.first if found.size == 1

      wanted = "#{namespace}/#{name}#{"@#{version}" if version}"
      raise ConfigurationError, "no task template #{wanted} in #{dir}" if found.empty?

      raise ConfigurationError, "#{found.size} templates #{wanted} in #{dir} (versions #{found.map { |t| t["version"] }.join(", ")}): pass version:"
    end

    # Built the way the worker builds handlers: through a registry, a new instance per run.
    def resolve(callable, config)
      return TaskerWorker.handler_registry.resolve(callable, config: config) if callable.is_a?(String)

      HandlerRegistry.new.register(UNDER_TEST, callable).resolve(UNDER_TEST, config: config)
    end

    # The core stores each ancestor's whole result; handlers read its "result".
    def stored_results(results)
      results.to_h { |name, result| [name.to_s, { "success" => true, "result" => result }] }
    end

    def callable_name(callable)
      callable.is_a?(Module) ? callable.name : callable.to_s
    end

    # The core refuses what JSON cannot hold, and what is over its limits (depth, size).
    # JSON.generate alone would quietly turn any object into its to_s, so the structure is
    # checked first.
    def checked(completion)
      problem = %i[result metadata].lazy.filter_map { |part| JsonCheck.problem(completion[part], part.to_s) }.first ||
                JsonCheck.problem(completion.dig(:error, :context), "error context")
      problem ||= JsonCheck.too_large(completion[:result], "result")
      problem ? ResultMapper.invalid_result(problem) : as_stored(completion)
    rescue JSON::JSONError => e
      ResultMapper.invalid_result(e)
    end

    # What the core stores, and so what a child step and the task's readers see: the result,
    # metadata and error context through JSON (Symbol keys become Strings, Symbols Strings).
    def as_stored(completion)
      stored = ->(value) { JSON.parse(JSON.generate(value)) }
      completion.merge(result: stored.call(completion[:result]), metadata: stored.call(completion[:metadata]))
                .tap { |c| c[:error] = c[:error].merge(context: stored.call(c[:error][:context])) if c[:error]&.key?(:context) }
    end

    private_class_method :run_yielding, :resolve, :stored_results, :callable_name, :checked, :as_stored, :find_template

    # Finds the first value JSON cannot represent, and says where it is.
    module JsonCheck
      SCALARS = [NilClass, TrueClass, FalseClass, String, Symbol, Integer].freeze

      module_function

      # `depth`: the Hashes and Arrays around `value`; past the core's limit the walk stops
      # (so a self-referencing Array is refused, not a SystemStackError).
      def problem(value, path, depth = 0)
        case value
        when *SCALARS then nil
        when Float then value.finite? ? nil : "#{path} is #{value}, which JSON cannot represent"
        when Array, Hash then container_problem(value, path, depth + 1)
        else "#{path} is #{value.class.name || value.class.inspect} #{value.inspect[0, 80]}, which has no JSON form"
        end
      end

      def container_problem(value, path, depth)
        limit = Native::MAX_JSON_DEPTH
        return "#{path} nests deeper than #{limit} levels of Hashes and Arrays (the limit)" if depth > limit

        value.is_a?(Array) ? array_problem(value, path, depth) : hash_problem(value, path, depth)
      end

      def array_problem(array, path, depth)
        array.each_with_index.lazy.filter_map { |item, index| problem(item, "#{path}[#{index}]", depth) }.first
      end

      def hash_problem(hash, path, depth)
        hash.lazy.filter_map do |key, item|
          next "#{path} has the key #{key.inspect}; JSON keys are strings" unless key.is_a?(String) || key.is_a?(Symbol)

          problem(item, "#{path}[#{key.inspect}]", depth)
        end.first
      end

      def too_large(value, path)
        bytes = JSON.generate(value, max_nesting: false).bytesize
        "#{path} is #{bytes} bytes of JSON; the limit is #{Native::MAX_JSON_BYTES} bytes" if bytes > Native::MAX_JSON_BYTES
      end
    end
  end
end
