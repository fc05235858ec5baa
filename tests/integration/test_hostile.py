"""Hostile rules at the daemon level (issue 8): a rule that attacks the sandbox fails alone,
with a 500 and a dead letter naming why, while other stores keep being served; top-level code
that never finishes fails a reload and `check`, not the router."""
import json
import os
import re
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


class VictimMixin:
    def victim_ok(self, r):
        before = len(self.wd.jsonl("var/audit.jsonl"))
        self.assertOk(r.post("/t", {"storeId": 2}))
        got = wait_until(lambda: len(self.wd.jsonl("var/audit.jsonl")) > before and self.wd.jsonl("var/audit.jsonl"))
        self.assertTrue(got, "no audit line for the victim store")
        self.assertEqual(got[-1], {"store": "2", "s": "7-OK"})


class HostileTest(VictimMixin, HRTestCase):
    def start(self):
        self.wd.rule("1", HOSTILE)
        self.wd.rule("2", VICTIM)
        snk = self.sink()
        cfg = base_config(targets={"pos": target(snk.url)},
                          limits={"rule_instructions": 1000000, "rule_memory_bytes": 16 << 20})
        return self.router(cfg)

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
        m = r.wait_log(r"reload failed error=[^\n]*", 10)
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
        r = self.router(base_config(limits={"state_memory_bytes": 8 << 20}, workers=1))
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
        self.wd.config(base_config(endpoints=eps, workers=1))  # "once per rule": per worker
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


LOOP = "while true do end\n"
HOG = "local t = {} for i = 1, 1e9 do t[i] = i end\n"
# The hog meets the 8 MiB cap after ~2M instructions, long before this budget, which a loop
# still spends in well under a second (a few under ASan or valgrind).
LIMITS = {"rule_instructions": 50000000, "rule_memory_bytes": 8 << 20}
BUDGET = r"top-level code exceeded its instruction budget \(limits\.rule_instructions = 50000000\)"
MEMORY = r"top-level code exceeded its memory limit \(limits\.rule_memory_bytes = 8388608\)"
TRACE = r"\\nstack traceback:\\n"  # the traceback's newlines, escaped on the one log line

# (what, files to write, what the error says): top-level code that never finishes loading.
TOP_LEVEL_CASES = [
    ("rule-loop", {"rules/stores/3.lua": LOOP + VICTIM},
     r"rules/stores/3\.lua:1: " + BUDGET),
    ("module-loop", {"rules/lib/spin.lua": LOOP + "return {}\n",
                     "rules/stores/3.lua": "local spin = require('lib.spin')\n" + VICTIM},
     r"rules/lib/spin\.lua:1: " + BUDGET),
    ("rule-hog", {"rules/stores/3.lua": HOG + VICTIM}, r"rules/stores/3\.lua: " + MEMORY),
    ("module-hog", {"rules/lib/hog.lua": HOG + "return {}\n",
                    "rules/stores/3.lua": "local hog = require('lib.hog')\n" + VICTIM},
     r"rules/stores/3\.lua: " + MEMORY),  # a memory error has no position: the file loading
    ("config-loop", {"hookrouter.lua": LOOP + "return " + lua(base_config(limits=LIMITS, workers=1)) + "\n"},
     r"hookrouter\.lua:1: the config's code exceeded its instruction budget"),
]


class TopLevelCodeTest(VictimMixin, HRTestCase):
    """Top-level code of rule files, of the modules they require and of the config runs under
    an instruction budget and the memory cap: on SIGHUP a file that never finishes loading is
    a `reload failed:` line and the old rules keep serving; at start `run` and `check` fail
    with the same error, quickly."""

    def good(self):
        self.wd.rule("2", VICTIM)
        self.wd.rule("3", VICTIM)
        self.wd.config(base_config(limits=LIMITS, workers=1))  # one reload line per worker

    def write(self, files):
        for rel, text in files.items():
            self.wd.write(rel, text)

    def test_sighup_keeps_the_old_rules(self):
        self.good()
        r = self.router()
        self.victim_ok(r)
        for i, (what, files, why) in enumerate(TOP_LEVEL_CASES):
            with self.subTest(what):
                self.good()
                self.write(files)
                t0 = time.monotonic()
                r.hup()
                self.assertTrue(wait_until(lambda: r.count_log(r"reload failed error=") > i, 10),
                                "%s: no 'reload failed:' line:\n%s" % (what, r.log_tail()))
                self.assertLess(time.monotonic() - t0, T(5), "%s held the reload" % what)
                lines = re.findall(r"reload failed error=[^\n]*", r.log())
                self.assertRegex(lines[i], why, what)
                self.victim_ok(r)  # the old rules keep serving
                h = r.healthz()
                self.assertEqual(h["reloads"], 0, h)
                self.assertRegex(h["last_reload_error"], why, what)
        # the budgets' errors raised in Lua carry a traceback, on the same log line
        lines = re.findall(r"reload failed error=[^\n]*", r.log())
        self.assertRegex(lines[1], TRACE + r"[^\n]*rules/stores/3\.lua:1: in main chunk")
        self.good()
        r.hup()
        self.assertTrue(r.wait_log(r"(?<!\w)reloaded", 5), r.log_tail())
        self.victim_ok(r)
        self.assertTrue(r.alive())

    def test_start_fails_with_the_error(self):
        for what, files, why in TOP_LEVEL_CASES:
            with self.subTest(what):
                self.good()
                self.write(files)
                t0 = time.monotonic()
                res = run_cli(["check", "-c", "hookrouter.lua"], cwd=self.wd.path, timeout=10)
                self.assertEqual(res.returncode, 1, what + ": " + res.stdout + res.stderr)
                self.assertRegex(res.stderr, why, what)
                r = Router(self.wd, start=False)
                r.start(wait=False)
                code = r.wait_exit(10)
                if code is None:
                    r.kill()
                self.assertNotIn(code, (None, 0), "%s: run did not fail:\n%s" % (what, r.log_tail()))
                self.assertRegex(r.log(), why, what)
                self.assertNotRegex(r.log(), r"listening on", what)
                self.assertLess(time.monotonic() - t0, T(10), what)

    def test_an_event_error_carries_its_traceback(self):
        self.wd.write("rules/lib/boom.lua", "local M = {}\nfunction M.go(e)\n  error('kaboom ' .. e.store)\nend\nreturn M\n")
        self.wd.rule("4", "local boom = require('lib.boom')\nreturn function(e)\n  boom.go(e)\nend\n")
        self.wd.config(base_config())
        r = self.router()
        self.assertEqual(r.post("/t", {"storeId": 4}).status, 500)
        self.assertTrue(wait_until(lambda: self.wd.dead_letters, 5), r.log_tail())
        err = self.wd.dead_letters[0]["error"]
        first, _, rest = err.partition("\n")
        self.assertRegex(first, r"rules/lib/boom\.lua:3: kaboom 4$")
        self.assertRegex(rest, r"^stack traceback:\n")
        self.assertRegex(rest, r"rules/lib/boom\.lua:3: in field 'go'")
        self.assertRegex(rest, r"rules/stores/4\.lua:3: in function <")
        m = r.wait_log(r"rule failed [^\n]*", 5)
        self.assertTrue(m, r.log_tail())
        self.assertRegex(m.group(0), r"kaboom 4" + TRACE + r"[^\n]*boom\.lua:3: in field 'go'")


if __name__ == "__main__":
    main()
