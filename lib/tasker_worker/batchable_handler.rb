# frozen_string_literal: true

module TaskerWorker
  # Splitting work into batches for BatchableHandler (also usable from a block handler):
  # each batch is a cursor Hash in tasker-core's shape,
  # `{"batch_id" => "001", "start_cursor" => 0, "end_cursor" => 500, "batch_size" => 500}`
  # (start inclusive, end exclusive).
  module Batches
    module_function

    # `total` items (0...total) in `workers` batches of near-equal size, or in batches of
    # `batch_size` items. Zero items give no batches.
    def split(total, workers: nil, batch_size: nil)
      raise ArgumentError, "total must be an Integer >= 0, got #{total.inspect}" unless total.is_a?(Integer) && total >= 0
      raise ArgumentError, "give workers: or batch_size:, not both" if workers && batch_size

      per = per_batch(total, workers, batch_size)
      return [] if total.zero?

      (0...total).step(per).map { |start| [start, [start + per, total].min] }
                 .each_with_index.map { |(from, to), i| cursor(i, from, to, to - from) }
    end

    # The cursors for what a BatchableHandler#batches returned: an Array of Integer Ranges
    # (`0...500`) or cursor Hashes (`start_cursor:`, `end_cursor:`, with `batch_size:` unless
    # both cursors are Integers, and an optional `batch_id:`).
    def cursors(batches)
      unless batches.is_a?(Array)
        invalid!("#batches must return an Array of Ranges or cursor Hashes (or nil / [] for none), " \
                 "got #{batches.inspect}")
      end
      list = batches.each_with_index.map { |batch, i| from_batch(batch, i) }
      ids = list.map { |c| c["batch_id"] }
      invalid!("batch ids must be unique, got #{ids.inspect}") unless ids.uniq.size == ids.size
      list
    end

    def per_batch(total, workers, batch_size)
      if workers
        raise ArgumentError, "workers must be an Integer >= 1, got #{workers.inspect}" unless positive?(workers)

        [(total + workers - 1) / workers, 1].max
      elsif batch_size
        raise ArgumentError, "batch_size must be an Integer >= 1, got #{batch_size.inspect}" unless positive?(batch_size)

        batch_size
      else
        raise ArgumentError, "split needs workers: or batch_size:"
      end
    end

    def from_batch(batch, index)
      case batch
      when Range then from_range(batch, index)
      when Hash then from_hash(batch.transform_keys(&:to_s), index)
      else invalid!("batch #{index + 1} must be a Range or a cursor Hash, got #{batch.inspect}")
      end
    end

    def from_range(range, index)
      from = range.begin
      to = range.end
      invalid!("batch #{index + 1}: a Range batch needs Integer ends, got #{range.inspect}") unless from.is_a?(Integer) && to.is_a?(Integer)
      to += 1 unless range.exclude_end?
      invalid!("batch #{index + 1}: #{range.inspect} is empty or reversed") if to <= from
      cursor(index, from, to, to - from)
    end

    def from_hash(hash, index)
      unknown = hash.keys - %w[batch_id start_cursor end_cursor batch_size]
      invalid!("batch #{index + 1}: unknown key(s) #{unknown.join(", ")}") unless unknown.empty?
      invalid!("batch #{index + 1}: a cursor Hash needs start_cursor and end_cursor") unless hash.key?("start_cursor") && hash.key?("end_cursor")
      from = hash["start_cursor"]
      to = hash["end_cursor"]
      size = hash.fetch("batch_size") { to - from if from.is_a?(Integer) && to.is_a?(Integer) }
      unless size.is_a?(Integer) && size >= 0
        invalid!("batch #{index + 1}: batch_size must be an Integer >= 0 (required unless both cursors are " \
                 "Integers), got #{size.inspect}")
      end
      cursor(index, from, to, size, hash["batch_id"])
    end

    def cursor(index, from, to, size, id = nil)
      id = format("%03d", index + 1) if id.nil?
      { "batch_id" => id.to_s, "start_cursor" => from, "end_cursor" => to, "batch_size" => size }
    end

    def positive?(value) = value.is_a?(Integer) && value >= 1

    def invalid!(why)
      raise PermanentError.new("invalid batches: #{why}", error_code: "invalid_batch_outcome")
    end

    private_class_method :per_batch, :from_batch, :from_range, :from_hash, :cursor, :positive?, :invalid!
  end

  # The handler of a batchable step (template `type: batchable`): it looks at the work and splits
  # it into batches; the orchestrator then creates one batch worker step per batch (named
  # `<worker template>_<batch id>`, each given its cursor) and, once every worker is complete,
  # runs the `deferred_convergence` step that depends on the worker template.
  #
  #   class ScanInventory < TaskerWorker::BatchableHandler
  #     worker_template "scan_slice"          # or handler.initialization.worker_template_name
  #
  #     def batches(context)
  #       split(Sku.where(store: context.input(:store)).count, workers: 4)
  #     end
  #   end
  #
  # #batches returns an Array of batches (Integer Ranges such as `0...500`, or cursor Hashes
  # with `start_cursor:` / `end_cursor:` of any JSON value and `batch_size:`), or nil / [] for
  # no batches (the orchestrator then creates one no-op worker, `<template>_000`, so the
  # convergence step still runs). #batches_of and #no_batches add result data. The stored
  # result carries `batch_processing_outcome` in tasker-core's shape.
  class BatchableHandler < StepHandler
    OUTCOME_KEY = "batch_processing_outcome"

    class << self
      # The `batch_worker` step of the template the batches are run by.
      def worker_template(name = nil)
        return @worker_template || (superclass.worker_template if superclass.respond_to?(:worker_template)) if name.nil?

        raise ConfigurationError, "worker_template must be a non-empty String" if name.to_s.strip.empty?

        @worker_template = name.to_s
      end

      # `register("Scan", TaskerWorker::BatchableHandler) { |context| ... }`: the block is
      # #batches.
      def hook = :batches
    end

    # What #batches returned, made into the step's result.
    Outcome = Struct.new(:cursors, :total_items, :result) do
      def to_success(worker_template)
        if cursors.empty?
          outcome = { "type" => "no_batches" }
          data = { OUTCOME_KEY => outcome }
        else
          outcome = { "type" => "create_batches", "worker_template_name" => worker_template,
                      "worker_count" => cursors.size, "total_items" => total_items, "cursor_configs" => cursors }
          data = { OUTCOME_KEY => outcome, "worker_count" => cursors.size, "total_items" => total_items }
        end
        Success.new(result: result.merge(data),
                    metadata: { "batchable" => true, "outcome_type" => outcome["type"],
                                "worker_count" => cursors.size })
      end
    end

    def call(context)
      outcome = batches(context)
      outcome = batches_of(outcome) unless outcome.is_a?(Outcome)
      outcome.to_success(outcome.cursors.empty? ? nil : worker_template_name(context))
    end

    def batches(_context)
      raise PermanentError, "#{self.class.name || self.class} must implement #batches(context)"
    end

    def split(total, workers: nil, batch_size: nil) = Batches.split(total, workers: workers, batch_size: batch_size)

    # `total_items` defaults to the sum of the batches' sizes.
    def batches_of(batches, total_items: nil, result: {})
      StepHandler.require_hash!(:result, result)
      cursors = batches.nil? ? [] : Batches.cursors(batches)
      total = total_items.nil? ? cursors.sum { |c| c["batch_size"] } : total_items
      raise ArgumentError, "total_items must be an Integer >= 0, got #{total.inspect}" unless total.is_a?(Integer) && total >= 0

      Outcome.new(cursors, total, result.transform_keys(&:to_s))
    end

    def no_batches(reason: nil, result: {})
      result = result.merge("reason" => reason) if reason
      batches_of(nil, result: result)
    end

    private

    def worker_template_name(context)
      name = self.class.worker_template || config["worker_template_name"] ||
             context.config["worker_template_name"]
      return name.to_s unless name.to_s.strip.empty?

      raise PermanentError.new("#{self.class.name || "this batchable handler"} has no worker template: declare " \
                               "`worker_template \"name\"` in the class or set handler.initialization." \
                               "worker_template_name in the step's template", error_code: "invalid_batch_outcome")
    end
  end
end
