# frozen_string_literal: true

# The no-op job bench/peer_sidekiq.rb drains (loaded by `sidekiq -r`).
require "sidekiq"

class BenchNoopJob
  include Sidekiq::Worker

  def perform(_index); end
end
