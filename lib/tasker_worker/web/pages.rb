# frozen_string_literal: true

module TaskerWorker
  class Web
    # The dashboard's pages (GET) and actions (POST: a confirm page first, then the Client call).
    module Pages
      TASK_STATES = %w[pending initializing enqueuing_steps steps_in_process evaluating_results
                       waiting_for_dependencies waiting_for_retry blocked_by_failures complete error
                       cancelled resolved_manually].freeze
      FAILURES_SHOWN = 200

      private

      # The last hour, queues and live workers; no count of every row (status's counts take
      # longer than a page may with 100k tasks).
      def overview
        activity = client.activity
        alive = client.workers.reject { |w| %w[gone stopped].include?(w[:state]) }
        body = +"<h2>Last hour</h2>"
        body << table(%w[steps/s completed failed],
                      [[h(format("%.3f", activity[:steps_per_second])), h(activity[:completed_last_hour]),
                        link("/failures", activity[:failed_last_hour].to_s)]])
        body << "<h2>Queues</h2>"
        body << table(["queue", "depth", "oldest message (s)"],
                      activity[:queues].map { |q| [h(q[:queue_name]), h(q[:length]), h(q[:oldest_message_age_seconds] || "-")] })
        body << "<h2>Workers alive (#{alive.size})</h2>"
        body << table(%w[worker namespaces threads state],
                      alive.map { |w| [h(w[:worker_id]), h(w[:namespaces].join(", ")), h(w[:concurrency]), state_badge(w[:state])] })
        body << "<p>Tasks by state: #{TASK_STATES.map { |s| link("/tasks", s, state: s) }.join(" · ")}</p>"
        layout("Overview", body)
      end

      def tasks_page
        filter = { state: param(:state), namespace: param(:namespace), name: param(:name) }
        rows = client.tasks(**filter, limit: PAGE_SIZE + 1, before: param(:before))
        more = rows.size > PAGE_SIZE
        rows = rows.first(PAGE_SIZE)
        options = ([""] + TASK_STATES).map do |s|
          %(<option value="#{h(s)}"#{" selected" if s == filter[:state]}>#{s.empty? ? "any state" : h(s)}</option>)
        end
        form = %(<form method="get" action="#{h(url("/tasks"))}"><select name="state">#{options.join}</select> ) +
               %(<input name="namespace" placeholder="namespace" value="#{h(filter[:namespace])}"> ) +
               %(<input name="name" placeholder="name" value="#{h(filter[:name])}"> <button>Filter</button></form>)
        cells = rows.map do |t|
          [link("/tasks/#{t[:task_uuid]}", t[:task_uuid]), h(t[:namespace]), h("#{t[:name]} #{t[:version]}"),
           state_badge(t[:state]), h("#{t[:steps]} (#{t[:steps_in_error]} in error)"), time(t[:created_at])]
        end
        pager = more ? %(<p>#{link("/tasks", "Older →", **filter, before: rows.last[:created_at])}</p>) : ""
        layout("Tasks", form + table(%w[task namespace name state steps created], cells) + pager)
      end

      def task_page
        detail = client.task_detail(@params["uuid"])
        transitions = client.task_transitions(@params["uuid"])
        uuid = detail[:task_uuid]
        body = +"<p>#{state_badge(detail[:state])} #{h(detail[:namespace])} / #{h(detail[:name])} #{h(detail[:version])} " \
                "· created #{time(detail[:created_at])} · completed #{time(detail[:completed_at])}</p>"
        body << "<p>#{action_form("/tasks/#{uuid}/retry", "Retry failed steps")} " \
                "#{action_form("/tasks/#{uuid}/cancel", "Cancel task")}</p>"
        body << Dag.svg(detail[:dag], Html::STATE_COLOURS) { |v| h(v) }
        body << "<h2>Steps</h2>"
        errors = detail[:dag].to_h { |n| [n[:step_uuid], n[:error]] }
        cells = detail[:steps].map do |s|
          retry_button = s[:state] == "error" ? action_form("/steps/#{s[:step_uuid]}/retry", "Retry step") : ""
          [h(s[:name]), state_badge(s[:state]), h("#{s[:attempts]}/#{s[:max_attempts]}"),
           step_result(s[:results], errors[s[:step_uuid]]), retry_button]
        end
        body << table(["step", "state", "attempts", "result / error", ""], cells)
        body << "<h2>Context</h2><pre>#{json(detail[:context])}</pre>"
        body << "<h2>Timeline</h2>"
        body << table(%w[time what from to], transitions.map do |t|
          [time(t[:created_at]), h(t[:step_name] ? "step #{t[:step_name]}" : "task"), h(t[:from_state] || "-"),
           state_badge(t[:to_state])]
        end)
        layout("Task #{uuid}", body)
      end

      def step_result(results, error)
        return "-" if results.nil?

        error_hash = fetch_any(results, :error)
        return "<pre>#{json(results)}</pre>" unless error_hash.is_a?(Hash)

        backtrace = Array(fetch_any(error_hash, :backtrace))
        trace = backtrace.empty? ? "" : "<details><summary>backtrace</summary><pre>#{h(backtrace.join("\n"))}</pre></details>"
        %(<div class="error">#{h(error || fetch_any(error_hash, :message))}</div>#{trace})
      end

      def fetch_any(hash, key)
        hash[key.to_s] || hash[key.to_sym]
      end

      def failures_page
        steps = client.failed_steps(limit: FAILURES_SHOWN)
        groups = steps.group_by { |s| s[:error_type] }.sort_by { |type, list| [-list.size, type] }
        body = +"<p>#{steps.size} steps in error or waiting for retry (at most #{FAILURES_SHOWN} shown), by error type. " \
                "Retry gives a step in error a fresh attempt budget; discard cancels the step's task " \
                "(its steps not started never run).</p>"
        groups.each do |type, list|
          body << %(<h2>#{h(type)} (#{list.size})</h2><form method="post" action="#{h(url("/failures/retry"))}">)
          body << hidden("csrf", @csrf)
          body << table(["", "step", "task", "state", "attempts", "message", "failed"], list.map do |s|
            [%(<input type="checkbox" name="step_uuids[]" value="#{h(s[:step_uuid])}" checked>),
             h(s[:step_name]), link("/tasks/#{s[:task_uuid]}", "#{s[:namespace]}/#{s[:task_name]}"),
             state_badge(s[:state]), h(s[:attempts]), h(s[:message] || "-"), time(s[:failed_at])]
          end)
          body << %(<button type="submit">Retry selected</button> ) +
                  %(<button type="submit" formaction="#{h(url("/failures/discard"))}">Discard selected</button></form>)
        end
        layout("Failures", body)
      end

      def dead_letters_page
        rows = client.dead_letters(limit: 200)
        cells = rows.map do |d|
          replay = d[:replayed_at] ? "replayed #{time(d[:replayed_at])}" : action_form("/dead_letters/#{d[:id]}/replay", "Replay")
          raw = d[:message].nil? ? "-" : h(JSON.generate(d[:message])[0, 200])
          [time(d[:created_at]), h(d[:queue_name]), h(d[:msg_id]), h(d[:read_ct]), h(d[:reason]),
           h(d[:worker_id] || "-"), "<code>#{raw}</code>", replay]
        end
        layout("Dead letters", table(["created", "queue", "msg id", "reads", "reason", "worker", "message (start)", ""],
                                     cells))
      end

      def workers_page
        cells = client.workers.map do |w|
          [h(w[:worker_id]), h(w[:hostname]), h(w[:pid]), h(w[:namespaces].join(", ")), h(w[:concurrency]),
           state_badge(w[:state]), time(w[:started_at]), time(w[:last_heartbeat]), h(w[:version])]
        end
        layout("Workers", table(%w[worker host pid namespaces concurrency state started heartbeat version], cells))
      end

      # ---- actions ----

      def retry_step_action
        confirm("Retry step #{@params["uuid"]}?") do
          out = client.retry_step(@params["uuid"])
          done("Retried step #{@params["uuid"]}: #{out[:steps]} step message(s) sent; the task is #{out[:task_state]}.",
               out[:task_uuid])
        end
      end

      def retry_task_action
        confirm("Retry every failed step of task #{@params["uuid"]}?") do
          out = client.retry_task(@params["uuid"])
          done("Retried task #{out[:task_uuid]}: #{out[:steps]} step message(s) sent; the task is #{out[:task_state]}.",
               out[:task_uuid])
        end
      end

      def cancel_task_action
        confirm("Cancel task #{@params["uuid"]}? Its steps not started will never run.") do
          out = client.cancel_task(@params["uuid"])
          done("Cancelled task #{out[:task_uuid]}: #{out[:steps]} step(s) cancelled.", out[:task_uuid])
        end
      end

      def replay_action
        confirm("Replay dead letter #{@params["uuid"]}?") do
          msg_id = client.replay_dead_letter(@params["uuid"])
          done("Replayed dead letter #{@params["uuid"]} as message #{msg_id}.", nil, "/dead_letters")
        end
      end

      def bulk_retry_action
        bulk("Retry", "retried") { |uuid| client.retry_step(uuid) }
      end

      # Discard: the step's task is cancelled (its steps not started never run); tasks are
      # cancelled once each.
      def bulk_discard_action
        bulk("Discard (cancel the task of)", "discarded", by_task: true) { |task_uuid| client.cancel_task(task_uuid) }
      end

      def bulk(verb, past, by_task: false)
        uuids = Array(request.params["step_uuids"]).flatten.grep(/\A\h{8}-\h{4}-\h{4}-\h{4}-\h{12}\z/).uniq
        raise ArgumentError, "no steps selected" if uuids.empty?

        confirm("#{verb} #{uuids.size} step(s)?", "step_uuids[]" => uuids) do
          targets = by_task ? task_of(uuids) : uuids
          results = targets.map do |uuid|
            yield(uuid)
            [uuid, "ok"]
          rescue InvalidStateError, NotFoundError => e
            [uuid, e.message]
          end
          ok = results.count { |_, r| r == "ok" }
          list = results.map { |uuid, r| "<li>#{h(uuid)}: #{h(r)}</li>" }.join
          layout("Done", %(<p class="notice">#{h("#{ok} of #{results.size} #{by_task ? "task(s)" : "step(s)"} #{past}.")}</p>) +
                         "<ul>#{list}</ul><p>#{link("/failures", "Back to failures")}</p>")
        end
      end

      def task_of(step_uuids)
        wanted = step_uuids.to_set
        client.failed_steps(limit: 1000).select { |s| wanted.include?(s[:step_uuid]) }.map { |s| s[:task_uuid] }.uniq
      end

      # Without confirm=yes: the confirm page (the same POST again, confirmed). With it: the action.
      def confirm(question, fields = {})
        return yield if request.params["confirm"] == "yes"

        hidden_fields = fields.flat_map { |name, values| Array(values).map { |v| hidden(name, v) } }.join
        form = %(<form method="post" action="#{h(url(request.path_info))}">#{hidden("csrf", @csrf)}#{hidden("confirm", "yes")}) +
               %(#{hidden_fields}<button type="submit" id="confirm">Yes, do it</button></form>)
        layout("Confirm", "<p>#{h(question)}</p>#{form}<p>#{link("/", "No, back to the overview")}</p>")
      end

      def done(what, task_uuid, back = nil)
        back_html = task_uuid ? link("/tasks/#{task_uuid}", "Back to the task") : link(back || "/", "Back")
        layout("Done", %(<p class="notice">#{h(what)}</p><p>#{back_html}</p>))
      end
    end
  end
end
