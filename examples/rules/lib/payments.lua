-- checkout (the default checkout webhook, external payment): AiFi waits for the payment
-- status, "paid", "processing" (AiFi is told later, through its Orders API) or "unpaid"
-- (SPEC.md; the answer's field name, paymentStatus, is our assumption).
-- `local payments = require("lib.payments")`; the target "payments" is in hookrouter.lua.
--
-- The legacy payment service takes a form body (application/x-www-form-urlencoded)
--   POST <payments>/charges  order=...&store=...&amount=6.97&currency=EUR
-- with an Idempotency-Key header, and answers 200 {"result": "captured"|"declined"|"pending"}.
local M = {}

local STATUS = { captured = "paid", declined = "unpaid", pending = "processing" }

-- The whole rule for a checkout event. A draft is not charged (events are still pending);
-- a payment service that is down or answers badly gives "processing", never "paid".
function M.checkout(event)
  local b = event.body
  if b.status == "draft" then
    return respond(200, { orderId = b.orderId, paymentStatus = "processing" })
  end
  local res, err = request("payments", url.query({
    order = tostring(b.orderId),
    store = b.storeExternalId or tostring(b.storeId),
    amount = b.totalPrice,               -- a decimal string, passed on as it is
    currency = "EUR",
  }), { path = "/charges", content_type = "application/x-www-form-urlencoded",
        headers = { ["Idempotency-Key"] = event.id } })
  local status = "processing"
  if not res then
    log.warn("payment service unreachable:", err)
  elseif res.status == 200 and type(res.body) == "table" and STATUS[res.body.result] then
    status = STATUS[res.body.result]
  else
    log.warn("payment service answered", res.status)
  end
  respond(200, { orderId = b.orderId, paymentStatus = status })
end

return M
