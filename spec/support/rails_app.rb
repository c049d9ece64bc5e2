# frozen_string_literal: true

require "open3"
require "tmpdir"
require "uri"

# A real Rails app (Debian's ruby-rails, `rails new`), generated once per run into a temporary
# directory, using the gem from this checkout through its Gemfile (`path:`), with its own
# development and test databases on the server the specs use. Commands run in the app with a
# bounded time; a failing one raises with its output.
class RailsApp
  CHECKOUT = File.expand_path("../..", __dir__)
  COMMAND_TIMEOUT = 120

  attr_reader :root, :databases

  def self.instance
    @instance ||= new.tap(&:generate)
  end

  def initialize
    @root = File.join(Dir.mktmpdir("tasker_worker_rails"), "shop")
    @databases = { "development" => TestDatabase.create(keep: true), "test" => TestDatabase.create(keep: true) }
  end

  def generate
    raise "these specs need Rails (Debian's ruby-rails package; bin/setup installs it)" unless system("which rails > /dev/null")

    run!("rails", "new", @root, "--skip-bundle", "--skip-git", "--skip-javascript", "--skip-webpack-install",
         "--skip-sprockets", "--skip-spring", "--skip-listen", "--skip-bootsnap", "--skip-action-cable",
         "--skip-action-mailer", "--skip-action-mailbox", "--skip-action-text", "--skip-active-storage",
         "--skip-test", "--skip-system-test", "--database=postgresql", chdir: Dir.tmpdir)
    write("Gemfile", <<~RUBY)
      source "https://rubygems.org"
      gem "rails", "~> 6.1.7"
      gem "pg"
      gem "tasker_worker", path: #{CHECKOUT.inspect}
      group :test do
        gem "rspec"
      end
    RUBY
    write("config/database.yml", database_yml)
    run!("bundle", "install", "--local", "--quiet")
    @install_output = run!("bin/rails", "generate", "tasker_worker:install")
    run!("bin/rails", "generate", "model", "Order", "number:integer")
    @migrate_output = run!("bin/rails", "db:migrate")
  end

  # What `bin/rails generate tasker_worker:install` and the first `bin/rails db:migrate` printed.
  attr_reader :install_output, :migrate_output

  def write(path, text)
    full = File.join(@root, path)
    FileUtils.mkdir_p(File.dirname(full))
    File.write(full, text)
  end

  def read(path)
    File.read(File.join(@root, path))
  end

  # Runs a command in the app (Bundler's Gemfile, no DATABASE_URL from the specs' process).
  def run!(*command, chdir: @root, env: {})
    Open3.popen2e(app_env.merge(env), *command, chdir: chdir) do |stdin, out, wait|
      stdin.close
      reader = Thread.new { out.read }
      unless wait.join(COMMAND_TIMEOUT)
        Process.kill(:KILL, wait.pid)
        raise "in #{@root}: `#{command.join(" ")}` took longer than #{COMMAND_TIMEOUT}s:\n#{reader.value}"
      end
      output = reader.value
      raise "in #{@root}: `#{command.join(" ")}` failed (#{wait.value}):\n#{output}" unless wait.value.success?

      output
    end
  end

  # `bin/rails runner` with a Ruby snippet; returns its output.
  def runner(code, env: {})
    run!("bin/rails", "runner", code, env: env)
  end

  def spawn(*command, log:, env: {})
    Process.spawn(app_env.merge(env), *command, chdir: @root, out: log, err: log)
  end

  def connect(env = "development")
    TestDatabase.connect(@databases.fetch(env))
  end

  private

  def app_env
    { "BUNDLE_GEMFILE" => File.join(@root, "Gemfile"), "DATABASE_URL" => nil, "RAILS_ENV" => nil,
      "TASKER_CONFIG_PATH" => nil, "RUBYOPT" => nil, "BUNDLE_BIN_PATH" => nil }
  end

  # host / port / username spelled out (not a url:), so the Railtie builds the worker's URL.
  def database_yml
    server = URI(TestDatabase.url)
    sections = @databases.map do |env, url|
      "#{env}:\n  <<: *default\n  database: #{URI(url).path.delete_prefix("/")}\n"
    end
    <<~YAML
      default: &default
        adapter: postgresql
        host: #{server.host}
        port: #{server.port || 5432}
        username: #{server.user || "postgres"}
        pool: 5
      #{sections.join}
    YAML
  end
end
