# frozen_string_literal: true

require "rails/generators"

module TaskerWorker
  module Generators
    # `bin/rails generate tasker_worker:handler Checkout::ChargeCard`: the handler class in
    # app/handlers/checkout/charge_card.rb and its spec in spec/handlers/checkout/charge_card_spec.rb.
    # Name it in a template step as `handler: { callable: Checkout::ChargeCard }`.
    class HandlerGenerator < ::Rails::Generators::NamedBase
      source_root File.expand_path("templates", __dir__)
      desc "Creates a step handler class in app/handlers/ and its spec."

      def handler
        template "handler.rb.tt", File.join("app/handlers", class_path, "#{file_name}.rb")
      end

      def spec
        template "handler_spec.rb.tt", File.join("spec/handlers", class_path, "#{file_name}_spec.rb")
      end

      private

      def spec_helper
        File.exist?(File.join(destination_root, "spec/rails_helper.rb")) ? "rails_helper" : nil
      end

      def handler_path
        File.join("app/handlers", class_path, file_name)
      end

      # Checkout::ChargeCard as `module Checkout` around `class ChargeCard`, so the file loads
      # on its own (a spec without Rails) as well as through Rails' autoloading.
      BODY = <<~RUBY
        def call(context)
          success(result: { "handled" => true, "attempt" => context.attempt })
        end
      RUBY

      def nested(body = BODY)
        *modules, klass = class_name.split("::")
        lines = ["class #{klass} < TaskerWorker::StepHandler", *body.lines.map { |l| l.strip.empty? ? "" : "  #{l.chomp}" }, "end"]
        modules.reverse_each { |mod| lines = ["module #{mod}", *lines.map { |l| l.empty? ? l : "  #{l}" }, "end"] }
        "#{lines.join("\n")}\n"
      end
    end
  end
end
