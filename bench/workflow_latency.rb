# frozen_string_literal: true

# Workflow latency: 4-step linear and diamond workflows (examples/tasks, handlers in
# examples/handlers) through one worker process with the embedded orchestrator
# (`orchestrate: true`, concurrency 10). Tasks are submitted one at a time, alternating the
# two shapes, each after the previous has settled, so latency never includes queueing.
#
# Two clocks: the database's (tasks.created_at -> tasks.completed_at, each the start of its
# transaction: the primary number) and this process's monotonic clock, from right before
# create_task until the orchestrator's completed-task counter moves (polled every 1 ms).
# Also a per-step breakdown from the transition timestamps.
#
#   ruby -Ilib bench/workflow_latency.rb [--quick]
require_relative "support/worker_setup"
require_relative "support/database"
Dir[File.join(Bench::ROOT, "examples/handlers/*.rb")].sort.each { |f| require f }

module Bench
  module WorkflowLatency
    SHAPES = {
      "linear" => { namespace: "linear_workflow", name: "mathematical_sequence", last: "linear_step_4",
                    result: 65_536 },
      "diamond" => { namespace: "diamond_workflow", name: "parallel_computation", last: "diamond_end", result: 1_024 }
    }.freeze
    CONCURRENCY = 10

    module_function

    def run(per_shape)
      ThrowawayDatabase.with do |url|
        worker = TaskerWorker::Worker.new(registry: TaskerWorker::HandlerRegistry.new, orchestrate: true,
                                          templates_path: File.join(Bench::ROOT, "examples/tasks"),
                                          concurrency: CONCURRENCY, namespaces: SHAPES.values.map { |s| s[:namespace] },
                                          database_url: url).start
        begin
          client = TaskerWorker::Client.for(url)
          2.times { SHAPES.each_value { |shape| settle(client, worker, shape) } } # warm-up, not recorded
          wall = Hash.new { |h, k| h[k] = [] }
          uuids = Hash.new { |h, k| h[k] = [] }
          per_shape.times do
            SHAPES.each do |label, shape|
              uuid, seconds = settle(client, worker, shape)
              uuids[label] << uuid
              wall[label] << seconds * 1000
            end
          end
          report(url, client, worker, uuids, wall)
        ensure
          worker.stop(timeout: 10)
        end
      end
    end

    # Creates one task and returns [uuid, seconds until the orchestrator settled it].
    def settle(client, worker, shape)
      settled = settled_count(worker)
      started = Bench.now
      uuid = client.create_task(namespace: shape[:namespace], name: shape[:name], context: { even_number: 2 })
      deadline = started + 30
      sleep 0.001 while settled_count(worker) == settled && Bench.now < deadline
      seconds = Bench.now - started
      raise "task #{uuid} did not settle within 30 s" if settled_count(worker) == settled

      [uuid, seconds]
    end

    def settled_count(worker)
      counts = worker.status[:orchestrator]
      counts[:tasks_completed] + counts[:tasks_failed]
    end

    def report(url, client, worker, uuids, wall)
      conn = PG.connect(url)
      fields = { bench: "workflow_latency", concurrency: CONCURRENCY }
      SHAPES.each do |label, shape|
        check(client, uuids[label], shape)
        db = db_latencies(conn, uuids[label])
        steps = step_breakdown(conn, uuids[label])
        fields.merge!("#{label}_tasks": uuids[label].size,
                      "#{label}_p50_ms": Bench.percentile(db, 50).round(2), "#{label}_p95_ms": Bench.percentile(db, 95).round(2),
                      "#{label}_wall_p50_ms": Bench.percentile(wall[label], 50).round(2),
                      "#{label}_wall_p95_ms": Bench.percentile(wall[label], 95).round(2))
        steps.each { |k, v| fields[:"#{label}_#{k}"] = v }
        Bench.log(format("%-7s %d tasks: created -> completed p50 %.1f ms, p95 %.1f ms (DB clock); wall clock p50 %.1f ms, " \
                         "p95 %.1f ms; per step p50: %s", label, uuids[label].size, Bench.median(db), Bench.percentile(db, 95),
                         Bench.median(wall[label]), Bench.percentile(wall[label], 95), steps.inspect))
      end
      fields[:orchestrator] = worker.status[:orchestrator].slice(:tasks_completed, :tasks_failed)
      fields[:quick] = Bench.quick?
      Bench.result(fields)
    ensure
      conn&.close
    end

    def check(client, uuids, shape)
      sample = client.task(uuids.last)
      last = sample[:steps].find { |s| s[:name] == shape[:last] }
      raise "#{shape[:name]} ended #{sample[:state]}" unless sample[:state] == "complete"
      return if last[:results]["result"] == shape[:result]

      raise "#{shape[:name]}: #{shape[:last]} = #{last[:results]["result"].inspect}"
    end

    def db_latencies(conn, uuids)
      conn.exec_params(<<~SQL, [PG::TextEncoder::Array.new.encode(uuids)]).map { |r| r["ms"].to_f }
        SELECT extract(epoch FROM completed_at - created_at) * 1000 AS ms
          FROM tasker.tasks WHERE task_uuid = ANY($1::uuid[]) AND complete
      SQL
    end

    # Medians over all steps of these tasks, in ms, between transition timestamps (each is the
    # start of the transaction that wrote it): enqueued -> in_progress (the worker's read and
    # claim), in_progress -> enqueued_for_orchestration (handler + hand-off + completion batch),
    # enqueued_for_orchestration -> complete (the orchestrator's pickup of the result).
    def step_breakdown(conn, uuids)
      row = conn.exec_params(<<~SQL, [PG::TextEncoder::Array.new.encode(uuids)]).first
        WITH s AS (
          SELECT tr.workflow_step_uuid,
                 min(tr.created_at) FILTER (WHERE tr.to_state = 'enqueued') AS enqueued,
                 min(tr.created_at) FILTER (WHERE tr.to_state = 'in_progress') AS claimed,
                 min(tr.created_at) FILTER (WHERE tr.to_state = 'enqueued_for_orchestration') AS done,
                 min(tr.created_at) FILTER (WHERE tr.to_state = 'complete') AS complete
            FROM tasker.workflow_step_transitions tr
            JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = tr.workflow_step_uuid
           WHERE ws.task_uuid = ANY($1::uuid[])
           GROUP BY tr.workflow_step_uuid
        )
        SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM claimed - enqueued) * 1000) AS pickup,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM done - claimed) * 1000) AS run,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM complete - done) * 1000) AS orchestrate
          FROM s
      SQL
      { step_enqueued_to_claimed_p50_ms: row["pickup"].to_f.round(2),
        step_claimed_to_result_p50_ms: row["run"].to_f.round(2),
        step_result_to_orchestrated_p50_ms: row["orchestrate"].to_f.round(2) }
    end
  end
end

Bench::WorkflowLatency.run(Bench.size(:workflow_tasks, full: 200, quick: 40)) if $PROGRAM_NAME == __FILE__
