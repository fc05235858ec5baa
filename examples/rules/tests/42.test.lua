-- Store 42 (rules/stores/42.lua): checkout-zone.left goes to the legacy POS, flattened.
-- The POS URL is the config's (hookrouter.lua reads LEGACY_POS_URL), so the spec reads it too.
local pos = os.getenv("LEGACY_POS_URL") or "http://127.0.0.1:9000/legacy"
return {
  { name = "store 42 forwards zone exits to the POS",
    path = "/aifi/checkout-zone/left",
    file = "../../payloads/checkout-zone-left-42.json",
    now = "2026-01-02T03:04:05Z",
    expect = { { action = "forward", target = "legacy_pos", method = "POST",
                 url = pos .. "/zone-exit",
                 headers = { ["X-Store"] = "42", ["X-Api-Key"] = "example-key" },
                 body = { store = "RET-042", event = "left", zone = "7",
                          at = "2025-03-14T17:44:05.061Z" } } },
    expect_reply = { status = 200 } },
  { name = "store 42 drops other event types",
    path = "/aifi/checkout-zone/entered",
    file = "../../payloads/checkout-zone-left-42.json",
    expect = { { action = "drop", reason = "store 42 only takes checkout-zone.left" } } },
}
