# frozen_string_literal: true

# CPU time spent during a measurement, from /proc (Linux): this process's threads grouped by
# name, and the PostgreSQL backends serving the benchmark's database. Used to say where the
# time goes, per step. A thread or backend that exits before the second snapshot loses its
# time, so take it before stopping the worker. PostgreSQL's shared processes (WAL writer,
# checkpointer, ...) are not counted.
require "pg"
require_relative "common"

module Bench
  module Cpu
    TICK = 100.0 # USER_HZ (getconf CLK_TCK) on Linux

    module_function

    # `database_url`: also the backends connected to that database (other than the one used
    # to look them up).
    def snapshot(database_url = nil)
      { threads: threads, backends: database_url ? backends(database_url) : {}, at: Bench.now }
    end

    # CPU µs per step between two snapshots, by thread group and for the database's backends,
    # plus the number of cores kept busy on average.
    def per_step(before, after, steps)
      groups = Hash.new(0.0)
      after[:threads].each do |tid, (comm, seconds)|
        groups[group(comm)] += seconds - before[:threads].fetch(tid, [comm, 0.0])[1]
      end
      groups["postgres backends"] = after[:backends].sum { |pid, seconds| seconds - before[:backends].fetch(pid, 0.0) }
      total = groups.values.sum
      wall = after[:at] - before[:at]
      groups.transform_values { |s| (s * 1e6 / steps).round(1) }.reject { |_, v| v.zero? }
            .merge("total" => (total * 1e6 / steps).round(1), "cores busy" => (total / wall).round(2))
    end

    # { tid => [comm, seconds] } for this process.
    def threads
      Dir["/proc/self/task/*/stat"].each_with_object({}) do |path, acc|
        comm, seconds = stat(path)
        acc[path[%r{task/(\d+)/}, 1].to_i] = [comm, seconds] if comm
      end
    end

    # { pid => seconds } for the backends connected to the database of `url`.
    def backends(url)
      conn = PG.connect(url)
      pids = conn.exec("SELECT pid FROM pg_stat_activity WHERE datname = current_database() " \
                       "AND pid <> pg_backend_pid()").map { |r| r["pid"].to_i }
      pids.each_with_object({}) do |pid, acc|
        comm, seconds = stat("/proc/#{pid}/stat")
        acc[pid] = seconds if comm
      end
    ensure
      conn&.close
    end

    def group(comm)
      case comm
      when /\Atasker_worker\.p/ then "ruby handler threads"
      when /\Atasker-worker/ then "rust runtime threads"
      when /\Abaseline/ then "ruby baseline threads"
      when "ruby" then "ruby main thread"
      else "other threads"
      end
    end

    # [comm, utime + stime in seconds] from a /proc/.../stat file.
    def stat(path)
      text = File.read(path)
      comm = text[(text.index("(") + 1)...text.rindex(")")]
      fields = text[(text.rindex(")") + 2)..].split # fields[0] is the state (field 3)
      [comm, (fields[11].to_i + fields[12].to_i) / TICK]
    rescue Errno::ENOENT, Errno::ESRCH, Errno::EACCES
      [nil, 0.0]
    end
  end
end
