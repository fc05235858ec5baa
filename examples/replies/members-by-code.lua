-- A --reply stub that answers like the member service: codes starting with "EC-" are valid.
return function(target, body, opts)
  if target ~= "members" then return { status = 404, body = "no such service" } end
  local ok = body.code:sub(1, 3) == "EC-"
  return {
    status = 200,
    headers = { ["Content-Type"] = "application/json" },
    body = { valid = ok, member = ok and { id = 60417 } or nil,
             message = ok and "welcome" or "unknown entry code" },
  }
end
