# frozen_string_literal: true

module TaskerWorker
  class Web
    # HTML building for the dashboard's pages. `h` escapes; every value from the database goes
    # through it (or through `json`, which escapes too).
    module Html
      STATE_COLOURS = {
        "pending" => "#d0d4da", "enqueued" => "#a9c7ef", "in_progress" => "#6fa8f0",
        "steps_in_process" => "#6fa8f0", "waiting_for_retry" => "#f3c86a", "complete" => "#7fcf8e",
        "error" => "#ef7f7f", "blocked_by_failures" => "#ef7f7f", "cancelled" => "#b4b4b4",
        "resolved_manually" => "#b39ddb"
      }.freeze

      NAV = [["/", "Overview"], ["/tasks", "Tasks"], ["/failures", "Failures"], ["/dead_letters", "Dead letters"],
             ["/workers", "Workers"]].freeze

      STYLE = <<~CSS
        body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}
        nav{background:#23324a;padding:8px 16px}nav a{color:#fff;margin-right:16px;text-decoration:none}
        main{padding:16px}table{border-collapse:collapse;margin:8px 0}
        td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
        .state{padding:1px 6px;border-radius:3px}pre{background:#f5f5f5;padding:6px;max-width:900px;overflow:auto}
        .notice{background:#e3f4e6;padding:8px}.refused{background:#fbe3e3;padding:8px}
        form.inline{display:inline}button{cursor:pointer}
      CSS

      def h(value)
        CGI.escapeHTML(value.to_s)
      end

      def json(value)
        h(JSON.pretty_generate(value))
      end

      def layout(title, body)
        links = NAV.map { |path, label| %(<a href="#{h(url(path))}">#{label}</a>) }.join
        <<~HTML
          <!DOCTYPE html>
          <html lang="en"><head><meta charset="utf-8"><title>#{h(title)} · TaskerWorker</title>
          <style>#{STYLE}</style></head>
          <body><nav>#{links}</nav><main><h1>#{h(title)}</h1>
          #{body}
          </main></body></html>
        HTML
      end

      def state_badge(state)
        %(<span class="state" style="background:#{STATE_COLOURS.fetch(state.to_s, "#eee")}">#{h(state)}</span>)
      end

      # rows: arrays of already-escaped cells.
      def table(headers, rows)
        head = headers.map { |name| "<th>#{h(name)}</th>" }.join
        body = rows.map { |cells| "<tr>#{cells.map { |c| "<td>#{c}</td>" }.join}</tr>" }.join
        body = %(<tr><td colspan="#{headers.size}">none</td></tr>) if rows.empty?
        "<table><thead><tr>#{head}</tr></thead><tbody>#{body}</tbody></table>"
      end

      def link(path, text, query = {})
        %(<a href="#{h(url(path, query))}">#{h(text)}</a>)
      end

      def time(value)
        if value.nil?
          "-"
        else
          h(value.is_a?(Time) ? value.utc.strftime("%Y-%m-%d %H:%M:%S UTC") : value)
        end
      end

      # A POST form to `path` (the action's first step: the confirm page follows).
      def action_form(path, label, fields = {})
        hidden = fields.map { |name, value| hidden(name, value) }.join
        %(<form class="inline" method="post" action="#{h(url(path))}">#{hidden}#{hidden("csrf", @csrf)}) +
          %(<button type="submit">#{h(label)}</button></form>)
      end

      def hidden(name, value)
        %(<input type="hidden" name="#{h(name)}" value="#{h(value)}">)
      end

      def back_link
        %(<p>#{link("/", "Back to the overview")}</p>)
      end
    end
  end
end
