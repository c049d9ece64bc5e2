//! Loading the worker configuration: the embedded defaults, layer precedence, and that every
//! bad key or value fails with its dotted key (and the file or variable that set it). No
//! database needed; the environment is always a closure, never the process's.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tasker_worker::config::{DeploymentMode, TaskerConfig};
use tasker_worker::TaskerError;
use toml::Value;

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// A TOML file under the temp dir, unique per test, removed when dropped.
struct TempConfig {
    path: PathBuf,
}

impl TempConfig {
    fn new(contents: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "tasker_worker_config_test_{}_{}.toml",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, contents).unwrap();
        TempConfig { path }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn shown(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn overrides(pairs: &[(&str, Value)]) -> toml::Table {
    TaskerConfig::overrides_from_dotted(pairs.iter().map(|(k, v)| (k.to_string(), v.clone()))).unwrap()
}

fn load_with_overrides(pairs: &[(&str, Value)]) -> Result<TaskerConfig, TaskerError> {
    TaskerConfig::load_from(None, &no_env, &overrides(pairs))
}

/// The message of a configuration error; any other outcome fails the test.
fn config_error<T: std::fmt::Debug>(result: Result<T, TaskerError>) -> String {
    match result {
        Err(err @ TaskerError::Configuration(_)) => err.to_string(),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

fn assert_mentions(message: &str, expected: &[&str]) {
    for needle in expected {
        assert!(message.contains(needle), "{needle:?} not in error: {message}");
    }
}

// ---------------------------------------------------------------------------------------------
// Defaults

#[test]
fn defaults_match_the_documented_values() {
    let config = TaskerConfig::default();
    assert_eq!(
        config.database.url,
        "postgres://postgres@127.0.0.1:5432/tasker_worker_development"
    );
    assert_eq!(config.database.max_connections, 10);
    assert_eq!(config.database.acquire_timeout_ms, 5000);

    let worker = &config.worker;
    assert_eq!(worker.namespaces, vec!["default".to_string()]);
    assert_eq!(worker.deployment_mode, DeploymentMode::Hybrid);
    assert_eq!(worker.visibility_timeout_seconds, 30);
    assert_eq!(worker.poll_interval_ms, 1000);
    assert_eq!(worker.claim_batch_size, 20);
    assert_eq!(worker.completion_batch_size, 100);
    assert_eq!(worker.max_delivery_attempts, 5);
    assert_eq!(worker.shutdown_timeout_ms, 30000);
    assert_eq!(worker.prefetch, None);

    let handler = &worker.mpsc_channels.handler_dispatch;
    assert_eq!(handler.dispatch_buffer_size, 1000);
    assert_eq!(handler.completion_buffer_size, 1000);
    assert_eq!(handler.max_concurrent_handlers, 10);
    assert_eq!(handler.handler_timeout_ms, 30000);

    let ffi = &worker.mpsc_channels.ffi_dispatch;
    assert_eq!(ffi.dispatch_buffer_size, 1000);
    assert_eq!(ffi.completion_timeout_ms, 30000);
    assert_eq!(ffi.starvation_warning_threshold_ms, 10000);

    assert_eq!(config.runtime.worker_threads, 2);
    assert_eq!(config.runtime.client_threads, 1);

    assert_eq!(config.metrics.port, 0);
    assert_eq!(config.metrics.bind, "127.0.0.1");
    assert_eq!(
        config.metrics.listen_addr(),
        None,
        "the metrics listener is off by default"
    );
}

#[test]
fn the_metrics_listener_takes_a_port_and_an_ip_address() {
    let config = load_with_overrides(&[
        ("metrics.port", Value::Integer(9394)),
        ("metrics.bind", Value::String("0.0.0.0".into())),
    ])
    .unwrap();
    assert_eq!(
        config.metrics.listen_addr(),
        Some("0.0.0.0:9394".parse().unwrap())
    );
    for port in [-1, 65_536] {
        let message = config_error(load_with_overrides(&[("metrics.port", Value::Integer(port))]));
        assert_mentions(&message, &["metrics.port", &port.to_string()]);
    }
    let message = config_error(load_with_overrides(&[(
        "metrics.bind",
        Value::String("localhost:80".into()),
    )]));
    assert_mentions(
        &message,
        &["metrics.bind", "IP address", "localhost:80", "set by overrides"],
    );
}

#[test]
fn prefetch_starts_at_the_handler_count_adapts_when_unset_and_adds_to_the_claim_capacity() {
    let config = load_with_overrides(&[(
        "worker.mpsc_channels.handler_dispatch.max_concurrent_handlers",
        Value::Integer(7),
    )])
    .unwrap();
    assert_eq!(
        (
            config.worker.effective_prefetch(),
            config.worker.claim_capacity(),
            config.worker.adaptive_prefetch(),
            config.worker.claim_capacity_ceiling()
        ),
        (7, 14, true, 28),
        "unset: adaptive, from the handler count up to three times it"
    );
    let config = load_with_overrides(&[
        (
            "worker.mpsc_channels.handler_dispatch.max_concurrent_handlers",
            Value::Integer(7),
        ),
        ("worker.prefetch", Value::Integer(0)),
    ])
    .unwrap();
    assert_eq!(
        (
            config.worker.effective_prefetch(),
            config.worker.claim_capacity(),
            config.worker.adaptive_prefetch(),
            config.worker.claim_capacity_ceiling()
        ),
        (0, 7, false, 7),
        "set: fixed"
    );
}

#[test]
fn completion_concurrency_defaults_to_two_only_when_completing_in_the_commit() {
    let config = load_with_overrides(&[]).unwrap();
    assert_eq!(config.worker.completion_concurrency, None);
    assert_eq!(config.worker.effective_completion_concurrency(false), 1);
    assert_eq!(config.worker.effective_completion_concurrency(true), 2);
    let config = load_with_overrides(&[("worker.completion_concurrency", Value::Integer(3))]).unwrap();
    assert_eq!(config.worker.effective_completion_concurrency(false), 3);
    assert_eq!(config.worker.effective_completion_concurrency(true), 3);
}

#[test]
fn defaults_are_valid_and_are_what_an_empty_load_returns() {
    let defaults = TaskerConfig::default();
    defaults.validate().unwrap();
    let loaded = TaskerConfig::load_from(None, &no_env, &toml::Table::new()).unwrap();
    assert_eq!(loaded, defaults);
}

#[test]
fn a_config_serializes_to_toml_that_loads_back_equal() {
    let mut config = TaskerConfig::default();
    config.worker.deployment_mode = DeploymentMode::EventDriven;
    let text = toml::to_string(&config).unwrap();
    assert!(text.contains("deployment_mode = \"event_driven\""), "{text}");
    let file = TempConfig::new(&text);
    assert_eq!(
        TaskerConfig::load_from(Some(file.path()), &no_env, &toml::Table::new()).unwrap(),
        config
    );
}

#[test]
fn durations_and_pool_settings_follow_the_numbers() {
    let config = TaskerConfig::default();
    assert_eq!(config.database.acquire_timeout(), Duration::from_millis(5000));
    let pool = config.database.pool_settings();
    assert_eq!(pool.max_connections, 10);
    assert_eq!(pool.acquire_timeout, Duration::from_millis(5000));

    let worker = &config.worker;
    assert_eq!(worker.visibility_timeout(), Duration::from_secs(30));
    assert_eq!(worker.poll_interval(), Duration::from_millis(1000));
    assert_eq!(worker.shutdown_timeout(), Duration::from_millis(30000));
    assert_eq!(
        worker.mpsc_channels.handler_dispatch.handler_timeout(),
        Duration::from_millis(30000)
    );
    let ffi = &worker.mpsc_channels.ffi_dispatch;
    assert_eq!(ffi.completion_timeout(), Duration::from_millis(30000));
    assert_eq!(ffi.starvation_warning_threshold(), Duration::from_millis(10000));
}

#[test]
fn every_deployment_mode_parses_from_its_snake_case_name() {
    for (name, mode) in [
        ("hybrid", DeploymentMode::Hybrid),
        ("event_driven", DeploymentMode::EventDriven),
        ("polling", DeploymentMode::Polling),
    ] {
        let config = load_with_overrides(&[("worker.deployment_mode", name.into())]).unwrap();
        assert_eq!(config.worker.deployment_mode, mode);
    }
}

// ---------------------------------------------------------------------------------------------
// Precedence: defaults < file < environment < overrides

const PRECEDENCE_FILE: &str = r#"
[database]
url = "postgres://file@db.example:5432/from_file"

[worker]
namespaces = ["from_file"]
claim_batch_size = 30

[worker.mpsc_channels.handler_dispatch]
max_concurrent_handlers = 4
"#;

#[test]
fn file_beats_defaults_and_leaves_other_keys_alone() {
    let file = TempConfig::new(PRECEDENCE_FILE);
    let config = TaskerConfig::load_from(Some(file.path()), &no_env, &toml::Table::new()).unwrap();
    assert_eq!(config.database.url, "postgres://file@db.example:5432/from_file");
    assert_eq!(config.worker.namespaces, vec!["from_file".to_string()]);
    assert_eq!(config.worker.claim_batch_size, 30);
    assert_eq!(
        config
            .worker
            .mpsc_channels
            .handler_dispatch
            .max_concurrent_handlers,
        4
    );
    // Siblings of overridden keys keep their defaults: tables merge, they are not replaced.
    assert_eq!(
        config.worker.mpsc_channels.handler_dispatch.handler_timeout_ms,
        30000
    );
    assert_eq!(config.database.max_connections, 10);
}

#[test]
fn environment_beats_file() {
    let file = TempConfig::new(PRECEDENCE_FILE);
    let env = env_of(&[
        ("DATABASE_URL", "postgres://env@db.example/from_env"),
        ("TASKER_WORKER_NAMESPACES", "from_env"),
    ]);
    let config = TaskerConfig::load_from(Some(file.path()), &env, &toml::Table::new()).unwrap();
    assert_eq!(config.database.url, "postgres://env@db.example/from_env");
    assert_eq!(config.worker.namespaces, vec!["from_env".to_string()]);
    assert_eq!(
        config.worker.claim_batch_size, 30,
        "the file's other keys still apply"
    );
}

#[test]
fn overrides_beat_environment() {
    let file = TempConfig::new(PRECEDENCE_FILE);
    let env = env_of(&[
        ("DATABASE_URL", "postgres://env@db.example/from_env"),
        ("TASKER_WORKER_NAMESPACES", "from_env"),
    ]);
    let overrides = overrides(&[
        (
            "database.url",
            "postgres://override@db.example/from_override".into(),
        ),
        ("worker.namespaces", Value::Array(vec!["from_override".into()])),
        (
            "worker.mpsc_channels.handler_dispatch.max_concurrent_handlers",
            Value::Integer(7),
        ),
    ]);
    let config = TaskerConfig::load_from(Some(file.path()), &env, &overrides).unwrap();
    assert_eq!(
        config.database.url,
        "postgres://override@db.example/from_override"
    );
    assert_eq!(config.worker.namespaces, vec!["from_override".to_string()]);
    assert_eq!(
        config
            .worker
            .mpsc_channels
            .handler_dispatch
            .max_concurrent_handlers,
        7
    );
}

#[test]
fn the_environment_closure_is_only_asked_for_the_documented_variables() {
    let asked = std::cell::RefCell::new(Vec::new());
    let env = |name: &str| {
        asked.borrow_mut().push(name.to_string());
        None
    };
    TaskerConfig::load_from(None, &env, &toml::Table::new()).unwrap();
    let mut asked = asked.into_inner();
    asked.sort();
    assert_eq!(asked, ["DATABASE_URL", "TASKER_WORKER_NAMESPACES"]);
}

// ---------------------------------------------------------------------------------------------
// Unknown keys, wrong types, bad files

#[test]
fn unknown_key_in_file_names_the_dotted_key_and_the_file() {
    let file = TempConfig::new("[worker.mpsc_channels.handler_dispatch]\nmax_concurent_handlers = 4\n");
    let message = config_error(TaskerConfig::load_from(
        Some(file.path()),
        &no_env,
        &toml::Table::new(),
    ));
    assert_mentions(
        &message,
        &[
            "worker.mpsc_channels.handler_dispatch.max_concurent_handlers",
            "unknown field",
            &file.shown(),
        ],
    );
}

#[test]
fn unknown_table_in_file_names_it_and_the_file() {
    let file = TempConfig::new("[wroker]\nnamespaces = [\"a\"]\n");
    let message = config_error(TaskerConfig::load_from(
        Some(file.path()),
        &no_env,
        &toml::Table::new(),
    ));
    assert_mentions(&message, &["wroker", "unknown field", &file.shown()]);
}

#[test]
fn unknown_key_in_overrides_is_named() {
    let message = config_error(load_with_overrides(&[(
        "worker.pol_interval_ms",
        Value::Integer(5),
    )]));
    assert_mentions(
        &message,
        &["worker.pol_interval_ms", "unknown field", "overrides"],
    );
}

#[test]
fn wrong_type_names_the_key() {
    let message = config_error(load_with_overrides(&[("worker.claim_batch_size", "ten".into())]));
    assert_mentions(&message, &["worker.claim_batch_size", "invalid type"]);

    let file = TempConfig::new("[worker.mpsc_channels.ffi_dispatch]\ncompletion_timeout_ms = \"30s\"\n");
    let message = config_error(TaskerConfig::load_from(
        Some(file.path()),
        &no_env,
        &toml::Table::new(),
    ));
    assert_mentions(
        &message,
        &[
            "worker.mpsc_channels.ffi_dispatch.completion_timeout_ms",
            &file.shown(),
        ],
    );
}

#[test]
fn a_value_where_a_table_belongs_names_the_key() {
    let message = config_error(load_with_overrides(&[(
        "worker.mpsc_channels",
        Value::Integer(1),
    )]));
    assert_mentions(&message, &["worker.mpsc_channels", "invalid type"]);
}

#[test]
fn negative_numbers_do_not_wrap_and_name_the_key() {
    for key in [
        "database.max_connections",                                   // u32
        "worker.shutdown_timeout_ms",                                 // u64
        "worker.mpsc_channels.handler_dispatch.dispatch_buffer_size", // usize
    ] {
        let message = config_error(load_with_overrides(&[(key, Value::Integer(-1))]));
        assert_mentions(&message, &[key, "-1"]);
    }
}

#[test]
fn numbers_too_large_for_the_field_name_the_key() {
    let message = config_error(load_with_overrides(&[(
        "worker.claim_batch_size",
        Value::Integer(u32::MAX as i64 + 1),
    )]));
    assert_mentions(&message, &["worker.claim_batch_size"]);
}

#[test]
fn unknown_deployment_mode_names_the_key() {
    let message = config_error(load_with_overrides(&[(
        "worker.deployment_mode",
        "event-driven".into(),
    )]));
    assert_mentions(&message, &["worker.deployment_mode", "event_driven"]);
}

#[test]
fn missing_config_file_names_the_path() {
    let path = std::env::temp_dir().join(format!(
        "tasker_worker_config_missing_{}.toml",
        std::process::id()
    ));
    let message = config_error(TaskerConfig::load_from(Some(&path), &no_env, &toml::Table::new()));
    assert_mentions(&message, &[&path.display().to_string()]);
}

#[test]
fn toml_syntax_error_names_the_path() {
    let file = TempConfig::new("[worker\nclaim_batch_size = 1\n");
    let message = config_error(TaskerConfig::load_from(
        Some(file.path()),
        &no_env,
        &toml::Table::new(),
    ));
    assert_mentions(&message, &[&file.shown(), "invalid TOML"]);
}

// ---------------------------------------------------------------------------------------------
// Validation rules

/// One out-of-range value per rule; each must fail naming its key.
#[test]
fn each_rule_rejects_a_bad_value_naming_the_key() {
    let cases: &[(&str, i64)] = &[
        ("database.max_connections", 1),
        ("database.acquire_timeout_ms", 0),
        ("worker.visibility_timeout_seconds", 0),
        ("worker.visibility_timeout_seconds", 43_201),
        ("worker.poll_interval_ms", 9),
        ("worker.claim_batch_size", 0),
        ("worker.claim_batch_size", 1001),
        ("worker.completion_batch_size", 0),
        ("worker.completion_batch_size", 10_001),
        ("worker.completion_concurrency", 0),
        ("worker.completion_concurrency", 65),
        ("worker.max_delivery_attempts", 0),
        ("worker.prefetch", 100_001),
        ("worker.mpsc_channels.handler_dispatch.dispatch_buffer_size", 0),
        ("worker.mpsc_channels.handler_dispatch.completion_buffer_size", 0),
        ("worker.mpsc_channels.handler_dispatch.max_concurrent_handlers", 0),
        (
            "worker.mpsc_channels.handler_dispatch.max_concurrent_handlers",
            10_001,
        ),
        ("worker.mpsc_channels.handler_dispatch.handler_timeout_ms", 0),
        ("worker.mpsc_channels.ffi_dispatch.dispatch_buffer_size", 0),
        ("worker.mpsc_channels.ffi_dispatch.completion_timeout_ms", 0),
        (
            "worker.mpsc_channels.ffi_dispatch.starvation_warning_threshold_ms",
            0,
        ),
        ("runtime.worker_threads", 0),
        ("runtime.worker_threads", 257),
        ("runtime.client_threads", 0),
        ("runtime.client_threads", 257),
    ];
    for &(key, value) in cases {
        let message = config_error(load_with_overrides(&[(key, Value::Integer(value))]));
        assert_mentions(&message, &[key, &value.to_string(), "set by overrides"]);
    }
}

/// The edges of each range are allowed, so the rules are not off by one.
#[test]
fn each_rule_accepts_its_boundaries() {
    let cases: &[(&str, i64)] = &[
        ("database.max_connections", 2),
        ("database.acquire_timeout_ms", 1),
        ("worker.visibility_timeout_seconds", 1),
        ("worker.visibility_timeout_seconds", 43_200),
        ("worker.poll_interval_ms", 10),
        ("worker.claim_batch_size", 1),
        ("worker.claim_batch_size", 1000),
        ("worker.completion_batch_size", 1),
        ("worker.completion_batch_size", 10_000),
        ("worker.completion_concurrency", 1),
        ("worker.completion_concurrency", 64),
        ("worker.max_delivery_attempts", 1),
        ("worker.shutdown_timeout_ms", 0),
        ("worker.shutdown_timeout_ms", i64::MAX),
        ("worker.prefetch", 0),
        ("worker.prefetch", 100_000),
        ("worker.mpsc_channels.handler_dispatch.dispatch_buffer_size", 1),
        ("worker.mpsc_channels.handler_dispatch.completion_buffer_size", 1),
        ("worker.mpsc_channels.handler_dispatch.max_concurrent_handlers", 1),
        (
            "worker.mpsc_channels.handler_dispatch.max_concurrent_handlers",
            10_000,
        ),
        ("worker.mpsc_channels.handler_dispatch.handler_timeout_ms", 1),
        ("worker.mpsc_channels.ffi_dispatch.dispatch_buffer_size", 1),
        ("worker.mpsc_channels.ffi_dispatch.completion_timeout_ms", 1),
        (
            "worker.mpsc_channels.ffi_dispatch.starvation_warning_threshold_ms",
            1,
        ),
        ("runtime.worker_threads", 1),
        ("runtime.worker_threads", 256),
        ("runtime.client_threads", 1),
        ("runtime.client_threads", 256),
    ];
    for &(key, value) in cases {
        if let Err(err) = load_with_overrides(&[(key, Value::Integer(value))]) {
            panic!("{key} = {value} should be accepted: {err}");
        }
    }
}

#[test]
fn every_broken_rule_is_reported_at_once() {
    let message = config_error(load_with_overrides(&[
        ("worker.claim_batch_size", Value::Integer(0)),
        ("worker.poll_interval_ms", Value::Integer(1)),
    ]));
    assert_mentions(&message, &["worker.claim_batch_size", "worker.poll_interval_ms"]);
}

#[test]
fn a_bad_value_from_the_file_names_the_key_and_the_file() {
    let file = TempConfig::new("[worker]\nclaim_batch_size = 0\n");
    let message = config_error(TaskerConfig::load_from(
        Some(file.path()),
        &no_env,
        &toml::Table::new(),
    ));
    assert_mentions(&message, &["worker.claim_batch_size", &file.shown()]);
}

#[test]
fn namespaces_must_not_be_empty() {
    let message = config_error(load_with_overrides(&[(
        "worker.namespaces",
        Value::Array(vec![]),
    )]));
    assert_mentions(&message, &["worker.namespaces", "at least one"]);
}

#[test]
fn namespaces_must_not_repeat() {
    let list = Value::Array(vec!["a".into(), "b".into(), "a".into()]);
    let message = config_error(load_with_overrides(&[("worker.namespaces", list)]));
    assert_mentions(&message, &["worker.namespaces[2]", "twice"]);
}

#[test]
fn namespaces_must_be_valid_queue_names() {
    let list = Value::Array(vec!["ok".into(), "Not-OK".into()]);
    let message = config_error(load_with_overrides(&[("worker.namespaces", list)]));
    assert_mentions(&message, &["worker.namespaces[1]", "Not-OK"]);
}

#[test]
fn bad_database_url_names_database_url() {
    let message = config_error(load_with_overrides(&[("database.url", "mysql://u@h/db".into())]));
    assert_mentions(&message, &["database.url"]);
}

#[test]
fn bad_database_url_from_the_environment_names_the_variable() {
    let env = env_of(&[("DATABASE_URL", "not a url")]);
    let message = config_error(TaskerConfig::load_from(None, &env, &toml::Table::new()));
    assert_mentions(&message, &["database.url", "DATABASE_URL"]);
}

#[test]
fn database_url_password_is_not_echoed_in_errors() {
    let env = env_of(&[("DATABASE_URL", "mysql://user:hunter2@h/db")]);
    let message = config_error(TaskerConfig::load_from(None, &env, &toml::Table::new()));
    assert!(!message.contains("hunter2"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// TASKER_WORKER_NAMESPACES

#[test]
fn namespaces_variable_is_split_on_commas_and_trimmed() {
    let env = env_of(&[("TASKER_WORKER_NAMESPACES", " default , payments,fulfillment ")]);
    let config = TaskerConfig::load_from(None, &env, &toml::Table::new()).unwrap();
    assert_eq!(config.worker.namespaces, ["default", "payments", "fulfillment"]);
}

#[test]
fn namespaces_variable_with_an_empty_entry_names_the_variable() {
    for list in ["a,,b", "a,", "", " , "] {
        let env = env_of(&[("TASKER_WORKER_NAMESPACES", list)]);
        let message = config_error(TaskerConfig::load_from(None, &env, &toml::Table::new()));
        assert_mentions(&message, &["TASKER_WORKER_NAMESPACES", "empty"]);
    }
}

#[test]
fn namespaces_variable_with_an_invalid_name_names_the_variable() {
    let env = env_of(&[("TASKER_WORKER_NAMESPACES", "default,Payments")]);
    let message = config_error(TaskerConfig::load_from(None, &env, &toml::Table::new()));
    assert_mentions(&message, &["worker.namespaces[1]", "TASKER_WORKER_NAMESPACES"]);
}

// ---------------------------------------------------------------------------------------------
// overrides_from_dotted

#[test]
fn overrides_from_dotted_nests_keys() {
    let table = overrides(&[
        (
            "worker.mpsc_channels.handler_dispatch.max_concurrent_handlers",
            Value::Integer(4),
        ),
        (
            "worker.mpsc_channels.handler_dispatch.handler_timeout_ms",
            Value::Integer(500),
        ),
        ("database.url", "postgres://x@h/db".into()),
    ]);
    let expected: toml::Table = toml::from_str(
        r#"
        [database]
        url = "postgres://x@h/db"
        [worker.mpsc_channels.handler_dispatch]
        max_concurrent_handlers = 4
        handler_timeout_ms = 500
        "#,
    )
    .unwrap();
    assert_eq!(table, expected);

    let config = TaskerConfig::load_from(None, &no_env, &table).unwrap();
    assert_eq!(
        config
            .worker
            .mpsc_channels
            .handler_dispatch
            .max_concurrent_handlers,
        4
    );
    assert_eq!(
        config.worker.mpsc_channels.handler_dispatch.handler_timeout_ms,
        500
    );
}

fn dotted_error(pairs: &[(&str, Value)]) -> String {
    config_error(TaskerConfig::overrides_from_dotted(
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())),
    ))
}

#[test]
fn overrides_from_dotted_rejects_a_value_where_a_table_is_needed() {
    let message = dotted_error(&[
        ("worker.mpsc_channels", Value::Integer(1)),
        (
            "worker.mpsc_channels.handler_dispatch.max_concurrent_handlers",
            Value::Integer(4),
        ),
    ]);
    assert_mentions(
        &message,
        &["worker.mpsc_channels.handler_dispatch.max_concurrent_handlers"],
    );

    // The other order would silently drop the nested key.
    let message = dotted_error(&[
        (
            "worker.mpsc_channels.handler_dispatch.max_concurrent_handlers",
            Value::Integer(4),
        ),
        ("worker.mpsc_channels", Value::Integer(1)),
    ]);
    assert_mentions(&message, &["worker.mpsc_channels"]);
}

#[test]
fn overrides_from_dotted_rejects_a_key_set_twice_and_empty_segments() {
    let message = dotted_error(&[
        ("worker.claim_batch_size", Value::Integer(1)),
        ("worker.claim_batch_size", Value::Integer(2)),
    ]);
    assert_mentions(&message, &["worker.claim_batch_size"]);

    let message = dotted_error(&[("worker..claim_batch_size", Value::Integer(1))]);
    assert_mentions(&message, &["worker..claim_batch_size", "empty"]);
}

#[test]
fn runtime_threads_come_from_a_file_and_a_bad_one_names_the_key_and_the_file() {
    let file = TempConfig::new("[runtime]\nworker_threads = 4\nclient_threads = 3\n");
    let config = TaskerConfig::load_from(Some(file.path()), &no_env, &toml::Table::new()).unwrap();
    assert_eq!(
        (config.runtime.worker_threads, config.runtime.client_threads),
        (4, 3)
    );

    let bad = TempConfig::new("[runtime]\nworker_threads = 0\n");
    let message = config_error(TaskerConfig::load_from(
        Some(bad.path()),
        &no_env,
        &toml::Table::new(),
    ));
    let path = bad.path().display().to_string();
    assert_mentions(&message, &["runtime.worker_threads", "between 1 and 256", &path]);
}
