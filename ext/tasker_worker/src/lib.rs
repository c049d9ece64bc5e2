use magnus::Ruby; #[magnus::init(name = "tasker_worker_ext")] fn init(_ruby: &Ruby) -> Result<(), magnus::Error> { Ok(()) }
