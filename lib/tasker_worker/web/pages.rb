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
        body << "<h2>Steps</h2>#{steps_table(detail)}"
        body << "<h2>Context</h2><pre>#{json(detail[:context])}</pre>"
        body << "<h2>Timeline</h2>#{timeline_table(transitions)}"
        layout("Task #{uuid}", body)
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
          body << %(<button type="submit">Retry selected</button> )
          body << %(<button type="submit" formaction="#{h(url("/failures/discard"))}">Discard selected</button></form>)
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
    end
  end
end
