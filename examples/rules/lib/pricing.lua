-- cart-mutator: ask the retailer's legacy pricing service for the final prices (it may add
-- lines, such as bottle deposits) and answer AiFi with the cart and its totals as decimal
-- strings ("6.97"), never floats. `local pricing = require("lib.pricing")`; the target
-- "pricing" is in hookrouter.lua.
--
-- The pricing service (scripts/sink.py stands in for it) takes
--   POST <pricing>/price  {"store", "order", "lines": [{"sku", "qty"}]}
-- and answers 200 {"lines": [{"sku", "name", "qty", "unit_price": "0.89"}], "tax": "1.03"}
-- (lines it adds, like deposits, are simply more lines).
local M = {}

-- "6.47" -> 647 (cents, an integer); nil if s is not a plain decimal string.
function M.cents(s)
  if type(s) ~= "string" then return nil end
  local neg, int, frac = s:match("^(%-?)(%d+)%.?(%d*)$")
  if not int or #frac > 2 then return nil end
  local c = math.tointeger(tonumber(int)) * 100 + math.tointeger(tonumber((frac .. "00"):sub(1, 2)))
  return neg == "-" and -c or c
end

-- 647 -> "6.47"
function M.decimal(c)
  local sign = c < 0 and "-" or ""
  c = math.abs(c)
  return string.format("%s%d.%02d", sign, c // 100, c % 100)
end

-- Build AiFi's answer from the pricing service's: every line priced, totals recomputed in
-- integer cents. Returns the answer, or nil and a reason when the answer is unusable.
function M.translate(event, priced)
  if type(priced) ~= "table" or type(priced.lines) ~= "table" then
    return nil, "pricing answer has no lines"
  end
  local cart, total = {}, 0
  for _, l in ipairs(priced.lines) do
    local unit = M.cents(l.unit_price)
    local qty = math.tointeger(l.qty)
    if not unit or not qty then return nil, "bad line from pricing: " .. json.encode(l) end
    total = total + unit * qty
    cart[#cart + 1] = { barcode = l.sku, name = l.name or l.sku, quantity = qty,
                        price = M.decimal(unit) }
  end
  local tax = M.cents(priced.tax) or 0
  local b = event.body
  return {
    orderId = b.orderId,
    status = b.status,
    cart = json.array(cart),
    totalPrice = M.decimal(total),
    totalTax = M.decimal(tax),
    subtotalPrice = M.decimal(total - tax),
    metadata = b.metadata or json.null,
  }
end

-- The whole rule for a cart-mutator event. On any failure it raises, so the endpoint's
-- fallback goes out and the event is dead-lettered for a look.
function M.mutate(event)
  local b = event.body
  local lines = {}
  for _, l in ipairs(b.cart or {}) do
    lines[#lines + 1] = { sku = l.barcode, qty = l.quantity }
  end
  local res, err = request("pricing", {
    store = b.storeExternalId or tostring(b.storeId),
    order = b.orderId,
    lines = json.array(lines),
  }, { path = "/price" })
  if not res then error("pricing service: " .. err) end
  if res.status ~= 200 then error("pricing service answered " .. res.status) end
  local answer, why = M.translate(event, res.body)
  if not answer then error(why) end
  respond(200, answer)
end

return M
