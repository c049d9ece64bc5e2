-- The `tasker` schema: the subset of tasker-core's schema that a worker and the embedded
-- orchestrator need, with the same table and column names so the two can share a database.
-- State lives in the transition tables; the partial unique index on `most_recent` is what
-- makes a claim (a new most-recent transition) atomic. DDL only: the functions live in
-- sql/functions/ and are applied after the migrations (src/database/migrate.rs).

CREATE SCHEMA IF NOT EXISTS tasker;

CREATE TABLE tasker.task_namespaces (
    task_namespace_uuid uuid PRIMARY KEY,
    name                varchar(64) NOT NULL,
    description         text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT task_namespaces_name_unique UNIQUE (name)
);

CREATE TABLE tasker.named_tasks (
    named_task_uuid     uuid PRIMARY KEY,
    task_namespace_uuid uuid NOT NULL REFERENCES tasker.task_namespaces (task_namespace_uuid),
    name                varchar(128) NOT NULL,
    version             varchar(32) NOT NULL DEFAULT '0.1.0',
    description         text,
    -- the whole task template (steps, handlers, retry policy, events)
    configuration       jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT named_tasks_namespace_name_version_unique UNIQUE (task_namespace_uuid, name, version)
);

CREATE TABLE tasker.named_steps (
    named_step_uuid uuid PRIMARY KEY,
    name            varchar(128) NOT NULL,
    description     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT named_steps_name_unique UNIQUE (name)
);

CREATE TABLE tasker.named_tasks_named_steps (
    ntns_uuid            uuid PRIMARY KEY,
    named_task_uuid      uuid NOT NULL REFERENCES tasker.named_tasks (named_task_uuid),
    named_step_uuid      uuid NOT NULL REFERENCES tasker.named_steps (named_step_uuid),
    skippable            boolean NOT NULL DEFAULT false,
    default_retryable    boolean NOT NULL DEFAULT true,
    default_max_attempts integer NOT NULL DEFAULT 3,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT named_tasks_named_steps_unique UNIQUE (named_task_uuid, named_step_uuid)
);

CREATE TABLE tasker.tasks (
    task_uuid             uuid PRIMARY KEY,
    named_task_uuid       uuid NOT NULL REFERENCES tasker.named_tasks (named_task_uuid),
    complete              boolean NOT NULL DEFAULT false,
    requested_at          timestamptz NOT NULL DEFAULT now(),
    completed_at          timestamptz,
    initiator             varchar(128),
    source_system         varchar(128),
    reason                varchar(128),
    tags                  jsonb,
    context               jsonb,
    -- idempotency: the caller's key, or the task uuid when none was given
    identity_hash         varchar(128) NOT NULL,
    priority              integer NOT NULL DEFAULT 0,
    correlation_id        uuid NOT NULL,
    parent_correlation_id uuid,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tasks_identity_hash_unique UNIQUE (identity_hash)
);
CREATE INDEX tasks_named_task_uuid_idx ON tasker.tasks (named_task_uuid);
CREATE INDEX tasks_correlation_id_idx ON tasker.tasks (correlation_id);
CREATE INDEX tasks_incomplete_idx ON tasker.tasks (created_at) WHERE complete = false;

CREATE TABLE tasker.workflow_steps (
    workflow_step_uuid      uuid PRIMARY KEY,
    task_uuid               uuid NOT NULL REFERENCES tasker.tasks (task_uuid),
    named_step_uuid         uuid NOT NULL REFERENCES tasker.named_steps (named_step_uuid),
    retryable               boolean NOT NULL DEFAULT true,
    max_attempts            integer NOT NULL DEFAULT 3,
    in_process              boolean NOT NULL DEFAULT false,
    processed               boolean NOT NULL DEFAULT false,
    processed_at            timestamptz,
    attempts                integer NOT NULL DEFAULT 0,
    last_attempted_at       timestamptz,
    backoff_request_seconds integer,
    inputs                  jsonb,
    results                 jsonb,
    checkpoint              jsonb,
    priority                integer NOT NULL DEFAULT 0,
    skippable               boolean NOT NULL DEFAULT false,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT workflow_steps_task_named_step_unique UNIQUE (task_uuid, named_step_uuid),
    CONSTRAINT workflow_steps_attempts_nonnegative CHECK (attempts >= 0),
    CONSTRAINT workflow_steps_max_attempts_positive CHECK (max_attempts >= 1)
);
CREATE INDEX workflow_steps_named_step_uuid_idx ON tasker.workflow_steps (named_step_uuid);

CREATE TABLE tasker.workflow_step_edges (
    workflow_step_edge_uuid uuid PRIMARY KEY,
    from_step_uuid          uuid NOT NULL REFERENCES tasker.workflow_steps (workflow_step_uuid),
    to_step_uuid            uuid NOT NULL REFERENCES tasker.workflow_steps (workflow_step_uuid),
    name                    varchar(128) NOT NULL DEFAULT 'provides',
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT workflow_step_edges_unique UNIQUE (from_step_uuid, to_step_uuid, name),
    CONSTRAINT workflow_step_edges_no_self_loop CHECK (from_step_uuid <> to_step_uuid)
);
-- hydration walks edges upwards (child -> parents), the orchestrator downwards
CREATE INDEX workflow_step_edges_to_step_idx ON tasker.workflow_step_edges (to_step_uuid);
CREATE INDEX workflow_step_edges_from_step_idx ON tasker.workflow_step_edges (from_step_uuid);

CREATE TABLE tasker.workflow_step_transitions (
    workflow_step_transition_uuid uuid PRIMARY KEY,
    workflow_step_uuid            uuid NOT NULL REFERENCES tasker.workflow_steps (workflow_step_uuid),
    from_state                    varchar(64),
    to_state                      varchar(64) NOT NULL,
    metadata                      jsonb NOT NULL DEFAULT '{}'::jsonb,
    sort_key                      integer NOT NULL,
    most_recent                   boolean NOT NULL DEFAULT false,
    created_at                    timestamptz NOT NULL DEFAULT now(),
    updated_at                    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT workflow_step_transitions_to_state_check CHECK (to_state IN (
        'pending', 'enqueued', 'in_progress', 'enqueued_for_orchestration',
        'enqueued_as_error_for_orchestration', 'waiting_for_retry', 'complete', 'error',
        'cancelled', 'resolved_manually')),
    CONSTRAINT workflow_step_transitions_from_state_check CHECK (from_state IS NULL OR from_state IN (
        'pending', 'enqueued', 'in_progress', 'enqueued_for_orchestration',
        'enqueued_as_error_for_orchestration', 'waiting_for_retry', 'complete', 'error',
        'cancelled', 'resolved_manually'))
);
CREATE UNIQUE INDEX workflow_step_transitions_most_recent_unique
    ON tasker.workflow_step_transitions (workflow_step_uuid) WHERE most_recent;
CREATE UNIQUE INDEX workflow_step_transitions_sort_key_unique
    ON tasker.workflow_step_transitions (workflow_step_uuid, sort_key);
CREATE INDEX workflow_step_transitions_current_state_idx
    ON tasker.workflow_step_transitions (to_state, workflow_step_uuid) WHERE most_recent;

CREATE TABLE tasker.task_transitions (
    task_transition_uuid uuid PRIMARY KEY,
    task_uuid            uuid NOT NULL REFERENCES tasker.tasks (task_uuid),
    from_state           varchar(64),
    to_state             varchar(64) NOT NULL,
    processor_uuid       uuid,
    metadata             jsonb NOT NULL DEFAULT '{}'::jsonb,
    sort_key             integer NOT NULL,
    most_recent          boolean NOT NULL DEFAULT false,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT task_transitions_to_state_check CHECK (to_state IN (
        'pending', 'initializing', 'enqueuing_steps', 'steps_in_process', 'evaluating_results',
        'waiting_for_dependencies', 'waiting_for_retry', 'blocked_by_failures', 'complete',
        'error', 'cancelled', 'resolved_manually')),
    CONSTRAINT task_transitions_from_state_check CHECK (from_state IS NULL OR from_state IN (
        'pending', 'initializing', 'enqueuing_steps', 'steps_in_process', 'evaluating_results',
        'waiting_for_dependencies', 'waiting_for_retry', 'blocked_by_failures', 'complete',
        'error', 'cancelled', 'resolved_manually'))
);
CREATE UNIQUE INDEX task_transitions_most_recent_unique
    ON tasker.task_transitions (task_uuid) WHERE most_recent;
CREATE UNIQUE INDEX task_transitions_sort_key_unique
    ON tasker.task_transitions (task_uuid, sort_key);
CREATE INDEX task_transitions_current_state_idx
    ON tasker.task_transitions (to_state, task_uuid) WHERE most_recent;

-- Messages the worker could not run and will not retry: unparseable, or failing hydration
-- more than max_delivery_attempts times. Kept for people to inspect; nothing reads them back.
CREATE TABLE tasker.dead_letters (
    dead_letter_uuid uuid PRIMARY KEY,
    queue_name       text NOT NULL,
    msg_id           bigint NOT NULL,
    read_ct          integer NOT NULL,
    message          jsonb,
    reason           text NOT NULL,
    worker_id        text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_queue_created_idx ON tasker.dead_letters (queue_name, created_at);

-- One row of tasker.worker_step_contexts as a value: tasker.worker_claim_next keeps each
-- message's hydrated context in one while it claims.
CREATE TYPE tasker.worker_step_context AS (
    workflow_step_uuid uuid, task_uuid uuid, inputs jsonb, attempts integer, max_attempts integer,
    retryable boolean, step_name text, context jsonb, correlation_id uuid, task_name text,
    task_version text, namespace text, step_definition jsonb, dependency_results jsonb
);

-- The function files of sql/functions/ applied to this database, by name: the migration
-- runner re-applies a file whose checksum (sha256 of its text, hex) differs, and the worker
-- and orchestrator refuse to start unless every embedded file is recorded with its checksum.
CREATE TABLE tasker.schema_functions (
    file_name  text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
