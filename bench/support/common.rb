# frozen_string_literal: true

# Small helpers shared by the benchmark scripts: clocks, statistics, RSS, the RESULT line,
# and the quick/full sizing switch.
require "json"

module Bench
  ROOT = File.expand_path("../..", __dir__)
  DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/tasker_worker_development"

  module_function

  # --quick on the command line or BENCH_QUICK=1 in the environment.
  def quick?
    ARGV.include?("--quick") || ENV["BENCH_QUICK"] == "1"
  end

  # `full` normally, `quick` in quick mode; BENCH_<NAME> overrides both (for trying things out).
  def size(name, full:, quick:)
    override = ENV["BENCH_#{name.to_s.upcase}"]
    return Integer(override) if override && !override.empty?

    quick? ? quick : full
  end

  def database_url
    url = ENV["DATABASE_URL"]
    url.nil? || url.empty? ? DEFAULT_DATABASE_URL : url
  end

  def now
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  def median(values)
    percentile(values, 50)
  end

  # Linear interpolation between closest ranks (as PostgreSQL's percentile_cont).
  def percentile(values, pct)
    return nil if values.empty?

    sorted = values.sort
    rank = (pct / 100.0) * (sorted.size - 1)
    low = sorted[rank.floor]
    high = sorted[rank.ceil]
    low + (high - low) * (rank - rank.floor)
  end

  # Resident set size of this process in MB (VmRSS from /proc/self/status).
  def rss_mb
    kb = File.foreach("/proc/self/status").find { |l| l.start_with?("VmRSS:") }.split[1].to_i
    (kb / 1024.0).round(1)
  end

  def log(message)
    warn "[#{File.basename($PROGRAM_NAME, ".rb")}] #{message}"
  end

  # The machine-readable summary bin/bench parses: one line, `RESULT {json}`.
  def result(fields)
    $stdout.puts "RESULT #{JSON.generate(fields)}"
    $stdout.flush
  end

  def round(value, digits = 1)
    value&.round(digits)
  end

  # Waits until the block is truthy, checking every `interval`; raises after `timeout` s.
  def wait_until(timeout:, interval: 0.05, what: "condition")
    deadline = now + timeout
    loop do
      value = yield
      return value if value
      raise "timed out after #{timeout}s waiting for #{what}" if now > deadline

      sleep interval
    end
  end
end
