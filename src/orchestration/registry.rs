//! Registers task templates into the tables tasker-core reads them from (`task_namespaces`,
//! `named_tasks.configuration`, `named_steps`) and creates each namespace's worker queue.
//! Idempotent: registering the same template again replaces its configuration (and its
//! `identity_strategy`).

use crate::error::TaskerResult;
use crate::messaging::{worker_queue_name, MessageClient};
use crate::orchestration::template::TaskTemplate;
use sqlx::PgPool;
use uuid::Uuid;

pub async fn register_template(pool: &PgPool, template: &TaskTemplate) -> TaskerResult<Uuid> {
    let mut tx = pool.begin().await?;
    let namespace_uuid: Uuid = sqlx::query_scalar(
        "INSERT INTO tasker.task_namespaces (task_namespace_uuid, name, created_at, updated_at) VALUES ($1, $2, now(), now()) \
         ON CONFLICT (name) DO UPDATE SET updated_at = now() RETURNING task_namespace_uuid",
    )
    .bind(Uuid::now_v7())
    .bind(&template.namespace_name)
    .fetch_one(&mut *tx)
    .await?;
    let named_task_uuid: Uuid = sqlx::query_scalar(
        "INSERT INTO tasker.named_tasks \
         (named_task_uuid, task_namespace_uuid, name, version, description, configuration, identity_strategy, \
          created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7::text::tasker.identity_strategy, now(), now()) \
         ON CONFLICT (task_namespace_uuid, name, version) \
         DO UPDATE SET configuration = EXCLUDED.configuration, description = EXCLUDED.description, \
                       identity_strategy = EXCLUDED.identity_strategy, updated_at = now() \
         RETURNING named_task_uuid",
    )
    .bind(Uuid::now_v7())
    .bind(namespace_uuid)
    .bind(&template.name)
    .bind(&template.version)
    .bind(&template.description)
    .bind(serde_json::to_value(template)?)
    .bind(template.identity_strategy.unwrap_or_default().as_str())
    .fetch_one(&mut *tx)
    .await?;
    let step_names: Vec<&str> = template.steps.iter().map(|s| s.name.as_str()).collect();
    sqlx::query(
        "INSERT INTO tasker.named_steps (named_step_uuid, name, created_at, updated_at) \
         SELECT gen_random_uuid(), n, now(), now() FROM unnest($1::text[]) AS n ON CONFLICT (name) DO NOTHING",
    )
    .bind(&step_names)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    MessageClient::new(pool.clone())
        .create_queue(&worker_queue_name(&template.namespace_name)?)
        .await?;
    Ok(named_task_uuid)
}
