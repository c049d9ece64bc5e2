# frozen_string_literal: true

# Where a drained step's time goes, seen from PostgreSQL (a diagnostic, not a benchmark with
# a target): drains N no-op tasks with tasker_worker at the given concurrencies and with the
# pure-Ruby baseline, each in a fresh database with `track_functions = 'all'`, and reports
# per step: transactions committed, rows written and index/sequential scans per table, calls
# and time of the PGMQ/tasker SQL functions, and the CPU time of this process's threads and
# of the PostgreSQL server.
#
#   ruby -Ilib bench/drain_profile.rb [--quick] [--concurrency 1,10]
#
# The statistics are read after the worker has stopped and its connections have been ended
# (a backend flushes its statistics when it exits). They are server-wide views filtered to
# the throw-away database, so other databases' activity does not count (except in the CPU
# figure for PostgreSQL, which is all server processes).
require_relative "support/worker_setup"
require_relative "support/prepare"
require_relative "support/database"
require_relative "support/cpu"
require_relative "baseline_ruby_pgmq_worker"

module Bench
  module DrainProfile
    module_function

    def run(concurrencies, tasks)
      concurrencies.each do |c|
        profile(tasks, "tasker_worker", concurrency: c) { |url, measured| drain_worker(url, c, tasks, measured) }
      end
      profile(tasks, "baseline_ruby_pgmq_worker", concurrency: 10) do |url, measured|
        drain_baseline(url, tasks, measured)
      end
    end

    def profile(tasks, subject, concurrency:)
      Prepared.database(tasks) do |url|
        admin = PG.connect(url)
        admin.exec("ALTER DATABASE #{admin.quote_ident(admin.db)} SET track_functions = 'all'")
        before = stats(admin)
        cpu_before = Cpu.snapshot(url)
        started = Bench.now
        # The block drains, then calls this before stopping (a backend's CPU time is gone once it exits).
        steps, seconds, cpu = yield(url, lambda do |done|
          [done, Bench.now - started, Cpu.per_step(cpu_before, Cpu.snapshot(url), done)]
        end)
        end_other_sessions(admin)
        after = stats(admin)
        report(subject, concurrency, steps, seconds, diff(before, after, steps), cpu)
      ensure
        admin&.close
      end
    end

    def drain_worker(url, concurrency, tasks, measured)
      worker = TaskerWorker::Worker.new(registry: Bench.noop_registry, concurrency: concurrency,
                                        namespaces: [Prepared::NAMESPACE], database_url: url, templates_path: nil).start
      Bench.wait_until(timeout: 3600, what: "#{tasks} steps") { worker.status[:counters][:succeeded] >= tasks }
      measured.call(worker.status[:counters][:succeeded])
    ensure
      worker&.stop(timeout: 10)
    end

    def drain_baseline(url, tasks, measured)
      worker = BaselineRubyPgmqWorker.new(url, namespace: Prepared::NAMESPACE, threads: 10, handler: lambda { |_c|
                                                                                                       {}
                                                                                                     }).start
      Bench.wait_until(timeout: 3600, what: "#{tasks} steps") { worker.done >= tasks }
      measured.call(worker.done)
    ensure
      worker&.stop
    end

    # A backend writes its statistics out when it exits.
    def end_other_sessions(admin)
      admin.exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity " \
                 "WHERE datname = current_database() AND pid <> pg_backend_pid()")
      Bench.wait_until(timeout: 10, interval: 0.05, what: "sessions to end") do
        admin.exec("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() " \
                   "AND pid <> pg_backend_pid()").getvalue(0, 0).to_i.zero?
      end
      sleep 0.2
      admin.exec("SELECT pg_stat_clear_snapshot()")
    end

    def stats(conn)
      conn.exec("SELECT pg_stat_clear_snapshot()")
      db = conn.exec("SELECT xact_commit, xact_rollback, tup_returned, tup_fetched FROM pg_stat_database " \
                     "WHERE datname = current_database()").first.transform_values(&:to_i)
      tables = conn.exec(<<~SQL).to_h { |r| [r["name"], r.except("name").transform_values(&:to_i)] }
        SELECT schemaname || '.' || relname AS name, coalesce(seq_scan, 0) AS seq_scan,
               coalesce(seq_tup_read, 0) AS seq_tup_read, coalesce(idx_scan, 0) AS idx_scan,
               n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del
          FROM pg_stat_user_tables
      SQL
      functions = conn.exec(<<~SQL).to_h { |r| [r["name"], r.except("name").transform_values(&:to_f)] }
        SELECT schemaname || '.' || funcname AS name, calls, total_time, self_time FROM pg_stat_user_functions
      SQL
      { db: db, tables: tables, functions: functions }
    end

    def diff(before, after, steps)
      per = ->(a, b) { ((a - (b || 0)).to_f / steps).round(3) }
      db = after[:db].to_h { |k, v| [k, per[v, before[:db][k]]] }
      tables = after[:tables].filter_map do |name, row|
        base = before[:tables][name] || {}
        d = row.to_h { |k, v| [k, per[v, base[k]]] }
        [name, d] if d.values.any?(&:positive?)
      end.to_h
      functions = after[:functions].filter_map do |name, row|
        base = before[:functions][name] || {}
        calls = row["calls"] - base.fetch("calls", 0)
        next if calls.zero?

        [name, { "calls" => (calls / steps).round(3),
                 "total_us" => ((row["total_time"] - base.fetch("total_time", 0)) * 1000 / steps).round(1),
                 "self_us" => ((row["self_time"] - base.fetch("self_time", 0)) * 1000 / steps).round(1) }]
      end.to_h
      { db: db, tables: tables, functions: functions }
    end

    def report(subject, concurrency, steps, seconds, per_step, cpu)
      Bench.log(format("%s, concurrency %d: %d steps in %.2f s (%.0f steps/s)", subject, concurrency, steps, seconds,
                       steps / seconds))
      Bench.log("  per step: transactions #{per_step[:db]["xact_commit"]}, rollbacks #{per_step[:db]["xact_rollback"]}")
      per_step[:tables].sort.each { |name, d| Bench.log("  #{name}: #{d}") }
      per_step[:functions].sort_by { |_, f| -f["total_us"] }.each { |name, f| Bench.log("  #{name}(): #{f}") }
      Bench.log("  CPU µs per step: #{cpu}")
      Bench.result(bench: "drain_profile", subject: subject, concurrency: concurrency, steps: steps,
                   steps_per_s: (steps / seconds).round(1), per_step: per_step, cpu_us_per_step: cpu, quick: Bench.quick?)
    end
  end
end

if $PROGRAM_NAME == __FILE__
  list = ARGV.each_cons(2).find { |flag, _| flag == "--concurrency" }&.last || "1,10"
  Bench::DrainProfile.run(list.split(",").map { |c| Integer(c) }, Bench.size(:profile_tasks, full: 5_000, quick: 2_000))
end
