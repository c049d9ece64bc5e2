# frozen_string_literal: true

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "tasker_worker"

Dir[File.join(__dir__, "support", "**", "*.rb")].sort.each { |f| require f }

RSpec.configure do |config|
  config.disable_monkey_patching!
  config.expect_with(:rspec) { |c| c.syntax = :expect }
  config.order = :random
  Kernel.srand config.seed
  # A pending or skipped example is a failure here: nothing is silently left out.
  config.raise_errors_for_deprecations!
  config.after(:suite) { TestDatabase.drop_all }
end
