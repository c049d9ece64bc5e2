# frozen_string_literal: true

module TaskerWorker
  class Web
    # The dashboard's actions (POST): a confirm page first, then the Client call, and a page
    # saying what was done.
    module Actions
      private

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
