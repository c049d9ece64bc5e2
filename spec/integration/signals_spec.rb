# frozen_string_literal: true

require "open3"
require "rbconfig"

# A worker process whose threads sit in next_step (GVL released) stops promptly on a signal.
RSpec.describe "signals", :worker do
  SCRIPT = <<~RUBY # rubocop:disable Lint/ConstantDefinitionInBlock -- the child script every example runs
    require "tasker_worker"
    TaskerWorker.configure { |c| c.logger = Logger.new($stderr) }
    worker = TaskerWorker::Worker.new(concurrency: 3, namespaces: ["signals"], database_url: ARGV[0]).start
    stop = Queue.new
    %w[TERM INT].each { |sig| Signal.trap(sig) { stop << sig } }
    # Ready once every thread is blocked in next_step (the state the signal must interrupt).
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
    sleep 0.01 until worker.status.dig(:ffi, :waiting_threads) == 3 || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
    $stdout.puts "ready"
    $stdout.flush
    sig = stop.pop
    worker.stop(timeout: 5)
    $stdout.puts "stopped on \#{sig}"
  RUBY

  %w[TERM INT].each do |signal|
    it "stops on SIG#{signal} while every thread waits for work" do
      lib = File.expand_path("../../lib", __dir__)
      _in, out, wait = Open3.popen2(RbConfig.ruby, "-I", lib, "-e", SCRIPT, migrated_database_url, err: File::NULL)
      begin
        expect(out.gets).to eq("ready\n")
        Process.kill(signal, wait.pid)
        finished = wait.join(15)
        expect(finished).not_to be_nil, "the worker did not exit within 15 s of SIG#{signal}"
        expect(out.read).to include("stopped on #{signal}")
        expect(wait.value.exitstatus).to eq(0)
      ensure
        Process.kill(:KILL, wait.pid) if wait.alive?
      end
    end
  end
end
