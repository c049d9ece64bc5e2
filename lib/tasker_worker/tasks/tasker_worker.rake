# frozen_string_literal: true

# Loaded by TaskerWorker::Railtie.
namespace :tasker_worker do
  desc "Install PGMQ and the tasker schema in the app's database (idempotent; also TaskerWorker::Database.migrate!)"
  task migrate: :environment do
    puts "tasker_worker: #{TaskerWorker::Database.describe(TaskerWorker::Database.migrate!)}"
  end

  desc "Workers, queue depths, tasks and steps by state, and whether the schema is up to date (what `tasker_worker status` prints)"
  task status: :environment do
    require_relative "../cli/commands"
    code = TaskerWorker::CLI::Commands.new(["status"]).run
    exit(code) unless code.zero?
  end
end

# db:test:prepare and db:schema:load rebuild a database from db/schema.rb or db/structure.sql,
# which hold the app's own tables only (the Railtie keeps the tasker and pgmq schemas out of
# both dumps): the tasker schema is installed again right after.
Rake::Task["db:test:load_schema"].enhance { TaskerWorker::RailsSupport.migrate_environment("test") } if Rake::Task.task_defined?("db:test:load_schema")
Rake::Task["db:schema:load"].enhance { TaskerWorker::RailsSupport.migrate_environment(Rails.env) } if Rake::Task.task_defined?("db:schema:load")
