# frozen_string_literal: true

module HandlerRegistrySpec
  class WithConfig < TaskerWorker::StepHandler
    def call(_context) = config
  end

  # A plain class, not a StepHandler, whose initialize takes no config.
  class WithoutConfig
    def call(_context) = :plain
  end

  class NotCallable; end

  module SomeModule; end
end

RSpec.describe TaskerWorker::HandlerRegistry do
  subject(:registry) { described_class.new }

  describe "resolving a constant" do
    it "builds the named class with the step's config" do
      handler = registry.resolve("HandlerRegistrySpec::WithConfig", config: { "gateway" => "x" })

      expect(handler).to be_a(HandlerRegistrySpec::WithConfig)
      expect(handler.call(nil)).to eq("gateway" => "x")
    end

    it "builds a class whose initialize takes no config without it" do
      expect(registry.resolve("HandlerRegistrySpec::WithoutConfig", config: { "a" => 1 }).call(nil)).to eq(:plain)
    end

    it "builds a new instance for every resolution" do
      first = registry.resolve("HandlerRegistrySpec::WithConfig")

      expect(registry.resolve("HandlerRegistrySpec::WithConfig")).not_to equal(first)
    end
  end

  describe "#register" do
    it "wins over a constant of the same name" do
      registry.register("HandlerRegistrySpec::WithConfig", HandlerRegistrySpec::WithoutConfig)

      expect(registry.resolve("HandlerRegistrySpec::WithConfig")).to be_a(HandlerRegistrySpec::WithoutConfig)
    end

    it "wins even after the constant was resolved once" do
      registry.resolve("HandlerRegistrySpec::WithConfig")
      registry.register("HandlerRegistrySpec::WithConfig") { |_context| :registered }

      expect(registry.resolve("HandlerRegistrySpec::WithConfig").call(nil)).to eq(:registered)
    end

    it "builds a registered class with the step's config" do
      registry.register(:charge, HandlerRegistrySpec::WithConfig)

      expect(registry.resolve("charge", config: { "k" => 1 }).call(nil)).to eq("k" => 1)
    end

    it "registers a block handler, called with the context" do
      registry.register("double") { |context| context * 2 }

      expect(registry.resolve("double").call(21)).to eq(42)
    end

    it "registers a callable object as is" do
      callable = ->(context) { context + 1 }
      registry.register("inc", callable)

      expect(registry.resolve("inc")).to equal(callable)
    end

    it "rejects a class whose instances cannot be called" do
      expect { registry.register("x", HandlerRegistrySpec::NotCallable) }
        .to raise_error(TaskerWorker::ConfigurationError, /"x".*do not respond to #call/)
    end

    it "rejects both a handler and a block, and neither" do
      expect { registry.register("x", HandlerRegistrySpec::WithConfig) { nil } }
        .to raise_error(TaskerWorker::ConfigurationError, /not both/)
      expect { registry.register("x") }.to raise_error(TaskerWorker::ConfigurationError, /"x"/)
    end

    it "rejects an empty name" do
      expect { registry.register(" ") { nil } }.to raise_error(TaskerWorker::ConfigurationError, /empty/)
    end

    it "lists, reports and forgets registrations" do
      registry.register("a") { nil }

      expect(registry.names).to eq(["a"])
      expect(registry.registered?(:a)).to be(true)
      expect(registry.unregister("a")).to be(true)
      expect(registry.registered?("a")).to be(false)
    end
  end

  describe "unknown callables" do
    it "raises HandlerNotFoundError naming the callable" do
      expect { registry.resolve("Billing::Missing") }.to raise_error(TaskerWorker::HandlerNotFoundError) { |error|
        expect(error.callable).to eq("Billing::Missing")
        expect(error.message).to start_with('no handler for "Billing::Missing"').and include("no constant Billing::Missing is defined")
      }
    end

    it "raises for a name that cannot be a constant" do
      expect { registry.resolve("billing.charge") }
        .to raise_error(TaskerWorker::HandlerNotFoundError, /"billing\.charge".*not a Ruby constant name/)
    end

    it "explains that a class's instances cannot be called" do
      expect { registry.resolve("String") }
        .to raise_error(TaskerWorker::HandlerNotFoundError, /"String": instances of String do not respond to #call/)
    end

    it "explains that a module is not a handler class" do
      expect { registry.resolve("HandlerRegistrySpec::SomeModule") }
        .to raise_error(TaskerWorker::HandlerNotFoundError, /is a module, not a handler class/)
    end

    it "finds a handler defined after a failed lookup" do
      expect { registry.resolve("HandlerRegistrySpec::Late") }.to raise_error(TaskerWorker::HandlerNotFoundError)
      stub_const("HandlerRegistrySpec::Late", HandlerRegistrySpec::WithoutConfig)

      expect(registry.resolve("HandlerRegistrySpec::Late")).to be_a(HandlerRegistrySpec::WithoutConfig)
    end
  end

  it "picks up a class that was replaced, as after a code reload" do
    stub_const("HandlerRegistrySpec::Reloaded", HandlerRegistrySpec::WithConfig)
    registry.resolve("HandlerRegistrySpec::Reloaded")
    stub_const("HandlerRegistrySpec::Reloaded", HandlerRegistrySpec::WithoutConfig)

    expect(registry.resolve("HandlerRegistrySpec::Reloaded")).to be_a(HandlerRegistrySpec::WithoutConfig)
  end

  it "resolves concurrently from many threads, each with its own config" do
    registry.register("block") { |context| context }
    threads = Array.new(8) do |t|
      Thread.new do
        Array.new(200) do |i|
          name = i.even? ? "HandlerRegistrySpec::WithConfig" : "block"
          [registry.resolve(name, config: { "t" => t, "i" => i }), t, i]
        end
      end
    end

    threads.flat_map(&:value).each do |handler, t, i|
      expected = handler.is_a?(HandlerRegistrySpec::WithConfig) ? { "t" => t, "i" => i } : :ctx
      expect(handler.call(:ctx)).to eq(expected)
    end
  end

  describe "TaskerWorker.register" do
    after { TaskerWorker.handler_registry.unregister("registry_spec_module_level") }

    it "registers on the default registry" do
      TaskerWorker.register("registry_spec_module_level") { |_context| :ok }

      expect(TaskerWorker.handler_registry.resolve("registry_spec_module_level").call(nil)).to eq(:ok)
    end
  end
end
