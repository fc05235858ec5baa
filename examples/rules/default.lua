-- Every store without a rule of its own: keep an audit trail of every event, unchanged.
return function(event)
  write("audit", {
    id = event.id,
    type = event.type,
    store = event.store or json.null,
    received_at = event.received_at,
    body = event.body,
  })
end
