//! `TaskerWorker::Native.effective_config(overrides, config_path, use_env)`: the core's
//! configuration as a worker would load it (defaults < file < environment < overrides), as a
//! Hash with String keys, or a `ConfigurationError` naming the key. Ruby validates its options
//! with it (no file, no environment) and takes the values it needs from it, so that the
//! defaults and ranges live only in the core. `check_config(overrides)` is the same check
//! without building the Hash (a setter needs only the verdict, and a whole configuration as
//! Ruby objects is a few hundred allocations).

use crate::{conversions, errors};
use magnus::{function, prelude::*, Error, RHash, RModule, Ruby, Value};
use std::path::Path;
use tasker_worker::config::TaskerConfig;

pub fn init(_ruby: &Ruby, native: RModule) -> Result<(), Error> {
    native.define_singleton_method("effective_config", function!(effective_config, 3))?;
    native.define_singleton_method("check_config", function!(check_config, 1))?;
    Ok(())
}

/// Loads the defaults with `overrides` (no file, no environment); raises `ConfigurationError`
/// naming the key, else returns nil.
fn check_config(ruby: &Ruby, overrides: RHash) -> Result<(), Error> {
    load(ruby, overrides, None, false).map(drop)
}

fn effective_config(
    ruby: &Ruby,
    overrides: RHash,
    config_path: Option<String>,
    use_env: bool,
) -> Result<Value, Error> {
    serde_magnus::serialize(ruby, &load(ruby, overrides, config_path, use_env)?)
}

fn load(
    ruby: &Ruby,
    overrides: RHash,
    config_path: Option<String>,
    use_env: bool,
) -> Result<TaskerConfig, Error> {
    let overrides = conversions::overrides(ruby, overrides)?;
    let env = |name: &str| use_env.then(|| std::env::var(name).ok()).flatten();
    TaskerConfig::load_from(config_path.as_deref().map(Path::new), &env, &overrides)
        .map_err(|err| errors::to_ruby(ruby, err))
}
