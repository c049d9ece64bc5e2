//! A database that goes away and comes back, on a throw-away PostgreSQL cluster of each test's
//! own (initdb on a free port; never the shared server): a result commit and an
//! orchestrator's result processing that fail meanwhile are retried with a short backoff and
//! go through as soon as it is back, long before a lease (30 s) lapses; the claims after it
//! go through as well.
//!
//! Needs PostgreSQL's server binaries (`pg_config --bindir`, or /usr/lib/postgresql/*/bin);
//! fails, naming what is missing, without them.

use serde_json::json;
use sqlx::Connection;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tasker_worker::config::{DeploymentMode, TaskerConfig};
use tasker_worker::database::{self, PoolSettings};
use tasker_worker::orchestration::{create_task, register_template, Orchestrator, TaskRequest, TaskTemplate};
use tasker_worker::testing::wait_for;
use tasker_worker::worker::{
    handler_fn, DispatchMode, InMemoryHandlerRegistry, StepContext, StepSuccess, WorkerCore,
};
use tokio::sync::Notify;

/// A cluster in a temporary directory, stopped and removed on drop.
struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

fn server_bin_dir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    found.retain(|dir| dir.join("initdb").exists());
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("this test needs PostgreSQL's server binaries (initdb, pg_ctl): none found by pg_config or in /usr/lib/postgresql/*/bin")
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Runs a server binary, as the `postgres` user when this process is root (initdb refuses root).
fn run(bin: &Path, args: &[&str]) {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let mut command = if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    let out = command
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        bin.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    fn init() -> Self {
        let bin = server_bin_dir();
        let dir = std::env::temp_dir().join(format!("tw_outage_{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = Command::new("chown").arg("postgres").arg(&dir).status();
        let data = dir.to_str().unwrap();
        run(
            &bin.join("initdb"),
            &["-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        );
        let cluster = Self {
            bin,
            dir,
            port: free_port(),
        };
        cluster.start();
        cluster
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn start(&self) {
        let data = self.dir.to_str().unwrap();
        let options = format!("-p {} -c listen_addresses=127.0.0.1 -k {data}", self.port);
        let log = self.dir.join("server.log");
        run(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data,
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
    }

    fn stop(&self) {
        run(
            &self.bin.join("pg_ctl"),
            &["-D", self.dir.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.to_str().unwrap_or_default().to_string();
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const CHAIN: &str = r#"
name: chain
namespace_name: outage
version: 1.0.0
steps:
  - { name: first, handler: { callable: Gate } }
  - { name: second, handler: { callable: Plain }, dependencies: [first] }
"#;

/// A started cluster with a migrated database `outage`, `template` registered, and a pool on it.
async fn cluster_with(template: &str) -> (Arc<Cluster>, String, sqlx::PgPool) {
    let cluster = Arc::new(tokio::task::spawn_blocking(Cluster::init).await.unwrap());
    let admin = database::connect(
        &cluster.url("postgres"),
        &PoolSettings {
            max_connections: 1,
            acquire_timeout: Duration::from_secs(10),
        },
    )
    .await
    .expect("the throw-away cluster");
    sqlx::query("CREATE DATABASE outage")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let url = cluster.url("outage");
    let pool = database::connect(
        &url,
        &PoolSettings {
            max_connections: 2,
            acquire_timeout: Duration::from_secs(10),
        },
    )
    .await
    .unwrap();
    database::migrate(&pool).await.unwrap();
    register_template(&pool, &TaskTemplate::from_yaml(template, "test").unwrap())
        .await
        .unwrap();
    (cluster, url, pool)
}

fn config(url: &str) -> TaskerConfig {
    let mut config = TaskerConfig::default();
    config.database.url = url.to_string();
    config.database.max_connections = 6;
    // A refused connection costs an attempt its whole acquire timeout: kept short so the
    // outages below span many attempts quickly.
    config.database.acquire_timeout_ms = 250;
    config.worker.namespaces = vec!["outage".into()];
    config.worker.visibility_timeout_seconds = 30;
    config.worker.poll_interval_ms = 5_000;
    config.worker.shutdown_timeout_ms = 5_000;
    config
}

fn request(name: &str) -> TaskRequest {
    TaskRequest {
        namespace: "outage".into(),
        name: name.into(),
        version: "1.0.0".into(),
        context: json!({}),
        idempotency_key: None,
    }
}

/// How long after `back` the task reached `complete` (at most 15 s, else the test fails).
async fn completed_after(pool: &sqlx::PgPool, task: uuid::Uuid, back: Instant) -> Duration {
    wait_for("the task to complete", Duration::from_secs(15), || async {
        let state: Option<String> = sqlx::query_scalar(
            "SELECT to_state FROM tasker.task_transitions WHERE task_uuid = $1 AND most_recent",
        )
        .bind(task)
        .fetch_optional(pool)
        .await
        .ok()
        .flatten();
        (state.as_deref() == Some("complete")).then_some(back.elapsed())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_that_fails_to_commit_while_the_database_is_away_commits_as_soon_as_it_is_back() {
    let (cluster, url, pool) = cluster_with(CHAIN).await;

    let gate = Arc::new(Notify::new());
    let started = Arc::new(AtomicUsize::new(0));
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    let (g, s) = (gate.clone(), started.clone());
    registry.register(
        "Gate",
        handler_fn(move |_ctx: StepContext| {
            let (gate, started) = (g.clone(), s.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                gate.notified().await;
                Ok(StepSuccess::new(json!(1)))
            }
        }),
    );
    registry.register(
        "Plain",
        handler_fn(|_ctx: StepContext| async move { Ok(StepSuccess::new(json!(2))) }),
    );
    let config = config(&url);
    let worker = WorkerCore::start(config.clone(), DispatchMode::Rust(registry))
        .await
        .unwrap();
    let mut orchestrator = Orchestrator::start(&config).await.unwrap();
    let task = create_task(&pool, &request("chain")).await.unwrap();
    wait_for("the first handler to start", Duration::from_secs(20), || async {
        (started.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;

    // The database goes away while the handler runs; its result fails to commit. It stays
    // away for five failed commits: more than the four tries a result had before it was
    // dropped (and its step re-run after the lease).
    let stopping = cluster.clone();
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .unwrap();
    gate.notify_one();
    wait_for(
        "five commits to fail while the database is away",
        Duration::from_secs(30),
        || async { (worker.status_now().counters.commit_failures >= 5).then_some(()) },
    )
    .await;

    let starting = cluster.clone();
    tokio::task::spawn_blocking(move || starting.start())
        .await
        .unwrap();
    let after = completed_after(&pool, task, Instant::now()).await;
    assert!(
        after < Duration::from_secs(10),
        "completed {after:?} after the database came back; a lease is 30 s"
    );
    let attempts: Vec<i32> =
        sqlx::query_scalar("SELECT attempts FROM tasker.workflow_steps WHERE task_uuid = $1")
            .bind(task)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(attempts, [1, 1], "no step was re-run after a lease");
    // The commit is visible before the completion processor counts it.
    let counters = wait_for("both results to be counted", Duration::from_secs(10), || async {
        let counters = worker.status_now().counters;
        (counters.succeeded >= 2).then_some(counters)
    })
    .await;
    assert_eq!(
        (
            counters.succeeded,
            counters.completion_failures,
            counters.reclaimed
        ),
        (2, 0, 0)
    );
    assert_eq!(started.load(Ordering::SeqCst), 1);

    worker.shutdown().await.unwrap();
    orchestrator.shutdown().await;
    pool.close().await;
}

const SOLO: &str = r#"
name: solo
namespace_name: outage
version: 1.0.0
steps:
  - { name: only, handler: { callable: Plain } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_whose_processing_fails_while_the_database_is_away_is_processed_as_soon_as_it_is_back() {
    let (cluster, url, pool) = cluster_with(SOLO).await;
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    registry.register(
        "Plain",
        handler_fn(|_ctx: StepContext| async move { Ok(StepSuccess::new(json!(2))) }),
    );
    let task = create_task(&pool, &request("solo")).await.unwrap();
    // The task's row is held, so the orchestrator's processing of the result (read from the
    // queue under a 30 s lease: polling mode) waits on it; then the database goes away.
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT 1 FROM tasker.tasks WHERE task_uuid = $1 FOR UPDATE")
        .bind(task)
        .execute(&mut holder)
        .await
        .unwrap();
    let mut config = config(&url);
    config.worker.deployment_mode = DeploymentMode::Polling;
    config.worker.poll_interval_ms = 100;
    let worker = WorkerCore::start(config.clone(), DispatchMode::Rust(registry))
        .await
        .unwrap();
    let mut orchestrator = Orchestrator::start(&config).await.unwrap();
    wait_for("the orchestrator to wait on the task's row", Duration::from_secs(20), || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%orchestrator_complete_step%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (waiting > 0).then_some(())
    })
    .await;
    let stopping = cluster.clone();
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .unwrap();
    drop(holder);
    wait_for(
        "result processing to fail while the database is away",
        Duration::from_secs(30),
        || async { (orchestrator.status().processing_errors >= 3).then_some(()) },
    )
    .await;

    let starting = cluster.clone();
    tokio::task::spawn_blocking(move || starting.start())
        .await
        .unwrap();
    let after = completed_after(&pool, task, Instant::now()).await;
    assert!(
        after < Duration::from_secs(10),
        "completed {after:?} after the database came back; a lease is 30 s"
    );
    let status = orchestrator.status();
    assert_eq!((status.steps_completed, status.dead_lettered), (1, 0));
    worker.shutdown().await.unwrap();
    orchestrator.shutdown().await;
    pool.close().await;
}

/// `GET path` on the metrics listener: (status, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the metrics listener");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Polls `path` until its status is `status` (at most 30 s); returns the body.
fn wait_for_status(port: u16, path: &str, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (got, body) = http_get(port, path);
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still answers {got} ({body}), expected {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The node's probes: `/ready` is 200 while the database and the LISTEN connection are up,
/// 503 naming the database while it is away (`/health` stays 200: the process is alive), 200
/// again once it is back, and 503 once the worker is quiet.
#[test]
fn ready_turns_503_while_the_database_is_away_and_when_the_worker_is_quiet() {
    use tasker_worker::node::{Node, NodeOptions};
    let setup = tokio::runtime::Runtime::new().unwrap();
    let (cluster, url, pool) = setup.block_on(cluster_with(SOLO));
    setup.block_on(pool.close());
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    registry.register(
        "Plain",
        handler_fn(|_ctx: StepContext| async move { Ok(StepSuccess::new(json!(2))) }),
    );
    let mut config = config(&url);
    let port = free_port();
    config.metrics.port = port;
    let options = NodeOptions {
        dispatch: DispatchMode::Rust(registry),
        orchestrate: true,
        on_thread_start: None,
    };
    let node = Node::start(config, options).expect("the node starts");

    let body = wait_for_status(port, "/ready", 200);
    assert!(body.contains("\"status\":\"ready\""), "{body}");
    let (status, body) = http_get(port, "/health");
    assert_eq!((status, body.trim()), (200, r#"{"status":"ok"}"#));
    let (status, metrics) = http_get(port, "/metrics");
    assert_eq!(status, 200);
    for name in [
        "tasker_steps_claimed_total 0",
        "tasker_tasks_completed_total 0",
        "tasker_commit_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    assert_eq!(http_get(port, "/nothing").0, 404);

    cluster.stop();
    let body = wait_for_status(port, "/ready", 503);
    assert!(body.contains("database"), "{body}");
    assert_eq!(http_get(port, "/health").0, 200, "the process is still alive");

    cluster.start();
    wait_for_status(port, "/ready", 200);

    node.quiet();
    let body = wait_for_status(port, "/ready", 503);
    assert!(body.contains("quiet"), "{body}");
    node.stop(None).unwrap();
}
