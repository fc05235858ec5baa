-- entry-code.verify: ask the retailer's legacy member service whether this QR code may open
-- the gate, and answer AiFi in its own shape: {status, reason, sessionId, customerId}.
-- `local members = require("lib.members")`; the target "members" is in hookrouter.lua.
--
-- The member service (scripts/sink.py stands in for it) takes
--   POST <members>/entry-codes/check  {"code", "store", "device", "party"}
-- and answers 200 {"valid": true|false, "member": {"id": 60417, ...}, "session": "<uuid>",
-- "message": "..."}.
local M = {}

-- Turn the member service's answer (or its failure) into AiFi's verify answer.
function M.translate(event, res, err)
  local b = event.body
  local fallback_customer = b.customerId
  if fallback_customer == nil then fallback_customer = json.null end
  if not res then
    log.warn("member service unreachable:", err)
    return { status = "FAILED", reason = "member service unavailable", sessionId = json.null,
             customerId = fallback_customer }
  end
  if res.status ~= 200 or type(res.body) ~= "table" then
    log.warn("member service answered", res.status)
    return { status = "FAILED", reason = "member service error " .. res.status,
             sessionId = json.null, customerId = fallback_customer }
  end
  local m = res.body
  local member = type(m.member) == "table" and m.member or {}
  return {
    status = m.valid == true and "SUCCESS" or "FAILED",
    reason = m.message or (m.valid and "ok" or "entry code rejected"),
    sessionId = type(m.session) == "string" and m.session or json.null,
    customerId = math.tointeger(member.id) or fallback_customer,
  }
end

-- The whole rule for an entry-code.verify event.
function M.verify(event)
  local b = event.body
  local res, err = request("members", {
    code = b.entryCode,
    store = b.storeExternalId or tostring(b.storeId),
    device = b.checkInDeviceId or json.null,
    party = b.groupSize or b.expectedGroupSize or 1,
  }, { path = "/entry-codes/check", timeout_ms = 1000 })
  respond(200, M.translate(event, res, err))
end

return M
