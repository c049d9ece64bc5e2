-- Records poison messages in tasker.dead_letters, as parallel arrays (the caller archives
-- them in the same transaction): $1 ids, $2 msg_ids, $3 read_cts, $4 bodies, $5 reasons,
-- $6 queue, $7 worker id.
INSERT INTO tasker.dead_letters (dead_letter_uuid, queue_name, msg_id, read_ct, message, reason, worker_id)
SELECT d.id, $6, d.msg_id, d.read_ct, d.message, d.reason, $7
FROM unnest($1::uuid[], $2::bigint[], $3::int[], $4::jsonb[], $5::text[]) AS d(id, msg_id, read_ct, message, reason)
