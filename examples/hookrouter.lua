-- hookrouter example config: every AiFi push webhook mapped to an event type.
-- Paths are relative to this file's folder. Try it: see README.md, "Walkthrough".
return {
  listen = os.getenv("HOOKROUTER_LISTEN") or "127.0.0.1:8080",

  -- Bearer tokens AiFi sends (several: rotation). The fallback is for trying it out only.
  tokens = { os.getenv("AIFI_TOKEN") or "dev-token" },

  -- AiFi has no event type in the body: the URL it calls tells the event. The
  -- checkout-zone and transition families are one base URL plus /entered and /left.
  endpoints = {
    ["/aifi/transition/entered"] = "transition.entered",
    ["/aifi/transition/left"] = "transition.left",
    ["/aifi/checkout-zone/entered"] = "checkout-zone.entered",
    ["/aifi/checkout-zone/left"] = "checkout-zone.left",
    -- The default checkout webhook: AiFi waits for the payment status (rules/lib/payments.lua).
    ["/aifi/checkout"] = {
      event = "checkout",
      reply_timeout_ms = 3000,
      -- Not paid, not refused: AiFi gets the outcome later through its Orders API.
      fallback = { status = 200, body = { paymentStatus = "processing" } },
    },
    -- AiFi reads these replies: the rule asks a legacy service and answers (README, "Rules
    -- that answer"). If it has not answered within reply_timeout_ms, or fails, the fallback
    -- goes out at once and the event goes to the dead letters.
    ["/aifi/cart-mutator"] = {
      event = "cart-mutator",
      reply_timeout_ms = 2000,
      -- No safe cart can be made up: say the retailer could not price it.
      fallback = { status = 503, body = { error = "retailer pricing unavailable" } },
    },
    -- The deprecated price calculator, answered like cart-mutator (rules/lib/pricing.lua).
    ["/aifi/order-price"] = {
      event = "order-price",
      reply_timeout_ms = 2000,
      fallback = { status = 503, body = { error = "retailer pricing unavailable" } },
    },
    ["/aifi/entry-code/verify"] = {
      event = "entry-code.verify",
      reply_timeout_ms = 1500,
      -- The gate stays shut when the member service cannot say yes in time.
      fallback = { status = 200, body = { status = "FAILED", reason = "retailer unavailable" } },
    },
    ["/aifi/entry-code/notify"] = "entry-code.notify",
    ["/aifi/customer"] = "customer.created",
    ["/aifi/remote-register"] = "remote-register",
    ["/aifi/tracking"] = "tracking",
    ["/aifi/suspected-fraud"] = "suspected-fraud",
    ["/aifi/identity-matching"] = "identity-matching",
    ["/aifi/planogram-error"] = "planogram-error",
    ["/aifi/restricted-products-interactions"] = "restricted-products-interactions",
  },

  store_key = "storeId",  -- rules/stores/<storeId>.lua runs for that store
  rules = "rules",

  targets = {
    -- Store 42's legacy point-of-sale endpoint (scripts/sink.py 9000 stands in for it).
    legacy_pos = {
      url = os.getenv("LEGACY_POS_URL") or "http://127.0.0.1:9000/legacy",
      headers = { ["X-Api-Key"] = os.getenv("LEGACY_POS_KEY") or "example-key" },
      timeout_ms = 5000,
      -- Waits before attempts 1, 2, 3, ... (+-20% jitter). Short here so the walkthrough shows
      -- a dead letter in seconds; the default is Svix-like: 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h.
      retry_ms = { 0, 500, 1000, 2000, 4000 },
      max_attempts = 5,
    },
    -- Legacy member service asked by store 77's entry-code.verify rule (rules/lib/members.lua).
    members = {
      url = os.getenv("MEMBERS_URL") or "http://127.0.0.1:9001/members",
      headers = { Authorization = "Basic " .. (os.getenv("MEMBERS_AUTH") or "ZXhhbXBsZTpleGFtcGxl") },
      timeout_ms = 1000,
    },
    -- Legacy pricing service asked by the cart-mutator and order-price rules of stores 77 and 1042
    -- (rules/lib/pricing.lua).
    pricing = {
      url = os.getenv("PRICING_URL") or "http://127.0.0.1:9002/pricing",
      timeout_ms = 1500,
    },
    -- Legacy payment service asked by the checkout rules of stores 77 and 1042
    -- (rules/lib/payments.lua); it takes form bodies.
    payments = {
      url = os.getenv("PAYMENTS_URL") or "http://127.0.0.1:9003/payments",
      timeout_ms = 2000,
    },
  },

  files = {
    audit = { path = "var/audit.jsonl" },
    crm = { path = "var/crm-1042.jsonl" },
  },
  dead_letters = "var/dead-letters.jsonl",

  -- Every event is in this spool, fsync'd, before AiFi gets its 200 (see docs/ARCHITECTURE.md).
  spool_dir = "var/spool",
  fsync = "always",

  log = { level = "info" },
}
