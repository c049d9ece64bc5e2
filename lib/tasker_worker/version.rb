# frozen_string_literal: true

module TaskerWorker
  VERSION = "0.1.0"
end
