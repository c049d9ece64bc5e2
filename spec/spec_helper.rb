# frozen_string_literal: true

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "tasker_worker"
require "fileutils"

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

  # bin/test runs the examples tagged :gc_stress a second time with TASKER_GC_STRESS=1, so
  # a Ruby value the extension forgot to keep alive shows up as a crash or a wrong value.
  if ENV["TASKER_GC_STRESS"] == "1"
    config.filter_run_including :gc_stress
    config.around do |example|
      GC.stress = true
      example.run
    ensure
      GC.stress = false
    end
  end

  config.after(:suite) { TestDatabase.drop_all }
end
