# frozen_string_literal: true

# A throw-away database per benchmark (or per measurement): CREATE DATABASE tw_bench_<random>
# on the server of DATABASE_URL, migrated with TaskerWorker::Database.migrate!, dropped at the
# end (also when the run fails or is interrupted).
require "pg"
require "securerandom"
require "uri"
require_relative "common"

module Bench
  module ThrowawayDatabase
    module_function

    # Yields the new database's URL; drops it afterwards. `migrate: false` leaves it empty.
    def with(migrate: true)
      url = create(migrate: migrate)
      yield url
    ensure
      drop(url) if url
    end

    def create(migrate: true)
      name = "tw_bench_#{SecureRandom.hex(6)}"
      admin { |conn| conn.exec("CREATE DATABASE #{conn.quote_ident(name)}") }
      url = url_for(name)
      TaskerWorker::Database.migrate!(url) if migrate
      url
    rescue StandardError
      drop(url) if url
      raise
    end

    def drop(url)
      name = URI.parse(url).path.delete_prefix("/")
      # WITH (FORCE) ends connections still open (a pool being torn down, a killed child).
      admin { |conn| conn.exec("DROP DATABASE IF EXISTS #{conn.quote_ident(name)} WITH (FORCE)") }
    rescue PG::Error => e
      Bench.log("could not drop #{name}: #{e.message.strip}")
    end

    def url_for(database)
      uri = URI.parse(Bench.database_url)
      uri.path = "/#{database}"
      uri.to_s
    end

    def admin
      conn = PG.connect(url_for("postgres"))
      yield conn
    ensure
      conn&.close
    end

    # Steps whose result is committed (current state enqueued_for_orchestration).
    def committed_steps(url)
      conn = PG.connect(url)
      conn.exec("SELECT count(*) FROM tasker.workflow_step_transitions " \
                "WHERE to_state = 'enqueued_for_orchestration' AND most_recent").getvalue(0, 0).to_i
    ensure
      conn&.close
    end

    def completed_tasks(url)
      conn = PG.connect(url)
      conn.exec("SELECT count(*) FROM tasker.tasks WHERE complete").getvalue(0, 0).to_i
    ensure
      conn&.close
    end

    # `SHOW name` on `url`.
    def setting(url, name)
      conn = PG.connect(url)
      conn.exec("SHOW #{conn.quote_ident(name)}").getvalue(0, 0)
    ensure
      conn&.close
    end
  end
end
