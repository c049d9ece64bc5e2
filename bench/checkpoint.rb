# frozen_string_literal: true

# Checkpoint save latency: one step's handler calls context.checkpoint N times in a row
# (min_interval 0, so every call is written: the claim-token check, the bounded history and a
# synchronous commit), timed around each call on this process's monotonic clock.
#
#   ruby -Ilib bench/checkpoint.rb [N]
require "tasker_worker"
require "fileutils"
require "tmpdir"
require_relative "support/database"

count = Integer(ARGV.first || 500)
times = []
registry = TaskerWorker::HandlerRegistry.new
registry.register("CheckpointBench") do |context|
  count.times do |i|
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    context.checkpoint(cursor: i, items_processed: i, accumulated: { "sum" => i * 3, "ids" => [i, i + 1] })
    times << (Process.clock_gettime(Process::CLOCK_MONOTONIC) - started)
  end
  { "saved" => count }
end

Dir.mktmpdir("checkpoint_bench") do |dir|
  File.write(File.join(dir, "bench.yaml"), <<~YAML)
    name: bench
    namespace_name: checkpoint_bench
    version: 1.0.0
    steps:
      - { name: only, handler: { callable: CheckpointBench } }
  YAML
  Bench::ThrowawayDatabase.with do |url|
    worker = TaskerWorker::Worker.new(registry: registry, database_url: url, orchestrate: true, templates_path: dir,
                                      namespaces: ["checkpoint_bench"], checkpoint_min_interval: 0,
                                      poll_interval: 0.1, log_level: :warn).start
    client = TaskerWorker::Client.for(url)
    state = client.wait(client.create_task(namespace: "checkpoint_bench", name: "bench", context: {}), timeout: 300)[:state]
    worker.stop(timeout: 5)
    sorted = times.sort
    pick = ->(q) { sorted[[(sorted.size * q).floor, sorted.size - 1].min] * 1000 }
    puts format("RESULT checkpoint saves=%d state=%s p50=%.2fms p95=%.2fms max=%.2fms rate=%.0f/s",
                sorted.size, state, pick.call(0.5), pick.call(0.95), sorted.last * 1000, sorted.size / sorted.sum)
  end
end
