//! Task identity: `named_tasks.identity_strategy` (tasker-core's column) decides when creating a
//! task twice gives the first one back.

use serde_json::json;
use tasker_worker::orchestration::{create_task, register_template, TaskRequest, TaskTemplate};
use tasker_worker::testing::TestDatabase;
use tasker_worker::TaskerError;

fn template(name: &str, strategy: Option<&str>) -> TaskTemplate {
    let line = strategy
        .map(|s| format!("identity_strategy: {s}\n"))
        .unwrap_or_default();
    TaskTemplate::from_yaml(
        &format!(
            "name: {name}\nnamespace_name: identity\nversion: 1.0.0\n{line}steps:\n  - {{ name: only, handler: {{ callable: Noop }} }}\n"
        ),
        "test",
    )
    .unwrap()
}

fn request(name: &str, context: serde_json::Value, key: Option<&str>) -> TaskRequest {
    TaskRequest {
        namespace: "identity".into(),
        name: name.into(),
        version: "1.0.0".into(),
        context,
        idempotency_key: key.map(str::to_string),
    }
}

async fn stored_strategy(db: &TestDatabase, name: &str) -> String {
    sqlx::query_scalar("SELECT identity_strategy::text FROM tasker.named_tasks WHERE name = $1")
        .bind(name)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn each_strategy_tells_a_repeated_task_apart_as_tasker_core_orders_them() {
    let db = TestDatabase::migrated().await;
    for (name, strategy) in [
        ("plain", None),
        ("strict", Some("strict")),
        ("keyed", Some("caller_provided")),
        ("unique", Some("always_unique")),
    ] {
        register_template(&db.pool, &template(name, strategy))
            .await
            .unwrap();
    }
    assert_eq!(
        stored_strategy(&db, "plain").await,
        "always_unique",
        "this project's default"
    );
    assert_eq!(stored_strategy(&db, "strict").await, "strict");

    // always_unique (and no strategy): every request is a new task.
    for name in ["plain", "unique"] {
        let a = create_task(&db.pool, &request(name, json!({"n": 1}), None))
            .await
            .unwrap();
        let b = create_task(&db.pool, &request(name, json!({"n": 1}), None))
            .await
            .unwrap();
        assert_ne!(a, b, "{name}");
    }

    // strict: the same context, keys in any order and nested, is the same task.
    let first = json!({"order": {"id": 7, "lines": [{"sku": "A", "qty": 2}]}, "rush": true});
    let reordered = json!({"rush": true, "order": {"lines": [{"qty": 2, "sku": "A"}], "id": 7}});
    let a = create_task(&db.pool, &request("strict", first.clone(), None))
        .await
        .unwrap();
    let b = create_task(&db.pool, &request("strict", reordered, None))
        .await
        .unwrap();
    assert_eq!(a, b);
    let other = create_task(&db.pool, &request("strict", json!({"order": {"id": 8}}), None))
        .await
        .unwrap();
    assert_ne!(a, other);
    // The same context under another template is another task.
    register_template(&db.pool, &template("strict_too", Some("strict")))
        .await
        .unwrap();
    let elsewhere = create_task(&db.pool, &request("strict_too", first.clone(), None))
        .await
        .unwrap();
    assert_ne!(a, elsewhere);
    // A key wins over the strategy.
    let keyed = create_task(&db.pool, &request("strict", first, Some("k-1")))
        .await
        .unwrap();
    assert_ne!(a, keyed);

    // caller_provided: a key is required; the key is the identity.
    match create_task(&db.pool, &request("keyed", json!({}), None)).await {
        Err(TaskerError::InvalidInput(why)) => {
            assert!(
                why.contains("identity_strategy caller_provided") && why.contains("idempotency_key"),
                "{why}"
            )
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    let x = create_task(&db.pool, &request("keyed", json!({"a": 1}), Some("order-7")))
        .await
        .unwrap();
    let y = create_task(&db.pool, &request("keyed", json!({"a": 2}), Some("order-7")))
        .await
        .unwrap();
    assert_eq!(x, y);

    let tasks: i64 = sqlx::query_scalar("SELECT count(*) FROM tasker.tasks")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        tasks,
        4 + 2 + 1 + 1 + 1,
        "unique 4, strict 2 (+1 keyed), strict_too 1, caller_provided 1"
    );

    // Registering again with another strategy replaces it.
    register_template(&db.pool, &template("strict", None))
        .await
        .unwrap();
    assert_eq!(stored_strategy(&db, "strict").await, "always_unique");
    db.drop_database().await;
}

#[test]
fn an_unknown_strategy_is_refused_when_the_template_is_read() {
    let err = TaskTemplate::from_yaml(
        "name: t\nnamespace_name: identity\nidentity_strategy: sometimes\nsteps:\n  - { name: only, handler: { callable: Noop } }\n",
        "bad.yml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("bad.yml") && err.contains("identity_strategy"),
        "{err}"
    );
}
