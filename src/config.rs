//! The worker's configuration: its typed shape, where each value comes from, and the rules a
//! value must meet before anything starts. Layers, lowest first: the defaults embedded from
//! `config/tasker/base/worker.toml`, the file named by `TASKER_CONFIG_PATH`, the environment
//! (`DATABASE_URL`, `TASKER_WORKER_NAMESPACES`), then overrides given in code (Ruby
//! `TaskerWorker.configure`, CLI flags).
//!
//! Layers are merged as TOML tables and deserialized once, so an unknown key or a bad value
//! is reported with its full dotted key and the layer (file path, environment variable) that
//! set it, whichever layer that was.

use crate::database::{self, PoolSettings};
use crate::error::{TaskerError, TaskerResult};
use crate::messaging;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The documented defaults; the only copy, so code and documentation cannot drift.
const DEFAULTS_TOML: &str = include_str!("../config/tasker/base/worker.toml");

/// Names a TOML file whose keys override the defaults.
pub const CONFIG_PATH_ENV: &str = "TASKER_CONFIG_PATH";
/// Overrides `database.url`.
pub const DATABASE_URL_ENV: &str = "DATABASE_URL";
/// Overrides `worker.namespaces`: comma-separated, e.g. `default,payments`.
pub const NAMESPACES_ENV: &str = "TASKER_WORKER_NAMESPACES";

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaskerConfig {
    pub database: DatabaseConfig,
    pub worker: WorkerConfig,
    pub runtime: RuntimeConfig,
    pub metrics: MetricsConfig,
    pub retention: RetentionConfig,
    pub orchestration: OrchestrationConfig,
}

/// Limits of the embedded orchestrator's dynamic workflows (`crate::orchestration`): an
/// outcome past them fails its deciding step.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OrchestrationConfig {
    /// Most steps one decision outcome may create (the chosen ones and those they bring).
    pub max_steps_per_decision: u32,
    /// Most batch workers one batchable outcome may create.
    pub max_batch_workers: u32,
    /// When this process runs the embedded orchestrator: a success of a step that is not a
    /// decision or batchable step is completed in the worker's own result transaction (the
    /// step completes, its ready children are enqueued, the task settles) instead of through
    /// a message on `orchestration_step_results`. Failures and dynamic outcomes keep the
    /// message route.
    pub complete_in_commit: bool,
}

impl OrchestrationConfig {
    fn check(&self, issues: &mut Vec<Issue>) {
        check_range(
            issues,
            "orchestration.max_steps_per_decision",
            self.max_steps_per_decision,
            1..=10_000,
        );
        check_range(
            issues,
            "orchestration.max_batch_workers",
            self.max_batch_workers,
            1..=100_000,
        );
    }
}

/// What retention deletes and how often (see `crate::retention`). An age of 0 keeps that
/// kind for ever.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Completed tasks (complete, resolved_manually) finished longer ago are deleted.
    pub completed_after_seconds: u64,
    /// Failed tasks (error, cancelled) finished longer ago are deleted; 0 (the default): kept.
    pub failed_after_seconds: u64,
    /// PGMQ archive rows (`pgmq.a_<queue>`, every queue) archived longer ago are deleted.
    pub archive_after_seconds: u64,
    /// A worker process runs a round this often; 0: only on demand.
    pub interval_seconds: u64,
    /// Most tasks (or archive rows) deleted per transaction.
    pub batch_size: u32,
}

impl RetentionConfig {
    pub fn interval(&self) -> Option<Duration> {
        (self.interval_seconds > 0).then(|| Duration::from_secs(self.interval_seconds))
    }

    fn check(&self, issues: &mut Vec<Issue>) {
        // Past a century an age is a typo; PostgreSQL's intervals hold it either way.
        const MAX_AGE: u64 = 100 * 365 * 24 * 60 * 60;
        check_range(
            issues,
            "retention.completed_after_seconds",
            self.completed_after_seconds,
            0..=MAX_AGE,
        );
        check_range(
            issues,
            "retention.failed_after_seconds",
            self.failed_after_seconds,
            0..=MAX_AGE,
        );
        check_range(
            issues,
            "retention.archive_after_seconds",
            self.archive_after_seconds,
            0..=MAX_AGE,
        );
        // Below 10 s the rounds would be a busy loop of empty scans against the database.
        if self.interval_seconds != 0 && self.interval_seconds < 10 {
            let message = format!("must be 0 (off) or at least 10, got {}", self.interval_seconds);
            issues.push(Issue::new("retention.interval_seconds", message));
        }
        check_range(issues, "retention.batch_size", self.batch_size, 1..=100_000);
    }
}

/// The HTTP listener serving `/metrics`, `/health` and `/ready` (see `crate::metrics`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// TCP port of the listener; 0: no listener.
    pub port: u16,
    /// Address the listener binds (an IP address).
    pub bind: String,
}

impl MetricsConfig {
    /// The address to listen on, when the listener is on (validated: `bind` parses).
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        let ip: std::net::IpAddr = self.bind.parse().ok()?;
        (self.port != 0).then(|| std::net::SocketAddr::new(ip, self.port))
    }

    fn check(&self, issues: &mut Vec<Issue>) {
        if self.bind.parse::<std::net::IpAddr>().is_err() {
            let message = format!(
                "must be an IP address such as 127.0.0.1 or 0.0.0.0, got {:?}",
                self.bind
            );
            issues.push(Issue::new("metrics.bind", message));
        }
    }
}

/// Threads of the tokio runtimes the Ruby extension builds.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Tokio worker threads of a worker's runtime (claims, leases, commits, orchestration).
    pub worker_threads: usize,
    /// Tokio worker threads of a `Client`'s runtime (task creation and inspection).
    pub client_threads: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    pub namespaces: Vec<String>,
    pub deployment_mode: DeploymentMode,
    pub visibility_timeout_seconds: u32,
    pub poll_interval_ms: u64,
    pub claim_batch_size: u32,
    pub completion_batch_size: u32,
    /// Result commits in flight at once (each a batch of up to completion_batch_size). Unset:
    /// 2 when the worker completes steps in its commits (`orchestration.complete_in_commit`
    /// beside the embedded orchestrator: a commit then does the orchestrator's work too), else
    /// 1 (one commit at a time batches the most results; BENCHMARKS.md, session 11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_concurrency: Option<u32>,
    pub max_delivery_attempts: u32,
    pub shutdown_timeout_ms: u64,
    /// The lease-only claim (issue 19): a claim writes only the step row (attempts,
    /// in_process), no `in_progress` transition; the commit writes that transition with the
    /// result. A running step then shows as `enqueued` with `in_process` true.
    pub lean_claim: bool,
    /// What a committed result does with its worker message: `archive` it (into the queue's
    /// `a_` table) or `delete` it (3 fewer WAL records per step; no archive row to inspect).
    /// `delete` needs `lean_claim`.
    pub ack_mode: AckMode,
    /// Steps claimed ahead of the handlers, waiting for a free one. Unset: as many as
    /// `max_concurrent_handlers`; 0: claim only for idle handlers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<u32>,
    pub mpsc_channels: MpscChannelsConfig,
    pub checkpoints: CheckpointsConfig,
}

/// Limits on the checkpoints a step saves while it runs (see `crate::worker::checkpoints`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointsConfig {
    /// Largest checkpoint, as JSON text: the cursor and accumulated results of one save, and
    /// the stored record with its history (older history entries are dropped to fit).
    pub max_bytes: u32,
    /// A save sooner than this after the claim's last saved one is coalesced: not written,
    /// kept in memory for the handler, written with the next save after the interval. 0: every
    /// save is written.
    pub min_interval_ms: u64,
    /// Entries kept in the checkpoint's `history` (the newest).
    pub max_history: u32,
    /// Times one claim's handler may return a checkpoint yield and be run again; the next
    /// yield fails the step (retryable, `checkpoint_yield_limit`), which resumes on retry.
    pub max_yields_per_claim: u32,
}

impl CheckpointsConfig {
    pub fn min_interval(&self) -> Duration {
        Duration::from_millis(self.min_interval_ms)
    }

    fn check(&self, issues: &mut Vec<Issue>) {
        check_range(
            issues,
            "worker.checkpoints.max_bytes",
            self.max_bytes,
            1024..=crate::limits::MAX_JSON_BYTES as u32,
        );
        check_range(
            issues,
            "worker.checkpoints.min_interval_ms",
            self.min_interval_ms,
            0..=3_600_000,
        );
        check_range(
            issues,
            "worker.checkpoints.max_history",
            self.max_history,
            1..=10_000,
        );
        check_range(
            issues,
            "worker.checkpoints.max_yields_per_claim",
            self.max_yields_per_claim,
            1..=1_000_000,
        );
    }
}

/// What a committed result does with its worker message (`worker.ack_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    Archive,
    Delete,
}

/// How the worker learns that a message is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentMode {
    /// LISTEN for notifications, plus a fallback poll for any that were missed.
    Hybrid,
    /// LISTEN only.
    EventDriven,
    /// Poll only.
    Polling,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MpscChannelsConfig {
    pub handler_dispatch: HandlerDispatchConfig,
    pub ffi_dispatch: FfiDispatchConfig,
    pub domain_events: DomainEventsConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DomainEventsConfig {
    /// Durable events waiting to be sent to `{namespace}_domain_events`.
    pub durable_buffer_size: usize,
    /// Fast events waiting for a Ruby subscriber thread.
    pub fast_buffer_size: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerDispatchConfig {
    pub dispatch_buffer_size: usize,
    pub completion_buffer_size: usize,
    pub max_concurrent_handlers: usize,
    pub handler_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FfiDispatchConfig {
    pub dispatch_buffer_size: usize,
    pub completion_timeout_ms: u64,
    pub starvation_warning_threshold_ms: u64,
}

impl DatabaseConfig {
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }

    pub fn pool_settings(&self) -> PoolSettings {
        PoolSettings {
            max_connections: self.max_connections,
            acquire_timeout: self.acquire_timeout(),
        }
    }
}

impl WorkerConfig {
    pub fn visibility_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.visibility_timeout_seconds))
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    /// Result commits in flight at once (`completion_concurrency`; see there for the default).
    pub fn effective_completion_concurrency(&self, completes_in_commit: bool) -> usize {
        self.completion_concurrency
            .map(|n| n as usize)
            .unwrap_or(if completes_in_commit { 2 } else { 1 })
    }

    /// Steps claimed ahead of the handlers (`prefetch`, or `max_concurrent_handlers` when unset).
    pub fn effective_prefetch(&self) -> usize {
        self.prefetch
            .map(|p| p as usize)
            .unwrap_or(self.mpsc_channels.handler_dispatch.max_concurrent_handlers)
    }

    /// Most steps claimed and not yet finished by a handler: the handlers plus the prefetch.
    /// (Finished results waiting to commit are bounded by the completion channel.) With
    /// `prefetch` unset this is where the adaptive prefetch starts and its floor.
    pub fn claim_capacity(&self) -> usize {
        self.mpsc_channels.handler_dispatch.max_concurrent_handlers + self.effective_prefetch()
    }

    /// The most the claim capacity can reach: with `prefetch` unset the adaptive prefetch
    /// grows up to `prefetch::CEILING_FACTOR` x max_concurrent_handlers while claimed steps
    /// start quickly (src/worker/prefetch.rs); a set `prefetch` is fixed.
    pub fn claim_capacity_ceiling(&self) -> usize {
        let handlers = self.mpsc_channels.handler_dispatch.max_concurrent_handlers;
        match self.prefetch {
            Some(_) => self.claim_capacity(),
            None => handlers + crate::worker::prefetch::CEILING_FACTOR * handlers,
        }
    }

    /// Whether the prefetch adapts (`prefetch` unset).
    pub fn adaptive_prefetch(&self) -> bool {
        self.prefetch.is_none()
    }
}

impl HandlerDispatchConfig {
    pub fn handler_timeout(&self) -> Duration {
        Duration::from_millis(self.handler_timeout_ms)
    }
}

impl FfiDispatchConfig {
    pub fn completion_timeout(&self) -> Duration {
        Duration::from_millis(self.completion_timeout_ms)
    }

    pub fn starvation_warning_threshold(&self) -> Duration {
        Duration::from_millis(self.starvation_warning_threshold_ms)
    }
}

impl Default for TaskerConfig {
    /// The embedded defaults. They cannot fail at run time: a test parses and validates them.
    fn default() -> Self {
        toml::from_str(DEFAULTS_TOML).expect("config/tasker/base/worker.toml matches TaskerConfig")
    }
}

impl TaskerConfig {
    /// Loads from the process environment: defaults < file at `TASKER_CONFIG_PATH` (if set)
    /// < `DATABASE_URL`, `TASKER_WORKER_NAMESPACES` < `overrides`.
    pub fn load(overrides: &toml::Table) -> TaskerResult<TaskerConfig> {
        let env = read_process_env()?;
        let file = match env.get(CONFIG_PATH_ENV) {
            Some(path) if path.is_empty() => {
                return Err(config_error(format!(
                    "{CONFIG_PATH_ENV} is set but empty; unset it to use only the defaults"
                )))
            }
            Some(path) => Some(PathBuf::from(path)),
            None => None,
        };
        Self::load_from(file.as_deref(), &|name| env.get(name).cloned(), overrides)
    }

    /// Loads from explicit inputs. `env` is asked only for `DATABASE_URL` and
    /// `TASKER_WORKER_NAMESPACES`; the file is `file`, whatever `TASKER_CONFIG_PATH` says.
    pub fn load_from(
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        overrides: &toml::Table,
    ) -> TaskerResult<TaskerConfig> {
        let mut layers = Layers::defaults();
        if let Some(path) = file {
            layers.apply(read_file_layer(path)?, Source::File(path.to_path_buf()));
        }
        for (table, source) in env_layers(env)? {
            layers.apply(table, source);
        }
        layers.apply(overrides.clone(), Source::Overrides);

        let config = layers.deserialize()?;
        layers.check(config.issues())?;
        Ok(config)
    }

    /// Nests dotted keys into a table: `("a.b.c", v)` becomes `{a = {b = {c = v}}}`. Keys are
    /// split on every `.`; quoted segments are not supported. A key set twice, or set both as
    /// a value and as a table, is an error naming it rather than a silent last-one-wins.
    pub fn overrides_from_dotted<I: IntoIterator<Item = (String, toml::Value)>>(
        pairs: I,
    ) -> TaskerResult<toml::Table> {
        let mut table = toml::Table::new();
        for (key, value) in pairs {
            insert_dotted(&mut table, &key, value)?;
        }
        Ok(table)
    }

    /// Checks the rules a deserialized configuration must meet; the message names every
    /// failing key. `load` already does this, with the layer that set each key.
    pub fn validate(&self) -> TaskerResult<()> {
        Layers::empty().check(self.issues())
    }

    fn issues(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        self.database.check(&mut issues);
        self.worker.check(&mut issues);
        self.runtime.check(&mut issues);
        self.metrics.check(&mut issues);
        self.retention.check(&mut issues);
        self.orchestration.check(&mut issues);
        issues
    }
}

fn config_error(message: String) -> TaskerError {
    TaskerError::Configuration(message)
}

/// The message inside a configuration error from another module, without our
/// "configuration error:" prefix, so it can be wrapped with a key.
fn message_of(err: TaskerError) -> String {
    match err {
        TaskerError::Configuration(message) => message,
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Sources

/// Snapshot of the variables `load` reads. Non-UTF-8 values fail here because the closure
/// given to `load_from` can only say "unset", which would hide them.
fn read_process_env() -> TaskerResult<HashMap<&'static str, String>> {
    let mut env = HashMap::new();
    for name in [CONFIG_PATH_ENV, DATABASE_URL_ENV, NAMESPACES_ENV] {
        match std::env::var(name) {
            Ok(value) => {
                env.insert(name, value);
            }
            Err(std::env::VarError::NotPresent) => {}
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(config_error(format!(
                    "environment variable {name} is not valid UTF-8"
                )))
            }
        }
    }
    Ok(env)
}

fn read_file_layer(path: &Path) -> TaskerResult<toml::Table> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| config_error(format!("configuration file {}: {err}", path.display())))?;
    text.parse::<toml::Table>().map_err(|err| {
        config_error(format!(
            "configuration file {}: invalid TOML: {err}",
            path.display()
        ))
    })
}

/// One layer per variable, so an error can name the variable that set the bad value.
fn env_layers(env: &dyn Fn(&str) -> Option<String>) -> TaskerResult<Vec<(toml::Table, Source)>> {
    let mut layers = Vec::new();
    if let Some(url) = env(DATABASE_URL_ENV) {
        let table = TaskerConfig::overrides_from_dotted([("database.url".into(), url.into())])?;
        layers.push((table, Source::Env(DATABASE_URL_ENV)));
    }
    if let Some(list) = env(NAMESPACES_ENV) {
        let namespaces = parse_namespace_list(&list)?
            .into_iter()
            .map(toml::Value::from)
            .collect();
        let table = TaskerConfig::overrides_from_dotted([(
            "worker.namespaces".into(),
            toml::Value::Array(namespaces),
        )])?;
        layers.push((table, Source::Env(NAMESPACES_ENV)));
    }
    Ok(layers)
}

/// Splits on commas and trims. Each name's syntax is checked later with the other
/// `worker.namespaces` rules; an empty entry is rejected here because it is almost always a
/// stray comma, which the later rules would report less clearly.
fn parse_namespace_list(list: &str) -> TaskerResult<Vec<String>> {
    let entries: Vec<&str> = list.split(',').map(str::trim).collect();
    if let Some(position) = entries.iter().position(|entry| entry.is_empty()) {
        return Err(config_error(format!(
            "{NAMESPACES_ENV} {list:?}: entry {} is empty; expected comma-separated namespaces \
             such as \"default,payments\" (sets worker.namespaces)",
            position + 1
        )));
    }
    Ok(entries.into_iter().map(String::from).collect())
}

fn insert_dotted(table: &mut toml::Table, key: &str, value: toml::Value) -> TaskerResult<()> {
    let segments: Vec<&str> = key.split('.').collect();
    if segments.iter().any(|segment| segment.is_empty()) {
        return Err(config_error(format!("override key {key:?} has an empty segment")));
    }
    let (last, parents) = segments.split_last().expect("split yields at least one segment");
    let mut current = table;
    for (depth, segment) in parents.iter().enumerate() {
        let entry = current
            .entry(segment.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(inner) => inner,
            _ => {
                return Err(config_error(format!(
                    "override {key}: {} is already set to a value, so it cannot also hold keys",
                    segments[..=depth].join(".")
                )))
            }
        };
    }
    match current.get(*last) {
        Some(toml::Value::Table(_)) => Err(config_error(format!(
            "override {key} is set to a value, but other overrides set keys under it"
        ))),
        Some(_) => Err(config_error(format!("override {key} is given twice"))),
        None => {
            current.insert(last.to_string(), value);
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Merging and provenance

/// Where a value came from, for error messages.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Env(&'static str),
    Overrides,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(path) => write!(f, "set in {}", path.display()),
            Source::Env(name) => write!(f, "set by environment variable {name}"),
            Source::Overrides => f.write_str("set by overrides"),
        }
    }
}

/// The merged table plus, for every key a non-default layer mentioned, the last such layer.
/// Keys with no entry (or ancestor with one) come from the defaults.
struct Layers {
    merged: toml::Table,
    origins: HashMap<Vec<String>, Source>,
}

impl Layers {
    fn empty() -> Self {
        Layers {
            merged: toml::Table::new(),
            origins: HashMap::new(),
        }
    }

    fn defaults() -> Self {
        let merged = DEFAULTS_TOML
            .parse::<toml::Table>()
            .expect("config/tasker/base/worker.toml is valid TOML");
        Layers {
            merged,
            ..Layers::empty()
        }
    }

    fn apply(&mut self, layer: toml::Table, source: Source) {
        let mut touched = Vec::new();
        deep_merge(&mut self.merged, layer, &mut Vec::new(), &mut touched);
        for path in touched {
            self.origins.insert(path, source.clone());
        }
    }

    /// The layer that set `path`, or the nearest ancestor a layer set as a whole.
    fn origin(&self, path: &[String]) -> Option<&Source> {
        (1..=path.len())
            .rev()
            .find_map(|len| self.origins.get(&path[..len]))
    }

    fn error(&self, path: &[String], message: String) -> TaskerError {
        match self.origin(path) {
            Some(source) => config_error(format!("{message} ({source})")),
            None => config_error(message),
        }
    }

    fn deserialize(&self) -> TaskerResult<TaskerConfig> {
        let value = toml::Value::Table(self.merged.clone());
        serde_path_to_error::deserialize(value).map_err(|err| {
            let path = map_keys(err.path());
            // `message()`, not `Display`: the latter repeats the key on a line of its own.
            self.error(&path, format!("{}: {}", err.path(), err.inner().message()))
        })
    }

    fn check(&self, issues: Vec<Issue>) -> TaskerResult<()> {
        if issues.is_empty() {
            return Ok(());
        }
        let messages: Vec<String> = issues
            .into_iter()
            .map(|issue| {
                let path: Vec<String> = issue.key.split('.').map(String::from).collect();
                message_of(self.error(&path, issue.describe()))
            })
            .collect();
        Err(config_error(messages.join("; ")))
    }
}

/// Tables merge key by key; any other value replaces what was there. Every key path `layer`
/// mentions, tables included, is pushed to `touched` so that a key the defaults lack (an
/// unknown table, say) can still be traced to its layer.
fn deep_merge(
    base: &mut toml::Table,
    layer: toml::Table,
    path: &mut Vec<String>,
    touched: &mut Vec<Vec<String>>,
) {
    for (key, value) in layer {
        path.push(key.clone());
        touched.push(path.clone());
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(incoming)) => {
                deep_merge(inner, incoming, path, touched)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
        path.pop();
    }
}

/// The map keys of a deserialization error path, up to the first array index; enough to find
/// the layer that set the value.
fn map_keys(path: &serde_path_to_error::Path) -> Vec<String> {
    path.iter()
        .map_while(|segment| match segment {
            serde_path_to_error::Segment::Map { key } => Some(key.clone()),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Validation

/// A broken rule: `key` is the dotted key, `index` the array element when it is one.
struct Issue {
    key: &'static str,
    index: Option<usize>,
    message: String,
}

impl Issue {
    fn new(key: &'static str, message: String) -> Self {
        Issue {
            key,
            index: None,
            message,
        }
    }

    /// `key: message`, unless the message (from another module) already starts with the key.
    fn describe(&self) -> String {
        match self.index {
            Some(index) => format!("{}[{index}]: {}", self.key, self.message),
            None if self.message.starts_with(self.key) => self.message.clone(),
            None => format!("{}: {}", self.key, self.message),
        }
    }
}

fn check_range<T>(issues: &mut Vec<Issue>, key: &'static str, value: T, range: RangeInclusive<T>)
where
    T: PartialOrd + fmt::Display,
{
    if !range.contains(&value) {
        let message = format!(
            "must be between {} and {}, got {value}",
            range.start(),
            range.end()
        );
        issues.push(Issue::new(key, message));
    }
}

fn check_min<T>(issues: &mut Vec<Issue>, key: &'static str, value: T, min: T)
where
    T: PartialOrd + fmt::Display,
{
    if value < min {
        issues.push(Issue::new(key, format!("must be at least {min}, got {value}")));
    }
}

impl DatabaseConfig {
    fn check(&self, issues: &mut Vec<Issue>) {
        if let Err(err) = database::connect_options(&self.url) {
            issues.push(Issue::new("database.url", message_of(err)));
        }
        if self.max_connections < 2 {
            let message = format!(
                "must be at least 2 (migrations hold two connections), got {}",
                self.max_connections
            );
            issues.push(Issue::new("database.max_connections", message));
        }
        check_min(issues, "database.acquire_timeout_ms", self.acquire_timeout_ms, 1);
    }
}

/// More threads than this is a typo, not a tuning choice: the work they share is I/O bound.
const MAX_RUNTIME_THREADS: usize = 256;

impl RuntimeConfig {
    fn check(&self, issues: &mut Vec<Issue>) {
        check_range(
            issues,
            "runtime.worker_threads",
            self.worker_threads,
            1..=MAX_RUNTIME_THREADS,
        );
        check_range(
            issues,
            "runtime.client_threads",
            self.client_threads,
            1..=MAX_RUNTIME_THREADS,
        );
    }
}

/// PGMQ's `read` takes the visibility timeout as an `int` of seconds; past 12 hours a
/// crashed worker's steps would sit invisible for longer than any operator would wait.
const MAX_VISIBILITY_TIMEOUT_SECONDS: u32 = 12 * 60 * 60;

impl WorkerConfig {
    fn check(&self, issues: &mut Vec<Issue>) {
        self.check_namespaces(issues);
        check_range(
            issues,
            "worker.visibility_timeout_seconds",
            self.visibility_timeout_seconds,
            1..=MAX_VISIBILITY_TIMEOUT_SECONDS,
        );
        // Below 10 ms the fallback poller would be a busy loop against the database.
        check_min(issues, "worker.poll_interval_ms", self.poll_interval_ms, 10);
        check_range(issues, "worker.claim_batch_size", self.claim_batch_size, 1..=1000);
        check_range(
            issues,
            "worker.completion_batch_size",
            self.completion_batch_size,
            1..=10_000,
        );
        if let Some(concurrency) = self.completion_concurrency {
            check_range(issues, "worker.completion_concurrency", concurrency, 1..=64);
        }
        check_min(
            issues,
            "worker.max_delivery_attempts",
            self.max_delivery_attempts,
            1,
        );
        if let Some(prefetch) = self.prefetch {
            check_range(issues, "worker.prefetch", prefetch, 0..=100_000);
        }
        if self.ack_mode == AckMode::Delete && !self.lean_claim {
            issues.push(Issue::new(
                "worker.ack_mode",
                "delete needs worker.lean_claim = true (the transition claim always archives)".into(),
            ));
        }
        self.mpsc_channels.handler_dispatch.check(issues);
        self.mpsc_channels.ffi_dispatch.check(issues);
        self.checkpoints.check(issues);
        check_min(
            issues,
            "worker.mpsc_channels.domain_events.durable_buffer_size",
            self.mpsc_channels.domain_events.durable_buffer_size,
            1,
        );
        check_min(
            issues,
            "worker.mpsc_channels.domain_events.fast_buffer_size",
            self.mpsc_channels.domain_events.fast_buffer_size,
            1,
        );
    }

    fn check_namespaces(&self, issues: &mut Vec<Issue>) {
        const KEY: &str = "worker.namespaces";
        if self.namespaces.is_empty() {
            issues.push(Issue::new(KEY, "must name at least one namespace".into()));
        }
        let mut seen = HashSet::new();
        for (index, namespace) in self.namespaces.iter().enumerate() {
            let message = match messaging::validate_namespace(namespace) {
                Err(err) => message_of(err),
                Ok(()) if !seen.insert(namespace) => format!("namespace {namespace:?} is listed twice"),
                Ok(()) => continue,
            };
            issues.push(Issue {
                key: KEY,
                index: Some(index),
                message,
            });
        }
    }
}

impl HandlerDispatchConfig {
    fn check(&self, issues: &mut Vec<Issue>) {
        check_min(
            issues,
            "worker.mpsc_channels.handler_dispatch.dispatch_buffer_size",
            self.dispatch_buffer_size,
            1,
        );
        check_min(
            issues,
            "worker.mpsc_channels.handler_dispatch.completion_buffer_size",
            self.completion_buffer_size,
            1,
        );
        check_range(
            issues,
            "worker.mpsc_channels.handler_dispatch.max_concurrent_handlers",
            self.max_concurrent_handlers,
            1..=10_000,
        );
        check_min(
            issues,
            "worker.mpsc_channels.handler_dispatch.handler_timeout_ms",
            self.handler_timeout_ms,
            1,
        );
    }
}

impl FfiDispatchConfig {
    fn check(&self, issues: &mut Vec<Issue>) {
        check_min(
            issues,
            "worker.mpsc_channels.ffi_dispatch.dispatch_buffer_size",
            self.dispatch_buffer_size,
            1,
        );
        check_min(
            issues,
            "worker.mpsc_channels.ffi_dispatch.completion_timeout_ms",
            self.completion_timeout_ms,
            1,
        );
        check_min(
            issues,
            "worker.mpsc_channels.ffi_dispatch.starvation_warning_threshold_ms",
            self.starvation_warning_threshold_ms,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    fn keys(path: &str) -> Vec<String> {
        path.split('.').map(String::from).collect()
    }

    #[test]
    fn deep_merge_merges_tables_and_replaces_other_values() {
        let mut base = table("a = 1\n[t]\nx = 1\ny = [1, 2]\n");
        let mut touched = Vec::new();
        deep_merge(
            &mut base,
            table("[t]\ny = [3]\nz = 2\n"),
            &mut Vec::new(),
            &mut touched,
        );
        assert_eq!(base, table("a = 1\n[t]\nx = 1\ny = [3]\nz = 2\n"));
        touched.sort();
        assert_eq!(touched, [keys("t"), keys("t.y"), keys("t.z")]);
    }

    #[test]
    fn origin_is_the_last_layer_to_mention_the_key_or_its_nearest_ancestor() {
        let mut layers = Layers::empty();
        layers.apply(
            table("[worker]\nclaim_batch_size = 1\n[extra]\n"),
            Source::Overrides,
        );
        layers.apply(table("[worker]\nclaim_batch_size = 2\n"), Source::Env("X"));
        assert!(matches!(
            layers.origin(&keys("worker.claim_batch_size")),
            Some(Source::Env("X"))
        ));
        assert!(matches!(
            layers.origin(&keys("extra.nested.key")),
            Some(Source::Overrides)
        ));
        assert!(layers.origin(&keys("database.url")).is_none());
    }

    #[test]
    fn namespace_list_is_trimmed_and_rejects_empty_entries() {
        assert_eq!(parse_namespace_list(" a ,b").unwrap(), ["a", "b"]);
        assert!(parse_namespace_list("a,,b")
            .unwrap_err()
            .to_string()
            .contains(NAMESPACES_ENV));
    }

    #[test]
    fn embedded_defaults_deserialize_and_validate() {
        TaskerConfig::default().validate().unwrap();
    }
}
