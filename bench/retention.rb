# frozen_string_literal: true

# A drain on a database with a large history vs the same drain on a fresh one, in
# interleaved rounds. "history": HISTORY completed single-step tasks (2 task transitions, 3
# step transitions each) finished 30 days ago and KEPT finished a day ago, each with an
# archived row in the worker queue's and the result queue's PGMQ archives, written with SQL
# (not run); then one retention round (TaskerWorker::Client#prune, default ages: it deletes
# the old ones, keeps the recent ones and VACUUMs what it deleted from), timed; then the
# drain. "fresh": the drain alone. Both: TASKS enqueued no-op tasks, concurrency 10, the
# autovacuum settings of migration 20261203000001 in force (they act only where autovacuum
# runs; this machine's shared server runs with it off: see BENCHMARKS.md "Retention", which
# also has a run on a throw-away cluster with it on).
#
#   ruby -Ilib bench/retention.rb [--quick]     BENCH_RUNS rounds (default 3)
#   sizes: BENCH_RETENTION_TASKS (20,000; quick 2,000), BENCH_RETENTION_HISTORY (200,000;
#   quick 20,000), BENCH_RETENTION_KEPT (100,000; quick 10,000); DATABASE_URL picks the server
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
          SELECT u, nt.named_task_uuid, true, u::text, u, now() - make_interval(days => $3 + 1), now() - make_interval(days => $3)
            FROM nt, (SELECT gen_random_uuid() AS u FROM generate_series(1, $1)) g
          RETURNING task_uuid),
      tt AS (
          INSERT INTO tasker.task_transitions (task_transition_uuid, task_uuid, from_state, to_state, sort_key, most_recent, created_at)
          SELECT gen_random_uuid(), t.task_uuid, x.f, x.s, x.k, x.last, now() - make_interval(days => $3)
            FROM t, (VALUES (NULL, 'pending', 1, false), ('pending', 'complete', 2, true)) x (f, s, k, last)),
      s AS (
          INSERT INTO tasker.workflow_steps (workflow_step_uuid, task_uuid, named_step_uuid, processed, results)
          SELECT gen_random_uuid(), t.task_uuid, ns.named_step_uuid, true, '{"success": true, "result": {}}'
            FROM t, ns
          RETURNING workflow_step_uuid)
      INSERT INTO tasker.workflow_step_transitions (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, sort_key, most_recent, created_at)
      SELECT gen_random_uuid(), s.workflow_step_uuid, x.f, x.s, x.k, x.last, now() - make_interval(days => $3)
        FROM s, (VALUES (NULL, 'enqueued', 1, false), ('enqueued', 'in_progress', 2, false),
                        ('in_progress', 'complete', 3, true)) x (f, s, k, last)
    SQL

    module_function

    def run(rounds, tasks, history, kept)
      ratios = (1..rounds).map do |round|
        # Interleaved, the order alternating, so drift on the shared machine hits both alike.
        order = round.odd? ? %i[fresh history] : %i[history fresh]
        rates = order.to_h { |kind| [kind, drain(kind, tasks, history, kept, round)] }
        ratio = rates[:history] / rates[:fresh]
        Bench.log(format("round %d: history/fresh = %.3f", round, ratio))
        ratio
      end
      Bench.log(format("median ratio history/fresh over %d rounds: %.3f", rounds, Bench.median(ratios)))
    end

    def drain(kind, tasks, history, kept, round)
      Prepared.database(tasks) do |url|
        prune = kind == :history ? write_and_prune(url, history, kept) : {}
        measure(url, kind, tasks, round, prune)
      end
    end

    # Writes `history` tasks 30 days old (which retention deletes) and `kept` 1 day old (which
    # it keeps, as it would the last fortnight), each with archived messages, then runs one
    # retention round and checks it deleted exactly the old ones.
    def write_and_prune(url, history, kept)
      conn = PG.connect(url)
      started = Bench.now
      { 30 => history, 1 => kept }.each { |days, count| write_history(conn, count, days) }
      written = Bench.now - started
      started = Bench.now
      report = TaskerWorker::Client.for(url).prune
      seconds = Bench.now - started
      deleted = report[:deleted].values.sum
      left = conn.exec("SELECT count(*) FROM tasker.tasks WHERE complete").getvalue(0, 0).to_i
      Bench.log(format("history: %d old + %d recent tasks written in %.1f s; retention deleted %d rows in %d batches " \
                       "in %.1f s; %d completed tasks kept", history, kept, written, deleted, report[:batches], seconds, left))
      raise "retention deleted #{report[:deleted]["tasker.tasks"]} of #{history} tasks" if report[:deleted]["tasker.tasks"] != history
      raise "retention kept #{left} of #{kept} recent tasks" if left != kept

      { prune_seconds: seconds.round(2), pruned_rows: deleted, kept_tasks: left }
    ensure
      conn&.close
    end

    def write_history(conn, count, days)
      (count / 10_000.0).ceil.times do |i|
        conn.exec_params(HISTORY_SQL, [[10_000, count - (i * 10_000)].min, Prepared::TASK_NAME, days])
      end
      %w[worker_bench_queue orchestration_step_results].each do |queue|
        conn.exec("SELECT pgmq.create('#{queue}') WHERE NOT EXISTS (SELECT 1 FROM pgmq.meta WHERE queue_name = '#{queue}')")
        conn.exec("INSERT INTO pgmq.a_#{queue} (msg_id, read_ct, enqueued_at, archived_at, vt, message) " \
                  "SELECT -g - (SELECT count(*) FROM pgmq.a_#{queue}), 1, now() - make_interval(days => #{days}), " \
                  "now() - make_interval(days => #{days}), now(), '{}' FROM generate_series(1, #{count}) g")
      end
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
                       Bench.size(:retention_history, full: 200_000, quick: 20_000),
                       Bench.size(:retention_kept, full: 100_000, quick: 10_000))
end
