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
  # waiting) and calls the subscribers. A subscriber that raises is logged and counted; the
  # others still get the event.
  class EventDispatcher
    attr_reader :delivered, :subscriber_errors

    def initialize(native)
      @native = native
      @delivered = 0
      @subscriber_errors = 0
    end

    def start
      @thread = Thread.new { run }
      self
    end

    def join(timeout)
      @thread&.join(timeout)
    end

    private

    def run
      Thread.current.name = "tasker_worker.events"
      until @native.stopped?
        raw = @native.next_event(0.5)
        deliver(DomainEvent.new(**raw)) if raw
      end
    end

    def deliver(event)
      DomainEvents.subscribers_for(event.name).each do |subscriber|
        subscriber.call(event)
        @delivered += 1
      rescue StandardError => e
        @subscriber_errors += 1
        TaskerWorker.logger.error("tasker_worker: subscriber of #{event.name} raised #{e.class}: #{e.message}")
      end
    end
  end
end
