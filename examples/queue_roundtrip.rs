//! `bin/demo` at this stage of the project: the queue protocol through our own Rust code.
//! Sends step messages with `tasker.pgmq_send_with_notify`, wakes on the NOTIFY, reads each
//! message under a visibility timeout (another read does not see it), and archives it.

use sqlx::postgres::PgListener;
use std::time::{Duration, Instant};
use tasker_worker::database::{self, PoolSettings};
use tasker_worker::messaging::{self, MessageClient, NotifyEvent, StepMessage};
use uuid::Uuid;

const MESSAGES: usize = 5;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/tasker_worker_development".into());
    let settings = PoolSettings {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(10),
    };
    let pool = database::connect(&url, &settings).await?;
    let report = database::migrate(&pool).await?;
    println!(
        "database  {} (PGMQ from {}, {} new migrations)",
        database::redact(&url),
        report.pgmq_source,
        report.applied.len()
    );

    let client = MessageClient::new(pool.clone());
    let queue = messaging::worker_queue_name("demo")?;
    client.create_queue(&queue).await?;
    let leftovers = client.read(&queue, 0, 1000).await?;
    if !leftovers.is_empty() {
        let ids: Vec<i64> = leftovers.iter().map(|m| m.msg_id).collect();
        client.archive(&queue, &ids).await?;
    }

    let channel = messaging::message_ready_channel("demo");
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(&channel).await?;
    println!("listening on {channel}; queue {queue}\n");

    let mut wake_ms = Vec::new();
    for n in 1..=MESSAGES {
        let message = StepMessage {
            task_uuid: Uuid::now_v7(),
            step_uuid: Uuid::now_v7(),
            correlation_id: Uuid::now_v7(),
        };
        let sent_at = Instant::now();
        let msg_id = client.send_with_notify(&queue, &message, 0).await?;

        let note = tokio::time::timeout(Duration::from_secs(5), listener.recv())
            .await
            .map_err(|_| "no NOTIFY within 5 s")??;
        let woke = sent_at.elapsed();
        let event: NotifyEvent = serde_json::from_str(note.payload())?;
        assert_eq!(event.msg_id(), msg_id, "notified about another message");

        let read = client.read(&queue, 30, 1).await?;
        let got = read.first().ok_or("the notified message was not readable")?;
        let hidden = client.read(&queue, 30, 1).await?.is_empty();
        let archived = client.archive(&queue, &[got.msg_id]).await? == vec![got.msg_id];
        wake_ms.push(woke.as_secs_f64() * 1000.0);
        println!(
            "message {n}/{MESSAGES}  msg_id={msg_id}  step={}  woken after {:.2} ms  read_ct={}  hidden from a 2nd reader: {}  archived: {}",
            message.step_uuid,
            woke.as_secs_f64() * 1000.0,
            got.read_ct,
            yes(hidden),
            yes(archived)
        );
    }

    let left = client.read(&queue, 0, 1000).await?;
    wake_ms.sort_by(f64::total_cmp);
    println!(
        "\n{MESSAGES} messages sent, woken on, read and archived; {} left in {queue}; NOTIFY wake-up median {:.2} ms",
        left.len(),
        wake_ms[wake_ms.len() / 2]
    );
    println!("Not built yet: the worker core that claims and runs steps (issue: Rust worker core), Ruby handlers, the orchestrator.");
    pool.close().await;
    if left.is_empty() {
        Ok(())
    } else {
        Err("messages left in the queue".into())
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}
