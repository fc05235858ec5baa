"""End to end: AiFi fixture -> router -> per-store Lua rule -> sink / audit file."""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hrtest import *  # noqa: E402,F401,F403

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")

RULE_77 = r'''
-- store 77: checkout-zone.left goes to the legacy POS in a flat shape
return function(event)
  if event.type == "checkout-zone.left" then
    local b = event.body
    local s = b.session
    forward("pos", {
      store = event.store,
      zone = tostring(b.checkoutZoneId),
      session = (s and s.sessionId) or b.sessionId,
      customer = b.customer.id,
      group = s and s.groupSize or 1,
      left_at = b.timeOfOrigin,
      event_id = event.id,
      event_type = event.type,
      method = event.method,
      path = event.path,
      test_header = event.headers["x-test-header"],
    }, { path = "/legacy/zone-left", headers = { ["X-Legacy"] = "yes", ["X-Store"] = event.store } })
  end
  write("audit", { rule = "77", id = event.id, type = event.type, store = event.store,
                   received_at = event.received_at })
end
'''

RULE_DEFAULT_AUDIT = r'''
return function(event)
  write("audit", { rule = "default", id = event.id, type = event.type, store = event.store,
                   received_at = event.received_at })
end
'''

RULE_ECHO = r'''
-- forward every body unchanged, as a table
return function(event)
  forward("echo", event.body, { path = "/echo" })
end
'''


class PipelineTest(HRTestCase):
    def start(self, default_rule=RULE_DEFAULT_AUDIT, **cfg):
        self.snk = self.sink()
        self.wd.rule("77", RULE_77)
        self.wd.rule(None, default_rule)
        targets = {
            "pos": target(self.snk.url + "/base", headers={"X-Api-Key": "k-123"}),
            "echo": target(self.snk.url),
        }
        return self.router(base_config(targets=targets, **cfg))

    def test_every_fixture_reaches_its_rule(self):
        r = self.start()
        names = sorted(FIXTURE_PATHS)
        ids = {}
        for name in names:
            resp = r.post_fixture(name, headers={"X-Test-Header": "Hello"})
            ids[name] = self.assertOk(resp, name)
        self.assertEqual(len(set(ids.values())), len(ids), "event ids are not unique: %r" % ids)
        zone_left = [n for n in names if FIXTURE_PATHS[n] == "/aifi/checkout-zone/left"
                     and expected_store(fixture_json(n)) == "77"]
        reqs = self.snk.wait_for(len(zone_left))
        audit = wait_until(lambda: len(self.wd.jsonl("var/audit.jsonl")) >= len(names) and
                           self.wd.jsonl("var/audit.jsonl"), 5)
        self.assertTrue(audit, "audit has %d lines, expected %d"
                        % (len(self.wd.jsonl("var/audit.jsonl")), len(names)))
        self.assertEqual(len(audit), len(names))
        by_id = {a.get("id"): a for a in audit}
        for name in names:
            body = fixture_json(name)
            a = by_id.get(ids[name])
            self.assertIsNotNone(a, "no audit line for %s (id %s)" % (name, ids[name]))
            self.assertEqual(a.get("type"), ENDPOINTS[FIXTURE_PATHS[name]], name)
            self.assertEqual(a.get("store"), expected_store(body), name)
            want_rule = "77" if expected_store(body) == "77" else "default"
            self.assertEqual(a.get("rule"), want_rule, name)
            self.assertRegex(a.get("received_at") or "", RFC3339, name)
        # the sink: exactly the zone-left events of store 77, with the right headers
        self.assertEqual(len(reqs), len(zone_left))
        import time as _t
        _t.sleep(0.2)
        self.assertEqual(self.snk.count(), len(zone_left), "extra requests reached the sink")
        got = {q.header("X-Hookrouter-Event-Id"): q for q in reqs}
        for name in zone_left:
            body = fixture_json(name)
            q = got.get(ids[name])
            self.assertIsNotNone(q, "sink has no request with X-Hookrouter-Event-Id %s (%s); got %r"
                                 % (ids[name], name, list(got)))
            self.assertEqual(q.method, "POST")
            self.assertEqual(q.path, "/base/legacy/zone-left")
            self.assertTrue((q.header("Content-Type") or "").startswith("application/json"), q.headers)
            self.assertEqual(q.header("User-Agent"), "hookrouter/" + VERSION)
            self.assertEqual(q.header("X-Api-Key"), "k-123")
            self.assertEqual(q.header("X-Legacy"), "yes")
            self.assertEqual(q.header("X-Store"), "77")
            self.assertIsNone(q.header("Authorization"), "the inbound token leaked to the target")
            self.assertIsNotNone(q.header("Host"))
            self.assertEqual(len(q.header_all("X-Hookrouter-Event-Id")), 1)
            s = body.get("session") or {}
            self.assertEqual(q.typed(), {
                "store": "77",
                "zone": str(body["checkoutZoneId"]),
                "session": s.get("sessionId") or body.get("sessionId"),
                "customer": body["customer"]["id"],
                "group": s.get("groupSize", 1),
                "left_at": body["timeOfOrigin"],
                "event_id": ids[name],
                "event_type": "checkout-zone.left",
                "method": "POST",
                "path": "/aifi/checkout-zone/left",
                "test_header": "Hello",
            }, name)
        log = r.log()
        self.assertNotIn(TOKEN, log, "the bearer token appears in the log")
        for name in zone_left:
            self.assertRegex(log, r"delivered[^\n]*id=%s" % re.escape(ids[name]))

    def test_store_id_integer_and_string_reach_same_rule(self):
        r = self.start()
        i1 = self.assertOk(r.post_fixture("variants/store-id-integer.json"))
        i2 = self.assertOk(r.post_fixture("variants/store-id-string.json"))
        reqs = self.snk.wait_for(2)
        ids = sorted(q.header("X-Hookrouter-Event-Id") for q in reqs)
        self.assertEqual(ids, sorted([i1, i2]))
        for q in reqs:
            self.assertEqual(q.json()["store"], "77")
        audit = wait_until(lambda: len(self.wd.jsonl("var/audit.jsonl")) >= 2 and self.wd.jsonl("var/audit.jsonl"))
        self.assertEqual(sorted((a["rule"], a["store"]) for a in audit), [("77", "77"), ("77", "77")])

    def test_unsafe_store_ids_go_to_default(self):
        # rule files an unsafe id could reach if it touched the file system
        escaped = 'return function(event) write("audit", { rule = "ESCAPED", store = event.store }) end\n'
        self.wd.write("rules/x.lua", escaped)          # stores/../x
        self.wd.write("rules/stores/a/b.lua", escaped)  # stores/a/b
        # (rules/stores/..lua and ...lua, for ids "." and "..", are refused at load by the router)
        r = self.start()
        unsafe = ["../x", "a/b", ".", "..", "", "77/../77", "x\u0000y", "77\n", " 77"]
        for sid in unsafe:
            self.assertOk(r.post("/t", {"storeId": sid}), "storeId %r" % sid)
        audit = wait_until(lambda: len(self.wd.jsonl("var/audit.jsonl")) >= len(unsafe) and self.wd.jsonl("var/audit.jsonl"))
        self.assertTrue(audit, "audit lines: %r" % self.wd.jsonl("var/audit.jsonl"))
        rules = [a.get("rule") for a in audit]
        self.assertEqual(rules, ["default"] * len(unsafe), "per id: %r" % list(zip(unsafe, audit)))
        self.assertEqual(self.snk.count(), 0)

    def test_no_store_and_odd_store_types_go_to_default(self):
        r = self.start()
        bodies = [{}, {"storeId": None}, {"storeId": True}, {"storeId": {"a": 1}}, {"storeId": [77]},
                  {"storeid": 77}, {"StoreId": 77}]
        for b in bodies:
            self.assertOk(r.post("/t", b), "body %r" % (b,))
        audit = wait_until(lambda: len(self.wd.jsonl("var/audit.jsonl")) >= len(bodies) and self.wd.jsonl("var/audit.jsonl"))
        self.assertTrue(audit, "audit lines: %r" % self.wd.jsonl("var/audit.jsonl"))
        self.assertEqual([a.get("rule") for a in audit], ["default"] * len(bodies))

    def test_store_id_with_newline_cannot_forge_a_log_line(self):
        rule = ('return function(event) log.info("store is", event.store, "\\r\\x1b[31m\\xff")\n'
                '  write("audit", { rule = "default", store = event.store }) end\n')
        r = self.start(default_rule=rule)
        sid = "42\nFORGED line\r\n2024-01-01T00:00:00.000Z error FORGED\t\u00e9"
        self.assertOk(r.post("/t", {"storeId": sid}))
        wait_until(lambda: len(self.wd.jsonl("var/audit.jsonl")) >= 1)
        self.assertEqual(self.wd.jsonl("var/audit.jsonl")[0]["store"], sid)  # the data is intact
        log = wait_until(lambda: "actions=" in r.log() and r.log())
        self.assertTrue(log, r.log_tail())
        stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (debug|info |warn |error) ")
        for line in router_lines(log)[:-1]:
            self.assertRegex(line, stamp)
            self.assertNotIn("\r", line)
            self.assertNotIn("\x1b", line)
        # the value holds spaces: quoted (logfmt), with the same escapes inside
        want = 'store="42\\nFORGED line\\r\\n2024-01-01T00:00:00.000Z error FORGED\\t\u00e9"'
        self.assertIn(want, log)
        self.assertIn("store is " + want[len('store="'):-1] + " \\r\\x1B[31m\\xFF", log)

    def test_dotted_store_key(self):
        self.wd.rule("us-east-qm-0077", 'return function(e) write("audit", {rule="dotted", store=e.store}) end\n')
        r = self.start(store_key="store.aifiUniqueStoreId")
        self.assertOk(r.post_fixture("checkout-zone-left.json"))
        self.assertOk(r.post_fixture("customer-created.json"))  # no store object
        audit = wait_until(lambda: len(self.wd.jsonl("var/audit.jsonl")) >= 2 and self.wd.jsonl("var/audit.jsonl"))
        self.assertTrue(audit, "audit lines: %r" % self.wd.jsonl("var/audit.jsonl"))
        self.assertEqual(audit[0], {"rule": "dotted", "store": "us-east-qm-0077"})
        self.assertEqual(audit[1].get("rule"), "default")
        self.assertIsNone(audit[1].get("store"))
        self.assertEqual(self.snk.count(), 0, "store 77 rule must not run under the dotted key")

    def test_bodies_forwarded_as_tables_are_exact(self):
        """Every fixture and variant, forwarded unchanged as a table, arrives as the sender's
        bytes (so integers exact, floats stay floats, [] vs {} kept, null kept, unicode exact)."""
        r = self.start(default_rule=RULE_ECHO)
        names = sorted(n for n in FIXTURE_PATHS if expected_store(fixture_json(n)) != "77")
        ids = {}
        for name in names:
            ids[self.assertOk(r.post_fixture(name), name)] = name
        reqs = self.snk.wait_for(len(names), timeout=10)
        for q in reqs:
            name = ids.get(q.header("X-Hookrouter-Event-Id"))
            self.assertIsNotNone(name, "unknown event id %r" % q.header("X-Hookrouter-Event-Id"))
            self.assertEqual(q.path, "/echo")
            self.assertEqual(q.typed(), typed_json(fixture_bytes(name)), "body of %s changed" % name)
            self.assertEqual(q.body, fixture_bytes(name).removeprefix(b"\xef\xbb\xbf"),
                             "bytes of %s changed" % name)
        big = [q for q in reqs if ids[q.header("X-Hookrouter-Event-Id")] == "variants/large-integers.json"][0]
        self.assertIn(b"9007199254740993", big.body)
        self.assertIn(b"9223372036854775807", big.body)
        uni = [q for q in reqs if ids[q.header("X-Hookrouter-Event-Id")] == "variants/unicode-names.json"][0]
        md = fixture_json("variants/unicode-names.json")["customer"]["metadata"]
        self.assertEqual(uni.json()["customer"]["metadata"], md)
        self.assertEqual(uni.json()["customerPersonalInfo"]["lastName"], "\u00d8rsted")
        self.assertEqual(uni.json()["customer"]["metadata"]["quote"], 'she said "hi" \\ bye')

    def test_edge_values_round_trip(self):
        r = self.start(default_rule=RULE_ECHO)
        raw = (b'{"f": 1.0, "g": 0.5, "h": -2.5e-7, "e": 1e300, "z": 0, "neg": -9223372036854775808,'
               b' "max": 9223372036854775807, "b53": 9007199254740993, "t": true, "fa": false,'
               b' "nul": null, "arr": [null, 1, "x", null], "eo": {}, "ea": [], "nest": [[], {}, [[]]],'
               b' "esc": "tab\\there \\"q\\" \\\\ \\u0001 \\u00e9 \\ud83d\\ude00", "s": "1.0"}')
        eid = self.assertOk(r.post("/t", raw))
        q = self.snk.wait_for(1)[0]
        self.assertEqual(q.header("X-Hookrouter-Event-Id"), eid)
        got = q.typed()
        self.assertEqual(got, typed_json(raw), "raw forwarded body: %r" % q.body)
        self.assertEqual(got["f"], F(1.0), "1.0 must stay a float, got %r" % q.body)
        self.assertIn("nul", got)

    def test_forward_string_body_with_method_and_content_type(self):
        rule = r'''
return function(event)
  forward("echo", "a,b,c\n" .. event.body.n, { method = "PUT", path = "/csv?x=1",
          content_type = "text/csv", headers = { ["X-Rule"] = "r1" } })
end
'''
        r = self.start(default_rule=rule)
        eid = self.assertOk(r.post("/t", {"n": 42}))
        q = self.snk.wait_for(1)[0]
        self.assertEqual(q.method, "PUT")
        self.assertEqual(q.path, "/csv?x=1")
        self.assertEqual(q.header("Content-Type"), "text/csv")
        self.assertEqual(q.body, b"a,b,c\n42")
        self.assertEqual(q.header("X-Rule"), "r1")
        self.assertEqual(q.header("X-Hookrouter-Event-Id"), eid)
        self.assertEqual(q.header("User-Agent"), "hookrouter/" + VERSION)

    def test_no_rule_file_accepts_and_drops(self):
        self.snk = self.sink()
        os.rmdir(self.wd.p("rules", "stores"))
        r = self.router(base_config(targets={"echo": target(self.snk.url)}))
        resp = r.post_fixture("checkout-zone-left.json")
        self.assertOk(resp)
        self.assertTrue(r.wait_log(r"(?i)drop", 3), "no log line about the dropped event:\n" + r.log_tail())
        self.assertEqual(self.snk.count(), 0)
        self.assertEqual(self.wd.jsonl("var/audit.jsonl"), [])

    def test_write_string_line_and_drop(self):
        rule = r'''
return function(event)
  if event.body.kind == "drop" then drop("not wanted") return end
  write("audit", "plain line " .. event.body.kind)
end
'''
        r = self.start(default_rule=rule)
        self.assertOk(r.post("/t", {"kind": "a"}))
        self.assertOk(r.post("/t", {"kind": "drop"}))
        self.assertOk(r.post("/t", {"kind": "b"}))
        self.assertTrue(wait_until(lambda: len(read_lines(self.wd.p("var/audit.jsonl"))) >= 2))
        import time as _t
        _t.sleep(0.1)
        self.assertEqual(read_lines(self.wd.p("var/audit.jsonl")), [b"plain line a", b"plain line b"])
        self.assertTrue(r.wait_log(r"not wanted", 2), "drop reason not logged:\n" + r.log_tail())


if __name__ == "__main__":
    main()
