# frozen_string_literal: true

require "tasker_worker/testing"
require "tmpdir"

module RunTaskSpec
  class Start < TaskerWorker::StepHandler
    def call(context) = { "n" => context.input(:n) }
  end

  class Double < TaskerWorker::StepHandler
    def call(context) = { "n" => context.dependency_result(:start)["n"] * 2 }
  end

  # Fails its first attempt with a retryable error, then succeeds.
  class Flaky < TaskerWorker::StepHandler
    def call(context)
      raise TaskerWorker::RetryableError, "busy" if context.attempt == 1

      { "n" => context.dependency_result(:start)["n"] + 1, "attempt" => context.attempt }
    end
  end

  # Sees every ancestor, not only its parents.
  class Join < TaskerWorker::StepHandler
    def call(context)
      raise TaskerWorker::PermanentError, "told to fail" if context.input(:fail_join)

      { "seen" => %w[start double flaky].to_h { |name| [name, context.dependency_result(name)["n"]] } }
    end
  end

  class After < TaskerWorker::StepHandler
    def call(_context) = { "ran" => true }
  end
end

RSpec.describe TaskerWorker::Testing, ".run_task" do
  let(:dir) { Dir.mktmpdir("run_task") }

  before do
    File.write(File.join(dir, "diamond.yml"), <<~YAML)
      name: diamond
      namespace_name: spec
      version: 1.0.0
      steps:
        - { name: start, handler: { callable: RunTaskSpec::Start } }
        - { name: double, handler: { callable: RunTaskSpec::Double }, dependencies: [start] }
        - { name: flaky, handler: { callable: RunTaskSpec::Flaky }, dependencies: [start], retry: { max_attempts: 2 } }
        - { name: join, handler: { callable: RunTaskSpec::Join }, dependencies: [double, flaky] }
        - { name: after, handler: { callable: RunTaskSpec::After }, dependencies: [join] }
    YAML
  end

  after { FileUtils.rm_rf(dir) }

  def run_task(**options) = described_class.run_task(namespace: "spec", name: "diamond", templates: dir, **options)

  it "runs every step in dependency order, each given all its ancestors' results, retrying a retryable failure" do
    task = run_task(context: { n: 5 })

    expect(task).to be_complete
    expect(task.result(:join)).to eq("seen" => { "start" => 5, "double" => 10, "flaky" => 6 })
    expect(task.step(:flaky)).to have_attributes(state: "complete", attempts: 2)
    expect(task.result(:after)).to eq("ran" => true)
  end

  it "ends blocked by failures when a step fails for good, and its descendants never run" do
    task = run_task(context: { n: 1, fail_join: true })

    expect(task.state).to eq("blocked_by_failures")
    expect(task.step(:join)).to have_attributes(state: "error", attempts: 1)
    expect(task.step(:join).outcome.message).to eq("told to fail")
    expect(task.step(:after)).to have_attributes(state: "pending", attempts: 0, outcome: nil)
  end

  it "refuses a workflow with dynamic steps rather than running every branch" do
    File.write(File.join(dir, "decide.yml"), <<~YAML)
      name: decide
      namespace_name: spec
      steps:
        - { name: start, handler: { callable: RunTaskSpec::Start } }
        - { name: pick, type: decision, dependencies: [start], handler: { callable: RunTaskSpec::Start } }
        - { name: branch, dependencies: [pick], handler: { callable: RunTaskSpec::Start } }
    YAML
    expect { described_class.run_task(namespace: "spec", name: "decide", templates: dir) }
      .to raise_error(TaskerWorker::ConfigurationError, /runs static workflows only; decide has dynamic steps \(pick\)/)
  end

  it "names what it cannot find, and asks for a version when several match" do
    expect { described_class.run_task(namespace: "spec", name: "nope", templates: dir) }
      .to raise_error(TaskerWorker::ConfigurationError, "no task template spec/nope in #{dir}")
    File.write(File.join(dir, "diamond_v2.yml"), File.read(File.join(dir, "diamond.yml")).sub("1.0.0", "2.0.0"))
    expect { run_task }.to raise_error(TaskerWorker::ConfigurationError, %r{2 templates spec/diamond .*pass version:})
    expect(run_task(version: "2.0.0", context: { n: 1 })).to be_complete
  end
end
