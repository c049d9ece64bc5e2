# frozen_string_literal: true

# Writes BENCHMARKS.md from a bin/bench run:
#
#   ruby bench/support/report.rb RESULTS.jsonl MACHINE.json OUT.md MODE SECONDS
#
# RESULTS.jsonl has one line per RESULT a script printed (or per failed script run):
#   {"round": 1, "command": "...", "load_before": "0.42", "result": {...}}   or   {..., "error": "..."}
# Medians are over the rounds; a ratio is computed within each round (side by side) and its
# median reported. Everything from the "## Observations" heading of an existing OUT.md on is
# kept as it is (it is written by people, not by bin/bench).
require "json"
require "time"
require_relative "common"
require_relative "pg_work_table"
require_relative "peer_report"
require_relative "retention_report"
require_relative "orchestrated_drain_report"

module Bench
  class Report
    include PeerReport
    include RetentionReport
    include OrchestratedDrainReport

    OBSERVATIONS = "## Observations"
    LINEAR_REFERENCE_MS = 312.0 # tasker-core's published p50 for the linear shape through its Ruby worker

    def initialize(results_path, machine_path, out_path, mode, seconds)
      @rows = File.readlines(results_path).map { |l| JSON.parse(l, symbolize_names: true) }
      @machine = JSON.parse(File.read(machine_path), symbolize_names: true)
      @out_path = out_path
      @mode = mode
      @seconds = seconds.to_f
    end

    def write
      kept = File.exist?(@out_path) ? File.read(@out_path)[/^#{Regexp.escape(OBSERVATIONS)}\b.*/m] : nil
      text = [header, machine, summary, ffi, drain, pickup, workflow, memory, retention, profile, failures].compact.join("\n")
      text += "\n#{kept || "#{OBSERVATIONS}\n\n(none yet)\n"}"
      File.write(@out_path, text)
    end

    private

    # --- data -----------------------------------------------------------------------------

    def results(bench, **match)
      @rows.select do |r|
        r[:result] && r[:result][:bench] == bench && match.all? { |k, v| r[:result][k] == v }
      end
    end

    def rounds
      @rows.map { |r| r[:round] }.uniq.sort
    end

    def command(bench)
      row = @rows.find { |r| r[:result] && r[:result][:bench] == bench }
      row && row[:command]
    end

    def values(bench, key, **match)
      results(bench, **match).map { |r| r[:result][key] }.compact
    end

    def median(bench, key, **match)
      Bench.median(values(bench, key, **match))
    end

    # Per round: numerator(round) / denominator(round), for rounds having both.
    def round_ratios(numerator, denominator)
      rounds.filter_map do |round|
        n = numerator.call(round)
        d = denominator.call(round)
        n / d if n && d && d.positive?
      end
    end

    def in_round(bench, key, round, **match)
      row = results(bench, **match).find { |r| r[:round] == round }
      row && row[:result][key]
    end

    # --- formatting -----------------------------------------------------------------------

    def fmt(value, digits = 1)
      return "–" if value.nil?
      return value.to_s unless value.is_a?(Numeric)

      rounded = value.round(digits)
      digits.zero? ? rounded.round.to_s.reverse.scan(/\d{1,3}/).join(",").reverse : format("%.#{digits}f", rounded)
    end

    def ratio(value)
      value.nil? ? "–" : format("%.2f×", value)
    end

    # A table: one row per metric, a column per run, and the median.
    def metric_table(bench, metrics, **match)
      rows = results(bench, **match)
      return "_no results_\n" if rows.empty?

      head = "| metric | #{rows.map { |r| "run #{r[:round]}" }.join(" | ")} | **median** |\n"
      head += "|---|#{"---:|" * rows.size}---:|\n"
      body = metrics.map do |label, key, digits|
        vals = rows.map { |r| r[:result][key] }
        "| #{label} | #{vals.map { |v| fmt(v, digits) }.join(" | ")} | **#{fmt(Bench.median(vals.compact), digits)}** |"
      end
      "#{head}#{body.join("\n")}\n"
    end

    def ratio_line(label, ratios)
      return "" if ratios.empty?

      "#{label}: per run #{ratios.map { |r| ratio(r) }.join(", ")}; **median #{ratio(Bench.median(ratios))}**\n"
    end

    def met(passed)
      if passed.nil?
        "–"
      else
        (passed ? "yes" : "**no**")
      end
    end

    # --- sections -------------------------------------------------------------------------

    def header
      count = rounds.size
      quick = @mode == "quick"
      <<~MD
        # Benchmarks

        Produced by `bin/bench#{quick ? " --quick" : ""}` — **#{quick ? "QUICK" : "full"} mode** — on #{Time.now.utc.strftime("%Y-%m-%d %H:%M UTC")}, in #{(@seconds / 60).round(1)} minutes.
        #{quick ? "Quick mode: fewer tasks and iterations; the drain, its baseline and the memory benchmark ran once, the others #{count} times. Run `bin/bench` for the full numbers.\n" : "Each benchmark ran #{count} times; the tables give every run and the median.\n"}
        `bin/bench` runs `bin/setup` (quietly), then each script below; every script prints a
        `RESULT {json}` line that this file is built from. Ratios are computed inside each run
        (the two sides measured back to back, in the same process or the same round) and then
        their median is taken. Each benchmark creates its own `tw_bench_*` database and drops it.
        Each round starts on a settled machine: a `CHECKPOINT`, then up to 2 minutes for the
        1-minute load average to fall below 1 (the latency benchmarks run first in a round, and
        the round before ends with the 100k-step memory benchmark).
        This file is rewritten by `bin/bench` except for the Observations section at the end.
      MD
    end

    def machine
      m = @machine
      s = m[:postgresql_settings] || {}
      loads = @rows.map { |r| r[:load_before] }.compact.map(&:to_f)
      busy = loads.any? { |l| l > 0.7 }
      text = <<~MD
        ## Machine

        | | |
        |---|---|
        | cores (`nproc`) | #{m[:nproc]} |
        | CPU | #{m[:cpu]} |
        | RAM | #{m[:ram_gb]} GB |
        | OS | #{m[:os]}, Linux #{m[:kernel]} |
        | PostgreSQL | #{m[:postgresql]} |
        | PostgreSQL settings | synchronous_commit=#{s[:synchronous_commit]}, fsync=#{s[:fsync]}, wal_sync_method=#{s[:wal_sync_method]}, commit_delay=#{s[:commit_delay]}, shared_buffers=#{s[:shared_buffers]}, autovacuum=#{s[:autovacuum] || "not recorded"} |
        | durable one-row commit, p50 | #{m[:commit_p50_ms]} ms |
        | Ruby | #{m[:ruby]}, pg gem #{m[:pg_gem]} |
        | Rust | #{m[:rustc]}, extension built with the #{m[:cargo_profile]} profile at #{m[:extension_built_at]} |
        | code | git #{m[:git_commit]}#{m[:git_dirty_files].to_i.positive? ? " plus #{m[:git_dirty_files]} uncommitted file(s) in src/ ext/ lib/ migrations/" : ""} |
        | load average before each script run | #{loads.empty? ? "–" : "#{fmt(loads.min, 2)} – #{fmt(loads.max, 2)} (1-minute)"} |
      MD
      if busy
        text += "\n**Noisy:** the machine was not idle (1-minute load average up to #{fmt(loads.max, 2)} before a " \
                "script started, on #{m[:nproc]} cores): other work shared the CPUs with these runs. Absolute numbers " \
                "vary from run to run; the side-by-side ratios are the numbers to compare.\n"
      end
      text
    end

    def ffi_ratios
      round_ratios(->(r) { in_round("ffi_handoff", :loopback_us, r) }, ->(r) { in_round("ffi_handoff", :queue_us, r) })
    end

    def drain_ratios
      round_ratios(->(r) { in_round("drain", :steps_per_s, r, concurrency: 10) },
                   ->(r) { in_round("baseline_ruby_pgmq_worker", :steps_per_s, r) })
    end

    def summary
      ffi_ratio = Bench.median(ffi_ratios)
      drain_ratio = Bench.median(drain_ratios)
      pickup = median("pickup_latency", :p50_ms)
      linear = median("workflow_latency", :linear_p50_ms)
      idle = median("memory", :idle_rss_mb)
      growth = values("memory", :growth_from_10pct_mb).max
      <<~MD
        ## Summary

        | benchmark | tasker_worker (median) | baseline | ratio | target | met |
        |---|---:|---:|---:|---|---|
        | 1. FFI hand-off, µs per round trip | #{fmt(median("ffi_handoff", :loopback_us), 2)} | #{fmt(median("ffi_handoff", :queue_us), 2)} (`Thread::Queue` ping-pong, same process) | #{ratio(ffi_ratio)} | ≤ 1.0× | #{met(ffi_ratio && ffi_ratio <= 1.0)} |
        | 2. Worker drain, steps/s at concurrency 10 | #{fmt(median("drain", :steps_per_s, concurrency: 10), 0)} | #{fmt(median("baseline_ruby_pgmq_worker", :steps_per_s), 0)} (pure-Ruby PGMQ worker, 10 threads, same round) | #{ratio(drain_ratio)} | ≥ 5× | #{met(drain_ratio && drain_ratio >= 5)} |
        | 3. Pickup latency p50 (enqueue → handler start), ms | #{fmt(pickup, 2)} | – (no same-run baseline; target shown) | #{ratio(pickup && pickup / 3.0)} of target | ≤ 3 ms | #{met(pickup && pickup <= 3)} |
        | 4. Workflow latency, linear p50, ms | #{fmt(linear, 1)} | #{fmt(LINEAR_REFERENCE_MS, 0)} (tasker-core's published figure, not measured here) | #{ratio(linear && linear / LINEAR_REFERENCE_MS)} | ≤ 25 ms | #{met(linear && linear <= 25)} |
        | 5. Memory, idle RSS (10 threads), MB | #{fmt(idle, 1)} | – | – | ≤ 80 MB, no growth | #{met(idle && growth && idle <= 80 && growth <= 5)} (largest growth from 10% to the end of a run: #{fmt(growth, 1)} MB) |
        #{retention_summary_row}
      MD
    end

    def ffi
      <<~MD
        ## 1. FFI hand-off (no database)

        Command: `#{command("ffi_handoff")}`

        `queue`: two Ruby threads ping-pong an Integer through two `Thread::Queue`s. `loopback`:
        `TaskerWorker::Native::Loopback#next_step(1.0)` → event Hash, then `#complete(event_id,
        {success: true, result: {}})` (the ratio's numerator). `loopback + processor`: the same
        plus what `TaskerWorker::Processor` does per step (StepContext, registry resolve, handler
        call, ResultMapper). All three in one process, back to back.

        #{metric_table("ffi_handoff", [["round trips per variant", :round_trips, 0], ["queue: µs per round trip", :queue_us, 2], ["queue: round trips/s", :queue_per_s, 0], ["loopback: µs per round trip", :loopback_us, 2], ["loopback: round trips/s", :loopback_per_s, 0], ["loopback + processor: µs per round trip", :loopback_processor_us, 2], ["loopback + processor: round trips/s", :loopback_processor_per_s, 0]])}
        #{ratio_line("Ratio loopback / queue (µs per round trip)", ffi_ratios)}#{ratio_line("Ratio loopback + processor / queue", round_ratios(->(r) { in_round("ffi_handoff", :loopback_processor_us, r) }, ->(r) { in_round("ffi_handoff", :queue_us, r) }))}
      MD
    end

    def drain
      concurrencies = values("drain", :concurrency).uniq.sort
      table = drain_table(concurrencies)
      batching = concurrencies.map do |c|
        "concurrency #{c}: #{fmt(median("drain", :steps_per_read, concurrency: c), 1)} steps per read, " \
          "#{fmt(median("drain", :steps_per_commit, concurrency: c), 1)} per commit"
      end
      [<<~MD, drain_orchestrated].compact.join("\n")
        ## 2. Worker drain (#{fmt(median("drain", :steps), 0)} single-step tasks, no-op Ruby handler)

        Commands: `#{command("drain")}`, then `#{command("baseline_ruby_pgmq_worker")}` (each round).

        Each measurement gets a fresh database holding the pre-enqueued tasks (enqueued with `pg`,
        1,000 tasks per transaction, the same rows `Client#create_task` writes; not timed). Timed:
        from `Worker#start` until `status[:counters][:succeeded]` reaches N (polled every 50 ms);
        afterwards every step is checked to be `enqueued_for_orchestration`. Worker alone, no
        orchestrator; `synchronous_commit=#{values("drain", :synchronous_commit).uniq.join("/")}`.
        The baseline (`bench/baseline_ruby_pgmq_worker.rb`) is a pure-Ruby PGMQ worker on the `pg`
        gem: 10 threads, one connection and prepared statements each, per message `pgmq.read(q, 30, 1)`,
        a claim transaction (lock the step, retire the current transition, insert `in_progress`,
        attempts + 1), the handler, and one completion transaction (retire the claim, insert
        `enqueued_for_orchestration`, write `results`, `tasker.pgmq_send_with_notify` to
        `orchestration_step_results`, `pgmq.archive`).
        #{peer_commands}
        #{table}
        #{ratio_line("Ratio tasker_worker at concurrency 10 / baseline (same round)", drain_ratios)}#{peer_ratios}
        Batching (median): #{batching.join("; ")}.

        CPU time per step during the drain (median over the runs; µs; from /proc: this process's
        threads by name, and the PostgreSQL backends connected to the benchmark's database —
        PostgreSQL's shared processes such as the WAL writer are not counted). "cores busy" is
        that CPU time divided by the wall time (the machine has #{@machine[:nproc]}).

        #{cpu_table(concurrencies)}
        PostgreSQL's work per step during the drain (median over the runs; bench/support/pg_work.rb):
        WAL records and bytes of the benchmark's database (pg_walinspect), commits, round trips
        (claim calls that read messages + commit transactions).

        #{PgWorkTable.render(concurrencies.map { |c| ["tasker_worker, concurrency #{c}", results("drain", concurrency: c)] } + [["peer: batched PGMQ, 10 threads", results("peer_batched_pgmq")], ["peer: protocol floor, 10 threads", results("peer_protocol_floor")]].reject { |_, rows| rows.empty? }) { |v, d| fmt(v, d) }}
        #{sidekiq_cpu}
      MD
    end

    CPU_COLUMNS = [["Rust runtime threads", "rust runtime threads"], ["Ruby handler threads", "ruby handler threads"],
                   ["Ruby baseline threads", "ruby baseline threads"], ["PostgreSQL backends", "postgres backends"],
                   %w[total total], ["cores busy", "cores busy"]].freeze

    def cpu_table(concurrencies)
      subjects = concurrencies.map { |c| ["tasker_worker, concurrency #{c}", results("drain", concurrency: c)] }
      subjects << ["baseline, 10 threads", results("baseline_ruby_pgmq_worker")]
      subjects << ["peer: batched PGMQ, 10 threads", results("peer_batched_pgmq")] if results("peer_batched_pgmq").any?
      subjects << ["peer: protocol floor, 10 threads", results("peer_protocol_floor")] if results("peer_protocol_floor").any?
      head = "| | #{CPU_COLUMNS.map(&:first).join(" | ")} |\n|---|#{"---:|" * CPU_COLUMNS.size}\n"
      lines = subjects.map do |label, rows|
        cells = CPU_COLUMNS.map do |_, key|
          vals = rows.map { |r| (r[:result][:cpu_us_per_step] || {})[key.to_sym] }.compact
          fmt(Bench.median(vals), key == "cores busy" ? 2 : 0)
        end
        "| #{label} | #{cells.join(" | ")} |"
      end
      "#{head}#{lines.join("\n")}\n"
    end

    def drain_table(concurrencies)
      rs = rounds.select do |r|
        in_round("drain", :steps_per_s, r,
                 concurrency: concurrencies.first) || in_round("baseline_ruby_pgmq_worker", :steps_per_s, r)
      end
      head = "| steps/s | #{rs.map { |r| "run #{r}" }.join(" | ")} | **median** |\n|---|#{"---:|" * rs.size}---:|\n"
      lines = concurrencies.map do |c|
        vals = rs.map { |r| in_round("drain", :steps_per_s, r, concurrency: c) }
        "| tasker_worker, concurrency #{c} | #{vals.map do |v|
                                                 fmt(v, 0)
                                               end.join(" | ")} | **#{fmt(Bench.median(vals.compact), 0)}** |"
      end
      base = rs.map { |r| in_round("baseline_ruby_pgmq_worker", :steps_per_s, r) }
      lines << "| baseline: pure-Ruby PGMQ worker, 10 threads | #{base.map do |v|
                                                                    fmt(v, 0)
                                                                  end.join(" | ")} | **#{fmt(
                                                                    Bench.median(base.compact), 0
                                                                  )}** |"
      lines.concat(peer_rows(rs))
      "#{head}#{lines.join("\n")}\n"
    end

    def pickup
      <<~MD
        ## 3. Pickup latency (idle worker, concurrency 4)

        Command: `#{command("pickup_latency")}`

        Single steps, one at a time, 20 ms apart. **enqueue**: the task and step rows are written
        first (not timed), then each step's message is sent on its own with
        `tasker.pgmq_send_with_notify`, as the orchestrator enqueues a step; latency = this
        process's monotonic clock right before the send → the same clock at the start of the
        handler. **create_task**: `Client#create_task` of a one-step task (task and step rows and
        the send in one transaction), from before the call and from its return. The breakdown
        (create_task runs) uses the transition timestamps (each the start of its transaction)
        and the handler's wall clock, same host.

        #{metric_table("pickup_latency", [["steps per way", :steps, 0], ["enqueue → handler start p50 (ms)", :p50_ms, 2], ["enqueue → handler start p95 (ms)", :p95_ms, 2], ["enqueue → handler start max (ms)", :max_ms, 2], ["create_task call → handler start p50 (ms)", :create_task_pickup_p50_ms, 2], ["create_task call → handler start p95 (ms)", :create_task_pickup_p95_ms, 2], ["create_task call itself p50 (ms)", :create_task_p50_ms, 2], ["create_task return → handler start p50 (ms)", :from_return_p50_ms, 2], ["create_task return → handler start p95 (ms)", :from_return_p95_ms, 2], ["breakdown: create tx start → claim tx start p50 (ms)", :enqueue_tx_to_claim_tx_p50_ms, 2], ["breakdown: claim tx start → handler start p50 (ms)", :claim_tx_to_handler_p50_ms, 2]])}
        #{pickup_peer}
      MD
    end

    def workflow
      metrics = %w[linear diamond].flat_map do |shape|
        [["#{shape}: tasks", :"#{shape}_tasks", 0],
         ["#{shape}: created → completed p50 (ms, DB clock)", :"#{shape}_p50_ms", 1],
         ["#{shape}: created → completed p95 (ms, DB clock)", :"#{shape}_p95_ms", 1],
         ["#{shape}: wall clock p50 (ms)", :"#{shape}_wall_p50_ms", 1],
         ["#{shape}: wall clock p95 (ms)", :"#{shape}_wall_p95_ms", 1],
         ["#{shape}, per step: enqueued → claimed p50 (ms)", :"#{shape}_step_enqueued_to_claimed_p50_ms", 2],
         ["#{shape}, per step: claimed → result committed p50 (ms)", :"#{shape}_step_claimed_to_result_p50_ms", 2],
         ["#{shape}, per step: result → orchestrator marks complete p50 (ms)",
          :"#{shape}_step_result_to_orchestrated_p50_ms", 2]]
      end
      linear = median("workflow_latency", :linear_p50_ms)
      <<~MD
        ## 4. Workflow latency (embedded orchestrator, concurrency 10)

        Command: `#{command("workflow_latency")}`

        `examples/tasks/linear_workflow.yaml` (4 steps in a line) and `diamond_workflow.yaml`
        (start → two branches → join) with `examples/handlers/math.rb`, one worker process with
        `orchestrate: true`. Tasks alternate between the shapes, one at a time, each created
        after the previous one settled. DB clock: `tasks.created_at` → `tasks.completed_at` (the
        primary figure); wall clock: right before `create_task` → the orchestrator's
        completed-task counter moving (polled every 1 ms). Every task is checked to be `complete`
        with the right final value.

        #{metric_table("workflow_latency", metrics)}
        Linear p50 against tasker-core's published ≈#{LINEAR_REFERENCE_MS.round} ms (its Ruby worker; not measured here): #{ratio(linear && linear / LINEAR_REFERENCE_MS)}.
      MD
    end

    def memory
      samples = results("memory").map do |r|
        list = r[:result][:samples].map { |s| "#{s[:pct]}%: #{s[:rss_mb]}" }.join(", ")
        "- run #{r[:round]}: #{list} MB"
      end
      <<~MD
        ## 5. Memory (worker with 10 threads, no-op steps)

        Command: `#{command("memory")}`

        VmRSS (`/proc/self/status`) of the measured process: after `require "tasker_worker"`, 3 s
        after the worker started with nothing to do, after each 10% of the steps (enqueued by
        another process while the worker runs), 1 s after the last one, and after `GC.start`.

        #{metric_table("memory", [["steps", :steps, 0], ["RSS after require (MB)", :loaded_rss_mb, 1], ["RSS idle worker (MB)", :idle_rss_mb, 1], ["RSS after the steps (MB)", :after_rss_mb, 1], ["RSS after GC.start (MB)", :after_gc_rss_mb, 1], ["growth from the 10% sample to the end (MB)", :growth_from_10pct_mb, 1], ["growth over the second half of the steps (MB)", :growth_second_half_mb, 1]])}
        RSS during each run:
        #{samples.join("\n")}
      MD
    end

    FUNCTIONS = %w[pgmq.read pgmq.archive tasker.pgmq_send_with_notify tasker.extract_queue_namespace].freeze

    def profile
      rows = results("drain_profile")
      return nil if rows.empty?

      head = "| | steps/s | transactions | PostgreSQL backends | Rust runtime | Ruby threads | " \
             "#{FUNCTIONS.map { |f| "`#{f}()`" }.join(" | ")} |\n|---|#{"---:|" * (5 + FUNCTIONS.size)}\n"
      lines = rows.map do |row|
        r = row[:result]
        cpu = r[:cpu_us_per_step] || {}
        functions = r.dig(:per_step, :functions) || {}
        fn = FUNCTIONS.map do |name|
          f = functions[name.to_sym]
          f ? "#{fmt(f[:total_us], 0)} (#{fmt(f[:calls], 2)} calls)" : "–"
        end
        ruby = (cpu[:"ruby handler threads"] || 0) + (cpu[:"ruby baseline threads"] || 0) + (cpu[:"ruby main thread"] || 0)
        "| #{r[:subject] == "tasker_worker" ? "tasker_worker, concurrency #{r[:concurrency]}" : "baseline, 10 threads"} | " \
          "#{fmt(r[:steps_per_s],
                 0)} | #{fmt(r.dig(:per_step, :db, :xact_commit), 2)} | #{fmt(cpu[:"postgres backends"], 0)} | " \
          "#{fmt(cpu[:"rust runtime threads"], 0)} | #{fmt(ruby, 0)} | #{fn.join(" | ")} |"
      end
      tables = rows.map do |row|
        r = row[:result]
        scans = (r.dig(:per_step, :tables) || {}).select { |name, _| name.to_s.start_with?("tasker.") }.sort
                                                 .map do |name, t|
          "#{name} #{fmt(t[:idx_scan],
                         1)}/#{fmt(t[:seq_scan], 2)}"
        end
        "- #{r[:subject]}#{r[:subject] == "tasker_worker" ? " (concurrency #{r[:concurrency]})" : ""}: #{scans.join(", ")}"
      end
      <<~MD
        ## Where the time goes (diagnostic, one run)

        Command: `#{command("drain_profile")}`

        #{fmt(rows.first[:result][:steps], 0)} no-op steps drained by tasker_worker and by the baseline, each in a fresh
        database with `track_functions = 'all'`; statistics read from `pg_stat_database`,
        `pg_stat_user_tables` and `pg_stat_user_functions` after the sessions ended. All figures
        are **per step**: transactions committed, CPU µs (as above), and µs inside the PGMQ/tasker
        SQL functions (total time, including functions they call; `extract_queue_namespace` is
        called by `pgmq_send_with_notify`).

        #{head}#{lines.join("\n")}

        Index scans / sequential scans per step on the `tasker` tables:
        #{tables.join("\n")}
      MD
    end

    def failures
      failed = @rows.select { |r| r[:error] }
      return nil if failed.empty?

      "## Failed runs\n\n#{failed.map { |r| "- round #{r[:round]}: `#{r[:command]}`: #{r[:error]}" }.join("\n")}\n"
    end
  end
end

Bench::Report.new(*ARGV.first(5)).write if $PROGRAM_NAME == __FILE__
