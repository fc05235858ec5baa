-- Store 77 checks entry codes, prices carts and orders and takes payments with its legacy
-- systems (rules that answer:
-- see README, "Rules that answer"); every other event goes to the audit trail.
local members = require("lib.members")
local pricing = require("lib.pricing")
local payments = require("lib.payments")

return function(event)
  if event.type == "entry-code.verify" then return members.verify(event) end
  if event.type == "cart-mutator" or event.type == "order-price" then
    return pricing.mutate(event)
  end
  if event.type == "checkout" then return payments.checkout(event) end
  write("audit", { id = event.id, type = event.type, store = event.store,
                   received_at = event.received_at, body = event.body })
end
