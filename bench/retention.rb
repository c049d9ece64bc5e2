# frozen_string_literal: true

# A drain on a database with a large history vs the same drain on a fresh one, in
# interleaved rounds. "history": HISTORY completed single-step tasks (2 task transitions, 3
# step transitions each) backdated 30 days, and as many archived rows in the worker queue's
# and the result queue's PGMQ archives, written with SQL (not run); then one retention round
# (TaskerWorker::Client#prune, default ages) deletes them, timed; then the drain. "fresh": the
# drain alone. Both: TASKS enqueued no-op tasks, concurrency 10, the autovacuum settings of
# migration 20261203000001 in force (they act only where autovacuum runs; this machine's
# server runs with it off, so here they do nothing: see BENCHMARKS.md "Retention").
#
#   ruby -Ilib bench/retention.rb [--quick]     BENCH_RUNS rounds (default 3)
#
# Prints one RESULT line per drain (bench: retention, database: fresh|history) and per round
# the ratio history/fresh of steps/s.
require_relative "support/worker_setup"
require_relative "support/prepare"
require_relative "support/database"
require_relative "support/cpu"

module Bench
  module Retention
    CONCURRENCY = 10
    HISTORY_SQL = <<~SQL
      WITH nt AS (SELECT named_task_uuid FROM tasker.named_tasks WHERE name = $2),
      ns AS (SELECT named_step_uuid FROM tasker.named_steps ORDER BY created_at LIMIT 1),
      t AS (
          INSERT INTO tasker.tasks (task_uuid, named_task_uuid, complete, identity_hash, correlation_id, created_at, completed_at)
          SELECT u, nt.named_task_uuid, true, u::text, u, now() - interval '31 days', now() - interval '30 days'
            FROM nt, (SELECT gen_random_uuid() AS u FROM generate_series(1, $1)) g
          RETURNING task_uuid),
      tt AS (
          INSERT INTO tasker.task_transitions (task_transition_uuid, task_uuid, from_state, to_state, sort_key, most_recent, created_at)
          SELECT gen_random_uuid(), t.task_uuid, x.f, x.s, x.k, x.last, now() - interval '30 days'
            FROM t, (VALUES (NULL, 'pending', 1, false), ('pending', 'complete', 2, true)) x (f, s, k, last)),
      s AS (
          INSERT INTO tasker.workflow_steps (workflow_step_uuid, task_uuid, named_step_uuid, processed, results)
          SELECT gen_random_uuid(), t.task_uuid, ns.named_step_uuid, true, '{"success": true, "result": {}}'
            FROM t, ns
          RETURNING workflow_step_uuid)
      INSERT INTO tasker.workflow_step_transitions (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, sort_key, most_recent, created_at)
      SELECT gen_random_uuid(), s.workflow_step_uuid, x.f, x.s, x.k, x.last, now() - interval '30 days'
        FROM s, (VALUES (NULL, 'enqueued', 1, false), ('enqueued', 'in_progress', 2, false),
                        ('in_progress', 'complete', 3, true)) x (f, s, k, last)
    SQL

    module_function

    def run(rounds, tasks, history)
      ratios = (1..rounds).map do |round|
        # Interleaved, the order alternating, so drift on the shared machine hits both alike.
        order = round.odd? ? %i[fresh history] : %i[history fresh]
        rates = order.to_h { |kind| [kind, drain(kind, tasks, history, round)] }
        ratio = rates[:history] / rates[:fresh]
        Bench.log(format("round %d: history/fresh = %.3f", round, ratio))
        ratio
      end
      Bench.log(format("median ratio history/fresh over %d rounds: %.3f", rounds, Bench.median(ratios)))
    end

    def drain(kind, tasks, history, round)
      Prepared.database(tasks) do |url|
        prune = kind == :history ? write_and_prune(url, history) : {}
        measure(url, kind, tasks, round, prune)
      end
    end

    def write_and_prune(url, history)
      conn = PG.connect(url)
      started = Bench.now
      (history / 10_000.0).ceil.times do |i|
        n = [10_000, history - (i * 10_000)].min
        conn.exec_params(HISTORY_SQL, [n, Prepared::TASK_NAME])
      end
      %w[worker_bench_queue orchestration_step_results].each do |queue|
        conn.exec("SELECT pgmq.create('#{queue}') WHERE NOT EXISTS (SELECT 1 FROM pgmq.meta WHERE queue_name = '#{queue}')")
        conn.exec("INSERT INTO pgmq.a_#{queue} (msg_id, read_ct, enqueued_at, archived_at, vt, message) " \
                  "SELECT -g, 1, now() - interval '30 days', now() - interval '30 days', now(), '{}' " \
                  "FROM generate_series(1, #{history}) g")
      end
      written = Bench.now - started
      started = Bench.now
      report = TaskerWorker::Client.for(url).prune
      seconds = Bench.now - started
      deleted = report[:deleted].values.sum
      Bench.log(format("history: %d tasks written in %.1f s; retention deleted %d rows in %d batches in %.1f s",
                       history, written, deleted, report[:batches], seconds))
      raise "retention deleted #{report[:deleted]["tasker.tasks"]} of #{history} tasks" if report[:deleted]["tasker.tasks"] != history

      { prune_seconds: seconds.round(2), pruned_rows: deleted }
    ensure
      conn&.close
    end

    def wal_lsn(url)
      conn = PG.connect(url)
      conn.exec("SELECT pg_current_wal_lsn()::text").getvalue(0, 0)
    ensure
      conn&.close
    end

    def wal_bytes(url, from, to)
      conn = PG.connect(url)
      conn.exec_params("SELECT pg_wal_lsn_diff($1, $2)", [to, from]).getvalue(0, 0).to_f
    ensure
      conn&.close
    end

    def measure(url, kind, tasks, round, prune)
      worker = TaskerWorker::Worker.new(registry: Bench.noop_registry, concurrency: CONCURRENCY,
                                        namespaces: [Prepared::NAMESPACE], database_url: url, templates_path: nil)
      cpu_before = Cpu.snapshot(url)
      lsn = wal_lsn(url)
      started = Bench.now
      worker.start
      succeeded = Bench.wait_until(timeout: 3600, interval: 0.05, what: "#{tasks} steps") do
        count = worker.status[:counters][:succeeded]
        count if count >= tasks
      end
      seconds = Bench.now - started
      cpu = Cpu.per_step(cpu_before, Cpu.snapshot(url), succeeded)
      wal = wal_bytes(url, lsn, wal_lsn(url)) / succeeded
      worker.stop(timeout: 10)
      rate = succeeded / seconds
      Bench.log(format("round %d %s: %d steps in %.2f s = %.1f steps/s; WAL %.0f B/step (server-wide); CPU µs/step %s",
                       round, kind, succeeded, seconds, rate, wal, cpu))
      Bench.result({ bench: "retention", database: kind.to_s, round: round, steps: succeeded, seconds: seconds.round(3),
                     steps_per_s: rate.round(1), wal_bytes_per_step: wal.round, cpu_us_per_step: cpu,
                     quick: Bench.quick? }.merge(prune))
      rate
    end
  end
end

if $PROGRAM_NAME == __FILE__
  Bench::Retention.run(Integer(ENV.fetch("BENCH_RUNS", "3")),
                       Bench.size(:retention_tasks, full: 20_000, quick: 2_000),
                       Bench.size(:retention_history, full: 200_000, quick: 20_000))
end
