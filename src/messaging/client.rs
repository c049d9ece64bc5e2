//! PGMQ operations the worker uses, as plain SQL against `pgmq.*` and
//! `tasker.pgmq_send_with_notify`. Each takes any executor (pool, connection or open
//! transaction) so a completion can send and archive inside the transaction that commits
//! the result.

use crate::error::{TaskerError, TaskerResult};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, PgPool, Row, TypeInfo, ValueRef};

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
    /// `message`; a NULL message becomes JSON null). The message is decoded on its own, under
    /// the JSON limits (`crate::limits`): a message that is over them, or not JSON, is an
    /// `Undecodable` for this row only, never an error for the whole read.
    pub(crate) fn decode(row: &PgRow) -> Result<Result<Self, Undecodable>, sqlx::Error> {
        let msg_id: i64 = row.try_get("msg_id")?;
        let read_ct: i32 = row.try_get("read_ct")?;
        let message = match json_column(row, "message", "queue message") {
            Ok(message) => message.unwrap_or(serde_json::Value::Null),
            Err(bad) => {
                return Ok(Err(Undecodable {
                    msg_id,
                    read_ct,
                    reason: bad.reason,
                    raw_start: bad.raw_start,
                }))
            }
        };
        Ok(Ok(Self {
            msg_id,
            read_ct,
            enqueued_at: row.try_get("enqueued_at")?,
            vt: row.try_get("vt")?,
            message,
        }))
    }
}

/// A message read from a queue whose body could not be decoded: over the depth or size
/// limit, or not JSON. It is dead-lettered with the start of its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Undecodable {
    pub msg_id: i64,
    pub read_ct: i32,
    pub reason: String,
    /// The first `RAW_START_CHARS` characters of the message's JSON text.
    pub raw_start: String,
}

/// How much of an undecodable message's text a dead letter keeps.
pub const RAW_START_CHARS: usize = 512;

/// A json or jsonb column that could not be decoded, with the start of its text.
#[derive(Debug, Clone, PartialEq)]
pub struct BadJson {
    pub reason: String,
    pub raw_start: String,
}

/// Decodes a json or jsonb column from its text under the JSON limits (`limits::parse`):
/// never sqlx's own decoder, whose serde_json recursion limit (128) would fail the row with
/// an error naming no message, and whose depth is not ours (64). NULL is `None`.
pub(crate) fn json_column(
    row: &PgRow,
    column: &str,
    what: &str,
) -> Result<Option<serde_json::Value>, BadJson> {
    let fail = |reason: String| BadJson {
        reason,
        raw_start: String::new(),
    };
    let raw = row
        .try_get_raw(column)
        .map_err(|e| fail(format!("reading {what}: {e}")))?;
    if raw.is_null() {
        return Ok(None);
    }
    let is_jsonb = raw.type_info().name() == "JSONB";
    let binary = matches!(raw.format(), sqlx::postgres::PgValueFormat::Binary);
    let bytes = raw.as_bytes().map_err(|e| fail(format!("reading {what}: {e}")))?;
    // jsonb's binary form is a version byte (1) and the JSON text; json's is the text.
    let bytes = match (is_jsonb && binary, bytes.split_first()) {
        (true, Some((1, text))) => text,
        (true, _) => return Err(fail(format!("{what}: unknown jsonb format"))),
        (false, _) => bytes,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| fail(format!("{what} is not UTF-8: {e}")))?;
    crate::limits::parse(text, what).map(Some).map_err(|e| BadJson {
        reason: e.to_string(),
        raw_start: text_start(text),
    })
}

/// The first `RAW_START_CHARS` characters of `text`.
pub fn text_start(text: &str) -> String {
    text.chars().take(RAW_START_CHARS).collect()
}

/// A message to dead-letter: what `tasker.dead_letters` keeps of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Poison {
    pub msg_id: i64,
    pub read_ct: i32,
    /// The message, or (undecodable) the start of its text as a JSON string.
    pub body: serde_json::Value,
    pub reason: String,
}

impl Poison {
    pub fn of(message: &QueuedMessage, reason: String) -> Self {
        Self {
            msg_id: message.msg_id,
            read_ct: message.read_ct,
            body: message.message.clone(),
            reason,
        }
    }
}

impl From<Undecodable> for Poison {
    fn from(bad: Undecodable) -> Self {
        Self {
            msg_id: bad.msg_id,
            read_ct: bad.read_ct,
            body: serde_json::Value::String(bad.raw_start),
            reason: format!("undecodable message: {}", bad.reason),
        }
    }
}

/// Records each message in `tasker.dead_letters` (sql/queries/dead_letter.sql) and archives
/// it from `queue_name`, in one transaction.
pub async fn dead_letter(
    pool: &PgPool,
    queue_name: &str,
    worker_id: Option<&str>,
    poison: &[Poison],
) -> TaskerResult<()> {
    let mut tx = pool.begin().await?;
    let ids: Vec<uuid::Uuid> = poison.iter().map(|_| uuid::Uuid::now_v7()).collect();
    let msg_ids: Vec<i64> = poison.iter().map(|p| p.msg_id).collect();
    let read_cts: Vec<i32> = poison.iter().map(|p| p.read_ct).collect();
    let bodies: Vec<&serde_json::Value> = poison.iter().map(|p| &p.body).collect();
    let reasons: Vec<&str> = poison.iter().map(|p| p.reason.as_str()).collect();
    sqlx::query(include_str!("../../sql/queries/dead_letter.sql"))
        .bind(&ids)
        .bind(&msg_ids)
        .bind(&read_cts)
        .bind(&bodies)
        .bind(&reasons)
        .bind(queue_name)
        .bind(worker_id)
        .execute(&mut *tx)
        .await?;
    archive(&mut *tx, queue_name, &msg_ids).await?;
    tx.commit().await?;
    for p in poison {
        tracing::error!(event = "dead_lettered", msg_id = p.msg_id, queue = %queue_name, read_ct = p.read_ct, reason = %p.reason, "message dead-lettered");
    }
    Ok(())
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
        // Autovacuum settings for its q_/a_ tables (sql/functions/retention.sql).
        sqlx::query("SELECT tasker.retention_queue_settings($1)")
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
/// lease lost in a server crash only means the message is read again). A message that cannot
/// be decoded fails the call (`InvalidInput`); `read_each` returns it on its own instead.
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
        .map(|row| match QueuedMessage::decode(row)? {
            Ok(message) => Ok(message),
            Err(bad) => Err(TaskerError::InvalidInput(format!(
                "message {} of queue {queue_name:?}: {}",
                bad.msg_id, bad.reason
            ))),
        })
        .collect()
}

/// As `read`, but each message is decoded on its own: one that cannot be (over the JSON
/// limits, not JSON) comes back as an `Undecodable`, and the others as usual.
pub async fn read_each(
    pool: &PgPool,
    queue_name: &str,
    visibility_timeout_seconds: i32,
    qty: i32,
) -> TaskerResult<Vec<Result<QueuedMessage, Undecodable>>> {
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
        .map(|row| QueuedMessage::decode(row).map_err(TaskerError::from))
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
