"""Rule sandbox and failures: runaway, memory hog, errors, globals, require, json."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hrtest import *  # noqa: E402,F401,F403

RULES = {
    "loop": "return function(event)\n  while true do end\nend\n",
    "loop2": "return function(event)\n  local i = 0\n  repeat i = i + 1 until false\nend\n",
    "mem": ("return function(event)\n  local t = {}\n  for i = 1, 100000000 do\n"
            "    t[i] = string.rep(\"x\", 1000) .. i\n  end\nend\n"),
    "mem2": "return function(event)\n  local s = \"x\"\n  while true do s = s .. s end\nend\n",
    "err": "return function(event)\n  local x = 1\n  error(\"boom from rule \" .. event.store)\nend\n",
    "nilidx": "return function(event)\n  return event.body.nope.deeper\nend\n",
    "badtarget": "return function(event)\n  local t = event.body.go\n  forward(t, {})\nend\n",
    "badarg": "return function(event)\n  write(\"audit\", function() end)\nend\n",
    "errtable": "return function(event)\n  error({ code = 7 })\nend\n",
}

DEFAULT = 'return function(e) write("audit", { ok = true, store = e.store }) end\n'


class RulesTest(HRTestCase):
    def start(self, limits=None, extra_rules=None, **cfg):
        self.wd.rule(None, DEFAULT)
        for k, v in RULES.items():
            self.wd.rule(k, v)
        for k, v in (extra_rules or {}).items():
            self.wd.rule(k, v)
        lim = {"rule_instructions": 1000000, "rule_memory_bytes": 16 * 1024 * 1024}
        lim.update(limits or {})
        return self.router(base_config(limits=lim, **cfg))

    def dead_for(self, store, timeout=5):
        def find():
            return [d for d in self.wd.dead_letters if (d.get("event") or {}).get("store") == store]
        got = wait_until(find, timeout)
        self.assertTrue(got, "no dead letter for store %r; dead letters: %r" % (store, self.wd.dead_letters))
        return got

    def check_rule_failed(self, r, store, raw, err_pattern, max_s=3.0):
        t0 = time.monotonic()
        resp = r.post("/t", raw, timeout=10)
        dt = time.monotonic() - t0
        self.assertEqual(resp.status, 500, "store %s: %r" % (store, resp))
        self.assertLess(dt, T(max_s), "store %s took %.2fs to fail" % (store, dt))
        d = self.dead_for(store)[-1]
        self.assertEqual(d.get("reason"), "rule failed", d)
        self.assertIsInstance(d.get("error"), str, d)
        self.assertRegex(d["error"], err_pattern)
        ev = d.get("event") or {}
        self.assertIsInstance(ev.get("id"), str)
        self.assertTrue(ev["id"])
        self.assertEqual(ev.get("type"), "test.event")
        self.assertEqual(ev.get("store"), store)
        self.assertEqual(ev.get("method"), "POST")
        self.assertEqual(ev.get("path"), "/t")
        self.assertIsInstance(ev.get("received_at"), str)
        self.assertEqual(d.get("raw_body"), raw.decode("utf-8"), "raw_body must be the body as sent")
        # and the router still serves, quickly
        t0 = time.monotonic()
        self.assertOk(r.post("/t", {"storeId": "fine"}), "after %s" % store)
        self.assertLess(time.monotonic() - t0, T(1.0))
        return d

    def test_runaway_rule(self):
        r = self.start()
        self.check_rule_failed(r, "loop", b'{"storeId": "loop",   "x": [1, 2]}', r"(?i)instruction")
        self.check_rule_failed(r, "loop2", b'{"storeId":"loop2"}', r"(?i)instruction")
        self.assertTrue(r.alive())

    def test_runaway_rule_repeatedly(self):
        r = self.start()
        for i in range(5):
            resp = r.post("/t", {"storeId": "loop", "i": i}, timeout=10)
            self.assertEqual(resp.status, 500)
        wait_until(lambda: len(self.dead_for("loop")) >= 5, 3)  # written through the outbox
        self.assertEqual(len(self.dead_for("loop")), 5)
        self.assertEqual(r.healthz()["status"], "ok")

    def test_memory_hog(self):
        r = self.start(limits={"rule_instructions": 500000000, "rule_memory_bytes": 8 * 1024 * 1024})
        self.check_rule_failed(r, "mem", b'{"storeId":"mem"}', r"(?i)memory", max_s=10)
        self.check_rule_failed(r, "mem2", b'{"storeId":"mem2"}', r"(?i)memory", max_s=10)
        # the state is usable after memory errors
        for i in range(5):
            self.assertOk(r.post("/t", {"storeId": "fine", "i": i}))

    def test_rule_error(self):
        r = self.start()
        raw = b'{"storeId": "err",\n "keep":  "exactly  this"}'
        d = self.check_rule_failed(r, "err", raw, r"boom from rule err")
        self.assertRegex(d["error"], r"err\.lua:3:", "error should carry path:line")
        self.assertTrue(r.wait_log(r"boom from rule err", 2), "rule error not logged:\n" + r.log_tail())

    def test_runtime_errors(self):
        r = self.start()
        self.check_rule_failed(r, "nilidx", b'{"storeId":"nilidx"}', r"(?i)index|nil")
        self.check_rule_failed(r, "badtarget", b'{"storeId":"badtarget","go":"nope"}', r"nope")
        self.check_rule_failed(r, "badarg", b'{"storeId":"badarg"}', r".")
        self.check_rule_failed(r, "errtable", b'{"storeId":"errtable"}', r".")

    def test_failed_rule_actions_are_not_delivered(self):
        snk = self.sink()
        rule = 'return function(e)\n  forward("pos", { n = 1 })\n  write("audit", { partial = true })\n  error("late")\nend\n'
        r = self.start(extra_rules={"partial": rule}, targets={"pos": target(snk.url)})
        resp = r.post("/t", {"storeId": "partial"})
        self.assertEqual(resp.status, 500)
        self.dead_for("partial")
        time.sleep(0.3)
        self.assertEqual(snk.count(), 0, "a failed rule's forward was delivered anyway")
        self.assertEqual(self.wd.jsonl("var/audit.jsonl"), [], "a failed rule's write was done anyway")

    def test_sandbox(self):
        probe = r'''
return function(event)
  local function t(v) return type(v) end
  local ok_req = pcall(require, "secret")
  write("audit", {
    io = t(io), os_execute = t(os.execute), os_exit = t(os.exit), os_remove = t(os.remove),
    os_rename = t(os.rename), os_tmpname = t(os.tmpname), loadfile = t(loadfile), dofile = t(dofile),
    os_time = t(os.time), os_date = t(os.date), os_clock = t(os.clock), os_getenv = t(os.getenv),
    string = t(string), table = t(table), math = t(math), utf8 = t(utf8),
    forward = t(forward), write = t(write), drop = t(drop), log = t(log), json = t(json),
    require = t(require), package_loadlib = t(package and package.loadlib),
    secret_required = ok_req,
    integer = math.type(event.body.n + 1), n1 = event.body.n + 1,
  })
end
'''
        self.wd.write("secret.lua", 'return "LEAKED"\n')  # in the config folder = the router's cwd
        r = self.start(extra_rules={"probe": probe})
        self.assertOk(r.post("/t", {"storeId": "probe", "n": 9007199254740993}))
        a = wait_until(lambda: self.wd.jsonl("var/audit.jsonl"))
        self.assertTrue(a, "probe rule wrote nothing; dead letters: %r" % self.wd.dead_letters)
        a = a[0]
        for k in ("io", "os_execute", "os_exit", "os_remove", "os_rename", "os_tmpname", "loadfile",
                  "dofile", "package_loadlib"):
            self.assertEqual(a.get(k), "nil", "%s is reachable in a rule: %r" % (k, a))
        for k in ("os_time", "os_date", "os_clock", "os_getenv", "forward", "write", "drop", "require"):
            self.assertEqual(a.get(k), "function", "%s: %r" % (k, a))
        for k in ("string", "table", "math", "utf8", "log", "json"):
            self.assertEqual(a.get(k), "table", "%s: %r" % (k, a))
        self.assertIs(a.get("secret_required"), False, "require loaded a module outside the rules folder")
        self.assertEqual(a.get("integer"), "integer")
        self.assertEqual(a.get("n1"), 9007199254740994)

    def test_string_dump_load_bytecode_blocked(self):
        """load() of precompiled bytecode would bypass the sandbox: it must fail."""
        probe = r'''
return function(event)
  local ok = false
  if load and string.dump then
    local f = function() return 1 end
    local okd, bc = pcall(string.dump, f)
    if okd then ok = pcall(load, bc, "x", "b") and load(bc, "x", "b") ~= nil end
  end
  write("audit", { bytecode_loaded = ok })
end
'''
        r = self.start(extra_rules={"bc": probe})
        self.assertOk(r.post("/t", {"storeId": "bc"}))
        a = wait_until(lambda: self.wd.jsonl("var/audit.jsonl"))
        self.assertTrue(a, self.wd.dead_letters)
        self.assertIs(a[0].get("bytecode_loaded"), False, "binary chunks can be loaded in a rule")

    def test_require_from_rules_folder(self):
        self.wd.write("rules/util.lua", 'local M = {}\nfunction M.shout(s) return string.upper(s) .. "!" end\nreturn M\n')
        rule = 'local util = require("util")\nreturn function(e) write("audit", { v = util.shout(e.body.s) }) end\n'
        r = self.start(extra_rules={"req": rule})
        self.assertOk(r.post("/t", {"storeId": "req", "s": "hi"}))
        a = wait_until(lambda: self.wd.jsonl("var/audit.jsonl"))
        self.assertTrue(a, "dead letters: %r; log:\n%s" % (self.wd.dead_letters, r.log_tail()))
        self.assertEqual(a[0], {"v": "HI!"})

    def test_require_dotted_module(self):
        """Guess: require("lib.fmt") maps to rules/lib/fmt.lua as in standard Lua."""
        self.wd.write("rules/lib/fmt.lua", 'return { tag = function(s) return "<" .. s .. ">" end }\n')
        rule = 'local fmt = require("lib.fmt")\nreturn function(e) write("audit", { v = fmt.tag("x") }) end\n'
        r = self.start(extra_rules={"req2": rule})
        self.assertOk(r.post("/t", {"storeId": "req2"}))
        a = wait_until(lambda: self.wd.jsonl("var/audit.jsonl"))
        self.assertTrue(a, "dead letters: %r" % self.wd.dead_letters)
        self.assertEqual(a[0], {"v": "<x>"})

    def test_json_null_and_helpers(self):
        snk = self.sink()
        rule = r'''
return function(event)
  local b = event.body
  forward("pos", b)
  local ok_mixed = pcall(json.encode, { 1, 2, a = 3 })
  local ok_nan = pcall(json.encode, { x = 0/0 })
  local cyc = {}; cyc.self = cyc
  local ok_cycle = pcall(json.encode, cyc)
  write("audit", {
    a_is_null = (b.a == json.null),
    arr2_is_null = (b.arr[2] == json.null),
    arr_len = #b.arr,
    roundtrip = json.encode(json.decode('{"x":[],"y":{},"z":null,"f":1.0,"i":7}')),
    empty_array = json.encode(json.array({})),
    decoded_int = math.type(json.decode("42")),
    ok_mixed = ok_mixed, ok_nan = ok_nan, ok_cycle = ok_cycle,
  })
end
'''
        r = self.start(extra_rules={"js": rule}, targets={"pos": target(snk.url)})
        raw = b'{"storeId":"js","a":null,"arr":[1,null,3,null],"o":{"n":null},"e":[],"eo":{}}'
        self.assertOk(r.post("/t", raw))
        q = snk.wait_for(1)[0]
        self.assertEqual(q.typed(), typed_json(raw), "null/[]/{} did not survive: %r" % q.body)
        a = wait_until(lambda: self.wd.jsonl("var/audit.jsonl"))
        self.assertTrue(a, self.wd.dead_letters)
        a = a[0]
        self.assertIs(a["a_is_null"], True)
        self.assertIs(a["arr2_is_null"], True)
        self.assertEqual(a["arr_len"], 4)
        self.assertEqual(typed_json(a["roundtrip"]), typed_json('{"x":[],"y":{},"z":null,"f":1.0,"i":7}'),
                         "json.encode(json.decode(...)) = %r" % a["roundtrip"])
        self.assertEqual(a["empty_array"], "[]")
        self.assertEqual(a["decoded_int"], "integer")
        self.assertIs(a["ok_mixed"], False, "encoding a mixed table must be an error")
        self.assertIs(a["ok_nan"], False, "encoding NaN must be an error")
        self.assertIs(a["ok_cycle"], False, "encoding a cycle must be an error")

    def test_event_fields(self):
        rule = r'''
return function(e)
  local hs = {}
  for k, _ in pairs(e.headers) do hs[#hs + 1] = k end
  table.sort(hs)
  write("audit", { id = e.id, type = e.type, store = e.store, method = e.method, path = e.path,
                   received_at = e.received_at, x = e.headers["x-mixed-case"],
                   auth_seen = e.headers["authorization"] ~= nil, header_names = hs })
end
'''
        r = self.start(extra_rules={"ev": rule})
        eid = self.assertOk(r.post("/t", {"storeId": "ev"}, headers={"X-Mixed-Case": "Val"}))
        a = wait_until(lambda: self.wd.jsonl("var/audit.jsonl"))
        self.assertTrue(a, self.wd.dead_letters)
        a = a[0]
        self.assertEqual(a["id"], eid)
        self.assertEqual(a["type"], "test.event")
        self.assertEqual(a["store"], "ev")
        self.assertEqual(a["method"], "POST")
        self.assertEqual(a["path"], "/t")
        self.assertRegex(a["received_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
        self.assertEqual(a["x"], "Val")
        for h in a["header_names"]:
            self.assertEqual(h, h.lower(), "header names must be lower-case: %r" % a["header_names"])

    def test_log_from_rule(self):
        rule = 'return function(e)\n  log.info("rule says", "hello", 42)\n  log.warn("careful")\nend\n'
        r = self.start(extra_rules={"lg": rule})
        self.assertOk(r.post("/t", {"storeId": "lg"}))
        self.assertTrue(r.wait_log(r"rule says\s+hello\s+42", 3), r.log_tail())
        self.assertTrue(r.wait_log(r"careful", 3))

    def test_globals_do_not_leak_between_events(self):
        """Guess: each call runs in its own coroutine in the same state; a rule's file-level locals
        persist, but a rule cannot break the sandbox for the next event by overwriting forward."""
        rule = ('return function(e)\n  if e.body.evil then forward = nil; write = nil; return end\n'
                '  write("audit", { ok = true })\nend\n')
        r = self.start(extra_rules={"evil": rule})
        r.post("/t", {"storeId": "evil", "evil": True})
        self.assertOk(r.post("/t", {"storeId": "fine"}))
        a = wait_until(lambda: self.wd.jsonl("var/audit.jsonl"))
        self.assertTrue(a, "after a rule set write = nil, the default rule could not write: %r"
                        % self.wd.dead_letters)


if __name__ == "__main__":
    main()
