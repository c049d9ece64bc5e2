# frozen_string_literal: true

require "rack"
require "securerandom"
require "set"
require "json"
require "cgi"
require_relative "web/html"
require_relative "web/dag"
require_relative "web/pages"
require_relative "web/actions"
require_relative "web/task_view"

module TaskerWorker
  # The dashboard (issue 18): a Rack app over TaskerWorker::Client's operations.
  #
  #   # Rails (config/routes.rb), protected the way the app chooses:
  #   authenticate :user, ->(u) { u.admin? } { mount TaskerWorker::Web => "/tasker" }
  #   # standalone: tasker_worker web --port 9292   (binds 127.0.0.1)
  #
  # Pages are GET; actions are POST, carry a CSRF token (a random value in a SameSite=Strict,
  # HttpOnly cookie that the form repeats), and first answer with a confirm page; only the
  # confirmed POST calls the Client, and the answer says what it did. Every value from the
  # database is HTML-escaped.
  class Web
    CSRF_COOKIE = "tasker_worker_csrf"
    PAGE_SIZE = 50
    DEFAULT_HOST = "127.0.0.1"
    DEFAULT_PORT = 9292

    class << self
      # The Client the dashboard uses (default: TaskerWorker::Client.for the configured database).
      attr_writer :client

      def client
        @client || Client.for
      end

      def call(env)
        new.call(env)
      end

      # A WEBrick server (Debian ruby-webrick) for the dashboard at http://host:port/, not yet
      # started (`tasker_worker web` and bin/demo start it). Port 0 picks a free one.
      def server(host: DEFAULT_HOST, port: DEFAULT_PORT, log: $stderr)
        require "webrick"
        require "rack/handler/webrick"
        server = WEBrick::HTTPServer.new(BindAddress: host, Port: Integer(port), AccessLog: [],
                                         Logger: WEBrick::Log.new(log, WEBrick::Log::WARN))
        server.mount("/", Rack::Handler::WEBrick, self)
        server
      end
    end

    include Html
    include Pages
    include Actions
    include TaskView

    ROUTES = [
      ["GET", %r{\A/?\z}, :overview],
      ["GET", %r{\A/tasks\z}, :tasks_page],
      ["GET", %r{\A/tasks/(?<uuid>[0-9a-fA-F-]{36})\z}, :task_page],
      ["GET", %r{\A/failures\z}, :failures_page],
      ["GET", %r{\A/dead_letters\z}, :dead_letters_page],
      ["GET", %r{\A/workers\z}, :workers_page],
      ["POST", %r{\A/steps/(?<uuid>[0-9a-fA-F-]{36})/retry\z}, :retry_step_action],
      ["POST", %r{\A/tasks/(?<uuid>[0-9a-fA-F-]{36})/retry\z}, :retry_task_action],
      ["POST", %r{\A/tasks/(?<uuid>[0-9a-fA-F-]{36})/cancel\z}, :cancel_task_action],
      ["POST", %r{\A/dead_letters/(?<uuid>[0-9a-fA-F-]{36})/replay\z}, :replay_action],
      ["POST", %r{\A/failures/retry\z}, :bulk_retry_action],
      ["POST", %r{\A/failures/discard\z}, :bulk_discard_action]
    ].freeze

    def call(env)
      @request = Rack::Request.new(env)
      @csrf = valid_token(@request.cookies[CSRF_COOKIE]) || SecureRandom.hex(32)
      method = @request.request_method
      path = @request.path_info
      method = "GET" if method == "HEAD"
      route = ROUTES.find { |m, pattern, _| m == method && pattern.match?(path) }
      return respond(404, layout("Not found", "<p>No page at #{h(path)}.</p>")) unless route
      return respond(403, layout("Forbidden", forbidden_body)) if method == "POST" && !csrf_ok?

      @params = route[1].match(path).named_captures
      respond(200, send(route[2]))
    rescue NotFoundError => e
      respond(404, layout("Not found", "<p>#{h(e.message)}</p>"))
    rescue InvalidStateError, InvalidInputError, ArgumentError => e
      respond(422, layout("Refused", "<p class=\"refused\">#{h(e.message)}</p>#{back_link}"))
    end

    private

    attr_reader :request

    def client = self.class.client

    def param(name)
      value = request.params[name.to_s]
      value.is_a?(String) && !value.strip.empty? ? value.strip : nil
    end

    def valid_token(value)
      value if value.is_a?(String) && value.match?(/\A\h{64}\z/)
    end

    def csrf_ok?
      cookie = valid_token(request.cookies[CSRF_COOKIE])
      sent = request.params["csrf"]
      cookie && sent.is_a?(String) && Rack::Utils.secure_compare(cookie, sent)
    end

    def forbidden_body
      "<p class=\"refused\">The form's CSRF token is missing or does not match this browser's; nothing was done. " \
        "Reload the page and try again.</p>"
    end

    def respond(status, body)
      headers = { "content-type" => "text/html; charset=utf-8", "cache-control" => "no-store",
                  "x-frame-options" => "DENY", "x-content-type-options" => "nosniff",
                  "content-security-policy" => "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'" }
      Rack::Utils.set_cookie_header!(headers, CSRF_COOKIE,
                                     value: @csrf, path: cookie_path, httponly: true, same_site: :strict)
      [status, headers, [request&.head? ? "" : body]]
    end

    def cookie_path
      script = request.script_name.to_s
      script.empty? ? "/" : script
    end

    # The dashboard's own address for `path` (under the mount point).
    def url(path, query = {})
      query = query.compact.reject { |_, v| v.to_s.empty? }
      "#{request.script_name}#{path}#{"?#{Rack::Utils.build_query(query)}" unless query.empty?}"
    end
  end
end
