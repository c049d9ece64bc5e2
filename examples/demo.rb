# frozen_string_literal: true

# bin/demo: a worker process with the embedded orchestrator and the example handlers runs a
# batch of sample workflows, then prints each workflow's outcome and a summary.
#   ruby -Ilib examples/demo.rb [--forever]

require "tasker_worker"
require "tasker_worker/web"
require "pg"
require "fileutils"

ROOT = File.expand_path("..", __dir__)
Dir[File.join(ROOT, "examples/handlers/*.rb")].sort.each { |f| require f }

URL = ENV.fetch("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tasker_worker_development")
FileUtils.mkdir_p(File.join(ROOT, "tmp"))
TaskerWorker.configure do |c|
  c.database_url = URL
  c.logger = Logger.new(File.join(ROOT, "tmp/demo.log"))
end

ORDER = { customer: { id: 7, email: "ada@example.com" },
          items: [{ sku: "BOOK-1", quantity: 2, price: 12.5 }, { sku: "PEN-9", quantity: 3, price: 1.25 }],
          payment: { method: "card", token: "tok_visa" }, shipping: { method: "express", address: "1 Main St" } }.freeze

# [namespace, template name, how many, context, the outcome we expect]
BATCH = [
  ["linear_workflow", "mathematical_sequence", 120, { even_number: 2 }, "complete"],
  ["diamond_workflow", "parallel_computation", 120, { even_number: 2 }, "complete"],
  ["tree_workflow", "hierarchical_tree", 60, { even_number: 2 }, "complete"],
  ["mixed_dag_workflow", "complex_dag", 60, { even_number: 2 }, "complete"],
  ["order_fulfillment", "business_workflow", 40, ORDER, "complete"],
  ["order_fulfillment", "business_workflow", 1, ORDER.merge(payment: { method: "card", token: "tok_declined" }),
   "blocked_by_failures"],
  ["test_errors", "error_scenarios", 1, {}, "blocked_by_failures"],
  ["finance", "expense_review", 10, { amount: 120, employee: "ada" }, "complete"],
  ["finance", "expense_review", 10, { amount: 5_000, employee: "bob" }, "complete"],
  ["inventory", "inventory_scan", 6, { rows: 1_000 }, "complete"],
  ["inventory", "inventory_scan", 2, { rows: 0 }, "complete"],
  ["checkpointed_workflow", "checkpointed_sum", 4, { count: 20, seconds: 0.01 }, "complete"],
  ["checkpointed_workflow", "checkpointed_batches", 4, { count: 100, batch: 10 }, "complete"]
].freeze

def progress(done, total, started)
  width = 40
  filled = total.zero? ? width : done * width / total
  rate = done / [Process.clock_gettime(Process::CLOCK_MONOTONIC) - started, 0.001].max
  print "\r[#{"#" * filled}#{"." * (width - filled)}] #{done}/#{total} tasks settled, #{rate.round} tasks/s "
end

migration = TaskerWorker::Database.migrate!(URL)
puts "database   #{URL.sub(/:[^:@]*@/, ":***@")}  (PGMQ from #{migration[:pgmq_source]})"
worker = TaskerWorker::Worker.new(orchestrate: true, templates_path: File.join(ROOT, "examples/tasks"),
                                  concurrency: 10, namespaces: BATCH.map(&:first).uniq).start
client = TaskerWorker::Client.for(URL)
puts "worker     #{worker.concurrency} Ruby threads, embedded orchestrator, templates from examples/tasks"
# The dashboard, for as long as the demo runs (TASKER_DEMO_WEB_PORT, default 9292; 0 picks a free port).
TaskerWorker::Web.client = client
web = TaskerWorker::Web.server(port: ENV.fetch("TASKER_DEMO_WEB_PORT", TaskerWorker::Web::DEFAULT_PORT),
                               log: File.open(File.join(ROOT, "tmp/demo-web.log"), "a"))
web_thread = Thread.new { web.start }
puts "dashboard  http://#{web.config[:BindAddress]}:#{web.config[:Port]}/  (TaskerWorker::Web)"

total = BATCH.sum { |b| b[2] }
puts "submitting #{total} workflows ..."
started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
run_started_at = Time.now.utc
tasks = BATCH.each_with_index.flat_map do |(ns, name, count, context, expected), row|
  Array.new(count) { [client.create_task(namespace: ns, name: name, context: context), ns, name, expected, row] }
end

# Progress from the orchestrator's counters (this process settles every task it created).
deadline = started + 180
loop do
  counts = worker.status[:orchestrator]
  done = counts[:tasks_completed] + counts[:tasks_failed]
  progress(done, tasks.size, started)
  break if done >= tasks.size

  abort "\nthe workflows did not finish within 3 minutes (see tmp/demo.log)" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
  sleep 0.1
end
elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
puts
settled = tasks.to_h { |uuid, *| [uuid, client.task(uuid)] }

puts "\noutcomes"
unexpected = 0
# One line per row of BATCH (a decision's two inputs are two lines).
tasks.group_by { |_, ns, name, expected, row| [ns, name, expected, row] }.each do |(ns, name, expected), group|
  states = group.map { |uuid, *| settled[uuid][:state] }.tally
  sample = settled[group.first.first]
  unexpected += group.count { |uuid, *| settled[uuid][:state] != expected }
  last = sample[:steps].last # template order, then the steps a decision or a batch created
  detail = if expected == "blocked_by_failures"
             failed = sample[:steps].find { |s| s[:state] == "error" }
             "#{failed[:name]}: #{failed.dig(:results, "error", "message")}"
           else
             "e.g. #{last[:name]} = #{last.dig(:results, "result").inspect[0, 60]}"
           end
  puts format("  %-20s %-22s %4d x  %-28s %s", ns, name, group.size, states.map do |s, n|
                                                                       "#{n} #{s}"
                                                                     end.join(", "), detail)
end

conn = PG.connect(URL)
latency = conn.exec_params(<<~SQL, [run_started_at]).first
  WITH steps AS (
    SELECT min(tr.created_at) FILTER (WHERE tr.to_state = 'enqueued') AS enqueued,
           min(tr.created_at) FILTER (WHERE tr.to_state IN ('enqueued_for_orchestration', 'enqueued_as_error_for_orchestration')) AS done
      FROM tasker.workflow_step_transitions tr
      JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = tr.workflow_step_uuid
      JOIN tasker.tasks t ON t.task_uuid = ws.task_uuid
     WHERE t.created_at >= $1
     GROUP BY tr.workflow_step_uuid
  ), tasks AS (
    SELECT extract(epoch FROM t.completed_at - t.created_at) * 1000 AS ms FROM tasker.tasks t
     WHERE t.created_at >= $1 AND t.completed_at IS NOT NULL
  )
  SELECT (SELECT count(*) FROM steps WHERE done IS NOT NULL) AS steps,
         (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM done - enqueued) * 1000) FROM steps) AS step_p50,
         (SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM done - enqueued) * 1000) FROM steps) AS step_p95,
         (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) FROM tasks) AS task_p50,
         (SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY ms) FROM tasks) AS task_p95
SQL
conn.close

status = worker.status
puts "\nsummary"
puts format("  %d workflows (%d steps) in %.1f s = %.0f workflows/s, %.0f steps/s", tasks.size, latency["steps"].to_i,
            elapsed, tasks.size / elapsed, latency["steps"].to_i / elapsed)
puts format("  step latency, enqueued -> result committed: p50 %.1f ms, p95 %.1f ms", latency["step_p50"].to_f,
            latency["step_p95"].to_f)
puts format("  workflow latency, created -> settled:        p50 %.1f ms, p95 %.1f ms", latency["task_p50"].to_f,
            latency["task_p95"].to_f)
puts "  worker: #{status[:counters].slice(:succeeded, :failed, :duplicates, :dead_lettered, :stale_completions)}"
puts "  orchestrator: #{status[:orchestrator].slice(:tasks_completed, :tasks_failed, :steps_retried)}"

if ARGV.include?("--forever")
  puts "\nserving until Ctrl-C (create tasks with TaskerWorker::Client.create_task; " \
       "dashboard at http://#{web.config[:BindAddress]}:#{web.config[:Port]}/) ..."
  stop = Queue.new
  %w[INT TERM].each { |sig| Signal.trap(sig) { stop << sig } }
  stop.pop
end
web.shutdown
web_thread.join(5)
report = worker.stop(timeout: 10)
puts "\nstopped (#{report[:finished]} finished while stopping, #{report[:released]} released)"
if unexpected.positive?
  warn "#{unexpected} workflows did not end as expected"
  exit 1
end
