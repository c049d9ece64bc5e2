# frozen_string_literal: true

require "json"
require "optparse"
require_relative "../../tasker_worker"

module TaskerWorker
  class CLI
    # `tasker_worker COMMAND`: the operator's subcommands, over TaskerWorker::Client on the
    # configured database (DATABASE_URL, -C FILE, or a Rails app loaded with -r). Each prints
    # a table on a terminal, or one JSON document with --json. exe/tasker_worker runs this
    # class when ARGV's first word is a command, and the worker (TaskerWorker::CLI) otherwise.
    #
    # Exit codes: 0 done, 1 refused or failed (the message says why; for status: the schema is
    # not up to date), 2 bad command line.
    class Commands
      COMMANDS = {
        "status" => "workers, queue depths, tasks and steps by state, schema up to date or what is missing",
        "tasks" => "tasks, newest first [--state S] [--namespace NS] [--name NAME] [--limit N] [--before TIME]",
        "task" => "task UUID: the task and its DAG, each step's state, attempts and error",
        "cancel" => "cancel UUID: cancel a task (steps not started never run)",
        "retry" => "retry UUID: retry a task's steps in error, or one step (UUID of a step)",
        "resolve" => "resolve STEP_UUID [--result JSON]: resolve a step manually; its children run",
        "dead-letters" => "dead letters, newest first [--limit N]",
        "replay" => "replay ID: send a dead letter's message to its queue again",
        "workers" => "worker processes and their heartbeats",
        "web" => "the dashboard (TaskerWorker::Web) at http://127.0.0.1:9292/ [--port N] [--bind HOST]; Ctrl-C stops it",
        "prune" => "delete old finished tasks and archived messages, per [retention] [--dry-run: count only]",
        "migrate" => "install PGMQ and the tasker schema (TaskerWorker::Database.migrate!)",
        "help" => "this list (tasker_worker --help: the worker's options)"
      }.freeze
      EXIT_OK = 0
      EXIT_FAILED = 1
      EXIT_USAGE = 2

      def self.command?(word) = COMMANDS.key?(word)

      def initialize(argv, out: $stdout, err: $stderr)
        @argv = argv.dup
        @command = @argv.shift
        @out = out
        @err = err
        @options = { limit: 50 }
      end

      def run
        parse!
        boot unless @command == "help"
        emit(public_send("cmd_#{@command.tr("-", "_")}"))
        @exit || EXIT_OK
      rescue OptionParser::ParseError => e
        @err.puts "tasker_worker #{@command}: #{e.message} (see tasker_worker #{@command} --help)"
        EXIT_USAGE
      rescue TaskerWorker::Error, ArgumentError, LoadError, SystemCallError => e
        @err.puts "tasker_worker #{@command}: #{e.class.name.sub("TaskerWorker::", "")}: #{e.message}"
        EXIT_FAILED
      end

      # Each returns [data for --json, lines for a terminal].
      def cmd_status
        status = client.status
        @exit = EXIT_FAILED unless status[:schema_up_to_date]
        [status, Format.status(status)]
      end

      def cmd_tasks
        rows = client.tasks(**@options.slice(:state, :namespace, :name, :limit, :before))
        [rows, Format.table(rows, %i[task_uuid namespace name state steps steps_in_error created_at])]
      end

      def cmd_task
        detail = client.task_detail(argument("UUID"))
        [detail, Format.task(detail)]
      end

      def cmd_cancel
        outcome = client.cancel_task(argument("UUID"))
        [outcome, ["task #{outcome[:task_uuid]} cancelled (#{outcome[:steps]} step(s) will not run)"]]
      end

      def cmd_retry
        uuid = argument("UUID")
        outcome = begin
          client.retry_task(uuid)
        rescue NotFoundError
          client.retry_step(uuid)
        end
        [outcome, ["task #{outcome[:task_uuid]} is #{outcome[:task_state]} (#{outcome[:steps]} step(s) enqueued)"]]
      end

      def cmd_resolve
        result = @options[:result] ? JSON.parse(@options[:result]) : {}
        outcome = client.resolve_step_manually(argument("STEP_UUID"), result: result)
        [outcome, ["step resolved manually; task #{outcome[:task_uuid]} is #{outcome[:task_state]} " \
                   "(#{outcome[:steps]} step(s) enqueued)"]]
      rescue JSON::ParserError => e
        raise ArgumentError, "--result is not JSON: #{e.message}"
      end

      def cmd_dead_letters
        rows = client.dead_letters(limit: @options[:limit])
        [rows, Format.table(rows, %i[id queue_name msg_id read_ct reason created_at replayed_at])]
      end

      def cmd_replay
        msg_id = client.replay_dead_letter(argument("ID"))
        [{ msg_id: msg_id }, ["replayed as message #{msg_id}"]]
      end

      def cmd_workers
        rows = client.workers
        [rows, Format.table(rows, %i[worker_id hostname pid state namespaces concurrency last_heartbeat version])]
      end

      def cmd_prune
        report = client.prune(dry_run: @options[:dry_run])
        @exit = EXIT_FAILED unless report[:ran]
        [report, Format.prune(report)]
      end

      def cmd_help
        lines = ["Usage: tasker_worker COMMAND [options] (tasker_worker COMMAND --help for its options)", ""] +
                COMMANDS.map { |name, what| format("  %-13s %s", name, what) }
        [COMMANDS, lines]
      end

      # Serves until INT or TERM.
      def cmd_web
        require_relative "../web"
        Web.client = client
        server = Web.server(host: @options.fetch(:bind, Web::DEFAULT_HOST), port: @options.fetch(:port, Web::DEFAULT_PORT),
                            log: @err)
        %w[INT TERM].each { |signal| trap(signal) { server.shutdown } }
        address = "http://#{server.config[:BindAddress]}:#{server.config[:Port]}/"
        @err.puts "tasker_worker web: the dashboard is at #{address} (Ctrl-C stops it)"
        server.start
        [{ "address" => address }, ["tasker_worker web: stopped"]]
      end

      def cmd_migrate
        result = Database.migrate!(database_url)
        [result, [Database.describe(result)]]
      end

      private

      def parse!
        raise OptionParser::InvalidArgument, "unknown command #{@command.inspect}" unless self.class.command?(@command)

        parser.parse!(@argv)
      end

      def parser
        OptionParser.new do |o|
          o.banner = "Usage: tasker_worker #{@command} [options] -- #{COMMANDS[@command]}"
          o.on("--json", "print JSON (one document) instead of a table") { @json = true }
          o.on("-C", "--config PATH", "TOML configuration file (database.url)") { |v| @config_path = v }
          o.on("-r", "--require PATH", "file, or Rails app directory, to load first") { |v| @require = v }
          o.on("--state STATE", "tasks: only this state (blocked_by_failures, complete, cancelled, ...)") { |v| @options[:state] = v }
          o.on("--namespace NS", "tasks: only this namespace") { |v| @options[:namespace] = v }
          o.on("--name NAME", "tasks: only this template name") { |v| @options[:name] = v }
          o.on("--before TIME", "tasks: created before this RFC 3339 time") { |v| @options[:before] = v }
          o.on("--limit N", Integer, "tasks, dead-letters: at most N rows (default 50)") { |v| @options[:limit] = v }
          o.on("--result JSON", "resolve: the step's result") { |v| @options[:result] = v }
          o.on("--port N", Integer, "web: the port (default 9292)") { |v| @options[:port] = v }
          o.on("--bind HOST", "web: the address to listen on (default 127.0.0.1)") { |v| @options[:bind] = v }
          o.on("--dry-run", "prune: count what would be deleted, delete nothing") { @options[:dry_run] = true }
          o.on("-h", "--help", "this help") { @out.puts(o.help) || exit(EXIT_OK) }
        end
      end

      def argument(name)
        value = @argv.shift
        raise OptionParser::MissingArgument, name unless value
        raise OptionParser::NeedlessArgument, @argv.first unless @argv.empty?

        value
      end

      def boot
        TaskerWorker.configure { |c| c.config_path = @config_path } if @config_path
        return unless @require

        path = File.directory?(@require) ? File.join(@require, "config/environment.rb") : @require
        application = File.join(File.dirname(File.expand_path(path)), "application.rb")
        if File.basename(path) == "environment.rb" && File.exist?(application)
          require application
          require_relative "../railtie" if defined?(::Rails::Railtie)
        end
        require File.expand_path(path)
      end

      def database_url
        TaskerWorker.configuration.database_url || TaskerWorker.configuration.effective.dig(:database, :url)
      end

      def client = Client.for(database_url)

      def emit((data, lines))
        @json ? @out.puts(JSON.generate(data)) : lines.each { |line| @out.puts(line) }
      end
    end

    # Tables for a terminal.
    module Format
      module_function

      # Columns padded to their widest cell; a header, then one line per row.
      def table(rows, columns)
        return ["(none)"] if rows.empty?

        cells = [columns.map(&:to_s)] + rows.map { |row| columns.map { |c| cell(row[c]) } }
        widths = columns.each_index.map { |i| cells.map { |line| line[i].length }.max }
        cells.map { |line| line.each_with_index.map { |value, i| value.ljust(widths[i]) }.join("  ").rstrip }
      end

      def cell(value)
        case value
        when nil then "-"
        when Array then value.empty? ? "-" : value.join(",")
        else value.to_s
        end
      end

      def status(status)
        return ["schema: NOT up to date: #{status[:schema_problem]}", "run: tasker_worker migrate"] unless status[:schema_up_to_date]

        ["schema: up to date", "", "workers:"] +
          table(status[:workers], %i[worker_id hostname pid state namespaces concurrency last_heartbeat]) +
          ["", "queues:"] + table(status[:queues], %i[queue_name length oldest_message_age_seconds]) +
          ["", "tasks by state:"] + counts(status[:tasks_by_state]) +
          ["", "steps by state:"] + counts(status[:steps_by_state])
      end

      def prune(report)
        return ["another process is pruning now; nothing done"] unless report[:ran]

        verb = report[:dry_run] ? "would delete" : "deleted"
        rows = report[:deleted].map { |table, n| { table: table, rows: n } }
        ["#{verb} #{report[:deleted].values.sum} row(s) in #{report[:batches]} batch(es):"] + table(rows, %i[table rows])
      end

      def counts(hash)
        return ["  (none)"] if hash.empty?

        hash.map { |state, n| format("  %-36s %d", state, n) }
      end

      def task(detail)
        ["task #{detail[:task_uuid]} #{detail[:namespace]}/#{detail[:name]} #{detail[:version]}: #{detail[:state]}",
         "created #{detail[:created_at]}#{", finished #{detail[:completed_at]}" if detail[:completed_at]}", ""] +
          table(detail[:dag].map { |s| s.merge(attempts: "#{s[:attempts]}/#{s[:max_attempts]}") },
                %i[name parents state attempts error step_uuid])
      end
    end
  end
end
