# frozen_string_literal: true

module TaskerWorker
  # Where a framework plugs into the worker and the client (the Railtie sets them all). One of each, nil by default.
  module Hooks
    class << self
      # Runs around every step's handler, given the block to run: `step_wrapper.call { ... }`.
      # Rails: the application's executor, or its reloader where code reloading is on.
      attr_accessor :step_wrapper

      # Called with each Worker as it starts, before its threads (Rails: the pool-size warning).
      attr_accessor :worker_starting

      # Called with a Client by its create_task; returns a connection (answering exec_params)
      # whose open transaction the task should be written in, or nil to create it at once.
      # Rails: the ActiveRecord connection, inside a transaction on the same database.
      attr_accessor :transaction_connection

      # Called with every exception a handler raises (any class) and its StepContext, before the
      # step's failure is committed. Rails >= 7: Rails.error.report (handled, with the step).
      attr_accessor :error_reporter

      def wrap_step(&block)
        step_wrapper ? step_wrapper.call(&block) : yield
      end
    end
  end
end
