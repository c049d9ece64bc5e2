//! `bin/demo` at this stage of the project: the Rust worker core running Rust handlers.
//! Steps are inserted and enqueued directly, as an orchestrator would (the embedded
//! orchestrator and the Ruby handler API come later). Shows progress, each kind of result,
//! and a summary.

use serde_json::json;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tasker_worker::config::TaskerConfig;
use tasker_worker::database;
use tasker_worker::messaging::StepFailure;
use tasker_worker::testing::{template, TestWorkflow};
use tasker_worker::worker::{
    handler_fn, DispatchMode, InMemoryHandlerRegistry, StepContext, StepSuccess, WorkerCore,
};

const STEPS: usize = 2000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = TaskerConfig::load(&TaskerConfig::overrides_from_dotted([(
        "worker.namespaces".to_string(),
        toml::Value::Array(vec!["demo".into()]),
    )])?)?;
    let pool = database::connect(&config.database.url, &config.database.pool_settings()).await?;
    database::migrate(&pool).await?;
    println!("database   {}", database::redact(&config.database.url));

    let registry = Arc::new(InMemoryHandlerRegistry::new());
    registry.register(
        "Demo::Square",
        handler_fn(|ctx: StepContext| async move {
            let n = ctx.task_context["n"].as_i64().unwrap_or(0);
            Ok(StepSuccess::new(json!({ "square": n * n })))
        }),
    );
    registry.register(
        "Demo::Gateway",
        handler_fn(|_ctx| async move {
            Err(StepFailure {
                retry_after_seconds: Some(5),
                ..StepFailure::new("gateway_busy", "payment gateway busy", true)
            })
        }),
    );

    print!("enqueueing {STEPS} single-step tasks plus 2 that fail ... ");
    std::io::stdout().flush()?;
    let square = template("square", &[("square", "Demo::Square", &[])]);
    let mut tasks = Vec::with_capacity(STEPS);
    for n in 0..STEPS {
        let wf = TestWorkflow::create(&pool, "demo", square.clone(), json!({ "n": n })).await;
        wf.enqueue("square").await;
        tasks.push(wf);
    }
    let failing = TestWorkflow::create(
        &pool,
        "demo",
        template(
            "failing",
            &[
                ("charge", "Demo::Gateway", &[]),
                ("ship", "Demo::NotWrittenYet", &[]),
            ],
        ),
        json!({}),
    )
    .await;
    failing.enqueue("charge").await;
    failing.enqueue("ship").await;
    println!("done");

    let started = Instant::now();
    let core = WorkerCore::start(config, DispatchMode::Rust(registry)).await?;
    let total = (STEPS + 2) as u64;
    loop {
        let status = core.status().await?;
        let done = status.counters.succeeded + status.counters.failed;
        let filled = (done * 40 / total) as usize;
        print!(
            "\r[{}{}] {done}/{total} committed, {} in flight ",
            "#".repeat(filled),
            ".".repeat(40 - filled),
            status.in_flight
        );
        std::io::stdout().flush()?;
        if done >= total {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err("the worker did not finish within 2 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    println!();

    let sample = &tasks[12];
    println!(
        "\nsample result (n = 12):      {}",
        sample.results("square").await.unwrap_or_default()["result"]
    );
    for step in ["charge", "ship"] {
        let r = failing.results(step).await.unwrap_or_default();
        println!(
            "{step:<6} -> {:<36} error_type={} retryable={} message={:?}",
            failing.state(step).await,
            r["error"]["error_type"],
            r["error"]["retryable"],
            r["error"]["message"].as_str().unwrap_or("")
        );
    }
    let status = core.status().await?;
    let c = &status.counters;
    println!(
        "\n{} steps in {:.2} s = {:.0} steps/s on {} handler slots; {} reads, {} commit transactions",
        c.succeeded + c.failed,
        elapsed.as_secs_f64(),
        (c.succeeded + c.failed) as f64 / elapsed.as_secs_f64(),
        status.capacity,
        c.read_batches,
        c.commit_batches
    );
    println!(
        "succeeded {}  failed {}  duplicates {}  dead-lettered {}  stale {}",
        c.succeeded, c.failed, c.duplicates, c.dead_lettered, c.stale_completions
    );
    let report = core.shutdown().await?;
    println!(
        "stopped: {} finished during shutdown, {} released",
        report.finished, report.released
    );
    println!("\nNot built yet: Ruby handlers (next_step/complete), the embedded orchestrator and the tasker_worker process.");
    if c.succeeded as usize != STEPS || c.failed != 2 {
        return Err(format!("expected {STEPS} successes and 2 failures").into());
    }
    Ok(())
}
