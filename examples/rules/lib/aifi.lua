-- Helpers shared by the example rules: `local aifi = require("lib.aifi")`.
local M = {}

-- The session id, wherever this sender put it (AiFi SPEC, quirk 2): session.sessionId,
-- then session.sessionToken, then the deprecated top-level sessionId / sessionToken.
function M.session_id(body)
  local s = body.session
  if type(s) == "table" then
    if type(s.sessionId) == "string" then return s.sessionId end
    if type(s.sessionToken) == "string" then return s.sessionToken end
  end
  if type(body.sessionId) == "string" then return body.sessionId end
  if type(body.sessionToken) == "string" then return body.sessionToken end
  return nil
end

-- True for real shoppers; employees, testers and unknown roles are usually filtered out.
function M.is_customer(body)
  local c = body.customer
  return type(c) ~= "table" or c.role == nil or c.role == "customer"
end

return M
