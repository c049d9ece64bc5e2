# frozen_string_literal: true

# The drain's PostgreSQL work per step as a Markdown table for BENCHMARKS.md (medians of the
# RESULT lines' pg_per_step and round_trips_per_step; bench/support/pg_work.rb measures them).
require_relative "common"

module Bench
  module PgWorkTable
    COLUMNS = [["WAL records", :"wal records", 2], ["WAL bytes", :"wal bytes", 0], ["commits", :commits, 4]].freeze

    module_function

    # `subjects`: [[label, rows]]; the block formats a value with the given digits.
    def render(subjects, &fmt)
      head = "| | #{COLUMNS.map(&:first).join(" | ")} | round trips |\n|---|#{"---:|" * (COLUMNS.size + 1)}\n"
      lines = subjects.map do |label, rows|
        cells = COLUMNS.map do |_, key, digits|
          fmt.call(Bench.median(rows.map { |r| (r[:result][:pg_per_step] || {})[key] }.compact), digits)
        end
        cells << fmt.call(Bench.median(rows.map { |r| r[:result][:round_trips_per_step] }.compact), 3)
        "| #{label} | #{cells.join(" | ")} |"
      end
      "#{head}#{lines.join("\n")}\n"
    end
  end
end
