# frozen_string_literal: true

module Bench
  # The section of BENCHMARKS.md for the drain with the embedded orchestrator in the worker's
  # process (`BENCH_ORCHESTRATE=1 bench/drain.rb`, RESULT bench "drain_orchestrated": every task
  # timed to `complete`; successes complete in the worker's commits), mixed into Bench::Report,
  # whose data helpers it uses.
  module OrchestratedDrainReport
    def drain_orchestrated
      rows = results("drain_orchestrated")
      return nil if rows.empty?

      <<~MD
        ### 2b. The same drain with the embedded orchestrator (#{fmt(median("drain_orchestrated", :steps), 0)} single-step tasks)

        Command: `BENCH_ORCHESTRATE=1 ruby -Ilib bench/drain.rb` (concurrency 10; each round, after the
        worker-only drain). The worker runs with `orchestrate: true` and is timed until every task is
        `complete` (the orchestrator's completed-task counter); afterwards every task is checked to
        be complete. A success completes in the worker's own result commit
        (`orchestration.complete_in_commit`, default on), with two commits in flight.

        #{orchestrated_rounds_table}
        Per task (median): #{orchestrated_cpu(rows)}; #{fmt(median("drain_orchestrated", :steps_per_commit), 1)} results per commit.

        #{PgWorkTable.render([["tasker_worker + embedded orchestrator, concurrency 10", rows]]) { |v, d| fmt(v, d) }}
      MD
    end

    private

    def orchestrated_rounds_table
      rs = rounds.select { |r| in_round("drain_orchestrated", :steps_per_s, r) }
      vals = rs.map { |r| in_round("drain_orchestrated", :steps_per_s, r) }
      "| tasks/s | #{rs.map { |r| "run #{r}" }.join(" | ")} | **median** |\n" \
        "|---|#{"---:|" * rs.size}---:|\n" \
        "| tasker_worker + embedded orchestrator, concurrency 10 | #{vals.map { |v| fmt(v, 0) }.join(" | ")} | " \
        "**#{fmt(Bench.median(vals), 0)}** |\n"
    end

    def orchestrated_cpu(rows)
      cpu = ->(key) { Bench.median(rows.map { |r| (r[:result][:cpu_us_per_step] || {})[key] }.compact) }
      "PostgreSQL backends #{fmt(cpu.call(:"postgres backends"), 0)} µs CPU, Rust runtime " \
        "#{fmt(cpu.call(:"rust runtime threads"), 0)} µs, Ruby handler threads " \
        "#{fmt(cpu.call(:"ruby handler threads"), 0)} µs, cores busy #{fmt(cpu.call(:"cores busy"), 2)}"
    end
  end
end
