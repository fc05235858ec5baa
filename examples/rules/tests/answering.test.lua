-- The rules that answer (README, "Rules that answer"), with the legacy services stubbed:
-- live, down (nil, "connection refused") and slow (delay_ms past the request's timeout_ms).
local PRICED = { status = 200, headers = { ["Content-Type"] = "application/json" }, body = {
  lines = json.array({
    { sku = "4006381333931", name = "Sparkling Water 0.5 L", qty = 2, unit_price = "0.89" },
    { sku = "DEPOSIT-025", name = "Bottle deposit", qty = 2, unit_price = "0.25" },
    { sku = "5000159407236", name = "Chocolate Bar 45 g", qty = 1, unit_price = "1.29" },
    { sku = "4311501650205", name = "Sandwich Chicken Curry", qty = 1, unit_price = "3.40" },
  }),
  tax = "1.11" } }
local DOWN = function() return nil, "connection refused" end
local SLOW = { delay_ms = 60000, status = 200, body = {} }
local JSON = { ["Content-Type"] = "application/json" }

-- A member service that knows the codes starting with EC-.
local function members(target, body, opts)
  local ok = body.code:sub(1, 3) == "EC-"
  return { status = 200, headers = JSON,
           body = { valid = ok, member = ok and { id = 60417 } or nil,
                    session = ok and "cc256d83-a307-483e-b3bf-3740cb925f92" or nil,
                    message = ok and "welcome back" or "unknown entry code" } }
end

local VERIFY_REQUEST = { action = "request", target = "members", method = "POST",
  url = "http://127.0.0.1:9001/members/entry-codes/check",
  body = { code = "EC-4F7K2QXN9D", store = "QM-7731", device = 3, party = 2 } }

return {
  -- entry-code.verify, store 77 (lib/members.lua)
  { name = "verify: a known code opens the gate",
    path = "/aifi/entry-code/verify", file = "../../payloads/entry-code-verify-77.json",
    reply = members,
    expect = { VERIFY_REQUEST },
    expect_reply = { status = 200, body = { status = "SUCCESS", customerId = 60417,
      reason = "welcome back", sessionId = "cc256d83-a307-483e-b3bf-3740cb925f92" } } },
  { name = "verify: an unknown code keeps it shut",
    path = "/aifi/entry-code/verify",
    body = { storeId = 77, storeExternalId = "QM-7731", entryCode = "XX-1", customerId = 5 },
    reply = members,
    expect_reply = { status = 200, body = { status = "FAILED", reason = "unknown entry code",
                                            sessionId = json.null, customerId = 5 } } },
  { name = "verify: member service down",
    path = "/aifi/entry-code/verify", file = "../../payloads/entry-code-verify-77.json",
    reply = DOWN,
    expect = { VERIFY_REQUEST },
    expect_reply = { status = 200, body = { status = "FAILED",
                                            reason = "member service unavailable" } } },
  { name = "verify: member service too slow (its 1000 ms timeout)",
    path = "/aifi/entry-code/verify", file = "../../payloads/entry-code-verify-77.json",
    reply = SLOW,
    expect_reply = { status = 200, body = { status = "FAILED",
                                            reason = "member service unavailable" } } },

  -- cart-mutator and order-price, store 1042 (lib/pricing.lua)
  { name = "cart-mutator: priced by the legacy service, deposits added",
    path = "/aifi/cart-mutator", file = "../../payloads/cart-mutator-1042.json",
    reply = PRICED,
    expect = { { action = "request", target = "pricing", url = "http://127.0.0.1:9002/pricing/price",
                 body = { store = "HB-0381", order = 3307815,
                          lines = { { sku = "4006381333931", qty = 2 },
                                    { sku = "5000159407236", qty = 1 },
                                    { sku = "4311501650205", qty = 1 } } } } },
    expect_reply = { status = 200, body = { orderId = 3307815, totalPrice = "6.97",
      totalTax = "1.11", subtotalPrice = "5.86",
      cart = { {}, { barcode = "DEPOSIT-025", quantity = 2, price = "0.25" }, {}, {} } } } },
  { name = "cart-mutator: pricing down gives the fallback",
    path = "/aifi/cart-mutator", file = "../../payloads/cart-mutator-1042.json",
    reply = DOWN,
    expect_error = "pricing service: connect error",
    expect_reply = { status = 503, body = { error = "retailer pricing unavailable" } } },
  { name = "cart-mutator: pricing too slow gives the fallback",
    path = "/aifi/cart-mutator", file = "../../payloads/cart-mutator-1042.json",
    reply = SLOW,
    expect_error = "timeout: target 'pricing' did not answer within 1500 ms",
    expect_reply = { status = 503 } },
  { name = "order-price: answered like cart-mutator",
    path = "/aifi/order-price", file = "../../fixtures/order-price.json",
    reply = PRICED,
    expect_reply = { status = 200, body = { orderId = 3307815, status = "completed",
                                            totalPrice = "6.97" } } },
  { name = "order-price: pricing down gives the fallback",
    path = "/aifi/order-price", file = "../../fixtures/order-price.json",
    reply = DOWN, expect_error = "connect error",
    expect_reply = { status = 503, body = { error = "retailer pricing unavailable" } } },

  -- checkout, the default checkout webhook (lib/payments.lua)
  { name = "checkout: captured is paid, charged with a form body",
    path = "/aifi/checkout", file = "../../fixtures/checkout-completed.json",
    now = "2026-03-01T12:00:00Z",
    reply = { status = 200, headers = JSON, body = { result = "captured" } },
    expect = { { action = "request", target = "payments",
                 url = "http://127.0.0.1:9003/payments/charges",
                 content_type = "application/x-www-form-urlencoded",
                 body = "amount=6.47&currency=EUR&order=3307815&store=HB-0381" } },
    expect_reply = { status = 200, body = { orderId = 3307815, paymentStatus = "paid" } } },
  { name = "checkout: declined is unpaid",
    path = "/aifi/checkout", file = "../../fixtures/variants/checkout-reviewed.json",
    reply = { status = 200, headers = JSON, body = { result = "declined" } },
    expect_reply = { body = { paymentStatus = "unpaid" } } },
  { name = "checkout: a draft is not charged",
    path = "/aifi/checkout", file = "../../fixtures/checkout-draft.json",
    expect = {},
    expect_reply = { status = 200, body = { paymentStatus = "processing" } } },
  { name = "checkout: payment service down is processing",
    path = "/aifi/checkout", file = "../../fixtures/checkout-completed.json",
    reply = DOWN,
    expect_reply = { status = 200, body = { paymentStatus = "processing" } } },
  { name = "checkout: payment service too slow is processing",
    path = "/aifi/checkout", file = "../../fixtures/variants/large-integers.json",
    reply = SLOW,
    expect_reply = { status = 200, body = { paymentStatus = "processing" } } },
}
