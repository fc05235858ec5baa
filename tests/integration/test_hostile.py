"""Hostile rules at the daemon level (issue 8): a rule that attacks the sandbox fails alone,
with a 500 and a dead letter naming why, while other stores keep being served; top-level code
that never finishes fails a reload and `check`, not the router."""
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hrtest import *  # noqa: E402,F401,F403

HOSTILE = """
local big = string.rep("x", 1 << 20)
return function(event)
  local k = event.body.kind
  if k == "gc" then
    setmetatable({}, { __gc = function() json.decode("[1,2,3]") end })
  elseif k == "close-loop" then
    local x <close> = setmetatable({}, { __close = function() while true do end end })
    error("boom")
  elseif k == "encode-bomb" then
    local t = {} for i = 1, 5000 do t[i] = big end
    forward("pos", t)
  elseif k == "actions" then
    for i = 1, 100000 do write("audit", "x") end
  elseif k == "tamper" then
    rawset(string, "format", function() return "evil" end)
    getmetatable("").__index.format = nil
  end
end
"""

VICTIM = ('return function(e) write("audit", { store = e.store, s = string.format("%d-%s", 7, '
          '("ok"):upper()) }) end\n')


class HostileTest(HRTestCase):
    def start(self):
        self.wd.rule("1", HOSTILE)
        self.wd.rule("2", VICTIM)
        snk = self.sink()
        cfg = base_config(targets={"pos": target(snk.url)},
                          limits={"rule_instructions": 1000000, "rule_memory_bytes": 16 << 20})
        return self.router(cfg)

    def victim_ok(self, r):
        before = len(self.wd.jsonl("var/audit.jsonl"))
        self.assertOk(r.post("/t", {"storeId": 2}))
        got = wait_until(lambda: len(self.wd.jsonl("var/audit.jsonl")) > before and self.wd.jsonl("var/audit.jsonl"))
        self.assertTrue(got, "no audit line for the victim store")
        self.assertEqual(got[-1], {"store": "2", "s": "7-OK"})

    def test_each_attack_fails_alone_with_a_dead_letter(self):
        r = self.start()
        cases = [("gc", r"__gc is not allowed"), ("close-loop", r"boom"),
                 ("encode-bomb", r"memory limit"), ("actions", r"limits\.actions_per_event = 100"),
                 ("tamper", r"attempt to index")]
        for i, (kind, why) in enumerate(cases):
            resp = r.post("/t", {"storeId": 1, "kind": kind}, timeout=10)
            self.assertEqual(resp.status, 500, "%s: %r" % (kind, resp))
            self.assertTrue(wait_until(lambda: len(self.wd.dead_letters) > i, 5), kind)
            d = self.wd.dead_letters[i]
            self.assertEqual(d["event"]["store"], "1")
            self.assertRegex(d["error"], why, kind)
            self.victim_ok(r)
        self.assertEqual(len(self.wd.jsonl("var/audit.jsonl")), len(cases),
                         "the hostile store's failed runs must leave no actions")
        self.assertTrue(r.alive())

    def test_other_stores_are_served_while_attacks_run(self):
        r = self.start()
        stop = threading.Event()
        errors = []

        def attack():
            while not stop.is_set():
                try:
                    st = post(r.port, "/t", {"storeId": 1, "kind": "close-loop"}, timeout=10).status
                    if st != 500:
                        errors.append(st)
                except Exception as e:  # noqa: BLE001
                    errors.append(repr(e))
        t = threading.Thread(target=attack)
        t.start()
        try:
            for _ in range(20):
                self.victim_ok(r)
        finally:
            stop.set()
            t.join(T(20))
        self.assertEqual(errors, [])

    def test_top_level_loop_fails_reload_and_check(self):
        r = self.start()
        self.victim_ok(r)
        self.wd.rule("2", "while true do end\n" + VICTIM)
        t0 = time.monotonic()
        r.hup()
        m = r.wait_log(r"reload failed: [^\n]*", 10)
        self.assertTrue(m, "no 'reload failed:' line:\n" + r.log_tail())
        self.assertLess(time.monotonic() - t0, T(3), "the looping rule file held the reload")
        self.assertRegex(m.group(0), r"rules/stores/2\.lua:1: top-level code exceeded its instruction budget")
        self.victim_ok(r)  # the old rules keep serving
        res = run_cli(["check", "-c", "hookrouter.lua"], cwd=self.wd.path, timeout=10)
        self.assertEqual(res.returncode, 1, res.stdout + res.stderr)
        self.assertIn("top-level code exceeded its instruction budget", res.stdout + res.stderr)

    def test_state_memory_cap_rebuilds_the_rules(self):
        self.wd.rule("3", "local cache = {}\nreturn function(e)\n"
                          "  cache[#cache + 1] = string.rep('x', 1 << 20) .. #cache\n"
                          "  write('audit', { n = #cache })\nend\n")
        self.wd.rule("2", VICTIM)
        r = self.router(base_config(limits={"state_memory_bytes": 8 << 20}))
        statuses = [r.post("/t", {"storeId": 3}).status for _ in range(12)]
        self.assertIn(500, statuses, statuses)
        first = statuses.index(500)
        self.assertTrue(all(s == 200 for s in statuses[:first]), statuses)
        d = [x for x in self.wd.dead_letters if (x.get("event") or {}).get("store") == "3"]
        self.assertTrue(d)
        self.assertIn("limits.state_memory_bytes", d[0]["error"])
        self.assertTrue(r.wait_log(r"reloaded", 5), "the rules were not rebuilt:\n" + r.log_tail())
        # the rebuilt state starts clean: its cache counts from 1 again
        ones = lambda: [x for x in self.wd.jsonl("var/audit.jsonl") if x == {"n": 1}]  # noqa: E731
        self.assertTrue(wait_until(lambda: len(ones()) >= 2, 5), self.wd.jsonl("var/audit.jsonl"))
        self.victim_ok(r)



class FailClosedTest(HRTestCase):
    """Issue 9's rule-side items: answers fail closed, event data cannot steer a request,
    the sender's credential never reaches a rule."""

    def test_answering_endpoint_without_respond_gets_the_fallback(self):
        self.wd.rule("5", 'return function(e) write("audit", { seen = e.type }) end\n')
        self.wd.rule("6", 'return function(e) respond(200, { ok = true }) end\n')
        eps = dict(ENDPOINTS)
        eps["/verify"] = {"event": "entry-code.verify", "reply_timeout_ms": 2000,
                          "fallback": {"status": 200, "body": {"status": "FAILED"}}}
        self.wd.config(base_config(endpoints=eps))
        res = run_cli(["check", "-c", "hookrouter.lua"], cwd=self.wd.path)
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertRegex(res.stderr, r"warning: \S*rules/stores/5\.lua never calls respond\(\)")
        self.assertNotIn("stores/6.lua", res.stderr)
        r = self.router()
        for _ in range(3):
            resp = r.post("/verify", {"storeId": 5})
            self.assertEqual((resp.status, resp.json()), (200, {"status": "FAILED"}))
        self.assertEqual(r.post("/verify", {"storeId": 6}).json(), {"ok": True})
        self.assertEqual(r.count_log(r"returned without respond\(\)"), 1, r.log_tail())
        # the rule's actions still count: it ran and returned normally
        self.assertTrue(wait_until(lambda: len(self.wd.jsonl("var/audit.jsonl")) == 3))

    def test_event_data_cannot_change_the_target_host(self):
        snk = self.sink()
        self.wd.rule(None, 'return function(e) forward("pos", {}, { path = e.body.p }) end\n')
        self.wd.config(base_config(targets={"pos": target(snk.url)}))
        r = self.router()
        for p in [".attacker.example/x", "@attacker.example/x", "x", "\\\\evil/x"]:
            self.assertEqual(r.post("/t", {"p": p}).status, 500, p)
        self.assertOk(r.post("/t", {"p": "/ok"}))
        self.assertEqual(snk.wait_for(1)[0].path, "/ok")
        self.assertIn("opts.path must start with '/'", self.wd.dead_letters[0]["error"])

    def test_rules_never_see_the_senders_token(self):
        self.wd.rule(None, 'return function(e) write("audit", { h = e.headers, a = e.authenticated, '
                           't = e.token }) end\n')
        self.wd.config(base_config(tokens=["other-token", TOKEN]))
        r = self.router()
        self.assertOk(r.post("/t", {}))
        got = wait_until(lambda: self.wd.jsonl("var/audit.jsonl"))
        self.assertTrue(got)
        self.assertNotIn("authorization", got[0]["h"])
        self.assertNotIn(TOKEN, json.dumps(got[0]))
        self.assertEqual((got[0]["a"], got[0]["t"]), (True, 2))


if __name__ == "__main__":
    main()
