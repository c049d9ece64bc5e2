//! PGMQ through our own client on real PostgreSQL: send with notify, read under a
//! visibility timeout, archive; and the NOTIFY that `tasker.pgmq_send_with_notify` sends.

use serde_json::{json, Value};
use sqlx::postgres::PgListener;
use std::time::Duration;
use tasker_worker::messaging::{self, MessageClient, NotifyEvent, StepMessage};
use tasker_worker::testing::TestDatabase;
use uuid::Uuid;

fn step_message() -> StepMessage {
    StepMessage {
        task_uuid: Uuid::now_v7(),
        step_uuid: Uuid::now_v7(),
        correlation_id: Uuid::now_v7(),
    }
}

#[tokio::test]
async fn send_read_with_visibility_timeout_then_archive() {
    let db = TestDatabase::migrated().await;
    let client = MessageClient::new(db.pool.clone());
    let queue = messaging::worker_queue_name("roundtrip").unwrap();
    client.create_queue(&queue).await.unwrap();
    client
        .create_queue(&queue)
        .await
        .expect("creating a queue twice is fine");

    let sent = step_message();
    let msg_id = client.send_with_notify(&queue, &sent, 0).await.unwrap();

    let first = client.read(&queue, 1, 10).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].msg_id, msg_id);
    assert_eq!(first[0].read_ct, 1);
    assert_eq!(
        serde_json::from_value::<StepMessage>(first[0].message.clone()).unwrap(),
        sent
    );

    // Hidden while the visibility timeout runs.
    assert!(
        client.read(&queue, 1, 10).await.unwrap().is_empty(),
        "message visible during its timeout"
    );

    // Visible again once it lapses (PGMQ timeouts are whole seconds).
    let mut again = Vec::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        again = client.read(&queue, 30, 10).await.unwrap();
        if !again.is_empty() {
            break;
        }
    }
    assert_eq!(again.len(), 1, "message never came back after its timeout lapsed");
    assert_eq!(again[0].read_ct, 2);

    assert_eq!(client.archive(&queue, &[msg_id]).await.unwrap(), vec![msg_id]);
    assert!(
        client.archive(&queue, &[msg_id]).await.unwrap().is_empty(),
        "archived twice"
    );
    // The archived row keeps what the queue row held, as pgmq.archive leaves it.
    let archived: (i64, i32, Value, bool) = sqlx::query_as(&format!(
        "SELECT count(*) OVER (), read_ct, message, archived_at IS NOT NULL AND enqueued_at IS NOT NULL \
           FROM pgmq.a_{queue} WHERE msg_id = $1"
    ))
    .bind(msg_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(archived, (1, 2, again[0].message.clone(), true));
    client.set_vt(&queue, &[msg_id], 0).await.unwrap();
    assert!(
        client.read(&queue, 30, 10).await.unwrap().is_empty(),
        "archived message read again"
    );
    db.drop_database().await;
}

#[tokio::test]
async fn set_vt_extends_and_releases_a_lease() {
    let db = TestDatabase::migrated().await;
    let client = MessageClient::new(db.pool.clone());
    let queue = "worker_lease_queue";
    client.create_queue(queue).await.unwrap();
    let a = client.send_with_notify(queue, &step_message(), 0).await.unwrap();
    let b = client.send_with_notify(queue, &step_message(), 0).await.unwrap();
    assert_eq!(client.read(queue, 30, 10).await.unwrap().len(), 2);

    // Release one at once (as a shutting-down worker does); keep the other leased.
    assert_eq!(client.set_vt(queue, &[a], 0).await.unwrap(), vec![a]);
    let visible = client.read(queue, 30, 10).await.unwrap();
    assert_eq!(visible.iter().map(|m| m.msg_id).collect::<Vec<_>>(), vec![a]);
    assert_eq!(client.set_vt(queue, &[a, b, 999_999], 60).await.unwrap().len(), 2);
    db.drop_database().await;
}

#[tokio::test]
async fn unknown_queues_and_bad_names_are_clear_errors() {
    let db = TestDatabase::migrated().await;
    let client = MessageClient::new(db.pool.clone());
    let err = client
        .read("worker_missing_queue", 30, 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("worker_missing_queue") && err.contains("does not exist"),
        "{err}"
    );
    let err = client.create_queue("Bad;Name").await.unwrap_err().to_string();
    assert!(err.contains("queue name"), "{err}");
    db.drop_database().await;
}

/// `tasker.pgmq_send_with_notify` sends through a statement prepared once per session and
/// queue (`tasker.worker_prepare_send`) instead of `pgmq.send`: the row is the one pgmq.send
/// writes, the delay hides it, a queue dropped and created again in the same session is sent
/// to (the prepared statement is planned again), and a missing queue is a clear error.
#[tokio::test]
async fn send_with_notify_through_the_prepared_send_writes_what_pgmq_send_writes() {
    let db = TestDatabase::migrated().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let queue = "worker_prepared_send_queue";
    sqlx::query("SELECT pgmq.create($1)")
        .bind(queue)
        .execute(&mut *conn)
        .await
        .unwrap();
    let send = "SELECT tasker.pgmq_send_with_notify($1, $2, $3)";
    let body = json!({"task_uuid": Uuid::now_v7(), "quote": "it's \"quoted\""});
    let now: i64 = sqlx::query_scalar(send)
        .bind(queue)
        .bind(&body)
        .bind(0)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let later: i64 = sqlx::query_scalar(send)
        .bind(queue)
        .bind(json!({"n": 2}))
        .bind(30)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let prepared: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_prepared_statements WHERE name = 'tasker_send_' || $1)",
    )
    .bind(queue)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert!(prepared, "the send was not prepared");
    let rows: Vec<(i64, i32, Value, bool, bool)> = sqlx::query_as(&format!(
        "SELECT msg_id, read_ct, message, vt <= clock_timestamp(), vt > clock_timestamp() + interval '25 seconds' \
           FROM pgmq.q_{queue} ORDER BY msg_id"
    ))
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (now, 0, body, true, false),
            (later, 0, json!({"n": 2}), false, true)
        ]
    );

    // Dropped and created again: the session's prepared send finds the new table.
    sqlx::query("SELECT pgmq.drop_queue($1)")
        .bind(queue)
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SELECT pgmq.create($1)")
        .bind(queue)
        .execute(&mut *conn)
        .await
        .unwrap();
    let again: i64 = sqlx::query_scalar(send)
        .bind(queue)
        .bind(json!({"n": 3}))
        .bind(0)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM pgmq.q_{queue} WHERE msg_id = $1"))
        .bind(again)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(count, 1);

    let err = sqlx::query(send)
        .bind("worker_never_created_queue")
        .bind(json!({}))
        .bind(0)
        .execute(&mut *conn)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("q_worker_never_created_queue") && err.contains("does not exist"),
        "{err}"
    );
    drop(conn);
    db.drop_database().await;
}

#[tokio::test]
async fn send_with_notify_wakes_listeners_of_the_namespace_with_the_documented_payload() {
    let db = TestDatabase::migrated().await;
    let client = MessageClient::new(db.pool.clone());
    let queue = messaging::worker_queue_name("payments").unwrap();
    client.create_queue(&queue).await.unwrap();
    client.create_queue("worker_other_queue").await.unwrap();

    let mut listener = PgListener::connect_with(&db.pool).await.unwrap();
    listener
        .listen(&messaging::message_ready_channel("payments"))
        .await
        .unwrap();

    // A message for another namespace must not arrive on this channel.
    client
        .send_with_notify("worker_other_queue", &step_message(), 0)
        .await
        .unwrap();
    let sent = step_message();
    let msg_id = client.send_with_notify(&queue, &sent, 0).await.unwrap();

    let note = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("no NOTIFY within 5 s")
        .unwrap();
    assert_eq!(note.channel(), "pgmq_message_ready.payments");
    let payload: serde_json::Value = serde_json::from_str(note.payload()).unwrap();
    assert_eq!(payload["event_type"], "message_with_payload");
    assert_eq!(payload["msg_id"], msg_id);
    assert_eq!(payload["queue_name"], queue);
    assert_eq!(payload["namespace"], "payments");
    assert_eq!(payload["delay_seconds"], 0);
    assert!(payload["ready_at"].is_string());
    assert_eq!(
        serde_json::from_value::<StepMessage>(payload["message"].clone()).unwrap(),
        sent
    );
    let event: NotifyEvent = serde_json::from_value(payload).unwrap();
    assert_eq!(event.msg_id(), Some(msg_id));

    // A large message: the body is left out of the notification.
    let big = serde_json::json!({ "blob": "x".repeat(8000) });
    let big_id = client.send_with_notify(&queue, &big, 0).await.unwrap();
    let note = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("no NOTIFY for the large message")
        .unwrap();
    match serde_json::from_str::<NotifyEvent>(note.payload()).unwrap() {
        NotifyEvent::MessageReady {
            msg_id,
            payload_omitted,
            ..
        } => {
            assert_eq!(msg_id, big_id);
            assert!(payload_omitted);
        }
        other => panic!("expected message_ready, got {other:?}"),
    }
    db.drop_database().await;
}

#[tokio::test]
async fn a_notify_inside_a_transaction_arrives_only_after_commit() {
    let db = TestDatabase::migrated().await;
    let queue = "orchestration_step_results";
    MessageClient::new(db.pool.clone())
        .create_queue(queue)
        .await
        .unwrap();
    let mut listener = PgListener::connect_with(&db.pool).await.unwrap();
    listener.listen("pgmq_message_ready.orchestration").await.unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    messaging::client::send_with_notify(&mut *tx, queue, &step_message(), 0)
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(early.is_err(), "NOTIFY delivered before commit");
    tx.commit().await.unwrap();
    let note = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("no NOTIFY after commit")
        .unwrap();
    assert_eq!(note.channel(), "pgmq_message_ready.orchestration");
    db.drop_database().await;
}

#[tokio::test]
async fn sql_and_rust_agree_on_queue_namespaces() {
    let db = TestDatabase::migrated().await;
    for queue in [
        "worker_payments_queue",
        "worker_a_b_queue",
        "orchestration_step_results",
        "x_queue",
        "plain",
        "worker__queue",
        "_queue",
        "orchestrationx",
        "worker_queue",
        "worker_x_queue_queue",
    ] {
        let sql: String = sqlx::query_scalar("SELECT tasker.extract_queue_namespace($1)")
            .bind(queue)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(sql, messaging::extract_namespace(queue), "queue {queue}");
    }
    db.drop_database().await;
}

/// `tasker.worker_read` does what pgmq.read does, and reads a queue table of a PGMQ before
/// 1.5, which had no `last_read_at` (simulated: the column dropped before the first read).
#[tokio::test]
async fn reads_set_what_pgmq_read_sets_and_work_on_queues_without_last_read_at() {
    let db = TestDatabase::migrated().await;
    let client = MessageClient::new(db.pool.clone());
    for queue in ["worker_new_queue", "worker_old_queue"] {
        client.create_queue(queue).await.unwrap();
        for n in 0..3 {
            client
                .send_with_notify(queue, &json!({ "n": n }), 0)
                .await
                .unwrap();
        }
    }
    let first = client.read("worker_new_queue", 30, 2).await.unwrap();
    assert_eq!(
        first.iter().map(|m| m.message["n"].clone()).collect::<Vec<_>>(),
        [json!(0), json!(1)]
    );
    let (read_ct, has_last_read, vt_secs): (i32, bool, f64) = sqlx::query_as(
        "SELECT read_ct, last_read_at IS NOT NULL, extract(epoch FROM vt - clock_timestamp())::float8 \
         FROM pgmq.q_worker_new_queue WHERE msg_id = $1",
    )
    .bind(first[0].msg_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((read_ct, has_last_read), (1, true));
    assert!((25.0..=30.0).contains(&vt_secs), "vt {vt_secs} s ahead");

    sqlx::query("ALTER TABLE pgmq.q_worker_old_queue DROP COLUMN last_read_at")
        .execute(&db.pool)
        .await
        .unwrap();
    let old = client.read("worker_old_queue", 30, 10).await.unwrap();
    assert_eq!(old.len(), 3);
    assert!(old.iter().all(|m| m.read_ct == 1));
    assert!(client.read("worker_old_queue", 30, 10).await.unwrap().is_empty());
    db.drop_database().await;
}
