//! The Rust handler interface. A handler gets the hydrated `StepContext` and returns a
//! `StepResult`; the dispatch service turns it (or a panic, or a timeout) into the
//! `StepExecutionResult` that is committed.

use crate::messaging::StepFailure;
use crate::worker::step_context::StepContext;
use parking_lot::RwLock;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A handler's successful output: the result stored for the step, plus free-form metadata.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepSuccess {
    pub result: Value,
    pub metadata: Map<String, Value>,
}

impl StepSuccess {
    pub fn new(result: Value) -> Self {
        Self {
            result,
            metadata: Map::new(),
        }
    }
}

pub type StepResult = Result<StepSuccess, StepFailure>;

pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = StepResult> + Send + 'a>>;

pub trait StepHandler: Send + Sync + 'static {
    fn handle<'a>(&'a self, context: &'a StepContext) -> HandlerFuture<'a>;
}

pub trait StepHandlerRegistry: Send + Sync + 'static {
    /// The handler for a template's `handler.callable`, if this worker has one.
    fn get_handler(&self, handler_class: &str) -> Option<Arc<dyn StepHandler>>;
}

/// A handler made from an async closure.
pub struct FnHandler<F>(F);

/// Wraps `f(context) -> future` as a handler; the closure gets its own copy of the context.
pub fn handler_fn<F, Fut>(f: F) -> Arc<dyn StepHandler>
where
    F: Fn(StepContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = StepResult> + Send + 'static,
{
    Arc::new(FnHandler(f))
}

impl<F, Fut> StepHandler for FnHandler<F>
where
    F: Fn(StepContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = StepResult> + Send + 'static,
{
    fn handle<'a>(&'a self, context: &'a StepContext) -> HandlerFuture<'a> {
        Box::pin((self.0)(context.clone()))
    }
}

/// Handlers registered by name. Reads take a shared lock that is never held across an
/// await, so a plain (parking_lot) lock is enough.
#[derive(Default)]
pub struct InMemoryHandlerRegistry {
    handlers: RwLock<HashMap<String, Arc<dyn StepHandler>>>,
}

impl InMemoryHandlerRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&self, handler_class: impl Into<String>, handler: Arc<dyn StepHandler>) {
        self.handlers.write().insert(handler_class.into(), handler);
    }

    pub fn registered(&self) -> Vec<String> {
        let mut names: Vec<String> = self.handlers.read().keys().cloned().collect();
        names.sort();
        names
    }
}

impl StepHandlerRegistry for InMemoryHandlerRegistry {
    fn get_handler(&self, handler_class: &str) -> Option<Arc<dyn StepHandler>> {
        self.handlers.read().get(handler_class).cloned()
    }
}
