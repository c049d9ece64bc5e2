# frozen_string_literal: true

module Examples
  module OrderFulfillment
    # Checks the order and totals it. A bad order fails for good: retrying cannot fix it.
    class ValidateOrder < TaskerWorker::StepHandler
      def call(context)
        items = context.input(:items) || []
        raise TaskerWorker::PermanentError, "the order has no items" if items.empty?
        raise TaskerWorker::PermanentError, "no customer email" unless context.input(:customer, :email)

        total = items.sum { |i| i["quantity"] * i["price"] }
        success(result: { "customer_id" => context.input(:customer, :id), "item_count" => items.size,
                          "total" => total.round(2) })
      end
    end

    class ReserveInventory < TaskerWorker::StepHandler
      def call(context)
        reservations = context.input(:items).map do |item|
          { "sku" => item["sku"], "quantity" => item["quantity"],
            "reservation" => "res-#{item["sku"]}-#{context.task_uuid[0, 8]}" }
        end
        { "warehouse" => config["warehouse"], "reservations" => reservations }
      end
    end

    class ProcessPayment < TaskerWorker::StepHandler
      def call(context)
        total = context.dependency_result(:validate_order)["total"]
        token = context.input(:payment, :token)
        raise TaskerWorker::PermanentError, "card declined" if token == "tok_declined"

        { "charge_id" => "ch_#{context.task_uuid[0, 8]}", "amount" => total, "gateway" => config["gateway"] }
      end
    end

    class ShipOrder < TaskerWorker::StepHandler
      def call(context)
        charge = context.dependency_result(:process_payment)
        { "tracking_number" => "TRK#{charge["charge_id"].delete_prefix("ch_").upcase}",
          "carrier_method" => context.input(:shipping, :method), "amount_charged" => charge["amount"] }
      end
    end
  end
end
