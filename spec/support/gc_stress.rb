# frozen_string_literal: true

# bin/test's second pass (TASKER_GC_STRESS=1) runs the examples tagged :gc_stress under GC
# stress, so a Ruby value the extension forgot to keep alive shows up as a crash or a wrong
# value.
#
# How hard: a minor GC at every allocation (GC.stress flag 0x01), which frees any young object
# that nothing marks (what a value held only in Rust's heap is when it was just made), plus a
# full GC every 50 ms from a thread of its own, for older objects. A full GC at every
# allocation (GC.stress = true) finds the same mistakes but took 10 minutes for this pass,
# each example spending most of it in RSpec and the pg gem; this way the pass takes about one.
module GcStress
  MINOR_GC_AT_EVERY_ALLOCATION = 0x01
  FULL_GC_INTERVAL = 0.05

  def self.run
    GC.stress = MINOR_GC_AT_EVERY_ALLOCATION
    full = Thread.new do
      loop do
        sleep FULL_GC_INTERVAL
        GC.start
      end
    end
    yield
  ensure
    full&.kill&.join
    GC.stress = false
  end

  # The specs' own database plumbing (the pg gem connecting, inserting, polling) is not the code
  # under test; it runs without the stress.
  def self.paused
    previous = GC.stress
    return yield unless previous

    GC.stress = false
    begin
      yield
    ensure
      GC.stress = previous
    end
  end
end

# Two tags run in the normal pass only; the stress pass leaves them out and says so:
# - :timing examples assert a wall-clock budget (spec/web/scale_spec.rb: every dashboard page
#   under 100 ms with 100k tasks), which means nothing with a GC at every allocation;
# - :browser examples (spec/web/browser_spec.rb, headless Chromium) boot a web server that does
#   not answer within Capybara's boot timeout under the stress. The same pages and actions run
#   under the stress at the Rack level (spec/web/web_spec.rb).
if ENV["TASKER_GC_STRESS"] == "1"
  RSpec.configure do |config|
    config.filter_run_excluding(:timing)
    config.filter_run_excluding(:browser)
    config.before(:suite) do
      warn "TASKER_GC_STRESS=1: examples tagged :timing (wall-clock budgets) and :browser (headless Chromium) " \
           "run in the normal pass only"
    end
  end
end
