# frozen_string_literal: true

module TaskerWorker
  # A domain event as subscribers receive it: published by the Rust core only after the step
  # result it describes has been committed. `payload` is the step's stored result (String keys).
  DomainEvent = Struct.new(:event_id, :name, :namespace, :task_uuid, :step_uuid, :step_name, :correlation_id,
                           :occurred_at, :payload, keyword_init: true)

  # Subscribers of fast (in-process) domain events, by event name ("*" for all of them).
  module DomainEvents
    @mutex = Mutex.new
    @subscribers = Hash.new { |h, k| h[k] = [] }

    class << self
      def subscribe(name, callable = nil, &block)
        handler = callable || block
        unless handler.respond_to?(:call)
          raise ConfigurationError,
                "subscribe #{name.inspect}: pass a block or something that responds to #call"
        end

        @mutex.synchronize { @subscribers[name.to_s] << handler }
        handler
      end

      def unsubscribe_all
        @mutex.synchronize { @subscribers.clear }
      end

      def subscribers_for(name)
        @mutex.synchronize { @subscribers.fetch(name, []) + @subscribers.fetch("*", []) }
      end
    end
  end

  # TaskerWorker.subscribe("order.shipped") { |event| ... }
  def self.subscribe(name = "*", callable = nil, &block)
    DomainEvents.subscribe(name, callable, &block)
  end

  # One thread per worker: pulls fast domain events from the Rust core (GVL released while
  # waiting) and calls the subscribers. A subscriber's exception, of any class, is logged and
  # counted; the others still get the event and the thread goes on. At a graceful stop it
  # keeps delivering until the core has stopped and the queue is empty, or the stop's
  # deadline passes (the worker then counts what is left as dropped).
  class EventDispatcher
    WAIT_SECONDS = 0.1

    attr_reader :delivered, :subscriber_errors

    def initialize(native)
      @native = native
      @delivered = 0
      @subscriber_errors = 0
      @deadline = nil
      @core_stopped = false
    end

    def start
      @thread = Thread.new { run }
      self
    end

    # Called before the core is stopped: deliver nothing after `deadline` (monotonic seconds).
    def deliver_until(deadline)
      @deadline = deadline
    end

    # Called once the core has stopped: no event is published any more, so an empty queue
    # means done.
    def core_stopped!
      @core_stopped = true
    end

    def join(timeout)
      @thread&.join(timeout)
    rescue Exception => e # rubocop:disable Lint/RescueException -- stopping never re-raises a subscriber's error
      TaskerWorker.logger.error("the events thread ended with #{e.class}: #{e.message}")
      nil
    end

    private

    # Whatever goes wrong in here is logged and the loop starts again: the thread must not die.
    def run
      Thread.current.name = "tasker_worker.events"
      loop do
        break if @deadline && Process.clock_gettime(Process::CLOCK_MONOTONIC) >= @deadline

        stopped = @core_stopped
        raw = next_raw(stopped ? 0 : WAIT_SECONDS)
        deliver(raw) if raw
        break if stopped && raw.nil?
      end
    rescue Exception => e # rubocop:disable Lint/RescueException -- the events thread must not die
      TaskerWorker.logger.error("the events thread failed (#{e.class}: #{safe_message(e)}); going on")
      sleep 0.1
      retry
    end

    # An error from the extension itself is logged and the loop goes on after a pause.
    def next_raw(timeout)
      @native.next_event(timeout)
    rescue StandardError => e
      TaskerWorker.logger.error("next_event failed: #{e.class}: #{e.message}")
      sleep 1
      nil
    end

    def deliver(raw)
      event = DomainEvent.new(**raw)
      DomainEvents.subscribers_for(event.name).each do |subscriber|
        subscriber.call(event)
        @delivered += 1
      rescue Exception => e # rubocop:disable Lint/RescueException -- no subscriber can stop delivery
        @subscriber_errors += 1
        TaskerWorker.logger.error("subscriber of #{event.name} raised #{e.class}: #{safe_message(e)}")
      end
    end

    def safe_message(exception)
      exception.message.to_s
    rescue Exception => e # rubocop:disable Lint/RescueException -- a broken #message must not stop delivery
      "(its #message raised #{e.class})"
    end
  end
end
