# frozen_string_literal: true

require "pg"
require "securerandom"

# Throw-away databases for specs, on the server named by DATABASE_URL (bin/test sets it to
# the test database). A spec that needs PostgreSQL and cannot reach it fails with a clear
# message; nothing is skipped.
module TestDatabase
  DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/tasker_worker_test"
  PREFIX = "tw_test_"

  @created = []
  @kept = []

  class << self
    def url
      ENV.fetch("DATABASE_URL", DEFAULT_URL)
    end

    # Creates an empty database and returns its URL. It is dropped after the example that
    # created it (its connections, and the Client pools on it, go with it: the server's
    # connection limit is shared by the whole suite), unless `keep:` makes it live until the
    # suite ends (a fixture shared by several examples, such as the generated Rails app's).
    def create(keep: false)
      name = "#{PREFIX}rb_#{SecureRandom.hex(6)}"
      admin { |conn| conn.exec(%(CREATE DATABASE "#{name}")) }
      (keep ? @kept : @created) << name
      url_for(name)
    end

    def url_for(name)
      url.sub(%r{/[^/?]*(\?|\z)}) { "/#{name}#{Regexp.last_match(1)}" }
    end

    def connect(database_url)
      GcStress.paused { PG.connect(database_url) }
    rescue PG::Error => e
      raise "these specs need PostgreSQL at #{database_url} and could not connect (#{e.message.strip}). " \
            "Run bin/setup or set DATABASE_URL."
    end

    # The databases made during the example (after its own `after` hooks stopped its workers).
    def drop_created
      @created.each { |name| admin { |conn| conn.exec(%(DROP DATABASE IF EXISTS "#{name}" WITH (FORCE))) } }
      @created.clear
    end

    def drop_all
      drop_created
      @created.concat(@kept)
      @kept.clear
      drop_created
    end

    private

    def admin
      GcStress.paused do
        conn = connect(url_for("postgres"))
        yield conn
      ensure
        conn&.close
      end
    end
  end
end
