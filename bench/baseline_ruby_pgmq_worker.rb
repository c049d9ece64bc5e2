# frozen_string_literal: true

# The drain benchmark's baseline: what a competent Ruby developer would write instead of
# tasker_worker — a pure-Ruby PGMQ worker on the `pg` gem, N threads, each with its own
# connection and prepared statements, doing the same protocol per message as the product:
#
#   1. read one message with a visibility timeout:   pgmq.read('worker_<ns>_queue', 30, 1)
#   2. parse it (task_uuid, step_uuid, correlation_id);
#   3. claim, one transaction: lock the step row (reading the task's context and the current
#      transition with it); if the step is `pending`/`enqueued`, retire that transition and
#      insert `in_progress` (sort_key + 1) and count the attempt; otherwise the message is a
#      duplicate and is archived;
#   4. run the (no-op) handler on the task's context;
#   5. complete, one transaction: retire the claim transition (only if it is still current),
#      insert `enqueued_for_orchestration`, write workflow_steps.results,
#      tasker.pgmq_send_with_notify('orchestration_step_results', ...), pgmq.archive(...).
#
# It does not hydrate dependency results or template step definitions (a single-step task has
# none, and it runs one handler), renew leases, batch, or listen for notifications: an empty
# read sleeps 5 ms. Same database shape and the same enqueued tasks as bench/drain.rb.
#
#   ruby -Ilib bench/baseline_ruby_pgmq_worker.rb [--quick] [--threads 10]
#
# The setup (database, template, enqueue) runs in a child process; this process loads only
# `pg` and the standard library while it is measured.
require "pg"
require "json"
require "time"
require_relative "support/common"
require_relative "support/enqueue"
require_relative "support/prepare"
require_relative "support/database"
require_relative "support/cpu"

module Bench
  class BaselineRubyPgmqWorker
    RESULTS_QUEUE = "orchestration_step_results"
    VISIBILITY_TIMEOUT = 30
    EMPTY_SLEEP = 0.005

    STATEMENTS = {
      "read" => "SELECT msg_id, message FROM pgmq.read($1, $2, 1)",
      # The step row is the lock claims and completions agree on; the task's context and the
      # current transition come with it.
      "lock_step" => <<~SQL,
        SELECT tr.workflow_step_transition_uuid, tr.to_state, tr.sort_key, t.context
          FROM tasker.workflow_steps ws
          JOIN tasker.tasks t ON t.task_uuid = ws.task_uuid
          LEFT JOIN tasker.workflow_step_transitions tr
                 ON tr.workflow_step_uuid = ws.workflow_step_uuid AND tr.most_recent
         WHERE ws.workflow_step_uuid = $1
           FOR UPDATE OF ws
      SQL
      "retire" => <<~SQL,
        UPDATE tasker.workflow_step_transitions SET most_recent = false, updated_at = now()
         WHERE workflow_step_transition_uuid = $1 AND most_recent
        RETURNING sort_key
      SQL
      "claim" => <<~SQL,
        WITH inserted AS (
            INSERT INTO tasker.workflow_step_transitions
                (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, metadata, sort_key, most_recent)
            VALUES ($1, $2, $3, 'in_progress', $4, $5, true)
        )
        UPDATE tasker.workflow_steps
           SET attempts = attempts + 1, in_process = true, last_attempted_at = now(), updated_at = now()
         WHERE workflow_step_uuid = $2
        RETURNING attempts
      SQL
      "record" => <<~SQL,
        WITH inserted AS (
            INSERT INTO tasker.workflow_step_transitions
                (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, metadata, sort_key, most_recent)
            VALUES ($1, $2, 'in_progress', 'enqueued_for_orchestration', $3, $4, true)
        )
        UPDATE tasker.workflow_steps SET results = $5, in_process = false, updated_at = now()
         WHERE workflow_step_uuid = $2
      SQL
      "send" => "SELECT tasker.pgmq_send_with_notify($1, $2::jsonb, 0)",
      "archive" => "SELECT pgmq.archive($1, $2::bigint)"
    }.freeze

    attr_reader :done

    def initialize(url, namespace:, threads:, handler:)
      @url = url
      @queue = "worker_#{namespace}_queue"
      @threads = threads
      @handler = handler
      @worker_id = "baseline_#{Process.pid}"
      @done = 0
      @duplicates = 0
      @mutex = Mutex.new
      @stop = false
    end

    def start
      ensure_results_queue
      @pool = Array.new(@threads) { |i| Thread.new { work(i) } }
      self
    end

    def stop
      @stop = true
      @pool&.each(&:join)
    end

    private

    def ensure_results_queue
      conn = PG.connect(@url)
      exists = conn.exec_params("SELECT 1 FROM pgmq.meta WHERE queue_name = $1", [RESULTS_QUEUE]).ntuples.positive?
      conn.exec_params("SELECT pgmq.create($1)", [RESULTS_QUEUE]) unless exists
    ensure
      conn&.close
    end

    def work(index)
      Thread.current.name = "baseline.#{index}"
      conn = PG.connect(@url)
      STATEMENTS.each { |name, sql| conn.prepare(name, sql) }
      until @stop
        rows = conn.exec_prepared("read", [@queue, VISIBILITY_TIMEOUT])
        if rows.ntuples.zero?
          sleep EMPTY_SLEEP
          next
        end
        process(conn, Integer(rows.getvalue(0, 0)), JSON.parse(rows.getvalue(0, 1)))
      end
    ensure
      conn&.close
    end

    def process(conn, msg_id, message)
      claim = claim(conn, msg_id, message)
      return unless claim

      started_at = Time.now.utc
      result = @handler.call(claim[:context])
      complete(conn, msg_id, message, claim, result, started_at)
    end

    def claim(conn, msg_id, message)
      step_uuid = message.fetch("step_uuid")
      conn.transaction do
        current = conn.exec_prepared("lock_step", [step_uuid]).first
        if current && %w[pending enqueued].include?(current["to_state"])
          claim_current(conn, msg_id, message, current)
        else
          conn.exec_prepared("archive", [@queue, msg_id]) if current
          @mutex.synchronize { @duplicates += 1 }
          nil
        end
      end
    end

    def claim_current(conn, msg_id, message, current)
      conn.exec_prepared("retire", [current["workflow_step_transition_uuid"]])
      token = Enqueue.uuid_v7
      sort_key = Integer(current["sort_key"]) + 1
      metadata = { event: "start", worker_id: @worker_id, queue_name: @queue, msg_id: msg_id.to_s,
                   correlation_id: message["correlation_id"], timestamp: Time.now.utc.iso8601(6) }
      conn.exec_prepared("claim",
                         [token, message.fetch("step_uuid"), current["to_state"], JSON.generate(metadata), sort_key])
      { token: token, sort_key: sort_key, context: JSON.parse(current["context"] || "{}") }
    end

    def complete(conn, msg_id, message, claim, result, started_at)
      step_uuid = message.fetch("step_uuid")
      completed_at = Time.now.utc
      elapsed_ms = ((completed_at - started_at) * 1000).round
      results = { step_uuid: step_uuid, success: true, result: result, status: "completed",
                  metadata: { execution_time_ms: elapsed_ms, retryable: true, started_at: started_at.iso8601(6),
                              completed_at: completed_at.iso8601(6), worker_id: @worker_id, custom: {}, context: {} },
                  error: nil, orchestration_metadata: nil }
      metadata = { event: "enqueue_for_orchestration", worker_id: @worker_id, claim: claim[:token], success: true,
                   execution_time_ms: elapsed_ms, timestamp: completed_at.iso8601(6) }
      committed = conn.transaction do
        # A stale claim (the step was reclaimed meanwhile) writes nothing.
        next false if conn.exec_prepared("retire", [claim[:token]]).ntuples.zero?

        conn.exec_prepared("record", [Enqueue.uuid_v7, step_uuid, JSON.generate(metadata), claim[:sort_key] + 1,
                                      JSON.generate(results)])
        conn.exec_prepared("send",
                           [RESULTS_QUEUE, JSON.generate(message.slice("task_uuid", "step_uuid", "correlation_id"))])
        conn.exec_prepared("archive", [@queue, msg_id])
        true
      end
      @mutex.synchronize { @done += 1 } if committed
    end
  end

  module Baseline
    module_function

    def run(tasks, threads)
      Prepared.database(tasks) do |url|
        sync = ThrowawayDatabase.setting(url, "synchronous_commit")
        worker = BaselineRubyPgmqWorker.new(url, namespace: Prepared::NAMESPACE, threads: threads,
                                                 handler: ->(_context) { {} })
        cpu_before = Cpu.snapshot(url)
        started = Bench.now
        worker.start
        Bench.wait_until(timeout: 3600, interval: 0.05, what: "#{tasks} steps") { worker.done >= tasks }
        seconds = Bench.now - started
        cpu = Cpu.per_step(cpu_before, Cpu.snapshot(url), worker.done)
        worker.stop
        committed = ThrowawayDatabase.committed_steps(url)
        raise "only #{committed} of #{tasks} steps reached enqueued_for_orchestration" if committed < tasks

        Bench.log(format("%d threads: %d steps in %.2f s = %.1f steps/s (synchronous_commit=%s)",
                         threads, worker.done, seconds, worker.done / seconds, sync))
        Bench.log("  CPU µs per step: #{cpu}")
        Bench.result(bench: "baseline_ruby_pgmq_worker", threads: threads, steps: worker.done,
                     seconds: seconds.round(3), steps_per_s: (worker.done / seconds).round(1),
                     synchronous_commit: sync, cpu_us_per_step: cpu, quick: Bench.quick?)
      end
    end
  end
end

if $PROGRAM_NAME == __FILE__
  threads = Integer(ARGV.each_cons(2).find { |flag, _| flag == "--threads" }&.last || 10)
  Bench::Baseline.run(Bench.size(:drain_tasks, full: 20_000, quick: 2_000), threads)
end
