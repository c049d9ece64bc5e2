//! `DomainEventSystem`: placeholder. Domain events (durable to `{namespace}_domain_events`,
//! fast to in-process subscribers) are a later part of the project; they will be published
//! from the `PostHandlerCallback`, which the completion processor calls only after a result
//! has committed. Until then nothing is published and nothing here runs.
