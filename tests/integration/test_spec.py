"""hookrouter test with spec files: pass, fail with a diff, a broken spec, --junit, the default
folder, check on spec files, and the fixed clock (received_at, os.date, the event id)."""
import os
import sys
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hrtest import *  # noqa: E402,F401,F403

RULE_42 = r'''
return function(event)
  local b = event.body
  forward("pos", { store = b.storeExternalId, zone = tostring(b.checkoutZoneId),
                   seen = os.date("!%Y-%m-%d %H:%M:%S"), at = event.received_at,
                   id = event.id, now = time.now() },
          { path = "/zone-exit", headers = { ["X-Store"] = "42" } })
  if b.fail then error("asked to fail") end
end
'''

PASSING = r'''
return {
  { name = "forwards the zone exit",
    path = "/zl", file = "left.json", now = "2026-01-02T03:04:05Z",
    expect = { { action = "forward", target = "pos", url = "http://127.0.0.1:9/b/zone-exit",
                 headers = { ["X-Store"] = "42" },
                 body = { store = "RET-042", zone = "7", seen = "2026-01-02 03:04:05",
                          at = "2026-01-02T03:04:05.000Z", now = 1767323045000 } } },
    expect_reply = { status = 200 } },
  { name = "a rule error is expected",
    path = "/zl", body = { storeId = 42, fail = true },
    expect_error = "asked to fail", expect_reply = { status = 500 } },
}
'''

FAILING = r'''
return {
  { name = "right", path = "/zl", file = "left.json", expect = { { action = "forward" } } },
  { name = "wrong store", path = "/zl", file = "left.json",
    expect = { { action = "forward", body = { store = "RET-999" } } } },
  { name = "no action expected", path = "/zl", file = "left.json", expect = {} },
}
'''

BROKEN = 'return {\n  { name = "x", path = "/zl",\n    body = {} ,, },\n}\n'
TYPO = 'return {\n  { name = "first", path = "/zl", body = {} },\n  { name = "typo",\n    path = "/zl", body = {}, expects = {} },\n}\n'


class SpecTest(HRTestCase):
    def setUp(self):
        super().setUp()
        self.wd.rule("42", RULE_42)
        cfg = base_config(targets={"pos": target("http://127.0.0.1:9/b")})
        cfg["endpoints"] = {"/zl": "checkout-zone.left"}
        self.wd.config(cfg)
        body = fixture_json("checkout-zone-left.json")
        body["storeId"] = 42
        body["storeExternalId"] = "RET-042"
        body["checkoutZoneId"] = 7
        self.wd.write("rules/tests/left.json", json.dumps(body))

    def cli(self, *args):
        return run_cli(["test", "-c", "hookrouter.lua"] + list(args), cwd=self.wd.path)

    def test_pass_and_summary(self):
        self.wd.write("rules/tests/a.test.lua", PASSING)
        p = self.cli("rules/tests/a.test.lua")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        lines = p.stdout.strip().splitlines()
        self.assertIn("ok 1 - forwards the zone exit", lines)
        self.assertIn("ok 2 - a rule error is expected", lines)
        self.assertEqual(lines[-1], "2 passed, 0 failed")
        self.assertIn("1..2", lines)

    def test_fail_names_path_and_values(self):
        self.wd.write("rules/tests/f.test.lua", FAILING)
        p = self.cli("rules/tests/f.test.lua")
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        out = p.stdout
        self.assertIn("ok 1 - right\n", out)
        self.assertIn('not ok 2 - wrong store\n# expect[1].body.store: expected "RET-999", got "RET-042"\n', out)
        self.assertIn("not ok 3 - no action expected\n# expect: expected 0 actions, got 1 (forward pos)", out)
        self.assertTrue(out.strip().endswith("1 passed, 2 failed"), out)

    def test_broken_spec_is_file_line(self):
        self.wd.write("rules/tests/b.test.lua", BROKEN)
        self.wd.write("rules/tests/t.test.lua", TYPO)
        p = self.cli("rules/tests/b.test.lua", "rules/tests/t.test.lua")
        self.assertEqual(p.returncode, 1)
        self.assertRegex(p.stderr, r"rules/tests/b\.test\.lua:3: .*unexpected symbol")
        self.assertIn("rules/tests/t.test.lua:3: case 2 (typo): unknown key 'expects'", p.stderr)
        self.assertIn("not ok 1 - rules/tests/b.test.lua", p.stdout)
        self.assertTrue(p.stdout.strip().endswith("0 passed, 2 failed"), p.stdout)
        # check compiles the spec files of the rules folder too
        p = run_cli(["check", "-c", "hookrouter.lua"], cwd=self.wd.path)
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("rules/tests/t.test.lua:3: case 2 (typo): unknown key 'expects'", p.stderr)
        os.remove(self.wd.p("rules/tests/b.test.lua"))
        os.remove(self.wd.p("rules/tests/t.test.lua"))
        self.wd.write("rules/tests/a.test.lua", PASSING)
        p = run_cli(["check", "-c", "hookrouter.lua"], cwd=self.wd.path)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("1 spec file (2 cases)", p.stdout)

    def test_default_folder_and_junit(self):
        self.wd.write("rules/tests/a.test.lua", PASSING)
        self.wd.write("rules/tests/f.test.lua", FAILING)
        self.wd.write("rules/tests/notes.lua", "error('not a spec: no .test.lua')")
        p = self.cli("--junit", "out.xml")
        self.assertEqual(p.returncode, 1)
        self.assertIn("# rules/tests/a.test.lua", p.stdout)
        self.assertTrue(p.stdout.strip().endswith("3 passed, 2 failed"), p.stdout)
        root = ET.parse(self.wd.p("out.xml")).getroot()
        self.assertEqual(root.tag, "testsuites")
        suites = root.findall("testsuite")
        self.assertEqual([s.get("name") for s in suites], ["rules/tests/a.test.lua", "rules/tests/f.test.lua"])
        self.assertEqual(suites[1].get("failures"), "2")
        fail = suites[1].findall("testcase")[1].find("failure")
        self.assertIn('expected "RET-999", got "RET-042"', fail.text)

    def test_fixed_clock_and_stable_id(self):
        spec = r'''
return { { name = "clock", path = "/zl", file = "left.json", now = "2030-06-07T08:09:10.500Z",
           expect = { { body = { at = "2030-06-07T08:09:10.500Z", seen = "2030-06-07 08:09:10" } } } } }
'''
        self.wd.write("rules/tests/c.test.lua", spec)
        p = self.cli("rules/tests/c.test.lua")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        # the old form with --now and --id: the same clock, the given id, identical runs
        args = ["--path", "/zl", "--now", "2030-06-07T08:09:10.500Z", "--id", "evt-1", "rules/tests/left.json"]
        p1, p2 = self.cli(*args), self.cli(*args)
        self.assertEqual(p1.returncode, 0, p1.stderr)
        self.assertEqual(p1.stdout, p2.stdout)
        a = json.loads(p1.stdout.splitlines()[0])
        self.assertEqual(a["body"]["at"], "2030-06-07T08:09:10.500Z")
        self.assertEqual(a["body"]["seen"], "2030-06-07 08:09:10")
        self.assertEqual(a["body"]["id"], "evt-1")
        self.assertEqual(a["headers"]["X-Hookrouter-Event-Id"], "evt-1")
        # without --now the clock is real
        p = self.cli("--path", "/zl", "rules/tests/left.json")
        a = json.loads(p.stdout.splitlines()[0])
        self.assertNotEqual(a["body"]["at"], "2030-06-07T08:09:10.500Z")
        # a spec's event id is derived from the case: the same on every run
        spec2 = r'''
return { { name = "id", path = "/zl", file = "left.json", now = "2030-06-07T08:09:10.500Z",
           expect = { { body = { id = "X" } } } } }
'''
        self.wd.write("rules/tests/i.test.lua", spec2)
        ids = set()
        for _ in range(2):
            p = self.cli("rules/tests/i.test.lua")
            m = re.search(r'got "([0-9a-f-]{36})"', p.stdout)
            self.assertIsNotNone(m, p.stdout)
            ids.add(m.group(1))
        self.assertEqual(len(ids), 1, ids)
        self.assertTrue(ids.pop().startswith("01bc050b-"), "a UUIDv7 of now")


if __name__ == "__main__":
    main()
