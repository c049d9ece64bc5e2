# frozen_string_literal: true

module TaskerWorker
  # Maps a step template's `handler.callable` to a handler that answers #call(context).
  # Explicit registrations win; otherwise the callable names a constant, a class whose
  # instances answer #call. Every resolution of a class builds a new instance, so
  # handlers never share state across the worker's threads.
  class HandlerRegistry
    CONSTANT_SEGMENT = /\A[A-Z]\w*\z/

    def initialize
      @mutex = Mutex.new
      @registrations = {}
    end

    # `register("name", SomeHandler)`, `register("name", some_callable)` or
    # `register("name") { |context| ... }`. A callable object or block is shared by every step.
    def register(name, handler = nil, &block)
      name = registration_name(name)
      factory = factory_for(name, handler, block)
      @mutex.synchronize { @registrations[name] = factory }
      self
    end

    def unregister(name)
      @mutex.synchronize { !@registrations.delete(name.to_s).nil? }
    end

    def registered?(name)
      @mutex.synchronize { @registrations.key?(name.to_s) }
    end

    def names
      @mutex.synchronize { @registrations.keys }
    end

    def clear
      @mutex.synchronize { @registrations.clear }
    end

    # A handler ready to #call(context); `config` is the step's `handler.initialization`.
    # Raises HandlerNotFoundError. Constants are looked up on every call rather than cached,
    # so a reloaded (or, in specs, stubbed) class is picked up; the lookup costs microseconds.
    def resolve(callable, config: {})
      name = callable.to_s
      factory = @mutex.synchronize { @registrations[name] } || class_factory(handler_class(name))
      factory.call(config || {})
    end

    private

    def registration_name(name)
      name = name.to_s
      raise ConfigurationError, "handler name must not be empty" if name.strip.empty?

      name
    end

    def factory_for(name, handler, block)
      return class_factory(block_handler(name, handler, block)) if handler && block
      return ->(_config) { block } if block
      return class_factory(handler) if handler.is_a?(Class) && handler_class?(handler)
      return ->(_config) { handler } if !handler.is_a?(Module) && handler.respond_to?(:call)

      raise ConfigurationError, "register #{name.inspect}: #{not_a_handler(handler)}"
    end

    # `register("Classify", TaskerWorker::DecisionHandler) { |context| ... }`: a subclass of
    # one of the handler bases whose hook (#decide, #batches, #process) is the block. The
    # block is called with the hook's arguments; a new instance runs each step.
    def block_handler(name, base, block)
      unless base.is_a?(Class) && base.respond_to?(:hook)
        raise ConfigurationError, "register #{name.inspect}: pass a handler or a block, not both (a block goes " \
                                  "with a handler base class: DecisionHandler, BatchableHandler, BatchWorkerHandler)"
      end

      Class.new(base) { define_method(base.hook) { |*args| block.call(*args) } }
    end

    # Called outside the lock: const_get may autoload a file that registers handlers.
    def handler_class(name)
      unless name.delete_prefix("::").split("::", -1).all? { |segment| segment.match?(CONSTANT_SEGMENT) }
        raise HandlerNotFoundError.new(callable: name, reason: "nothing is registered under that name and it is " \
                                                               "not a Ruby constant name")
      end
      klass = constant(name)
      unless klass
        raise HandlerNotFoundError.new(callable: name, reason: "nothing is registered under that name and " \
                                                               "no constant #{name} is defined")
      end
      return klass if klass.is_a?(Class) && handler_class?(klass)

      raise HandlerNotFoundError.new(callable: name, reason: not_a_handler(klass))
    end

    # Walks "A::B::C" with const_defined? instead of rescuing NameError: an unknown handler is
    # routine here, and a NameError's message runs did_you_mean over every constant.
    def constant(name)
      name.delete_prefix("::").split("::").reduce(Object) do |scope, segment|
        return nil unless scope.is_a?(Module) && scope.const_defined?(segment, scope.equal?(Object))

        scope.const_get(segment, false)
      end
    end

    def handler_class?(klass)
      klass.public_method_defined?(:call)
    end

    def not_a_handler(value)
      case value
      when Class then "instances of #{value.name || value.inspect} do not respond to #call"
      when Module then "#{value.inspect} is a module, not a handler class"
      else "#{value.inspect} is neither a handler class nor callable"
      end
    end

    def class_factory(klass)
      if accepts_config?(klass)
        ->(config) { klass.new(config: config) }
      else
        ->(_config) { klass.new }
      end
    end

    def accepts_config?(klass)
      klass.instance_method(:initialize).parameters.any? do |type, param|
        type == :keyrest || (%i[key keyreq].include?(type) && param == :config)
      end
    end
  end

  @handler_registry = HandlerRegistry.new

  class << self
    # The registry the worker resolves callables with.
    attr_reader :handler_registry

    def register(name, handler = nil, &block)
      handler_registry.register(name, handler, &block)
    end
  end
end
