# frozen_string_literal: true

# A peer for the drain (issue 19): the fastest plain PGMQ worker a Ruby developer would write
# on the `pg` gem, batched. N threads, one connection each; per loop:
#
#   1. pgmq.read('worker_<ns>_queue', 30, 10)           - up to 10 messages under a lease;
#   2. the (no-op) handler on each message;
#   3. one durable transaction: pgmq.send_batch('orchestration_step_results', <the messages>)
#      and pgmq.archive('worker_<ns>_queue', <their ids>).
#
# It does LESS work per message than tasker_worker: no claim, no step transitions, no results
# stored on the step, no stale-claim check, no hydration, no lease renewal (a message that
# outlives its lease runs twice). It is the price of PGMQ alone: the floor to compare with.
# Same database shape and the same enqueued tasks as bench/drain.rb. An empty read sleeps 5 ms.
#
#   ruby -Ilib bench/peer_batched_pgmq.rb [--quick] [--threads 10]
require "pg"
require "json"
require_relative "support/common"
require_relative "support/prepare"
require_relative "support/database"
require_relative "support/cpu"
require_relative "support/pg_work"

module Bench
  class BatchedPgmqWorker
    RESULTS_QUEUE = "orchestration_step_results"
    VISIBILITY_TIMEOUT = 30
    BATCH = 10
    EMPTY_SLEEP = 0.005

    STATEMENTS = {
      "read" => "SELECT msg_id, message FROM pgmq.read($1, $2, $3)",
      "send_batch" => "SELECT count(*) FROM pgmq.send_batch($1, $2::jsonb[])",
      "archive" => "SELECT count(*) FROM pgmq.archive($1, $2::bigint[])"
    }.freeze

    attr_reader :done

    def initialize(url, namespace:, threads:, handler:)
      @url = url
      @queue = "worker_#{namespace}_queue"
      @threads = threads
      @handler = handler
      @done = 0
      @mutex = Mutex.new
      @stop = false
      @encoder = PG::TextEncoder::Array.new
    end

    def start
      conn = PG.connect(@url)
      exists = conn.exec_params("SELECT 1 FROM pgmq.meta WHERE queue_name = $1", [RESULTS_QUEUE]).ntuples.positive?
      conn.exec_params("SELECT pgmq.create($1)", [RESULTS_QUEUE]) unless exists
      conn.close
      # A thread that fails ends the run in the main thread, rather than leaving its messages
      # leased and the drain waiting for them until its timeout.
      @pool = Array.new(@threads) { |i| Thread.new { work(i) }.tap { |t| t.abort_on_exception = true } }
      self
    end

    def stop
      @stop = true
      @pool&.each(&:join)
    end

    private

    def work(index)
      Thread.current.name = "baseline.batched.#{index}"
      conn = PG.connect(@url)
      self.class::STATEMENTS.each { |name, sql| conn.prepare(name, sql) }
      until @stop
        rows = read(conn)
        if rows.empty?
          sleep EMPTY_SLEEP
          next
        end
        process(conn, rows)
      end
    ensure
      conn&.close
    end

    def read(conn)
      conn.exec_prepared("read", [@queue, VISIBILITY_TIMEOUT, BATCH]).to_a
    end

    def process(conn, rows)
      ids = []
      out = []
      rows.each do |row|
        message = JSON.parse(row["message"])
        @handler.call(message)
        ids << row["msg_id"]
        out << JSON.generate(message.slice("task_uuid", "step_uuid", "correlation_id"))
      end
      conn.transaction do
        conn.exec_prepared("send_batch", [RESULTS_QUEUE, @encoder.encode(out)])
        conn.exec_prepared("archive", [@queue, @encoder.encode(ids)])
      end
      @mutex.synchronize { @done += ids.size }
    end
  end

  module BatchedPgmqPeer
    module_function

    # `worker_class`: the class to run (bench/peer_protocol_floor.rb runs its own), `bench`: the name
    # of its RESULT.
    def run(tasks, threads, worker_class: BatchedPgmqWorker, bench: "peer_batched_pgmq")
      Prepared.database(tasks) do |url|
        sync = ThrowawayDatabase.setting(url, "synchronous_commit")
        worker = worker_class.new(url, namespace: Prepared::NAMESPACE, threads: threads,
                                       handler: ->(_message) { {} })
        pg_before = PgWork.snapshot_before(url)
        cpu_before = Cpu.snapshot(url)
        started = Bench.now
        worker.start
        Bench.wait_until(timeout: 3600, interval: 0.05, what: "#{tasks} messages") { worker.done >= tasks }
        seconds = Bench.now - started
        cpu = Cpu.per_step(cpu_before, Cpu.snapshot(url), worker.done)
        worker.stop
        pg = PgWork.per_step(url, pg_before, PgWork.snapshot_after(url), worker.done)
        left = PG.connect(url) do |conn|
          conn.exec("SELECT count(*) FROM pgmq.q_worker_#{Prepared::NAMESPACE}_queue").getvalue(0, 0).to_i
        end
        raise "#{left} messages were left in the queue" if left.positive?

        Bench.log(format("%d threads: %d messages in %.2f s = %.1f messages/s (synchronous_commit=%s)",
                         threads, worker.done, seconds, worker.done / seconds, sync))
        Bench.log("  CPU µs per message: #{cpu}")
        Bench.log("  PostgreSQL per message: #{pg}")
        Bench.result(bench: bench, threads: threads, steps: worker.done,
                     seconds: seconds.round(3), steps_per_s: (worker.done / seconds).round(1),
                     synchronous_commit: sync, cpu_us_per_step: cpu, pg_per_step: pg, quick: Bench.quick?)
      end
    end
  end
end

if $PROGRAM_NAME == __FILE__
  threads = Integer(ARGV.each_cons(2).find { |flag, _| flag == "--threads" }&.last || 10)
  Bench::BatchedPgmqPeer.run(Bench.size(:drain_tasks, full: 20_000, quick: 2_000), threads)
end
