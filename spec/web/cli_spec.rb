# frozen_string_literal: true

require "net/http"
require "open3"
require "rbconfig"

# `tasker_worker web`: serves the dashboard on 127.0.0.1, prints its address, stops on INT.
RSpec.describe "tasker_worker web", :worker do
  it "serves the dashboard on 127.0.0.1 until INT" do
    exe = File.expand_path("../../exe/tasker_worker", __dir__)
    env = { "DATABASE_URL" => migrated_database_url, "TASKER_CONFIG_PATH" => nil }
    Open3.popen3(env, RbConfig.ruby, exe, "web", "--port", "0") do |stdin, stdout, stderr, thread|
      stdin.close
      line = Timeout.timeout(30) { stderr.gets.to_s }
      address = line[%r{http://127\.0\.0\.1:\d+/}]
      expect(address).not_to be_nil, "no address printed: #{line.inspect}"
      response = Net::HTTP.get_response(URI("#{address}workers"))
      expect(response.code).to eq("200")
      expect(response.body).to include("<h1>Workers</h1>")
      Process.kill(:INT, thread.pid)
      expect(Timeout.timeout(15) { thread.value }.exitstatus).to eq(0)
      expect(stdout.read).to include("stopped")
    end
  end
end
