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

  class << self
    def url
      ENV.fetch("DATABASE_URL", DEFAULT_URL)
    end

    # Creates an empty database and returns its URL.
    def create
      name = "#{PREFIX}rb_#{SecureRandom.hex(6)}"
      admin { |conn| conn.exec(%(CREATE DATABASE "#{name}")) }
      @created << name
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

    def drop_all
      @created.each { |name| admin { |conn| conn.exec(%(DROP DATABASE IF EXISTS "#{name}" WITH (FORCE))) } }
      @created.clear
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
