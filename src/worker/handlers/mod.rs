pub mod completion_processor;
pub mod dispatch_service;
pub mod domain_event_callback;
pub mod ffi_dispatch_channel;
pub mod pipeline;
pub mod traits;
