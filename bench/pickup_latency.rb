# frozen_string_literal: true

# Pickup latency: an idle worker (concurrency 4, default hybrid mode: LISTEN + fallback poll)
# gets single-step tasks one at a time, ~20 ms apart. For each: the monotonic clock right
# before Client#create_task, and the same clock at the start of the handler, in this process.
# Also reported: how long create_task itself took (its commit included), and handler start
# measured from create_task's return.
#
#   ruby -Ilib bench/pickup_latency.rb [--quick]
require_relative "support/worker_setup"
require_relative "support/database"
require_relative "support/prepare"

module Bench
  module PickupLatency
    SPACING = 0.020
    CONCURRENCY = 4

    module_function

    def run(count)
      ThrowawayDatabase.with do |url|
        client = TaskerWorker::Client.for(url)
        client.register_template_file(Prepared::TEMPLATE)
        started_at = Array.new(count)
        started_wall = {} # step uuid => Time.now.to_f at handler start (for the DB breakdown)
        registry = Bench.noop_registry do |context|
          now = Bench.now
          wall = Time.now.to_f
          unless context.input(:warmup)
            seq = context.input(:seq)
            started_at[seq] ||= now
            started_wall[context.step_uuid] = wall
          end
          nil
        end
        worker = TaskerWorker::Worker.new(registry: registry, concurrency: CONCURRENCY, namespaces: [Prepared::NAMESPACE],
                                          database_url: url, templates_path: nil).start
        begin
          warm_up(client, worker)
          before, after = submit(client, count)
          Bench.wait_until(timeout: 60, what: "every handler to start") { started_at.none?(&:nil?) }
          report(count, before, after, started_at, worker, breakdown(url, started_wall))
        ensure
          worker.stop(timeout: 10)
        end
      end
    end

    # A few tasks first (not recorded): the first create_task connects the client's pool.
    def warm_up(client, worker)
      5.times { |i| client.create_task(namespace: Prepared::NAMESPACE, name: Prepared::TASK_NAME, context: { seq: -1 - i, warmup: true }) }
      Bench.wait_until(timeout: 30, what: "warm-up steps") { worker.status[:counters][:succeeded] >= 5 }
      sleep 1 # idle again
    end

    def submit(client, count)
      before = Array.new(count)
      after = Array.new(count)
      count.times do |i|
        before[i] = Bench.now
        client.create_task(namespace: Prepared::NAMESPACE, name: Prepared::TASK_NAME, context: { seq: i })
        after[i] = Bench.now
        pause = before[i] + SPACING - Bench.now
        sleep pause if pause.positive?
      end
      [before, after]
    end

    # Where the time goes, from the DB's transition timestamps (now() = each transaction's
    # start) and the handler's wall clock, same host: create_task's transaction start ->
    # the claim transaction's start -> handler start.
    def breakdown(url, started_wall)
      conn = PG.connect(url)
      rows = conn.exec(<<~SQL).to_a
        SELECT workflow_step_uuid,
               extract(epoch FROM min(created_at) FILTER (WHERE to_state = 'enqueued')) AS enqueued,
               extract(epoch FROM min(created_at) FILTER (WHERE to_state = 'in_progress')) AS claimed
          FROM tasker.workflow_step_transitions GROUP BY workflow_step_uuid
      SQL
      rows = rows.select { |r| started_wall.key?(r["workflow_step_uuid"]) }
      to_claim = rows.map { |r| (r["claimed"].to_f - r["enqueued"].to_f) * 1000 }
      to_handler = rows.map { |r| (started_wall[r["workflow_step_uuid"]] - r["claimed"].to_f) * 1000 }
      { enqueue_tx_to_claim_tx_p50_ms: Bench.median(to_claim)&.round(3),
        claim_tx_to_handler_p50_ms: Bench.median(to_handler)&.round(3) }
    ensure
      conn&.close
    end

    def report(count, before, after, started_at, worker, breakdown)
      ms = ->(pairs) { pairs.map { |from, to| (to - from) * 1000 } }
      pickup = ms[before.zip(started_at)]
      create = ms[before.zip(after)]
      from_return = ms[after.zip(started_at)]
      stat = ->(values, pct) { Bench.percentile(values, pct).round(3) }
      counters = worker.status[:counters]
      Bench.log(format("%d steps: enqueue -> handler start p50 %.2f ms, p95 %.2f ms, max %.2f ms " \
                       "(create_task p50 %.2f ms; from its return p50 %.2f ms); notifications %d, polls %d",
                       count, stat[pickup, 50], stat[pickup, 95], pickup.max, stat[create, 50],
                       stat[from_return, 50], counters[:notifications], counters[:polls]))
      Bench.log("breakdown (DB timestamps + handler wall clock): #{breakdown}")
      Bench.result(bench: "pickup_latency", steps: count, concurrency: CONCURRENCY,
                   p50_ms: stat[pickup, 50], p95_ms: stat[pickup, 95], max_ms: pickup.max.round(3),
                   create_task_p50_ms: stat[create, 50], from_return_p50_ms: stat[from_return, 50],
                   from_return_p95_ms: stat[from_return, 95], **breakdown, quick: Bench.quick?)
    end
  end
end

Bench::PickupLatency.run(Bench.size(:pickup_steps, full: 300, quick: 50)) if $PROGRAM_NAME == __FILE__
