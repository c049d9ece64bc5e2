# frozen_string_literal: true

require "tmpdir"

# A template's identity_strategy through the Ruby client: a repeated create_task gives the
# first task back (strict: the same context; caller_provided: the same key) or is refused.
RSpec.describe "task identity", :worker do
  let(:client) { TaskerWorker::Client.for(migrated_database_url) }
  let(:dir) { Dir.mktmpdir("identity") }

  before do
    { "strict" => "strict", "keyed" => "caller_provided", "plain" => nil }.each do |name, strategy|
      File.write(File.join(dir, "#{name}.yml"), <<~YAML)
        name: #{name}
        namespace_name: identity
        version: 1.0.0
        #{"identity_strategy: #{strategy}" if strategy}
        steps:
          - { name: only, handler: { callable: Noop } }
      YAML
    end
    client.register_templates(dir)
  end

  after { FileUtils.rm_rf(dir) }

  def create(name, context, key = nil) = client.create_task(namespace: "identity", name: name, context: context,
                                                            idempotency_key: key)

  it "gives the first task back for the same context under strict, in any key order" do
    first = create("strict", { a: 1, b: { c: [1, 2] } })
    expect(create("strict", { b: { c: [1, 2] }, a: 1 })).to eq(first)
    expect(create("strict", { a: 2 })).not_to eq(first)
    expect(create("plain", { a: 1 })).not_to eq(create("plain", { a: 1 }))
  end

  it "needs an idempotency key under caller_provided, and the key is the identity" do
    expect { create("keyed", {}) }
      .to raise_error(TaskerWorker::InvalidInputError, /identity_strategy caller_provided: create_task needs an idempotency_key/)
    expect(create("keyed", { n: 1 }, "order-7")).to eq(create("keyed", { n: 2 }, "order-7"))
  end
end
