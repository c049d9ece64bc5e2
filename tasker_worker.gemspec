# frozen_string_literal: true

require_relative "lib/tasker_worker/version"

Gem::Specification.new do |spec|
  spec.name = "tasker_worker"
  spec.version = TaskerWorker::VERSION
  spec.summary = "Runs the steps of Tasker workflows for Ruby, with a Rust engine on PostgreSQL + PGMQ"
  spec.description = <<~TEXT
    A Rust core claims workflow steps from PostgreSQL PGMQ queues, hands them to Ruby handler
    classes on many threads through a pull channel, and commits each result with the
    orchestration message in one transaction. Speaks tasker-core's queue protocol and schema.
  TEXT
  spec.authors = ["tasker_worker developers"]
  spec.license = "MIT"
  spec.required_ruby_version = ">= 3.1"
  spec.homepage = "https://example.invalid/tasker_worker"
  spec.metadata["rubygems_mfa_required"] = "true"

  # The whole cargo workspace ships: the extension is compiled on install.
  spec.files = Dir[
    "Cargo.toml", "Cargo.lock", "build.rs", "src/**/*.rs", "ext/**/*.{rs,rb,toml}", "migrations/**/*.sql", "sql/**/*.sql",
    "config/**/*", "lib/**/*.{rb,rake,tt}", "exe/*", "README.md", "CHANGELOG.md"
  ].reject { |f| File.directory?(f) }
  spec.bindir = "exe"
  spec.executables = Dir["exe/*"].map { |f| File.basename(f) }
  spec.require_paths = ["lib"]
  spec.extensions = ["ext/tasker_worker/extconf.rb"]
end
