# frozen_string_literal: true

# What one claim costs by its size (a diagnostic, not in bin/bench's report): one client calls
# tasker.worker_claim_next back to back on a database holding TASKS enqueued no-op steps, with
# no worker and nothing else running, for batches of 1, 5, 10, 20 and 40 messages; prints the
# median time per call and per message (the first 10 calls of each size are left out). The
# claims are never committed as results: each call takes new messages, and after it (untimed)
# the messages it read are deleted, as a worker's commit archives them. Left in the queue,
# leased, they would sit ahead of every later read, which walks past them in msg_id order: the
# cost per call grew with the calls made before it (session 12's numbers had that in them).
#
#   ruby -Ilib bench/claim_cost.rb [TASKS]    # default 20000 (enough for every size's 60 calls)
require "pg"
require "securerandom"
require_relative "support/prepare"

module Bench
  module ClaimCost
    SIZES = [1, 5, 10, 20, 40].freeze
    CALLS = 60
    WARMUP = 10
    QUEUE = "worker_#{Prepared::NAMESPACE}_queue".freeze

    module_function

    def run(tasks)
      needed = SIZES.sum * CALLS
      raise ArgumentError, "#{tasks} tasks are fewer than the #{needed} the calls read" if tasks < needed

      Prepared.database(tasks) do |url|
        conn = PG.connect(url)
        rows = SIZES.map { |qty| measure(conn, qty) }
        conn.close
        rows.each { |r| log(format("qty %3d: %.3f ms per call, %.1f us per message", r[:qty], r[:ms], r[:us_per_message])) }
        result(bench: "claim_cost", sizes: rows)
      end
    end

    def measure(conn, qty)
      times = Array.new(CALLS) do
        tokens = "{#{Array.new(qty) { SecureRandom.uuid }.join(",")}}"
        started = Bench.now
        ids = conn.exec_params("SELECT msg_id FROM tasker.worker_claim_next($1, 'bench_claim_cost', $2, 30, $3)",
                               [QUEUE, qty, tokens]).column_values(0)
        elapsed = (Bench.now - started) * 1000
        raise "a claim of #{qty} read #{ids.size} messages: the queue ran short" if ids.size < qty

        conn.exec_params("DELETE FROM pgmq.q_#{QUEUE} WHERE msg_id = ANY($1::bigint[])", ["{#{ids.join(",")}}"])
        elapsed
      end
      ms = Bench.median(times.drop(WARMUP))
      { qty: qty, ms: ms.round(3), us_per_message: (ms * 1000 / qty).round(1) }
    end

    def log(message) = Bench.log(message)
    def result(fields) = Bench.result(fields)
  end
end

Bench::ClaimCost.run(Integer(ARGV.first || 20_000)) if $PROGRAM_NAME == __FILE__
