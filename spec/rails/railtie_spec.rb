# frozen_string_literal: true

# The gem inside a real Rails 6.1 app (spec/support/rails_app.rb): configuration from
# config/tasker_worker.yml and database.yml, steps inside the executor (ActiveRecord
# connections returned after each step), reloading, the pool warning, rake tasks and the test
# database keeping the tasker schema.
RSpec.describe "tasker_worker in a Rails app", :worker do
  let(:app) { RailsApp.instance }
  let(:dev_log) { File.join(app.root, "log/development.log") }

  before do
    app.write("config/tasks/place_order.yml", <<~YAML)
      name: place_order
      namespace_name: orders
      version: 1.0.0
      steps:
        - { name: create, handler: { callable: CreateOrderHandler } }
    YAML
    app.write("config/tasker_worker.yml", <<~YAML)
      development:
        namespaces: [orders]
        poll_interval: <%= 100 / 1000.0 %>
      test:
        namespaces: [orders]
    YAML
    write_handler(version: 1)
    app.run!("bin/rails", "tasker_worker:migrate")
    @pids = []
  end

  after do
    @pids.each { |pid| Process.kill(:TERM, pid) rescue nil } # rubocop:disable Style/RescueModifier
    # Every worker is told to stop before any is waited for.
    @pids.each do |pid| # rubocop:disable Style/CombinableLoops
      Timeout.timeout(20) { Process.wait(pid) }
    rescue Timeout::Error, Errno::ECHILD
      Process.kill(:KILL, pid) rescue nil # rubocop:disable Style/RescueModifier
    end
  end

  def write_handler(version:)
    app.write("app/handlers/create_order_handler.rb", <<~RUBY)
      class CreateOrderHandler < TaskerWorker::StepHandler
        def call(context)
          order = Order.create!(number: context.input(:number))
          success(result: { "order_id" => order.id, "version" => #{version} })
        end
      end
    RUBY
  end

  def start_worker(concurrency:)
    log = File.join(app.root, "log/worker_#{@pids.size}.out")
    pid = app.spawn("bundle", "exec", "tasker_worker", "-r", ".", "-c", concurrency.to_s, "--orchestrate", log: log)
    @pids << pid
    wait_until("the worker in the Rails app to start (#{log})", timeout: 60) do
      raise "the worker exited: #{File.read(log)}" if Process.wait(pid, Process::WNOHANG)

      File.exist?(dev_log) && File.read(dev_log).include?("pid #{pid}")
    end
    pid
  end

  # Creates `count` tasks from `bin/rails runner` and waits for them there; returns
  # { "states" => {state => n}, "orders" => n, "versions" => [..] }.
  def run_tasks(count, first_number: 0)
    output = app.runner(<<~RUBY)
      uuids = Array.new(#{count}) do |i|
        TaskerWorker::Client.create_task(namespace: "orders", name: "place_order", context: { number: #{first_number} + i })
      end
      tasks = uuids.map { |uuid| TaskerWorker::Client.wait(uuid, timeout: 90) }
      puts JSON.generate("states" => tasks.map { |t| t[:state] }.tally, "orders" => Order.count,
                         "versions" => tasks.map { |t| t[:steps].first[:results].dig("result", "version") }.uniq)
    RUBY
    JSON.parse(output.lines.last)
  end

  # db:test:prepare drops and recreates the test database, then reports what it holds.
  def test_database_tables
    app.run!("bin/rails", "db:test:prepare")
    conn = app.connect("test")
    %w[tasker.tasks pgmq.meta public.orders].map { |name| conn.exec_params("SELECT to_regclass($1)::text", [name]).getvalue(0, 0) }
  ensure
    conn&.close
  end

  it "installs with its generators: config, an example workflow with a passing spec, the schema through db:migrate" do
    expect(app.install_output.scan(/create\s+(\S+)/).flatten).to include(
      "config/tasker_worker.yml", "config/initializers/tasker_worker.rb", "config/tasks/greeting.yml",
      "app/handlers/greeting_handler.rb", "spec/handlers/greeting_handler_spec.rb"
    )
    expect(app.migrate_output).to match(/InstallTaskerWorker: migrated/)
    app.run!("bin/rails", "generate", "tasker_worker:handler", "Checkout::ChargeCard", "--force")
    expect(app.read("app/handlers/checkout/charge_card.rb")).to include("module Checkout\n  class ChargeCard < TaskerWorker::StepHandler")

    output = app.run!("bundle", "exec", "rspec", "spec/handlers")
    expect(output).to include("3 examples, 0 failures")
  end

  it "runs 100 tasks whose handlers use ActiveRecord, -c 10 over pool: 5, none failing, and warns about the pool" do
    orders_before = app.connect.exec("SELECT count(*) FROM orders").getvalue(0, 0).to_i
    start_worker(concurrency: 10)

    outcome = run_tasks(100)

    expect(outcome["states"]).to eq("complete" => 100)
    expect(outcome["orders"]).to eq(orders_before + 100)
    expect(File.read(dev_log)).to include("concurrency 10 exceeds the ActiveRecord pool of 5")
  end

  it "uses an edited handler for the next step without a restart (development reloading)" do
    start_worker(concurrency: 2)
    expect(run_tasks(1)["versions"]).to eq([1])

    write_handler(version: 2)
    expect(run_tasks(1, first_number: 1)["versions"]).to eq([2])
  end

  it "creates a task inside an ActiveRecord transaction on its connection: rolled back, nothing; committed, it runs" do
    start_worker(concurrency: 2)
    output = app.runner(<<~RUBY)
      written = -> { ActiveRecord::Base.connection.select_value(
        "SELECT (SELECT count(*) FROM tasker.tasks) + (SELECT count(*) FROM pgmq.q_worker_orders_queue) + " \\
        "(SELECT count(*) FROM pgmq.a_worker_orders_queue)").to_i }
      create = ->(number) { TaskerWorker::Client.create_task(namespace: "orders", name: "place_order", context: { number: number }) }
      before = written.call
      ActiveRecord::Base.transaction do
        create.call(-1)
        raise ActiveRecord::Rollback
      end
      rolled_back = written.call - before
      uuid = seen_inside = nil
      ActiveRecord::Base.transaction do
        uuid = create.call(-2)
        seen_inside = begin
          TaskerWorker::Client.task(uuid)
          "seen by another connection"
        rescue TaskerWorker::Error
          "not seen by another connection"
        end
      end
      task = TaskerWorker::Client.wait(uuid, timeout: 60)
      puts JSON.generate("rolled_back" => rolled_back, "seen_inside" => seen_inside, "state" => task[:state],
                         "number" => Order.find(task[:steps].first[:results].dig("result", "order_id")).number)
    RUBY
    outcome = JSON.parse(output.lines.last)

    expect(outcome).to eq("rolled_back" => 0, "seen_inside" => "not seen by another connection", "state" => "complete",
                          "number" => -2)
  end

  it "installs the schema with tasker_worker:migrate and keeps it through db:test:prepare, in both schema formats" do
    expect(app.run!("bin/rails", "tasker_worker:migrate")).to include("schema up to date")
    status = app.run!("bin/rails", "tasker_worker:status")
    expect(status).to include("schema: up to date", "tasks by state:")
    expect(app.run!("bundle", "exec", "tasker_worker", "status", "-r", ".")).to eq(status)
    expect(app.read("db/schema.rb")).not_to include("sqlx")
    expect(test_database_tables).to eq(%w[tasker.tasks pgmq.meta orders])

    application = app.read("config/application.rb")
    app.write("config/application.rb", application.sub(/^  end\nend/, "    config.active_record.schema_format = :sql\n  end\nend"))
    begin
      app.run!("bin/rails", "db:schema:dump")
      expect(app.read("db/structure.sql")).to include("CREATE TABLE public.orders")
      expect(app.read("db/structure.sql")).not_to match(/tasker\.|pgmq\.|_sqlx_migrations/)
      expect(test_database_tables).to eq(%w[tasker.tasks pgmq.meta orders])
    ensure
      app.write("config/application.rb", application)
    end
  end
end
