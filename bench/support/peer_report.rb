# frozen_string_literal: true

# The peers (bench/peer_batched_pgmq.rb, bench/peer_protocol_floor.rb, bench/peer_sidekiq.rb,
# bench/peer_sidekiq_pickup.rb)
# in BENCHMARKS.md: their rows of the drain table, their CPU, the ratios of tasker_worker at
# concurrency 10 to each, same round, and pickup latency's Sidekiq peer. Included by Bench::Report (bench/support/report.rb).
module Bench
  module PeerReport
    PEERS = [["peer_batched_pgmq", "peer: batched pure-Ruby PGMQ worker (read 10 + send_batch + archive), 10 threads"],
             ["peer_protocol_floor", "peer: tasker-core protocol floor (claim and result in one statement each, 20 a batch), 10 threads"],
             ["peer_sidekiq", "peer: Sidekiq 6 on a local Redis (no persistence), `-c 10`"]].freeze

    # The peers' commands and what they do, for the drain section's text.
    def peer_commands
      ran = PEERS.map(&:first).select { |bench| results(bench).any? }
      return "" if ran.empty?

      "Peers, same rounds: #{ran.map { |bench| "`#{command(bench)}`" }.join(", ")}. The batched PGMQ " \
        "worker does less per message (no claim, transitions or step results: read 10, handler, " \
        "send_batch + archive in one durable transaction); the protocol floor writes the rows " \
        "tasker-core's protocol needs (the in_progress and enqueued_for_orchestration transitions, " \
        "the attempt and the results on the step, the results message, the archive) in one " \
        "statement for the claim and one for the result, without the locks, checks and hydration " \
        "a worker needs (bench/peer_protocol_floor.rb says what it leaves out); Sidekiq runs on " \
        "a Redis without persistence, timed from its first taken job to an empty queue.\n"
    end

    # The Sidekiq peer's CPU per job (its process and redis-server), medians.
    def sidekiq_cpu
      rows = results("peer_sidekiq")
      return "" if rows.empty?

      cpu = ->(key) { fmt(Bench.median(rows.map { |r| (r[:result][:cpu_us_per_step] || {})[key] }.compact), 0) }
      "Sidekiq peer, CPU µs per job (median): sidekiq process #{cpu.call(:"sidekiq process")}, " \
        "redis-server #{cpu.call(:"redis-server")}.\n"
    end

    # tasker_worker at concurrency 10 / each peer, same round.
    def peer_ratios
      PEERS.filter_map do |bench, label|
        ratios = round_ratios(->(r) { in_round("drain", :steps_per_s, r, concurrency: 10) },
                              ->(r) { in_round(bench, :steps_per_s, r) })
        ratio_line("Ratio tasker_worker at concurrency 10 / #{label.sub(/\Apeer: /, "")} (same round)", ratios) unless ratios.empty?
      end.join
    end

    # Pickup latency's peer (bench/peer_sidekiq_pickup.rb): its p50 per round and the ratio of
    # tasker_worker's enqueue -> handler start p50 to it, same round.
    def pickup_peer
      rows = results("peer_sidekiq_pickup")
      return "" if rows.empty?

      ratios = round_ratios(->(r) { in_round("pickup_latency", :p50_ms, r) },
                            ->(r) { in_round("peer_sidekiq_pickup", :p50_ms, r) })
      "Peer, same rounds: `#{command("peer_sidekiq_pickup")}`: an idle Sidekiq 6 (`-c 4`, Redis without " \
        "persistence) gets single jobs 20 ms apart; push -> perform start p50 per run " \
        "#{rows.map { |r| fmt(r[:result][:p50_ms], 2) }.join(" / ")} ms (p95 median " \
        "#{fmt(Bench.median(values("peer_sidekiq_pickup", :p95_ms)), 2)} ms).\n" \
        "#{ratio_line("Ratio tasker_worker enqueue → handler start p50 / Sidekiq push → perform start p50 (same round)", ratios)}"
    end

    # Rows of the drain table (steps/s per round and the median) for the peers that ran.
    def peer_rows(rounds)
      PEERS.filter_map do |bench, label|
        vals = rounds.map { |r| in_round(bench, :steps_per_s, r) }
        next if vals.compact.empty?

        "| #{label} | #{vals.map { |v| fmt(v, 0) }.join(" | ")} | **#{fmt(Bench.median(vals.compact), 0)}** |"
      end
    end
  end
end
