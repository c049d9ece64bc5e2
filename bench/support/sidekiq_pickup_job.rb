# frozen_string_literal: true

# The job bench/peer_sidekiq_pickup.rb times (loaded by `sidekiq -r`): it reads the system-wide
# monotonic clock first thing and records, in Redis, how long after `enqueued_at` (the same
# clock in the pushing process, right before its push) it started.
require "json"
require "sidekiq"

class BenchPickupJob
  include Sidekiq::Worker

  def perform(seq, enqueued_at)
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    Sidekiq.redis { |r| r.rpush("bench:pickup", JSON.generate([seq, started - enqueued_at])) }
  end
end
