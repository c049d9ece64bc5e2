# frozen_string_literal: true

# Pickup latency: an idle worker (concurrency 4, default hybrid mode: LISTEN + fallback poll)
# gets single steps one at a time, ~20 ms apart, in two ways:
#
# 1. enqueue (the primary number): the task and step rows are written beforehand (not
#    timed); each step's message is then sent on its own with tasker.pgmq_send_with_notify,
#    as the orchestrator enqueues a step. Latency = this process's monotonic clock right
#    before the send -> the same clock at the start of the handler.
# 2. create_task: Client#create_task for a whole one-step task (task rows, step rows and the
#    send, one transaction). Reported from before the call and from its return.
#
#   ruby -Ilib bench/pickup_latency.rb [--quick]
require_relative "support/worker_setup"
require_relative "support/database"
require_relative "support/prepare"
require_relative "support/enqueue"

module Bench
  module PickupLatency
    SPACING = 0.020
    CONCURRENCY = 4

    module_function

    def run(count)
      ThrowawayDatabase.with do |url|
        client = TaskerWorker::Client.for(url)
        client.register_template_file(Prepared::TEMPLATE)
        unsent = Enqueue.unsent_single_step_tasks(url, namespace: Prepared::NAMESPACE, name: Prepared::TASK_NAME,
                                                       count: count)
        started_at = Array.new(2 * count) # seq 0...count: sent; count...2 * count: create_task
        started_wall = {} # step uuid => Time.now.to_f at handler start (for the DB breakdown)
        registry = Bench.noop_registry do |context|
          now = Bench.now
          wall = Time.now.to_f
          unless context.input(:warmup)
            seq = context.input(:seq)
            started_at[seq] ||= now
            started_wall[context.step_uuid] = wall if seq >= count
          end
          nil
        end
        worker = TaskerWorker::Worker.new(registry: registry, concurrency: CONCURRENCY, namespaces: [Prepared::NAMESPACE],
                                          database_url: url, templates_path: nil).start
        begin
          warm_up(client, worker)
          sent = send_each(url, unsent)
          Bench.wait_until(timeout: 60, what: "every sent step's handler to start") do
            started_at.first(count).none?(&:nil?)
          end
          sleep 0.2
          before, after = submit(client, count)
          Bench.wait_until(timeout: 60, what: "every handler to start") { started_at.none?(&:nil?) }
          report(count, sent, before, after, started_at, worker, breakdown(url, started_wall))
        ensure
          worker.stop(timeout: 10)
        end
      end
    end

    # Sends each prepared message on its own (autocommit), SPACING apart; returns the clock
    # right before each send.
    def send_each(url, unsent)
      conn = PG.connect(url)
      conn.prepare("send", "SELECT tasker.pgmq_send_with_notify($1, $2::jsonb, 0)")
      unsent.map do |queue, message|
        before = Bench.now
        conn.exec_prepared("send", [queue, message])
        pause = before + SPACING - Bench.now
        sleep pause if pause.positive?
        before
      end
    ensure
      conn&.close
    end

    # A few tasks first (not recorded): the first create_task connects the client's pool.
    def warm_up(client, worker)
      5.times do |i|
        client.create_task(namespace: Prepared::NAMESPACE, name: Prepared::TASK_NAME,
                           context: { seq: -1 - i, warmup: true })
      end
      Bench.wait_until(timeout: 30, what: "warm-up steps") { worker.status[:counters][:succeeded] >= 5 }
      sleep 1 # idle again
    end

    def submit(client, count)
      before = Array.new(count)
      after = Array.new(count)
      count.times do |i|
        before[i] = Bench.now
        client.create_task(namespace: Prepared::NAMESPACE, name: Prepared::TASK_NAME, context: { seq: count + i })
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

    def report(count, sent, before, after, started_at, worker, breakdown)
      ms = ->(pairs) { pairs.map { |from, to| (to - from) * 1000 } }
      pickup = ms[sent.zip(started_at.first(count))]
      via_create = ms[before.zip(started_at.last(count))]
      create = ms[before.zip(after)]
      from_return = ms[after.zip(started_at.last(count))]
      stat = ->(values, pct) { Bench.percentile(values, pct).round(3) }
      counters = worker.status[:counters]
      Bench.log(format("%d steps: enqueue -> handler start p50 %.2f ms, p95 %.2f ms, max %.2f ms; notifications %d, polls %d",
                       count, stat[pickup, 50], stat[pickup, 95], pickup.max, counters[:notifications], counters[:polls]))
      Bench.log(format("%d tasks: create_task -> handler start p50 %.2f ms, p95 %.2f ms (create_task p50 %.2f ms; " \
                       "from its return p50 %.2f ms)", count, stat[via_create, 50], stat[via_create, 95],
                       stat[create, 50], stat[from_return, 50]))
      Bench.log("breakdown of the create_task runs (DB timestamps + handler wall clock): #{breakdown}")
      Bench.result(bench: "pickup_latency", steps: count, concurrency: CONCURRENCY,
                   p50_ms: stat[pickup, 50], p95_ms: stat[pickup, 95], max_ms: pickup.max.round(3),
                   create_task_pickup_p50_ms: stat[via_create, 50], create_task_pickup_p95_ms: stat[via_create, 95],
                   create_task_p50_ms: stat[create, 50], from_return_p50_ms: stat[from_return, 50],
                   from_return_p95_ms: stat[from_return, 95], **breakdown, quick: Bench.quick?)
    end
  end
end

Bench::PickupLatency.run(Bench.size(:pickup_steps, full: 300, quick: 50)) if $PROGRAM_NAME == __FILE__
