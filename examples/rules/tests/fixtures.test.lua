-- Every AiFi fixture (examples/fixtures, a copy of the shared catalogue) through the example
-- rules, at the endpoint AiFi would call: what each store's rule does with it.
local PRICED = { status = 200, headers = { ["Content-Type"] = "application/json" },
                 body = { lines = json.array({ { sku = "A", qty = 1, unit_price = "1.00" } }),
                          tax = "0.10" } }
local PAID = { status = 200, headers = { ["Content-Type"] = "application/json" },
               body = { result = "captured" } }

-- store 1042 writes a CRM line; store 77 and the default rule an audit line
local function crm(kind) return { { action = "write", file = "crm", record = { kind = kind } } } end
local function audit(kind, store)
  return { { action = "write", file = "audit", record = { type = kind, store = store } } }
end

local cases = {
  { "transition-entered.json", "/aifi/transition/entered", crm("transition.entered") },
  { "transition-left.json", "/aifi/transition/left", crm("transition.left") },
  { "checkout-zone-entered.json", "/aifi/checkout-zone/entered", crm("checkout-zone.entered") },
  { "checkout-zone-left.json", "/aifi/checkout-zone/left", audit("checkout-zone.left", "77") },
  { "identity-matching.json", "/aifi/identity-matching", crm("identity-matching") },
  { "remote-register.json", "/aifi/remote-register", crm("remote-register") },
  { "restricted-products-interactions.json", "/aifi/restricted-products-interactions",
    crm("restricted-products-interactions") },
  { "tracking.json", "/aifi/tracking", crm("tracking") },
  { "entry-code-notify.json", "/aifi/entry-code/notify", audit("entry-code.notify", "77") },
  { "planogram-error.json", "/aifi/planogram-error", audit("planogram-error", "77") },
  { "suspected-fraud.json", "/aifi/suspected-fraud", audit("suspected-fraud", "77") },
  { "customer-created.json", "/aifi/customer", audit("customer.created", json.null) },
  { "customer-updated.json", "/aifi/customer", audit("customer.created", json.null) },
  { "variants/checkout-zone-id-integer.json", "/aifi/checkout-zone/left",
    audit("checkout-zone.left", "77") },
  { "variants/employee-role.json", "/aifi/transition/entered", crm("transition.entered") },
  { "variants/empty-metadata.json", "/aifi/transition/entered", crm("transition.entered") },
  { "variants/legacy-minimal-checkout-zone.json", "/aifi/checkout-zone/left",
    audit("checkout-zone.left", "2") },
  { "variants/legacy-session-token-only.json", "/aifi/checkout-zone/left",
    audit("checkout-zone.left", "12") },
  { "variants/remote-register-null-device.json", "/aifi/remote-register", crm("remote-register") },
  { "variants/session-object-only.json", "/aifi/transition/entered", crm("transition.entered") },
  { "variants/store-external-id-null.json", "/aifi/transition/entered", crm("transition.entered") },
  { "variants/store-id-integer.json", "/aifi/checkout-zone/left", audit("checkout-zone.left", "77") },
  { "variants/store-id-string.json", "/aifi/checkout-zone/left", audit("checkout-zone.left", "77") },
  { "variants/tracking-null-shopper.json", "/aifi/tracking", crm("tracking") },
  { "variants/unicode-names.json", "/aifi/customer", audit("customer.created", json.null) },
}
local specs = {}
for _, c in ipairs(cases) do
  specs[#specs + 1] = { name = c[1], path = c[2], file = "../../fixtures/" .. c[1], expect = c[3],
                        expect_reply = { status = 200 } }
end

-- the answering webhooks, with a live legacy service
local answering = {
  { "cart-mutator.json", "/aifi/cart-mutator", PRICED, { totalPrice = "1.00" } },
  { "order-price.json", "/aifi/order-price", PRICED, { totalPrice = "1.00" } },
  { "checkout-completed.json", "/aifi/checkout", PAID, { paymentStatus = "paid" } },
  { "checkout-draft.json", "/aifi/checkout", PAID, { paymentStatus = "processing" } },
  { "variants/checkout-reviewed.json", "/aifi/checkout", PAID, { paymentStatus = "paid" } },
  { "variants/large-events.json", "/aifi/checkout", PAID, { paymentStatus = "paid" } },
  { "variants/large-integers.json", "/aifi/checkout", PAID,
    { orderId = 9007199254740993, paymentStatus = "paid" } },
  { "entry-code-verify.json", "/aifi/entry-code/verify",
    { status = 200, headers = { ["Content-Type"] = "application/json" },
      body = { valid = false, message = "unknown entry code" } },
    -- the shape of AiFi's documented answer, fixtures/responses/entry-code-verify-failed.json
    { status = "FAILED", reason = "unknown entry code", sessionId = json.null,
      customerId = 60417 } },
}
for _, c in ipairs(answering) do
  specs[#specs + 1] = { name = c[1], path = c[2], file = "../../fixtures/" .. c[1], reply = c[3],
                        expect_reply = { status = 200, body = c[4] } }
end
return specs
