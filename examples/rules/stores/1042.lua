-- Store 1042 feeds a CRM import that reads JSON lines with its own field names, and prices
-- its carts and orders with the legacy pricing service (lib/pricing.lua) and takes payments
-- with the legacy payment service (lib/payments.lua).
local aifi = require("lib.aifi")
local pricing = require("lib.pricing")
local payments = require("lib.payments")

return function(event)
  if event.type == "cart-mutator" or event.type == "order-price" then
    return pricing.mutate(event)
  end
  if event.type == "checkout" then return payments.checkout(event) end
  local b = event.body
  write("crm", {
    kind = event.type,
    store_code = b.storeExternalId,
    shopper = b.customer and b.customer.externalId or json.null,
    session = aifi.session_id(b) or json.null,
    happened_at = b.timeOfOrigin,
    received_at = event.received_at,
    ref = event.id,
  })
end
