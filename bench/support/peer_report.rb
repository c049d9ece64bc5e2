# frozen_string_literal: true

# The drain's peers (bench/peer_batched_pgmq.rb, bench/peer_sidekiq.rb) in BENCHMARKS.md: their
# rows of the drain table, their CPU, and the ratios of tasker_worker at concurrency 10 to each,
# same round. Included by Bench::Report (bench/support/report.rb).
module Bench
  module PeerReport
    PEERS = [["peer_batched_pgmq", "peer: batched pure-Ruby PGMQ worker (read 10 + send_batch + archive), 10 threads"],
             ["peer_sidekiq", "peer: Sidekiq 6 on a local Redis (no persistence), `-c 10`"]].freeze

    # The peers' commands and what they do, for the drain section's text.
    def peer_commands
      ran = PEERS.map(&:first).select { |bench| results(bench).any? }
      return "" if ran.empty?

      "Peers, same rounds: #{ran.map { |bench| "`#{command(bench)}`" }.join(", ")}. The batched PGMQ " \
        "worker does less per message (no claim, transitions or step results: read 10, handler, " \
        "send_batch + archive in one durable transaction); Sidekiq runs on a Redis without " \
        "persistence, timed from its first taken job to an empty queue.\n"
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
