# frozen_string_literal: true

# Starts workers against a freshly migrated database and stops them after each example.
module WorkerHelpers
  def migrated_database_url
    @migrated_database_url ||= TestDatabase.create.tap { |url| TaskerWorker::Database.migrate!(url) }
  end

  def db
    @db ||= TestDatabase.connect(migrated_database_url)
  end

  def start_worker(registry:, **options)
    worker = TaskerWorker::Worker.new(registry: registry, database_url: migrated_database_url, poll_interval: 0.1,
                                      **options)
    (@workers ||= []) << worker
    worker.start
  end

  def wait_until(what, timeout: 20)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    until (value = yield)
      raise "timed out after #{timeout}s waiting for #{what}" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep 0.02
    end
    value
  end

  def self.included(config)
    config.after do
      (@workers || []).each { |w| w.stop(timeout: 2) if w.running? }
      @db&.close
    end
  end
end

RSpec.configure { |c| c.include WorkerHelpers, :worker }
