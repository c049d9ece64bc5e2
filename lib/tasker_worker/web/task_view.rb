# frozen_string_literal: true

module TaskerWorker
  class Web
    # The task page's tables: steps (result, or error and backtrace) and the transitions timeline.
    module TaskView
      private

      def steps_table(detail)
        errors = detail[:dag].to_h { |n| [n[:step_uuid], n[:error]] }
        cells = detail[:steps].map do |s|
          retry_button = s[:state] == "error" ? action_form("/steps/#{s[:step_uuid]}/retry", "Retry step") : ""
          [h(s[:name]), state_badge(s[:state]), h("#{s[:attempts]}/#{s[:max_attempts]}"),
           step_result(s[:results], errors[s[:step_uuid]]), retry_button]
        end
        table(["step", "state", "attempts", "result / error", ""], cells)
      end

      def timeline_table(transitions)
        table(%w[time what from to], transitions.map do |t|
          [time(t[:created_at]), h(t[:step_name] ? "step #{t[:step_name]}" : "task"), h(t[:from_state] || "-"),
           state_badge(t[:to_state])]
        end)
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
    end
  end
end
