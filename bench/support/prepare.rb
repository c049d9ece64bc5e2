# frozen_string_literal: true

# Prepares a throw-away database in a separate process, so that the process being measured
# (the pure-Ruby baseline, the memory benchmark) never loads what setting up needs:
#
#   ruby -Ilib bench/support/prepare.rb TASKS   # prints "URL postgres://.../tw_bench_xxx"
#
# creates and migrates tw_bench_<random>, registers bench/templates/bench_noop.yaml and
# enqueues TASKS single-step tasks (Bench::Enqueue). The caller drops the database
# (Bench::Prepared.database does both).
require "English"
require_relative "common"

module Bench
  module Prepared
    TEMPLATE = File.join(__dir__, "..", "templates", "bench_noop.yaml")
    NAMESPACE = "bench"
    TASK_NAME = "noop_task"

    module_function

    # Yields the URL of a database holding `tasks` enqueued no-op tasks; drops it afterwards.
    def database(tasks)
      url = spawn_prepare(tasks)
      yield url
    ensure
      if url
        require_relative "database"
        ThrowawayDatabase.drop(url)
      end
    end

    # The child loads the same lib as this process (`ruby -I<build>/lib`), so a database is
    # migrated with the SQL of the build being measured.
    def spawn_prepare(tasks)
      lib = $LOAD_PATH.find { |dir| File.exist?(File.join(dir, "tasker_worker.rb")) } || File.join(Bench::ROOT, "lib")
      out = IO.popen([RbConfig.ruby, "-I", lib, __FILE__, tasks.to_s], &:read)
      url = out[/^URL (\S+)$/, 1]
      raise "preparing a database failed (exit #{$CHILD_STATUS.exitstatus}): #{out}" unless $CHILD_STATUS.success? && url

      url
    end

    # In the child: create, migrate, register, enqueue; print the URL.
    def prepare(tasks)
      require "tasker_worker"
      require_relative "database"
      require_relative "enqueue"
      url = ThrowawayDatabase.create
      begin
        TaskerWorker::Client.for(url).register_template_file(TEMPLATE)
        seconds = Enqueue.single_step_tasks(url, namespace: NAMESPACE, name: TASK_NAME, count: tasks)
        Bench.log(format("enqueued %d tasks in %.1f s", tasks, seconds))
      rescue StandardError
        ThrowawayDatabase.drop(url)
        raise
      end
      puts "URL #{url}"
    end
  end
end

Bench::Prepared.prepare(Integer(ARGV.fetch(0))) if $PROGRAM_NAME == __FILE__
