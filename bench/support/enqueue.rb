# frozen_string_literal: true

# Pre-enqueues single-step tasks fast, for the drain and memory benchmarks (enqueuing is not
# part of what they measure). It writes exactly the rows TaskerWorker::Client#create_task
# writes for a one-step template (the task, its `pending` -> `steps_in_process` transitions,
# the step, its `pending` -> `enqueued` transitions, the worker-queue message sent with
# tasker.pgmq_send_with_notify), but with `pg`, 1,000 tasks per transaction, instead of one
# transaction and ~10 round trips per task. The template must be registered first
# (Client#register_template_file), which also creates the worker queue.
require "pg"
require "securerandom"
require_relative "common"

module Bench
  module Enqueue
    BATCH = 1_000

    module_function

    # Time-ordered uuids (version 7), as the product makes: 48 bits of Unix milliseconds,
    # then random bits. Ruby 3.1's SecureRandom has no uuid_v7.
    def uuid_v7
      ms = Process.clock_gettime(Process::CLOCK_REALTIME, :millisecond)
      bytes = [ms >> 16, ms & 0xffff].pack("Nn") + SecureRandom.random_bytes(10)
      bytes.setbyte(6, (bytes.getbyte(6) & 0x0f) | 0x70)
      bytes.setbyte(8, (bytes.getbyte(8) & 0x3f) | 0x80)
      hex = bytes.unpack1("H*")
      "#{hex[0, 8]}-#{hex[8, 4]}-#{hex[12, 4]}-#{hex[16, 4]}-#{hex[20, 12]}"
    end

    # Enqueues `count` tasks of the one-step template namespace/name/version; each task's
    # context is `context` plus {"seq" => n} (n from `first_seq`). Returns the elapsed seconds.
    def single_step_tasks(url, namespace:, name:, count:, version: "1.0.0", context: {}, first_seq: 0)
      started = Bench.now
      conn = PG.connect(url)
      template = template_row(conn, namespace, name, version)
      queue = "worker_#{namespace}_queue"
      done = 0
      while done < count
        n = [BATCH, count - done].min
        conn.transaction { insert_batch(conn, template, queue, n, context, first_seq + done) }
        done += n
      end
      Bench.now - started
    ensure
      conn&.close
    end

    # The same rows for `count` tasks, but their worker-queue messages are not sent: returns
    # them, as [queue, message JSON] pairs, for the caller to send one at a time.
    def unsent_single_step_tasks(url, namespace:, name:, count:, version: "1.0.0", context: {}, first_seq: 0)
      conn = PG.connect(url)
      template = template_row(conn, namespace, name, version)
      queue = "worker_#{namespace}_queue"
      messages = conn.transaction { insert_batch(conn, template, queue, count, context, first_seq, send: false) }
      messages.map { |message| [queue, JSON.generate(message)] }
    ensure
      conn&.close
    end

    def template_row(conn, namespace, name, version)
      rows = conn.exec_params(<<~SQL, [namespace, name, version]).to_a
        SELECT nt.named_task_uuid, ns.named_step_uuid,
               coalesce((nt.configuration #> '{steps,0,retry,retryable}')::boolean, true) AS retryable,
               coalesce((nt.configuration #> '{steps,0,retry,max_attempts}')::int, 3) AS max_attempts,
               jsonb_array_length(nt.configuration -> 'steps') AS steps
          FROM tasker.named_tasks nt
          JOIN tasker.task_namespaces tn ON tn.task_namespace_uuid = nt.task_namespace_uuid
          JOIN tasker.named_steps ns ON ns.name = nt.configuration #>> '{steps,0,name}'
         WHERE tn.name = $1 AND nt.name = $2 AND nt.version = $3
      SQL
      raise "template #{namespace}/#{name}@#{version} is not registered" if rows.empty?
      raise "template #{namespace}/#{name} has #{rows[0]["steps"]} steps; Bench::Enqueue writes one-step tasks" unless rows[0]["steps"].to_i == 1

      rows.first
    end

    # Returns the step messages (Hashes) when `send` is false.
    def insert_batch(conn, template, queue, count, context, first_seq, send: true)
      ids = Array.new(6) { Array.new(count) { uuid_v7 } }
      tasks, correlations, steps, task_tr1, task_tr2, step_tr = ids
      step_tr2 = Array.new(count) { uuid_v7 }
      seqs = Array.new(count) { |i| first_seq + i }
      arr = ->(values) { "{#{values.join(",")}}" }

      conn.exec_params(<<~SQL, [arr[tasks], arr[correlations], arr[seqs], template["named_task_uuid"], JSON.generate(context)])
        INSERT INTO tasker.tasks (task_uuid, named_task_uuid, context, identity_hash, correlation_id)
        SELECT t, $4::uuid, $5::jsonb || jsonb_build_object('seq', s), t::text, c
          FROM unnest($1::uuid[], $2::uuid[], $3::int[]) AS i(t, c, s)
      SQL
      conn.exec_params(<<~SQL, [arr[tasks], arr[task_tr1], arr[task_tr2]])
        INSERT INTO tasker.task_transitions (task_transition_uuid, task_uuid, from_state, to_state, sort_key, most_recent)
        SELECT tr1, t, NULL, 'pending', 1, false FROM unnest($1::uuid[], $2::uuid[]) AS i(t, tr1)
        UNION ALL
        SELECT tr2, t, 'pending', 'steps_in_process', 2, true FROM unnest($1::uuid[], $3::uuid[]) AS i(t, tr2)
      SQL
      conn.exec_params(<<~SQL, [arr[steps], arr[tasks], template["named_step_uuid"], template["retryable"], template["max_attempts"]])
        INSERT INTO tasker.workflow_steps (workflow_step_uuid, task_uuid, named_step_uuid, retryable, max_attempts, inputs)
        SELECT s, t, $3::uuid, $4::boolean, $5::int, '{}'::jsonb FROM unnest($1::uuid[], $2::uuid[]) AS i(s, t)
      SQL
      conn.exec_params(<<~SQL, [arr[steps], arr[step_tr], arr[step_tr2]])
        INSERT INTO tasker.workflow_step_transitions
            (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, metadata, sort_key, most_recent)
        SELECT tr1, s, NULL, 'pending', '{"event": "initialize"}'::jsonb, 1, false FROM unnest($1::uuid[], $2::uuid[]) AS i(s, tr1)
        UNION ALL
        SELECT tr2, s, 'pending', 'enqueued', '{"event": "enqueue"}'::jsonb, 2, true FROM unnest($1::uuid[], $3::uuid[]) AS i(s, tr2)
      SQL
      return tasks.zip(steps, correlations).map { |t, s, c| { task_uuid: t, step_uuid: s, correlation_id: c } } unless send

      conn.exec_params(<<~SQL, [queue, arr[tasks], arr[steps], arr[correlations]])
        SELECT count(tasker.pgmq_send_with_notify($1, jsonb_build_object('task_uuid', t, 'step_uuid', s, 'correlation_id', c), 0))
          FROM unnest($2::uuid[], $3::uuid[], $4::uuid[]) WITH ORDINALITY AS i(t, s, c, n)
      SQL
    end
  end
end
