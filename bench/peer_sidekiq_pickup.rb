# frozen_string_literal: true

# Pickup latency's peer (issue 19): an idle Sidekiq 6 (`-c 4`, as the worker in
# bench/pickup_latency.rb) on a private local Redis without persistence gets single jobs one
# at a time, 20 ms apart, each pushed with Sidekiq::Client.push. Latency = the pushing
# process's CLOCK_MONOTONIC right before the push -> the same clock (system-wide on Linux) at
# the start of the job's perform. A few jobs first warm it up (not counted).
#
# Needs the Debian packages ruby-sidekiq and redis-server (bin/bench installs them, as root,
# or says how); never needed by the tests.
#
#   ruby bench/peer_sidekiq_pickup.rb [--quick]
require "json"
require_relative "peer_sidekiq"

module Bench
  module SidekiqPickupPeer
    JOB_FILE = File.join(__dir__, "support", "sidekiq_pickup_job.rb")
    SPACING = 0.020
    CONCURRENCY = 4
    WARM_UP = 5

    module_function

    def run(count)
      SidekiqPeer.with_client(JOB_FILE) do |redis_url, _redis_pid|
        SidekiqPeer.with_sidekiq(redis_url, CONCURRENCY, JOB_FILE) { measure(count) }
      end
    end

    def measure(count)
      push_each(WARM_UP, -WARM_UP) # seq < 0: warm-up, waited for, not counted
      Bench.wait_until(timeout: 60, interval: 0.01, what: "sidekiq's warm-up jobs") { recorded.size >= WARM_UP }
      sleep 1 # idle again
      push_each(count, 0)
      latencies = Bench.wait_until(timeout: 60, interval: 0.01, what: "#{count} jobs to start") do
        done = recorded.reject { |seq, _| seq.negative? }
        done.map { |_, seconds| seconds * 1000 } if done.size >= count
      end
      p50, p95 = [50, 95].map { |pct| Bench.percentile(latencies, pct).round(3) }
      Bench.log(format("sidekiq -c %d: %d jobs: push -> perform start p50 %.2f ms, p95 %.2f ms, max %.2f ms " \
                       "(Redis without persistence)", CONCURRENCY, count, p50, p95, latencies.max))
      Bench.result(bench: "peer_sidekiq_pickup", steps: count, concurrency: CONCURRENCY, p50_ms: p50, p95_ms: p95,
                   max_ms: latencies.max.round(3), sidekiq_version: Sidekiq::VERSION, quick: Bench.quick?)
    end

    def push_each(count, first_seq)
      count.times do |i|
        before = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        Sidekiq::Client.push("class" => BenchPickupJob, "args" => [first_seq + i, before])
        pause = before + SPACING - Process.clock_gettime(Process::CLOCK_MONOTONIC)
        sleep pause if pause.positive?
      end
    end

    def recorded
      Sidekiq.redis { |r| r.lrange("bench:pickup", 0, -1) }.map { |line| JSON.parse(line) }
    end
  end
end

Bench::SidekiqPickupPeer.run(Bench.size(:pickup_steps, full: 300, quick: 50)) if $PROGRAM_NAME == __FILE__
