-- Checkpoints of long steps (src/worker/checkpoints.rs). Applied by src/database/migrate.rs
-- after the migrations; edit the definition here.

-- Saves a step's checkpoint in `workflow_steps.checkpoint`, in tasker-core's shape:
--   {cursor, items_processed, timestamp, accumulated_results, history: [{cursor, timestamp}, ...]}
-- only while `p_token` is still the step's current claim (its most recent transition, in
-- progress): a claim that was reclaimed, timed out or committed cannot overwrite the checkpoint
-- of the claim that replaced it. The history is the stored one plus this save, keeping the
-- newest `p_max_history` entries, and fewer (oldest dropped first) when the whole record would
-- be over `p_max_bytes` of JSON text; a record over it with only this save in its history is
-- refused. One row: outcome
--   saved     - stored; `checkpoint` is the record as stored;
--   stale     - the token is not the step's current claim; nothing changed;
--   missing   - no such step;
--   too_large - over p_max_bytes; nothing changed (`checkpoint` is NULL).
-- The step row is locked first, as claims and commits lock it, so a save and a reclaim of the
-- same step are serialised. Called as its own statement: it commits with the session's
-- synchronous_commit (on), so a saved checkpoint survives a server crash.
CREATE OR REPLACE FUNCTION tasker.worker_save_checkpoint(
    p_step_uuid           uuid,
    p_token               uuid,
    p_cursor              jsonb,
    p_items_processed     bigint,
    p_accumulated_results jsonb,
    p_max_history         integer,
    p_max_bytes           integer
)
RETURNS TABLE (outcome text, checkpoint jsonb)
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    stored  jsonb;
BEGIN
    SELECT s.checkpoint INTO stored
      FROM tasker.workflow_steps s
     WHERE s.workflow_step_uuid = p_step_uuid
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'missing'::text, NULL::jsonb;
        RETURN;
    END IF;

    PERFORM 1 FROM tasker.workflow_step_transitions t
     WHERE t.workflow_step_transition_uuid = p_token
       AND t.workflow_step_uuid = p_step_uuid
       AND t.most_recent
       AND t.to_state = 'in_progress';
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'stale'::text, NULL::jsonb;
        RETURN;
    END IF;

    RETURN QUERY SELECT w.outcome, w.checkpoint
      FROM tasker.worker_write_checkpoint(p_step_uuid, stored, p_cursor, p_items_processed, p_accumulated_results,
                                          p_max_history, p_max_bytes) w;
END;
$$;

-- The end of both saves, once the claim is known current and the step row locked: the record
-- (tasker.worker_checkpoint_record, from `stored`) written to the step, or `too_large` with
-- nothing written.
CREATE OR REPLACE FUNCTION tasker.worker_write_checkpoint(
    p_step_uuid           uuid,
    stored                jsonb,
    p_cursor              jsonb,
    p_items_processed     bigint,
    p_accumulated_results jsonb,
    p_max_history         integer,
    p_max_bytes           integer
)
RETURNS TABLE (outcome text, checkpoint jsonb)
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    built jsonb;
BEGIN
    built := tasker.worker_checkpoint_record(stored, p_cursor, p_items_processed, p_accumulated_results,
                                             p_max_history, p_max_bytes);
    IF built IS NULL THEN
        RETURN QUERY SELECT 'too_large'::text, NULL::jsonb;
        RETURN;
    END IF;

    UPDATE tasker.workflow_steps s
       SET checkpoint = built, updated_at = now()
     WHERE s.workflow_step_uuid = p_step_uuid;
    RETURN QUERY SELECT 'saved'::text, built;
END;
$$;

-- The record a save stores: `stored` (the step's current checkpoint) with this save on its
-- history, bounded as tasker.worker_save_checkpoint says; NULL when over p_max_bytes with
-- only this save in its history.
CREATE OR REPLACE FUNCTION tasker.worker_checkpoint_record(
    stored                jsonb,
    p_cursor              jsonb,
    p_items_processed     bigint,
    p_accumulated_results jsonb,
    p_max_history         integer,
    p_max_bytes           integer
)
RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    stamp   text := to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');
    history jsonb;
    built   jsonb;
    kept    integer;
BEGIN
    history := CASE WHEN jsonb_typeof(stored -> 'history') = 'array' THEN stored -> 'history' ELSE '[]'::jsonb END
               || jsonb_build_array(jsonb_build_object('cursor', p_cursor, 'timestamp', stamp));
    kept := least(jsonb_array_length(history), greatest(p_max_history, 1));
    LOOP
        built := jsonb_build_object(
            'cursor', p_cursor,
            'items_processed', p_items_processed,
            'timestamp', stamp,
            'accumulated_results', p_accumulated_results,
            'history', (SELECT coalesce(jsonb_agg(h.entry ORDER BY h.n), '[]'::jsonb)
                          FROM jsonb_array_elements(history) WITH ORDINALITY AS h(entry, n)
                         WHERE h.n > jsonb_array_length(history) - kept));
        EXIT WHEN octet_length(built::text) <= p_max_bytes;
        IF kept <= 1 THEN
            RETURN NULL;
        END IF;
        -- Over the size: drop the older half of what is kept, then try again.
        kept := kept / 2;
    END LOOP;

    RETURN built;
END;
$$;

-- tasker.worker_save_checkpoint for a lease-only claim (worker.lean_claim; see
-- tasker.worker_claim_steps_lean): the claim is current while the step's current transition
-- is still p_previous and its message is still in p_queue_name with read_ct p_read_ct
-- (tasker.worker_held_messages), the checks its commit makes. Same outcomes.
CREATE OR REPLACE FUNCTION tasker.worker_save_checkpoint_lease(
    p_step_uuid           uuid,
    p_queue_name          text,
    p_msg_id              bigint,
    p_read_ct             integer,
    p_previous            uuid,
    p_cursor              jsonb,
    p_items_processed     bigint,
    p_accumulated_results jsonb,
    p_max_history         integer,
    p_max_bytes           integer
)
RETURNS TABLE (outcome text, checkpoint jsonb)
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    stored  jsonb;
BEGIN
    SELECT s.checkpoint INTO stored
      FROM tasker.workflow_steps s
     WHERE s.workflow_step_uuid = p_step_uuid
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'missing'::text, NULL::jsonb;
        RETURN;
    END IF;

    PERFORM 1 FROM tasker.workflow_step_transitions t
     WHERE t.workflow_step_transition_uuid = p_previous
       AND t.workflow_step_uuid = p_step_uuid
       AND t.most_recent;
    IF NOT FOUND OR tasker.worker_held_messages(p_queue_name, ARRAY[p_msg_id], ARRAY[p_read_ct]) IS NULL THEN
        RETURN QUERY SELECT 'stale'::text, NULL::jsonb;
        RETURN;
    END IF;

    RETURN QUERY SELECT w.outcome, w.checkpoint
      FROM tasker.worker_write_checkpoint(p_step_uuid, stored, p_cursor, p_items_processed, p_accumulated_results,
                                          p_max_history, p_max_bytes) w;
END;
$$;
