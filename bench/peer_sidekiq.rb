# frozen_string_literal: true

# A peer for the drain (issue 19): Sidekiq 6 on a local Redis, `-c 10`, N no-op jobs.
#
# A private redis-server (port BENCH_REDIS_PORT, default 6391; no persistence: `--save ""
# --appendonly no`, Redis's in-memory mode, i.e. NOT durable, unlike every tasker_worker
# commit) is started for the measurement and stopped after it. N jobs of a no-op class are
# pushed first (Sidekiq::Client.push_bulk, 1,000 per call; not timed); then `sidekiq -c 10`
# is started as a child process and timed from when it takes its first job until the queue is
# empty (LLEN polled every 2 ms; the process's boot, about a second, is left out; the last
# no-op jobs finish within microseconds); afterwards Sidekiq::Stats must count N processed
# and none failed. CPU per job: the sidekiq process and the redis-server, from /proc.
#
# Needs the Debian packages ruby-sidekiq and redis-server (bin/bench installs them, as root,
# or says how); never needed by the tests.
#
#   ruby bench/peer_sidekiq.rb [--quick] [--concurrency 10]
require "English"
require "socket"
require "tmpdir"
require_relative "support/common"

module Bench
  module SidekiqPeer
    JOB_FILE = File.join(__dir__, "support", "sidekiq_noop_job.rb")

    module_function

    def run(jobs, concurrency)
      with_client(JOB_FILE) do |redis_url, redis_pid|
        jobs.times.each_slice(1000) { |slice| Sidekiq::Client.push_bulk("class" => BenchNoopJob, "args" => slice.map { |i| [i] }) }
        measure(jobs, concurrency, redis_url, redis_pid)
      end
    end

    # A private Redis (BENCH_REDIS_PORT, default 6391) with this process as an empty Sidekiq
    # client of it and `job_file` loaded; yields the Redis URL and pid. Shared with
    # bench/peer_sidekiq_pickup.rb.
    def with_client(job_file)
      port = Integer(ENV.fetch("BENCH_REDIS_PORT", "6391"))
      redis_url = "redis://127.0.0.1:#{port}/0"
      with_redis(port) do |redis_pid|
        ENV["REDIS_URL"] = redis_url
        require "sidekiq"
        require "sidekiq/api"
        require job_file
        Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)
        Sidekiq.configure_client { |c| c.redis = { url: redis_url } }
        Sidekiq.redis(&:flushdb)
        yield redis_url, redis_pid
      end
    end

    # `sidekiq -c concurrency -r job_file` on that Redis as a child process, for the block
    # (yields its pid); its log is kept only when the block fails.
    def with_sidekiq(redis_url, concurrency, job_file)
      log = File.join(Dir.tmpdir, "bench_sidekiq_#{Process.pid}.log")
      pid = Process.spawn({ "REDIS_URL" => redis_url }, "sidekiq", "-c", concurrency.to_s, "-r", job_file,
                          "-q", "default", %i[out err] => log)
      yield pid, log
    ensure
      if pid
        Process.kill("TERM", pid)
        Process.wait(pid)
      end
      File.delete(log) if log && File.exist?(log) && $ERROR_INFO.nil?
    end

    def measure(jobs, concurrency, redis_url, redis_pid)
      with_sidekiq(redis_url, concurrency, JOB_FILE) { |pid, log| drain(jobs, concurrency, pid, redis_pid, log) }
    end

    def drain(jobs, concurrency, pid, redis_pid, log)
      queue = Sidekiq::Queue.new("default")
      # Sidekiq::Stats counts processed jobs in Redis only at each heartbeat (every few
      # seconds): the queue's length (LLEN, exact) says instead when the first job was taken
      # and when the last one was.
      first = Bench.wait_until(timeout: 120, interval: 0.002, what: "sidekiq's first job") do
        Bench.now if queue.size < jobs
      end
      cpu_before = { sidekiq: proc_seconds(pid), redis: proc_seconds(redis_pid) }
      Bench.wait_until(timeout: 3600, interval: 0.002, what: "#{jobs} jobs") { queue.size.zero? }
      seconds = Bench.now - first
      cpu = { "sidekiq process" => per_job(proc_seconds(pid) - cpu_before[:sidekiq], jobs),
              "redis-server" => per_job(proc_seconds(redis_pid) - cpu_before[:redis], jobs) }
      Bench.wait_until(timeout: 60, interval: 0.1, what: "sidekiq to count #{jobs} processed") do
        Sidekiq::Stats.new.processed >= jobs
      end
      failed = Sidekiq::Stats.new.failed
      raise "#{failed} sidekiq jobs failed (see #{log})" if failed.positive?

      Bench.log(format("sidekiq -c %d: %d jobs in %.2f s = %.1f jobs/s (Redis without persistence)",
                       concurrency, jobs, seconds, jobs / seconds))
      Bench.log("  CPU µs per job: #{cpu}")
      Bench.result(bench: "peer_sidekiq", concurrency: concurrency, steps: jobs, seconds: seconds.round(3),
                   steps_per_s: (jobs / seconds).round(1), sidekiq_version: Sidekiq::VERSION,
                   cpu_us_per_step: cpu, quick: Bench.quick?)
    end

    def with_redis(port)
      raise "redis-server is not installed (apt-get install redis-server)" unless system("which redis-server > /dev/null")

      pid = Process.spawn("redis-server", "--port", port.to_s, "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", %i[out err] => File::NULL)
      Bench.wait_until(timeout: 10, interval: 0.05, what: "redis-server on port #{port}") do
        TCPSocket.new("127.0.0.1", port).close || true
      rescue SystemCallError
        false
      end
      yield pid
    ensure
      if pid
        Process.kill("TERM", pid)
        Process.wait(pid)
      end
    end

    def proc_seconds(pid)
      text = File.read("/proc/#{pid}/stat")
      fields = text[(text.rindex(")") + 2)..].split
      (fields[11].to_i + fields[12].to_i) / 100.0
    end

    def per_job(seconds, jobs)
      (seconds * 1e6 / jobs).round(1)
    end
  end
end

if $PROGRAM_NAME == __FILE__
  concurrency = Integer(ARGV.each_cons(2).find { |flag, _| flag == "--concurrency" }&.last || 10)
  Bench::SidekiqPeer.run(Bench.size(:drain_tasks, full: 20_000, quick: 2_000), concurrency)
end
