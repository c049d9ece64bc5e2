# frozen_string_literal: true

# Worker drain: N single-step tasks are enqueued first (not timed); then a worker with a
# no-op Ruby handler and `concurrency` threads is started and timed until all N results are
# committed (worker.status counters, polled every 50 ms). Worker alone: claim -> handler ->
# commit, no orchestrator. One fresh database per concurrency.
#
#   ruby -Ilib bench/drain.rb [--quick] [--concurrency 1,4,10,25]
#
# Prints one RESULT line per concurrency, with PostgreSQL's work per step (backend CPU, WAL
# records and bytes of this database, commits; bench/support/pg_work.rb) next to throughput.
# BENCH_WAL_BREAKDOWN=1 also logs the WAL records per step by record type and relation.
# BENCH_LEAN_CLAIM=1 (or 0) sets worker.lean_claim (the lease-only claim); unset: the default.
# BENCH_ACK_MODE=delete|archive sets worker.ack_mode (delete needs BENCH_LEAN_CLAIM=1).
# BENCH_ORCHESTRATE=1: the worker runs the embedded orchestrator too (`orchestrate: true`) and
# is timed until every task is complete (concurrency 10 unless --concurrency says otherwise;
# RESULT bench "drain_orchestrated"); BENCH_COMPLETE_IN_COMMIT=1 (or 0) then sets
# orchestration.complete_in_commit (unset: the default, on).
require_relative "support/worker_setup"
require_relative "support/prepare"
require_relative "support/database"
require_relative "support/cpu"
require_relative "support/pg_work"

module Bench
  module Drain
    module_function

    def run(concurrencies, tasks)
      concurrencies.each do |concurrency|
        Prepared.database(tasks) { |url| measure(url, concurrency, tasks) }
      end
    end

    def measure(url, concurrency, tasks)
      sync = ThrowawayDatabase.setting(url, "synchronous_commit")
      worker = TaskerWorker::Worker.new(registry: Bench.noop_registry, concurrency: concurrency,
                                        namespaces: [Prepared::NAMESPACE], database_url: url, templates_path: nil,
                                        **lean_claim, **orchestrate)
      pg_before = PgWork.snapshot_before(url)
      cpu_before = Cpu.snapshot(url)
      started = Bench.now
      worker.start
      succeeded = Bench.wait_until(timeout: 3600, interval: 0.05, what: "#{tasks} steps") do
        count = finished(worker)
        count if count >= tasks
      end
      seconds = Bench.now - started
      cpu = Cpu.per_step(cpu_before, Cpu.snapshot(url), succeeded)
      status = worker.status
      worker.stop(timeout: 10)
      pg_after = PgWork.snapshot_after(url)
      pg = PgWork.per_step(url, pg_before, pg_after, succeeded, keep: ENV["BENCH_WAL_BREAKDOWN"] == "1")
      counters = status[:counters]
      Bench.log(format("concurrency %d: %d steps in %.2f s = %.1f steps/s (synchronous_commit=%s, " \
                       "%.1f steps per read, %.1f per commit)", concurrency, succeeded, seconds,
                       succeeded / seconds, sync, counters[:messages_read].fdiv(counters[:read_batches]),
                       counters[:succeeded].fdiv(counters[:commit_batches])))
      Bench.log("  CPU µs per step: #{cpu}")
      round_trips = (counters[:read_batches] + counters[:commit_batches]).fdiv(succeeded).round(3)
      log_pg_work(url, pg, round_trips, pg_before, pg_after, succeeded)
      check_settled(url, tasks)
      result(concurrency, succeeded, seconds, sync, counters, cpu_us_per_step: cpu, pg_per_step: pg,
                                                              round_trips_per_step: round_trips)
    end

    def result(concurrency, steps, seconds, sync, counters, **work)
      Bench.result(bench: orchestrate? ? "drain_orchestrated" : "drain", concurrency: concurrency, steps: steps,
                   **lean_claim, **orchestrate, seconds: seconds.round(3),
                   steps_per_s: (steps / seconds).round(1), synchronous_commit: sync,
                   steps_per_read: counters[:messages_read].fdiv(counters[:read_batches]).round(2),
                   steps_per_commit: counters[:succeeded].fdiv(counters[:commit_batches]).round(2),
                   **work, quick: Bench.quick?)
    end

    # worker.lean_claim from BENCH_LEAN_CLAIM (1/0), or nothing: the default.
    def lean_claim
      case ENV.fetch("BENCH_LEAN_CLAIM", "")
      when "" then {}
      when "1" then { lean_claim: true }
      when "0" then { lean_claim: false }
      else raise "BENCH_LEAN_CLAIM must be 1 or 0, got #{ENV["BENCH_LEAN_CLAIM"].inspect}"
      end.merge(ENV.fetch("BENCH_ACK_MODE", "").empty? ? {} : { ack_mode: ENV["BENCH_ACK_MODE"] })
    end

    # Steps committed; with the orchestrator, tasks completed.
    def finished(worker)
      orchestrate? ? worker.status[:orchestrator][:tasks_completed] : worker.status[:counters][:succeeded]
    end

    def check_settled(url, tasks)
      if orchestrate?
        done = ThrowawayDatabase.completed_tasks(url)
        raise "only #{done} of #{tasks} tasks are complete" if done < tasks
      else
        done = ThrowawayDatabase.committed_steps(url)
        raise "only #{done} of #{tasks} steps reached enqueued_for_orchestration" if done < tasks
      end
    end

    # orchestrate: true from BENCH_ORCHESTRATE=1, with complete_in_commit from
    # BENCH_COMPLETE_IN_COMMIT (1/0; unset: the default).
    def orchestrate
      return {} unless orchestrate?

      case ENV.fetch("BENCH_COMPLETE_IN_COMMIT", "")
      when "" then { orchestrate: true }
      when "1" then { orchestrate: true, complete_in_commit: true }
      when "0" then { orchestrate: true, complete_in_commit: false }
      else raise "BENCH_COMPLETE_IN_COMMIT must be 1 or 0, got #{ENV["BENCH_COMPLETE_IN_COMMIT"].inspect}"
      end
    end

    def orchestrate?
      case ENV.fetch("BENCH_ORCHESTRATE", "")
      when "", "0" then false
      when "1" then true
      else raise "BENCH_ORCHESTRATE must be 1 or 0, got #{ENV["BENCH_ORCHESTRATE"].inspect}"
      end
    end

    # PostgreSQL's work per step; with BENCH_WAL_BREAKDOWN=1 also the WAL records per step by
    # record type and relation (the largest 25).
    def log_pg_work(url, per_step, round_trips, before, after, steps)
      Bench.log("  PostgreSQL per step: #{per_step}; round trips per step: #{round_trips} " \
                "(claim calls that read messages + commit transactions)")
      return unless ENV["BENCH_WAL_BREAKDOWN"] == "1"

      PgWork.breakdown(url, before, after, steps).each do |row|
        Bench.log(format("    %-22s %-56s %6.2f records %7.1f bytes per step", row[:kind], row[:relation],
                         row[:per_step], row[:bytes_per_step]))
      end
    end
  end
end

if $PROGRAM_NAME == __FILE__
  list = ARGV.each_cons(2).find { |flag, _| flag == "--concurrency" }&.last ||
         (Bench::Drain.orchestrate? ? "10" : "1,4,10,25")
  Bench::Drain.run(list.split(",").map { |c| Integer(c) }, Bench.size(:drain_tasks, full: 20_000, quick: 2_000))
end
