-- Operating the worker (issue 17): one row per worker process, written by the process itself
-- (src/worker/heartbeat.rs) and read and pruned by whoever lists workers
-- (tasker.operations_workers, sql/functions/operations.sql); and a mark on dead letters that
-- were replayed (tasker.operations_replay_dead_letter), so a dead letter is replayed once.

CREATE TABLE tasker.workers (
    worker_id      text PRIMARY KEY,
    hostname       text NOT NULL,
    pid            integer NOT NULL,
    namespaces     text[] NOT NULL,
    concurrency    integer NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT now(),
    last_heartbeat timestamptz NOT NULL DEFAULT now(),
    -- running, quiet or stopped, as the process last said; `gone` is derived when listing
    state          text NOT NULL,
    version        text NOT NULL,
    CONSTRAINT workers_state_check CHECK (state IN ('running', 'quiet', 'stopped'))
);
CREATE INDEX workers_last_heartbeat_idx ON tasker.workers (last_heartbeat);

ALTER TABLE tasker.dead_letters ADD COLUMN replayed_at timestamptz;
CREATE INDEX dead_letters_created_idx ON tasker.dead_letters (created_at);
