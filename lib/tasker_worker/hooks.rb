# frozen_string_literal: true

module TaskerWorker
  # Where a framework plugs into the worker (the Railtie sets both). One of each, nil by default.
  module Hooks
    class << self
      # Runs around every step's handler, given the block to run: `step_wrapper.call { ... }`.
      # Rails: the application's executor, or its reloader where code reloading is on.
      attr_accessor :step_wrapper

      # Called with each Worker as it starts, before its threads (Rails: the pool-size warning).
      attr_accessor :worker_starting

      def wrap_step(&block)
        step_wrapper ? step_wrapper.call(&block) : yield
      end
    end
  end
end
