# frozen_string_literal: true

require "tasker_worker/web"
require "tmpdir"
require_relative "../fixtures/operations_handlers"

# Needs Debian's chromium, chromium-driver, ruby-capybara and ruby-selenium-webdriver (bin/setup
# installs them); without them this spec fails, naming what is missing.
BROWSER_MISSING = begin
  require "capybara"
  require "capybara/dsl"
  require "selenium-webdriver"
  %w[/usr/bin/chromium /usr/bin/chromedriver].reject { |path| File.executable?(path) }
                                             .map { |path| "#{path} (Debian chromium / chromium-driver)" }
rescue LoadError => e
  ["#{e.message} (Debian ruby-capybara / ruby-selenium-webdriver)"]
end

# The dashboard in headless Chromium: a failed workflow's task page, retry of the failed step
# (confirm page included), and the task seen complete; a screenshot goes to tmp/.
RSpec.describe "TaskerWorker::Web in a browser", :browser, :worker do
  let(:root) { File.expand_path("../..", __dir__) }
  let(:dir) { Dir.mktmpdir("tasker_worker_browser") }
  let(:flag) { File.join(dir, "broken") }
  let(:client) { TaskerWorker::Client.for(migrated_database_url) }

  before do
    raise "the browser spec needs: #{BROWSER_MISSING.join(", ")}; run bin/setup" unless BROWSER_MISSING.empty?

    Capybara.register_driver(:tasker_headless_chromium) do |app|
      options = Selenium::WebDriver::Chrome::Options.new(binary: "/usr/bin/chromium")
      %w[--headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --window-size=1400,1000].each do |arg|
        options.add_argument(arg)
      end
      service = Selenium::WebDriver::Service.chrome(path: "/usr/bin/chromedriver")
      Capybara::Selenium::Driver.new(app, browser: :chrome, options: options, service: service)
    end
    Capybara.server = :webrick
    Capybara.app = TaskerWorker::Web
    Capybara.default_max_wait_time = 20
    TaskerWorker::Web.client = client
    start_worker(registry: TaskerWorker.handler_registry, orchestrate: true,
                 templates_path: File.join(root, "spec/fixtures/operations"), namespaces: ["ops"], concurrency: 2)
  end

  # Chromium's inspector can answer a query that runs while a link's navigation replaces the
  # document with "Node with given id does not belong to the document", an error Capybara does
  # not retry (it retries stale elements). The expectation is run again on the new document.
  def on_settled_page(tries: 5)
    yield
  rescue Selenium::WebDriver::Error::UnknownError => e
    raise unless e.message.include?("does not belong to the document") && (tries -= 1).positive?

    sleep 0.2
    retry
  end

  after do
    Capybara.reset_sessions! if BROWSER_MISSING.empty?
    TaskerWorker::Web.client = nil
    FileUtils.rm_rf(dir)
  end

  it "shows a failed workflow, retries its failed step, and sees the task complete" do
    FileUtils.touch(flag)
    uuid = client.create_task(namespace: "ops", name: "ops", context: { fail_while: flag })
    wait_until("the flaky step to fail") { client.task(uuid)[:state] == "blocked_by_failures" }

    session = Capybara::Session.new(:tasker_headless_chromium, TaskerWorker::Web)
    session.visit("/failures")
    expect(session).to have_content("permanent_error")
    session.click_link("ops/ops")
    on_settled_page { expect(session).to have_css(%(svg g.step[data-state="error"])) }
    expect(session).to have_content("flaky is broken while")

    File.delete(flag)
    session.click_button("Retry step")
    # The confirm page (its button only; "Retry step" is on the task page too, so waiting for
    # that text could act on the page being replaced).
    on_settled_page { expect(session).to have_button("Yes, do it") }
    session.click_button("Yes, do it")
    on_settled_page { expect(session).to have_content("Retried step") }
    session.click_link("Back to the task")

    on_settled_page { expect(session).to have_css("svg g.step") }
    # Wait for the worker through the Client, then load the page once: refreshing while a
    # query runs can leave Chromium's inspector holding a node of the replaced document.
    wait_until("the retried task to complete", timeout: 20) { client.task(uuid)[:state] == "complete" }
    session.refresh
    on_settled_page { expect(session).to have_css(%(svg g.step[data-state="complete"]), count: 2) }
    expect(session).to have_content("complete")
    FileUtils.mkdir_p(File.join(root, "tmp"))
    session.save_screenshot(File.join(root, "tmp/dashboard_task.png"))
    expect(File.size(File.join(root, "tmp/dashboard_task.png"))).to be > 1000
    expect(client.task(uuid)[:state]).to eq("complete")
  ensure
    session&.quit
  end
end
