//! The embedded orchestrator: task templates, task creation and the step-result processor,
//! speaking tasker-core's protocol so a deployment can move to tasker-core's orchestration
//! service without touching handlers. `Orchestrator` runs the result processor, woken by
//! NOTIFY on `pgmq_message_ready.orchestration` with a fallback poll; a result whose
//! notification carries it is processed straight away, without reading the queue.

mod dynamic;
mod registry;
mod result_processor;
mod task_initializer;
mod task_summary;
mod template;

pub use registry::register_template;
pub use result_processor::{
    record_completed_in_commit, OrchestratorCounters, OrchestratorStatus, ResultProcessor,
    COMPLETE_STEP_UUIDS,
};
pub use task_initializer::{create_task, plan_task, PlannedEdge, PlannedStep, TaskPlan, TaskRequest};
pub use task_summary::{task_summary, StepSummary, TaskSummary};
pub use template::{BatchConfig, RetryPolicy, StepTemplate, StepType, TaskTemplate};

use crate::config::TaskerConfig;
use crate::database;
use crate::error::TaskerResult;
use crate::messaging::{MessageClient, ORCHESTRATION_NAMESPACE, STEP_RESULTS_QUEUE};
use crate::worker::event_systems::worker_event_system::WorkerEventSystem;
use crate::worker::stats::WorkerCounters;
use crate::worker::task::Task;
use sqlx::PgPool;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};

/// Notified results waiting to be processed, at most (see `Orchestrator::start`).
const NOTIFIED_BACKLOG: usize = 256;

pub struct Orchestrator {
    pool: PgPool,
    counters: Arc<OrchestratorCounters>,
    /// The event system first: stopping it drops the sender of notified results, which
    /// ends the processor's second input.
    tasks: Vec<Task>,
}

impl Orchestrator {
    pub async fn start(config: &TaskerConfig) -> TaskerResult<Self> {
        let pool = database::connect(&config.database.url, &config.database.pool_settings()).await?;
        database::ensure_schema(&pool).await?;
        MessageClient::new(pool.clone())
            .create_queue(STEP_RESULTS_QUEUE)
            .await?;
        let wake = Arc::new(Notify::new());
        let counters = Arc::new(OrchestratorCounters::default());
        // Results whose notification carried them; past this many waiting, notifications
        // only wake the reader.
        let (notified_tx, notified_rx) = mpsc::channel(NOTIFIED_BACKLOG);
        let events = WorkerEventSystem {
            pool: pool.clone(),
            namespaces: vec![ORCHESTRATION_NAMESPACE.to_string()],
            deployment_mode: config.worker.deployment_mode,
            poll_interval: config.worker.poll_interval(),
            wake: wake.clone(),
            counters: Arc::new(WorkerCounters::default()),
            connected: Arc::new(AtomicBool::new(false)),
            direct: Some(notified_tx),
        };
        let processor = ResultProcessor {
            pool: pool.clone(),
            wake,
            counters: counters.clone(),
            batch_size: config.worker.claim_batch_size as i32,
            visibility_timeout_seconds: config.worker.visibility_timeout_seconds as i32,
            max_delivery_attempts: config.worker.max_delivery_attempts,
            dynamic: config.orchestration.clone(),
        };
        let tasks = vec![
            Task::spawn_source(|stop| events.run(stop)),
            Task::spawn_source(|stop| processor.run(notified_rx, stop)),
        ];
        Ok(Self {
            pool,
            counters,
            tasks,
        })
    }

    pub fn status(&self) -> OrchestratorStatus {
        self.counters.snapshot()
    }

    /// The live counters, for the metrics listener.
    pub fn counters(&self) -> &Arc<OrchestratorCounters> {
        &self.counters
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Stops between messages or mid-message (a half-processed message is rolled back and
    /// read again by any orchestrator after its visibility timeout).
    /// Its counters stay readable (`status`) afterwards.
    pub async fn shutdown(&mut self) {
        for task in self.tasks.drain(..) {
            task.stop().await;
        }
        self.pool.close().await;
    }
}
