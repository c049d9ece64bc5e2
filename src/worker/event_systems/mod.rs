pub mod domain_event_system;
pub mod worker_event_system;
