# frozen_string_literal: true

require "rack/mock"
require "tasker_worker/web"
require "tmpdir"
require_relative "../fixtures/operations_handlers"

# TaskerWorker::Web at the Rack level, against a worker (embedded orchestrator) in this process:
# every page, every action (confirm step, CSRF refusal, what the page says it did), and escaping.
RSpec.describe TaskerWorker::Web, :worker do
  let(:root) { File.expand_path("../..", __dir__) }
  let(:dir) { Dir.mktmpdir("tasker_worker_web") }
  let(:flag) { File.join(dir, "broken") }
  let(:client) { TaskerWorker::Client.for(migrated_database_url) }
  let(:app) { Rack::MockRequest.new(described_class) }
  let(:token) { "a" * 64 }
  let(:cookie) { "#{TaskerWorker::Web::CSRF_COOKIE}=#{token}" }

  before do
    described_class.client = client
    start_worker(registry: TaskerWorker.handler_registry, orchestrate: true,
                 templates_path: File.join(root, "spec/fixtures/operations"), namespaces: ["ops"], concurrency: 2)
  end

  after do
    described_class.client = nil
    FileUtils.rm_rf(dir)
  end

  def get(path)
    app.get(path, "HTTP_COOKIE" => cookie)
  end

  # post(path, "confirm" => "yes") and post(path, {...}, csrf: nil): string keys are form fields.
  def post(path, params = {}, **rest)
    csrf = rest.key?(:csrf) ? rest.delete(:csrf) : token
    fields = params.merge(rest.transform_keys(&:to_s)).merge("csrf" => csrf).compact
    app.post(path, "HTTP_COOKIE" => cookie, params: fields)
  end

  def failed_task
    FileUtils.touch(flag)
    uuid = client.create_task(namespace: "ops", name: "ops", context: { fail_while: flag })
    wait_until("task #{uuid}'s flaky step to fail") do
      client.task(uuid)[:steps].any? { |s| s[:name] == "flaky" && s[:state] == "error" }
    end
    uuid
  end

  def step(uuid, name)
    client.task(uuid)[:steps].find { |s| s[:name] == name }
  end

  it "renders the overview, tasks, task, failures, dead letters and workers pages" do
    uuid = failed_task

    overview = get("/")
    expect(overview.status).to eq(200)
    expect(overview.body).to include("Last hour", "worker_ops_queue", "Workers alive (1)")
    expect(overview.headers["set-cookie"]).to match(/tasker_worker_csrf=\h{64}.*httponly/i)

    tasks = get("/tasks?state=blocked_by_failures&namespace=ops")
    expect(tasks.status).to eq(200)
    expect(tasks.body).to include(uuid, "1 in error")
    expect(get("/tasks?state=complete").body).not_to include(uuid)

    task = get("/tasks/#{uuid}")
    expect(task.status).to eq(200)
    expect(task.body).to include("<svg", %(data-state="error"), "flaky is broken while", "Timeline", "step flaky",
                                 "Retry step", "backtrace")

    failures = get("/failures")
    expect(failures.status).to eq(200)
    expect(failures.body).to include("permanent_error", step(uuid, "flaky")[:step_uuid], "Retry selected")

    expect(get("/workers").body).to include("running", Process.pid.to_s)
    expect(get("/dead_letters").status).to eq(200)
    expect(get("/tasks/#{SecureRandom.uuid}").status).to eq(404)
    expect(get("/nothing").status).to eq(404)
  end

  it "pages the tasks list newest first" do
    @workers.each { |w| w.stop(timeout: 5) } # the tasks only need listing, not running
    uuids = Array.new(52) { |i| client.create_task(namespace: "ops", name: "ops", context: { n: i, seconds: 0 }) }
    first = get("/tasks")
    expect(first.body).to include(uuids.last).and include("Older")
    expect(first.body).not_to include(uuids[0])
    older = first.body[/href="([^"]*before=[^"]*)"/, 1]
    second = get(CGI.unescapeHTML(older))
    expect(second.body).to include(uuids[0], uuids[1])
    expect(second.body).not_to include(uuids.last)
  end

  it "retries a failed step after a confirm step, and says what it did" do
    uuid = failed_task
    flaky = step(uuid, "flaky")[:step_uuid]
    File.delete(flag)

    confirm = post("/steps/#{flaky}/retry")
    expect(confirm.status).to eq(200)
    expect(confirm.body).to include("Retry step #{flaky}?", %(name="confirm" value="yes"))
    expect(step(uuid, "flaky")[:state]).to eq("error")

    done = post("/steps/#{flaky}/retry", "confirm" => "yes")
    expect(done.status).to eq(200)
    expect(done.body).to include("Retried step #{flaky}: 1 step message(s) sent")
    expect(client.wait(uuid, timeout: 20)[:state]).to eq("complete")

    refused = post("/steps/#{flaky}/retry", "confirm" => "yes")
    expect(refused.status).to eq(422)
  end

  it "refuses every action without the matching CSRF token" do
    uuid = failed_task
    flaky = step(uuid, "flaky")[:step_uuid]
    paths = ["/steps/#{flaky}/retry", "/tasks/#{uuid}/retry", "/tasks/#{uuid}/cancel",
             "/dead_letters/#{SecureRandom.uuid}/replay", "/failures/retry", "/failures/discard"]
    paths.each do |path|
      [nil, "b" * 64].each do |csrf|
        response = post(path, { "confirm" => "yes", "step_uuids[]" => flaky }, csrf: csrf)
        expect(response.status).to eq(403), "#{path} with csrf #{csrf.inspect} answered #{response.status}"
        expect(response.body).to include("nothing was done")
      end
    end
    no_cookie = app.post("/tasks/#{uuid}/cancel", params: { "csrf" => token, "confirm" => "yes" })
    expect(no_cookie.status).to eq(403)
    expect(client.task(uuid)[:state]).to eq("blocked_by_failures")
  end

  it "retries a task, cancels a task, and bulk retries and discards from the failures page" do
    a = failed_task
    b = failed_task
    c = failed_task

    expect(post("/tasks/#{a}/retry").body).to include("Retry every failed step of task #{a}?")
    expect(post("/tasks/#{a}/retry", "confirm" => "yes").body).to include("Retried task #{a}: 1 step message(s) sent")
    wait_until("a's flaky step to fail again") do
      client.task_transitions(a).count { |t| t[:step_name] == "flaky" && t[:to_state] == "error" } == 2
    end

    expect(post("/tasks/#{b}/cancel", "confirm" => "yes").body).to include("Cancelled task #{b}: ")
    expect(client.task(b)[:state]).to eq("cancelled")

    steps = [step(a, "flaky")[:step_uuid], step(c, "flaky")[:step_uuid]]
    confirm = post("/failures/discard", "step_uuids" => steps)
    expect(confirm.body).to include("Discard (cancel the task of) 2 step(s)?")
    expect(confirm.body.scan('name="step_uuids[]"').size).to eq(2)
    expect(post("/failures/discard", "step_uuids" => [steps[0]], "confirm" => "yes").body)
      .to include("1 of 1 task(s) discarded")
    expect(client.task(a)[:state]).to eq("cancelled")

    File.delete(flag)
    expect(post("/failures/retry", "step_uuids" => steps, "confirm" => "yes").body)
      .to include("1 of 2 step(s) retried", "cancelled")
    expect(client.wait(c, timeout: 20)[:state]).to eq("complete")
  end

  it "replays a dead letter" do
    id = db.exec_params(<<~SQL, ["not json"]).getvalue(0, 0)
      INSERT INTO tasker.dead_letters (dead_letter_uuid, queue_name, msg_id, read_ct, message, reason, created_at)
      VALUES (gen_random_uuid(), 'worker_ops_queue', 1, 3, to_jsonb($1::text), '<b>bad</b> message', now())
      RETURNING dead_letter_uuid
    SQL
    page = get("/dead_letters")
    expect(page.body).to include(id, "&lt;b&gt;bad&lt;/b&gt; message", "Replay")
    expect(page.body).not_to include("<b>bad</b>")
    done = post("/dead_letters/#{id}/replay", "confirm" => "yes")
    expect(done.body).to match(/Replayed dead letter #{id} as message \d+/)
    expect(get("/dead_letters").body).to include("replayed")
  end

  it "escapes values from the database: a step result holding <script>" do
    uuid = failed_task
    script = "<script>alert('owned')</script>"
    client.resolve_step_manually(step(uuid, "flaky")[:step_uuid], result: { "html" => script })
    client.wait(uuid, timeout: 20)
    page = get("/tasks/#{uuid}").body
    expect(page).to include("&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;")
    expect(page).not_to include(script)
    expect(page).not_to include("<script")
  end
end
