# frozen_string_literal: true

# A diagnostic for issue 19 (BENCHMARKS.md, "Session 9"): the worker drain with the step table
# rewritten at a given fillfactor before it (ALTER TABLE ... SET (fillfactor) + VACUUM FULL),
# to see what room for HOT updates of the step rows saves. Not part of bin/bench.
#
#   ruby -Ilib bench/step_fillfactor.rb 100 70 [...]     BENCH_DRAIN_TASKS (default 20,000)
#
# Per fillfactor: steps/s, PostgreSQL backend CPU and WAL records per step (from drain.rb's
# measurement) and the share of the step updates that were HOT.
require_relative "drain"

module Bench
  module StepFillfactor
    module_function

    def run(fillfactors, tasks)
      fillfactors.each do |ff|
        Prepared.database(tasks) do |url|
          conn = PG.connect(url)
          conn.exec("ALTER TABLE tasker.workflow_steps SET (fillfactor = #{Integer(ff)})")
          conn.exec("VACUUM FULL tasker.workflow_steps")
          conn.exec("SELECT pg_stat_reset()")
          Drain.measure(url, 10, tasks)
          Bench.log(format("fillfactor %d: %.0f %% of the step updates were HOT", ff, hot_share(conn)))
        ensure
          conn&.close
        end
      end
    end

    # The statistics reach pg_stat_user_tables once the worker's backends have reported.
    def hot_share(conn)
      sleep 1
      upd, hot = conn.exec("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables " \
                           "WHERE relid = 'tasker.workflow_steps'::regclass").values.first.map(&:to_f)
      upd.zero? ? 0.0 : hot * 100 / upd
    end
  end
end

Bench::StepFillfactor.run(ARGV.map { |a| Integer(a) }, Bench.size(:drain_tasks, full: 20_000, quick: 2_000)) if $PROGRAM_NAME == __FILE__
