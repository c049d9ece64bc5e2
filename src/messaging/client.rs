//! PGMQ operations the worker uses, as plain SQL against `pgmq.*` and
//! `tasker.pgmq_send_with_notify`. Each takes any executor (pool, connection or open
//! transaction) so a completion can send and archive inside the transaction that commits
//! the result.

use crate::error::{TaskerError, TaskerResult};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, PgPool, Row};

/// A message read from a queue; it stays invisible to other readers until `vt`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedMessage {
    pub msg_id: i64,
    /// How many times the message has been read, this read included.
    pub read_ct: i32,
    pub enqueued_at: DateTime<Utc>,
    pub vt: DateTime<Utc>,
    pub message: serde_json::Value,
}

impl QueuedMessage {
    /// From a row with PGMQ's message columns (`msg_id`, `read_ct`, `enqueued_at`, `vt`,
    /// `message`; a NULL message becomes JSON null).
    pub(crate) fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            msg_id: row.try_get("msg_id")?,
            read_ct: row.try_get("read_ct")?,
            enqueued_at: row.try_get("enqueued_at")?,
            vt: row.try_get("vt")?,
            message: row
                .try_get::<Option<serde_json::Value>, _>("message")?
                .unwrap_or(serde_json::Value::Null),
        })
    }
}

/// Thin handle over the pool for the queue operations; `Clone` is cheap.
#[derive(Debug, Clone)]
pub struct MessageClient {
    pool: PgPool,
}

impl MessageClient {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the queue if it does not exist. Concurrent callers for one queue are
    /// serialised by a transaction-level advisory lock, since `pgmq.create` is not.
    pub async fn create_queue(&self, queue_name: &str) -> TaskerResult<()> {
        validate_queue_name(queue_name)?;
        // Checked first: pgmq.create on an existing queue works but emits a NOTICE per object.
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pgmq.meta WHERE queue_name = $1)")
                .bind(queue_name)
                .fetch_one(&self.pool)
                .await?;
        if exists {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tasker_worker.create_queue:' || $1))")
            .bind(queue_name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pgmq.create($1)")
            .bind(queue_name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn send_with_notify<T: Serialize>(
        &self,
        queue_name: &str,
        message: &T,
        delay_seconds: i32,
    ) -> TaskerResult<i64> {
        send_with_notify(&self.pool, queue_name, message, delay_seconds).await
    }

    pub async fn read(
        &self,
        queue_name: &str,
        visibility_timeout_seconds: i32,
        qty: i32,
    ) -> TaskerResult<Vec<QueuedMessage>> {
        read(&self.pool, queue_name, visibility_timeout_seconds, qty).await
    }

    pub async fn archive(&self, queue_name: &str, msg_ids: &[i64]) -> TaskerResult<Vec<i64>> {
        archive(&self.pool, queue_name, msg_ids).await
    }

    pub async fn set_vt(
        &self,
        queue_name: &str,
        msg_ids: &[i64],
        visibility_timeout_seconds: i32,
    ) -> TaskerResult<Vec<i64>> {
        set_vt(&self.pool, queue_name, msg_ids, visibility_timeout_seconds).await
    }
}

/// Queue names become table names (`pgmq.q_{name}`), so only `[a-z0-9_]` is accepted.
pub fn validate_queue_name(queue_name: &str) -> TaskerResult<()> {
    let ok = !queue_name.is_empty()
        && queue_name.len() <= 47
        && queue_name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(TaskerError::Queue(format!(
            "queue name {queue_name:?} must be 1-47 characters of a-z, 0-9 and _"
        )))
    }
}

/// Sends `message` with `tasker.pgmq_send_with_notify`, which also wakes the listeners of
/// the queue's namespace. Inside a transaction the NOTIFY is delivered at commit.
pub async fn send_with_notify<'e, E, T>(
    executor: E,
    queue_name: &str,
    message: &T,
    delay_seconds: i32,
) -> TaskerResult<i64>
where
    E: PgExecutor<'e>,
    T: Serialize,
{
    let body = serde_json::to_value(message)?;
    let msg_id = sqlx::query_scalar("SELECT tasker.pgmq_send_with_notify($1, $2, $3)")
        .bind(queue_name)
        .bind(body)
        .bind(delay_seconds)
        .fetch_one(executor)
        .await
        .map_err(|err| queue_error(queue_name, err))?;
    Ok(msg_id)
}

/// Reads up to `qty` visible messages and hides them for `visibility_timeout_seconds`, with
/// `tasker.worker_read` (sql/functions/queue.sql): what `pgmq.read` does (lowest ids first,
/// `FOR UPDATE SKIP LOCKED`, `read_ct + 1`, `last_read_at` where the queue table has it),
/// through a statement prepared once per connection and queue, committed asynchronously (a
/// lease lost in a server crash only means the message is read again).
pub async fn read(
    pool: &PgPool,
    queue_name: &str,
    visibility_timeout_seconds: i32,
    qty: i32,
) -> TaskerResult<Vec<QueuedMessage>> {
    validate_queue_name(queue_name)?;
    let rows =
        sqlx::query("SELECT msg_id, read_ct, enqueued_at, vt, message FROM tasker.worker_read($1, $2, $3)")
            .bind(queue_name)
            .bind(qty)
            .bind(f64::from(visibility_timeout_seconds))
            .fetch_all(pool)
            .await
            .map_err(|err| queue_error(queue_name, err))?;
    rows.iter()
        .map(|row| QueuedMessage::from_row(row).map_err(TaskerError::from))
        .collect()
}

/// Moves messages to the queue's archive table, as `pgmq.archive` does, with
/// `tasker.worker_archive` (a statement prepared once per connection and queue); returns the
/// ids that were still there.
pub async fn archive<'e, E: PgExecutor<'e>>(
    executor: E,
    queue_name: &str,
    msg_ids: &[i64],
) -> TaskerResult<Vec<i64>> {
    let archived = sqlx::query_scalar("SELECT * FROM tasker.worker_archive($1, $2)")
        .bind(queue_name)
        .bind(msg_ids)
        .fetch_all(executor)
        .await
        .map_err(|err| queue_error(queue_name, err))?;
    Ok(archived)
}

/// Sets the visibility timeout of messages to now + `visibility_timeout_seconds`
/// (0 makes them visible at once); returns the ids that still exist.
pub async fn set_vt<'e, E: PgExecutor<'e>>(
    executor: E,
    queue_name: &str,
    msg_ids: &[i64],
    visibility_timeout_seconds: i32,
) -> TaskerResult<Vec<i64>> {
    let table = format!("pgmq.q_{queue_name}");
    validate_queue_name(queue_name)?;
    // One UPDATE for the whole batch; pgmq.set_vt takes one message per call.
    let sql = format!(
        "UPDATE {table} SET vt = clock_timestamp() + make_interval(secs => $2) \
         WHERE msg_id = ANY($1) RETURNING msg_id"
    );
    let ids = sqlx::query_scalar(&sql)
        .bind(msg_ids)
        .bind(visibility_timeout_seconds)
        .fetch_all(executor)
        .await
        .map_err(|err| queue_error(queue_name, err))?;
    Ok(ids)
}

pub(crate) fn queue_error(queue_name: &str, err: sqlx::Error) -> TaskerError {
    match &err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => {
            TaskerError::Queue(format!("queue {queue_name:?} does not exist"))
        }
        _ => TaskerError::Database(err),
    }
}
