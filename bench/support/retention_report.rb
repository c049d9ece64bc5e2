# frozen_string_literal: true

module Bench
  # The retention section of BENCHMARKS.md (bench/retention.rb: a drain beside a large history
  # that a retention round has just pruned, against the same drain on a fresh database, in the
  # same round), mixed into Bench::Report, whose data helpers it uses.
  module RetentionReport
    RETENTION_TARGET = 0.9

    def retention_ratios
      round_ratios(->(r) { in_round("retention", :steps_per_s, r, database: "history") },
                   ->(r) { in_round("retention", :steps_per_s, r, database: "fresh") })
    end

    def retention_summary_row
      ratio_median = Bench.median(retention_ratios)
      "| 6. Retention: drain beside a large pruned history, steps/s | " \
        "#{fmt(median("retention", :steps_per_s, database: "history"), 0)} | " \
        "#{fmt(median("retention", :steps_per_s, database: "fresh"), 0)} (the same drain on a fresh database, same round) | " \
        "#{ratio(ratio_median)} | ≥ #{RETENTION_TARGET}× | #{met(ratio_median && ratio_median >= RETENTION_TARGET)} |"
    end

    def retention
      return nil if results("retention").empty?

      <<~MD
        ## 6. Retention (a drain beside a large history)

        Command: `#{command("retention")}` (one history/fresh pair per round)

        Each round: a drain of #{fmt(in_round("retention", :steps, rounds.first, database: "fresh"), 0)} no-op steps
        (concurrency 10) on a fresh database, and the same drain on one holding a history of completed tasks
        written with SQL, of which a retention round (`Client#prune`, default ages; it VACUUMs what it
        deleted from) has just deleted the old part and kept the recent one. The autovacuum settings of
        migration 20261203000001 are in force; they act only where autovacuum runs (see the server's
        settings above and BENCHMARKS.md "Retention" for a run with it on).

        | round | fresh steps/s | history steps/s | history / fresh | PG backend CPU µs/step fresh / history | tasks kept | prune s |
        |---|---:|---:|---:|---|---:|---:|
        #{retention_rows.join("\n")}

        #{ratio_line("Ratio history / fresh (same round)", retention_ratios)}
      MD
    end

    private

    def retention_rows
      rounds.filter_map do |round|
        fresh = retention_result(round, "fresh")
        history = retention_result(round, "history")
        next unless fresh && history

        cpu = [fresh, history].map { |r| fmt(r.dig(:cpu_us_per_step, :"postgres backends"), 0) }.join(" / ")
        "| #{round} | #{fmt(fresh[:steps_per_s], 0)} | #{fmt(history[:steps_per_s], 0)} | " \
          "#{ratio(history[:steps_per_s] / fresh[:steps_per_s])} | #{cpu} | #{fmt(history[:kept_tasks], 0)} | " \
          "#{fmt(history[:prune_seconds], 1)} |"
      end
    end

    def retention_result(round, database)
      row = results("retention", database: database).find { |r| r[:round] == round }
      row && row[:result]
    end
  end
end
