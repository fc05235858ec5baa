-- Store 42 runs a legacy point of sale that wants to know when a shopper leaves a checkout
-- zone, in its own flat format, with its API key (set on the target in hookrouter.lua).
local aifi = require("lib.aifi")

return function(event)
  if event.type ~= "checkout-zone.left" then
    return drop("store 42 only takes checkout-zone.left")
  end
  local b = event.body
  if not aifi.is_customer(b) then
    return drop("not a customer: " .. tostring(b.customer.role))
  end
  forward("legacy_pos", {
    store = b.storeExternalId,
    session = aifi.session_id(b),
    customer = b.customer and b.customer.externalId,
    zone = tostring(b.checkoutZoneId),  -- an integer for old integrations, a string for new
    event = "left",
    at = b.timeOfOrigin,
  }, { path = "/zone-exit", headers = { ["X-Store"] = "42" } })
end
