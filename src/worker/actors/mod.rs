pub mod messages;
pub mod registry;
pub mod step_executor_actor;
