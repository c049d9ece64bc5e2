# frozen_string_literal: true

# A peer for the drain (issue 19): the least PostgreSQL work a worker speaking tasker-core's
# protocol (the claim and completion rules in README, "tasker-core's schema") must do per step,
# written as tightly as this project knows how, so that what tasker_worker spends above it
# can be told from what the protocol itself costs. N threads, one connection each; per loop:
#
#   1. the claim, ONE statement, committed asynchronously (as tasker_worker's claim): read up
#      to 20 messages of worker_<ns>_queue under a lease (FOR UPDATE SKIP LOCKED, vt and
#      read_ct, as pgmq.read), retire each step's current transition, insert its `in_progress`
#      transition as the new most recent one, count the attempt on the step (attempts + 1,
#      in_process, last_attempted_at), and read what a handler needs (the step's inputs and
#      name, the task's context);
#   2. the (no-op) handler on each step;
#   3. the result, ONE statement, committed durably: retire the `in_progress` transition while it
#      is still the most recent one (the stale-claim check), insert `enqueued_for_orchestration`,
#      store the results on the step (in_process false), send the step's message to
#      orchestration_step_results with one NOTIFY, and archive the worker message.
#
# What it leaves out, and tasker_worker does: the row locks that keep two claims of one step
# (duplicate messages) from both running, the claim's decisions (readiness, duplicates,
# reclaims, exhausted attempts, malformed messages), the template's step definition and the
# ancestors' results, checkpoints, lease renewal, and batching results across claims. So it is
# a floor, not a worker: a duplicate message here would run its step twice.
# Same database shape and the same enqueued tasks as bench/drain.rb.
#
#   ruby -Ilib bench/peer_protocol_floor.rb [--quick] [--threads 10]
require "time"
require_relative "peer_batched_pgmq"

module Bench
  class ProtocolFloorWorker < BatchedPgmqWorker
    BATCH = 20
    QUEUE_TABLE = "pgmq.q_worker_#{Prepared::NAMESPACE}_queue".freeze
    ARCHIVE_TABLE = "pgmq.a_worker_#{Prepared::NAMESPACE}_queue".freeze

    STATEMENTS = {
      "claim" => <<~SQL,
        WITH m AS (
          UPDATE #{QUEUE_TABLE} q
             SET vt = clock_timestamp() + make_interval(secs => $3), read_ct = q.read_ct + 1
           WHERE q.msg_id = ANY (ARRAY(SELECT c.msg_id FROM #{QUEUE_TABLE} c WHERE c.vt <= clock_timestamp()
                                        ORDER BY c.msg_id LIMIT $1 FOR UPDATE SKIP LOCKED))
          RETURNING q.msg_id, q.message, (q.message ->> 'step_uuid')::uuid AS step_uuid
        ), r AS (
          UPDATE tasker.workflow_step_transitions t
             SET most_recent = false, updated_at = now()
            FROM m
           -- A step in any other state is not claimed (the one decision the floor keeps); its
           -- message still comes back below, without a token, and `read` raises on it.
           WHERE t.workflow_step_uuid = m.step_uuid AND t.most_recent AND t.to_state IN ('pending', 'enqueued')
          RETURNING t.workflow_step_uuid, t.to_state, t.sort_key, m.msg_id, m.message
        ), i AS (
          INSERT INTO tasker.workflow_step_transitions
              (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, metadata, sort_key,
               most_recent, created_at, updated_at)
          SELECT gen_random_uuid(), r.workflow_step_uuid, r.to_state, 'in_progress',
                 jsonb_build_object('event', 'start', 'worker_id', $2::text, 'queue_name', 'worker_#{Prepared::NAMESPACE}_queue',
                                    'msg_id', r.msg_id::text, 'correlation_id', r.message ->> 'correlation_id',
                                    'timestamp', clock_timestamp()),
                 r.sort_key + 1, true, now(), now()
            FROM r
          RETURNING workflow_step_transition_uuid, workflow_step_uuid
        ), s AS (
          UPDATE tasker.workflow_steps ws
             SET attempts = coalesce(ws.attempts, 0) + 1, in_process = true, last_attempted_at = now(), updated_at = now()
            FROM r
           WHERE ws.workflow_step_uuid = r.workflow_step_uuid
          RETURNING ws.workflow_step_uuid, ws.task_uuid, ws.named_step_uuid, ws.inputs
        )
        SELECT m.msg_id, m.message, i.workflow_step_transition_uuid AS token, s.inputs, t.context, ns.name AS step_name
          FROM m
          LEFT JOIN i ON i.workflow_step_uuid = m.step_uuid
          LEFT JOIN s ON s.workflow_step_uuid = m.step_uuid
          LEFT JOIN tasker.tasks t ON t.task_uuid = s.task_uuid
          LEFT JOIN tasker.named_steps ns ON ns.named_step_uuid = s.named_step_uuid
         CROSS JOIN (SELECT set_config('synchronous_commit', 'off', true)) async
      SQL
      "commit" => <<~SQL
        WITH d AS (
          SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::jsonb[], $4::jsonb[]) AS d(token, msg_id, results, message)
        ), r AS (
          UPDATE tasker.workflow_step_transitions t
             SET most_recent = false, updated_at = now()
            FROM d
           WHERE t.workflow_step_transition_uuid = d.token AND t.most_recent
          RETURNING t.workflow_step_uuid, t.sort_key, d.msg_id, d.results, d.message
        ), i AS (
          INSERT INTO tasker.workflow_step_transitions
              (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, metadata, sort_key,
               most_recent, created_at, updated_at)
          SELECT gen_random_uuid(), r.workflow_step_uuid, 'in_progress', 'enqueued_for_orchestration',
                 jsonb_build_object('type', 'EnqueueForOrchestration', 'worker_uuid', $5::text,
                                    'correlation_id', r.message ->> 'correlation_id'),
                 r.sort_key + 1, true, now(), now()
            FROM r
          RETURNING 1
        ), s AS (
          UPDATE tasker.workflow_steps ws
             SET results = r.results, in_process = false, updated_at = now()
            FROM r
           WHERE ws.workflow_step_uuid = r.workflow_step_uuid
          RETURNING 1
        ), sent AS (
          INSERT INTO pgmq.q_orchestration_step_results (vt, message)
          SELECT clock_timestamp(), r.message FROM r
          RETURNING 1
        ), gone AS (
          DELETE FROM #{QUEUE_TABLE} q USING r WHERE q.msg_id = r.msg_id
          RETURNING q.msg_id, q.read_ct, q.enqueued_at, q.vt, q.message
        ), archived AS (
          INSERT INTO #{ARCHIVE_TABLE} (msg_id, read_ct, enqueued_at, vt, message)
          SELECT * FROM gone
          RETURNING 1
        )
        SELECT (SELECT count(*) FROM i) AS committed, (SELECT count(*) FROM archived) AS archived,
               pg_notify('pgmq_message_ready.orchestration', 'floor')
      SQL
    }.freeze

    private

    # Every message read, claimed: one it could not claim fails the run (the thread's error
    # reaches the main thread) instead of staying leased while the drain waits for it.
    def read(conn)
      rows = conn.exec_prepared("claim", [BATCH, "worker_floor", VISIBILITY_TIMEOUT]).to_a
      # Every message the floor reads names a step it enqueued, so each must be claimed: one
      # that was not (its step in another state) would be work the floor skipped and did not
      # pay for, and the run's per-step figures would be wrong. Fail the run instead.
      unclaimed = rows.reject { |row| row["token"] }
      raise "the floor read #{unclaimed.size} message(s) whose step was not pending or enqueued: #{unclaimed.first["message"]}" if unclaimed.any?

      rows
    end

    def process(conn, rows)
      tokens = []
      ids = []
      results = []
      messages = []
      rows.each do |row|
        message = JSON.parse(row["message"])
        result = @handler.call(message)
        tokens << row["token"]
        ids << row["msg_id"]
        results << JSON.generate(step_uuid: message["step_uuid"], success: true, result: result,
                                 metadata: { execution_time_ms: 0, completed_at: Time.now.utc.iso8601(6) })
        messages << JSON.generate(message.slice("task_uuid", "step_uuid", "correlation_id"))
      end
      out = conn.exec_prepared("commit", [@encoder.encode(tokens), @encoder.encode(ids), @encoder.encode(results),
                                          @encoder.encode(messages), "floor"]).first
      raise "the floor committed #{out["committed"]} and archived #{out["archived"]} of #{ids.size}" unless
        out["committed"].to_i == ids.size && out["archived"].to_i == ids.size

      @mutex.synchronize { @done += ids.size }
    end
  end
end

if $PROGRAM_NAME == __FILE__
  threads = Integer(ARGV.each_cons(2).find { |flag, _| flag == "--threads" }&.last || 10)
  Bench::BatchedPgmqPeer.run(Bench.size(:drain_tasks, full: 20_000, quick: 2_000), threads,
                             worker_class: Bench::ProtocolFloorWorker, bench: "peer_protocol_floor")
end
