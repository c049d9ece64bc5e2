# frozen_string_literal: true

# FFI hand-off: what it costs to hand one step from the Rust core to a Ruby thread and its
# result back, against the cheapest hand-off Ruby itself has — a Thread::Queue ping-pong
# between two threads. No database.
#
#   queue     one thread pushes a number onto a Queue, a second thread pops it and pushes it
#             onto a reply Queue, the first pops the reply: one round trip.
#   loopback  TaskerWorker::Native::Loopback (a core that keeps `capacity` synthetic step events
#             ready): `next_step(1.0)` -> event Hash, `complete(event_id, {success: true,
#             result: {}})`: one round trip with a no-op handler. This is the ratio's numerator.
#   loopback_processor   the same, but through what TaskerWorker::Processor does per step
#             (StepContext, registry resolve, handler call, ResultMapper): the whole Ruby side.
#
#   ruby -Ilib bench/ffi_handoff.rb [--quick]
#
# All variants run side by side in one process; RESULT carries µs per round trip and the ratio.
require_relative "support/worker_setup"

module Bench
  module FfiHandoff
    CAPACITY = 64
    WARMUP = 2_000

    module_function

    def queue_round_trips(count)
      requests = Thread::Queue.new
      replies = Thread::Queue.new
      echo = Thread.new do
        while (item = requests.pop) != :stop
          replies.push(item)
        end
      end
      WARMUP.times { |i| requests.push(i) && replies.pop }
      started = Bench.now
      count.times do |i|
        requests.push(i)
        replies.pop
      end
      seconds = Bench.now - started
      requests.push(:stop)
      echo.join
      seconds
    end

    def loopback_round_trips(count)
      loopback = TaskerWorker::Native::Loopback.new(CAPACITY)
      WARMUP.times { loopback_step(loopback) }
      started = Bench.now
      count.times { loopback_step(loopback) }
      seconds = Bench.now - started
      check_completed(loopback, WARMUP + count)
      seconds
    end

    def loopback_step(loopback)
      event = loopback.next_step(1.0) or raise "Loopback#next_step returned nil"
      loopback.complete(event[:event_id], { success: true, result: {} })
    end

    # Processor#process, step by step (its methods are private): context, resolve, call, map.
    def loopback_processor_round_trips(count)
      loopback = TaskerWorker::Native::Loopback.new(CAPACITY)
      registry = Bench.noop_registry
      step = lambda do
        event = loopback.next_step(1.0) or raise "Loopback#next_step returned nil"
        context = TaskerWorker::StepContext.new(event)
        handler = registry.resolve("bench_noop", config: context.config)
        loopback.complete(event[:event_id], TaskerWorker::ResultMapper.from_return(handler.call(context)))
      end
      WARMUP.times { step.call }
      started = Bench.now
      count.times { step.call }
      seconds = Bench.now - started
      check_completed(loopback, WARMUP + count)
      seconds
    end

    # The Loopback counts a completion when its feeder task receives it, just after
    # `complete` returns: wait a moment for the last ones.
    def check_completed(loopback, expected)
      Bench.wait_until(timeout: 5, interval: 0.01, what: "#{expected} completions") do
        loopback.stats[:completed] >= expected
      end
      completed = loopback.stats[:completed]
      raise "Loopback completed #{completed} steps, expected #{expected}" unless completed == expected
    end

    def run(count)
      unless defined?(TaskerWorker::Native::Loopback)
        Bench.result(bench: "ffi_handoff", error: "TaskerWorker::Native::Loopback is not defined in this build")
        abort "[ffi_handoff] TaskerWorker::Native::Loopback is not defined in this build (rake compile?)"
      end
      sample = TaskerWorker::Native::Loopback.new(1).next_step(1.0)
      Bench.log("a Loopback event has keys #{sample&.keys.inspect}")

      queue = queue_round_trips(count)
      loopback = loopback_round_trips(count)
      processor = loopback_processor_round_trips(count)
      us = ->(seconds) { (seconds * 1e6 / count).round(2) }
      per_s = ->(seconds) { (count / seconds).round }
      Bench.log("queue #{us[queue]} µs, loopback #{us[loopback]} µs, loopback + processor #{us[processor]} µs per round trip")
      Bench.result(bench: "ffi_handoff", round_trips: count,
                   queue_us: us[queue], queue_per_s: per_s[queue],
                   loopback_us: us[loopback], loopback_per_s: per_s[loopback],
                   loopback_processor_us: us[processor], loopback_processor_per_s: per_s[processor],
                   ratio: (loopback / queue).round(3), processor_ratio: (processor / queue).round(3),
                   quick: Bench.quick?)
    end
  end
end

Bench::FfiHandoff.run(Bench.size(:handoff_round_trips, full: 200_000, quick: 50_000)) if $PROGRAM_NAME == __FILE__
