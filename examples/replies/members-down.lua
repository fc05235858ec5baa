-- A --reply stub: the member service is down (request() gets nil, "connect error: ...").
return function(target, body, opts)
  return nil, "connection refused"
end
