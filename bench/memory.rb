# frozen_string_literal: true

# Memory: VmRSS of a process running an idle worker with 10 threads, then while it runs
# STEPS no-op steps (RSS after each 10% of them), and at the end.
#
#   ruby -Ilib bench/memory.rb [--quick]
#
# This (parent) process prepares a database with the bench template and an empty queue, then
# starts the measured process (`memory.rb --child URL STEPS`), which loads only the product,
# starts the worker, waits 3 s and reports its idle RSS. Only then does the parent enqueue
# the STEPS tasks (Bench::Enqueue, 1,000 per transaction), while the child drains them and
# samples its RSS at every 10%.
require "English"
require_relative "support/common"
require_relative "support/prepare"

module Bench
  module Memory
    CONCURRENCY = 10
    IDLE_WAIT = 3

    module_function

    def parent(steps)
      Prepared.database(0) do |url|
        lib = File.join(Bench::ROOT, "lib")
        env = { "BENCH_QUICK" => Bench.quick? ? "1" : "0" }
        IO.popen(env, [RbConfig.ruby, "-I", lib, __FILE__, "--child", url, steps.to_s], "r") do |child|
          line = child.gets
          raise "the measured process did not start (got #{line.inspect})" unless line&.start_with?("IDLE")

          require_relative "support/enqueue"
          seconds = Enqueue.single_step_tasks(url, namespace: Prepared::NAMESPACE, name: Prepared::TASK_NAME,
                                                   count: steps)
          Bench.log(format("enqueued %d tasks in %.1f s while the worker ran", steps, seconds))
          child.each_line { |l| $stdout.print(l) }
        end
        raise "the measured process failed (exit #{$CHILD_STATUS.exitstatus})" unless $CHILD_STATUS.success?
      end
    end

    def child(url, steps)
      require_relative "support/worker_setup"
      loaded = Bench.rss_mb
      worker = TaskerWorker::Worker.new(registry: Bench.noop_registry, concurrency: CONCURRENCY,
                                        namespaces: [Prepared::NAMESPACE], database_url: url, templates_path: nil).start
      sleep IDLE_WAIT
      idle = Bench.rss_mb
      $stdout.puts "IDLE #{idle}"
      $stdout.flush

      samples = sample_while_running(worker, steps)
      sleep 1
      after = Bench.rss_mb
      GC.start
      after_gc = Bench.rss_mb
      status = worker.status
      worker.stop(timeout: 10)
      growth = (after - samples.first[:rss_mb]).round(1)
      half = samples.find { |sample| sample[:pct] == 50 }
      second_half = (samples.last[:rss_mb] - half[:rss_mb]).round(1)
      Bench.log(format("RSS: loaded %.1f MB, idle worker %.1f MB, during the run %s, after %d steps %.1f MB " \
                       "(%.1f MB after GC.start); live Ruby threads %d", loaded, idle,
                       samples.map do |s|
                         "#{s[:pct]}%=#{s[:rss_mb]}"
                       end.join(" "), steps, after, after_gc, Thread.list.size))
      Bench.result(bench: "memory", concurrency: CONCURRENCY, steps: status[:counters][:succeeded],
                   loaded_rss_mb: loaded, idle_rss_mb: idle, after_rss_mb: after, after_gc_rss_mb: after_gc,
                   growth_from_10pct_mb: growth, growth_second_half_mb: second_half, samples: samples,
                   quick: Bench.quick?)
    end

    # RSS each time another 10% of the steps has been committed.
    def sample_while_running(worker, steps)
      samples = []
      next_pct = 10
      deadline = Bench.now + 3600
      while next_pct <= 100
        done = worker.status[:counters][:succeeded]
        while next_pct <= 100 && done * 100 >= steps * next_pct
          samples << { pct: next_pct, steps: done, rss_mb: Bench.rss_mb }
          next_pct += 10
        end
        raise "only #{done} of #{steps} steps after an hour" if Bench.now > deadline

        sleep 0.05
      end
      samples
    end
  end
end

if $PROGRAM_NAME == __FILE__
  if ARGV[0] == "--child"
    Bench::Memory.child(ARGV[1], Integer(ARGV[2]))
  else
    Bench::Memory.parent(Bench.size(:memory_steps, full: 100_000, quick: 10_000))
  end
end
