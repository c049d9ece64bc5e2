# frozen_string_literal: true

# Prints the machine's description as JSON for bin/bench: cores, CPU, RAM, load, versions,
# the PostgreSQL settings that decide commit cost, and the median latency of a durable
# single-row commit on this server (a throw-away database).
#
#   ruby -Ilib bench/support/machine.rb
require "json"
require "open3"
require_relative "common"
require_relative "database"

module Bench
  module Machine
    module_function

    def describe
      conn = PG.connect(Bench.database_url)
      settings = %w[server_version synchronous_commit fsync wal_sync_method commit_delay shared_buffers max_connections autovacuum]
                 .to_h { |name| [name, conn.exec("SHOW #{name}").getvalue(0, 0)] }
      { nproc: `nproc`.strip.to_i,
        cpu: File.read("/proc/cpuinfo")[/^model name\s*:\s*(.+)$/, 1],
        ram_gb: (meminfo("MemTotal") / 1024.0 / 1024).round(1),
        load_average: File.read("/proc/loadavg").split.first(3).join(" "),
        kernel: `uname -r`.strip,
        os: File.read("/etc/os-release")[/^PRETTY_NAME="?([^"\n]+)"?$/, 1],
        postgresql: conn.exec("SELECT version()").getvalue(0, 0),
        postgresql_settings: settings,
        commit_p50_ms: commit_latency,
        ruby: RUBY_DESCRIPTION,
        pg_gem: PG::VERSION,
        rustc: command("rustc", "-V"),
        cargo_profile: ENV.fetch("TASKER_WORKER_CARGO_PROFILE", "release"),
        git_commit: command("git", "rev-parse", "--short", "HEAD"),
        git_dirty_files: command("git", "status", "--porcelain", "--", "src", "ext", "lib", "migrations").lines.size,
        extension_built_at: File.mtime(File.join(Bench::ROOT, "lib/tasker_worker/tasker_worker_ext.so")).utc.iso8601 }
    ensure
      conn&.close
    end

    def meminfo(key)
      File.foreach("/proc/meminfo").find { |l| l.start_with?("#{key}:") }.split[1].to_i
    end

    def command(*argv)
      out, status = Open3.capture2(*argv, chdir: Bench::ROOT)
      status.success? ? out.strip : "unknown"
    rescue SystemCallError
      "unknown"
    end

    # Median of 200 autocommitted one-row INSERTs (synchronous_commit as configured).
    def commit_latency
      url = ThrowawayDatabase.create(migrate: false)
      conn = PG.connect(url)
      conn.exec("CREATE TABLE commits (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
      times = Array.new(200) do
        started = Bench.now
        conn.exec("INSERT INTO commits DEFAULT VALUES")
        (Bench.now - started) * 1000
      end
      Bench.median(times).round(3)
    ensure
      conn&.close
      ThrowawayDatabase.drop(url) if url
    end
  end
end

if $PROGRAM_NAME == __FILE__
  require "time"
  puts JSON.generate(Bench::Machine.describe)
end
