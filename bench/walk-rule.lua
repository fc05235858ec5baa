-- The reference rule (../shared/bench/rules/store42.lua) after a walk that reads every value
-- of the body: scripts/bench-callgrind's "walk" case, the worst case of a lazy or one-pass
-- decode (every table, string and number of the event is touched once).
local function walk(v)
  local n = 0
  if type(v) == "table" then
    for _, x in pairs(v) do
      n = n + walk(x)
    end
  end
  return n + 1
end

local KEEP = { [42] = true, ["42"] = true }

return function(event)
  if walk(event) < 2 or not KEEP[event.storeId] then
    return nil
  end
  local customer = event.customer
  return {
    store = event.storeExternalId,
    session = event.sessionId,
    customer = type(customer) == "table" and customer.externalId or nil,
    event = "left",
    at = event.timeOfOrigin,
  }
end
