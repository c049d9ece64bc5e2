# frozen_string_literal: true

# Loading the product in a benchmark process: core log lines at warn level go to stderr, so
# stdout carries only the benchmark's own output and its RESULT lines.
require "logger"
require "tasker_worker"
require_relative "common"

TaskerWorker.configure do |c|
  c.logger = Logger.new($stderr)
  c.log_level = :warn
end

module Bench
  module_function

  # A registry with the no-op handler every single-step benchmark template names.
  def noop_registry(&on_call)
    TaskerWorker::HandlerRegistry.new.tap do |registry|
      if on_call
        registry.register("bench_noop") { |context| on_call.call(context) || {} }
      else
        registry.register("bench_noop") { |_context| {} }
      end
    end
  end
end
