# frozen_string_literal: true

RSpec.describe TaskerWorker::Database do
  describe ".migrate!" do
    it "installs PGMQ and the schema on an empty database, then does nothing" do
      url = TestDatabase.create

      first = described_class.migrate!(url)
      expect(first).to include(pgmq_source: "sql", pgmq_installed_now: true)
      expect(first[:applied]).not_to be_empty

      conn = TestDatabase.connect(url)
      tables = conn.exec("SELECT tablename FROM pg_tables WHERE schemaname = 'tasker'").column_values(0)
      expect(tables).to include("tasks", "workflow_steps", "workflow_step_transitions", "named_tasks")
      conn.close

      second = described_class.migrate!(url)
      expect(second).to eq(pgmq_source: "sql", pgmq_installed_now: false, applied: [])
    end

    it "lets other Ruby threads run while it works" do
      url = TestDatabase.create
      ticks = 0
      ticker = Thread.new do
        loop do
          ticks += 1
          sleep 0.001
        end
      end
      described_class.migrate!(url)
      ticker.kill
      expect(ticks).to be > 0
    end

    it "raises ConfigurationError naming the key for a URL that is not PostgreSQL" do
      expect { described_class.migrate!("mysql://localhost/x") }
        .to raise_error(TaskerWorker::ConfigurationError, /database\.url/)
    end

    it "raises ConfigurationError without a URL" do
      expect { described_class.migrate!(nil) }.to raise_error(TaskerWorker::ConfigurationError, /DATABASE_URL/)
    end

    it "raises DatabaseError when the server cannot be reached" do
      expect { described_class.migrate!("postgres://postgres@127.0.0.1:1/nothing") }
        .to raise_error(TaskerWorker::DatabaseError)
    end
  end
end
