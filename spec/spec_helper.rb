# frozen_string_literal: true

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "tasker_worker"
require "fileutils"
require "timeout"
require "English"

Dir[File.join(__dir__, "support", "**", "*.rb")].sort.each { |f| require f }

# The core's log lines go to tmp/spec.log rather than the test output.
FileUtils.mkdir_p(File.expand_path("../tmp", __dir__))
SPEC_LOG = Logger.new(File.expand_path("../tmp/spec.log", __dir__))

RSpec.configure do |config|
  config.disable_monkey_patching!
  config.expect_with(:rspec) { |c| c.syntax = :expect }
  config.order = :random
  Kernel.srand config.seed
  config.raise_errors_for_deprecations!

  config.before do
    TaskerWorker.reset_configuration!
    TaskerWorker.configure { |c| c.logger = SPEC_LOG }
  end

  # bin/test runs the whole suite a second time with TASKER_GC_STRESS=1 (how hard the stress is:
  # spec/support/gc_stress.rb).
  if ENV["TASKER_GC_STRESS"] == "1"
    # RSpec loads its matchers (and parts of rspec-mocks) on first use; loading Ruby files under
    # the stress is slow, so they are loaded before the first example.
    config.before(:suite) do
      [RSpec::Matchers::BuiltIn, RSpec::Mocks].each { |mod| mod.constants.each { |name| mod.const_get(name) } }
    end
    config.around { |example| GcStress.run { example.run } }
  end

  config.after { TestDatabase.drop_created }
  config.after(:suite) { TestDatabase.drop_all }
end
