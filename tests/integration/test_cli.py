"""Command line: --help, --version, check, test, missing config."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hrtest import *  # noqa: E402,F401,F403

RULE_77 = r'''
return function(event)
  if event.body.customer and event.body.customer.role == "employee" then
    drop("employee")
    return
  end
  if event.type == "checkout-zone.left" then
    forward("pos", { zone = tostring(event.body.checkoutZoneId), store = event.store,
                     hdr = event.headers["x-extra"] },
            { path = "/legacy", headers = { ["X-Legacy"] = "yes" } })
    forward("pos", "raw-string-body", { path = "/raw", method = "PUT", content_type = "text/plain" })
  end
  write("audit", { type = event.type, store = event.store })
end
'''

DEFAULT = 'return function(e) write("audit", { type = e.type, store = e.store, rule = "default" }) end\n'


class CliTest(HRTestCase):
    def setup_good(self, sink_url="http://127.0.0.1:9/never"):
        self.wd.rule("77", RULE_77)
        self.wd.rule(None, DEFAULT)
        self.wd.config(base_config(targets={"pos": target(sink_url, headers={"X-Api-Key": "k-1"})}))
        return self.wd.p("hookrouter.lua")

    def cli(self, *args, **kw):
        return run_cli(list(args), cwd=kw.pop("cwd", self.wd.path), **kw)

    def test_version_and_help(self):
        p = self.cli("--version")
        self.assertEqual(p.returncode, 0, p)
        self.assertIn("hookrouter " + VERSION, p.stdout)
        p = self.cli("--help")
        self.assertEqual(p.returncode, 0, p)
        out = p.stdout + p.stderr
        for word in ("run", "check", "test", "-c"):
            self.assertIn(word, out, "--help does not mention %r:\n%s" % (word, out))
        p = self.cli("--no-such-option")
        self.assertNotEqual(p.returncode, 0)
        p = self.cli("frobnicate")
        self.assertNotEqual(p.returncode, 0, "an unknown command must fail")

    def test_missing_config(self):
        p = self.cli("run", "-c", self.wd.p("nope.lua"), timeout=10)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("nope.lua", p.stderr)
        self.assertRegex(p.stderr, r"examples", "the message should say how to start (examples/)")
        # the default ./hookrouter.lua, absent
        empty = self.wd.p("empty")
        os.makedirs(empty)
        p = self.cli(cwd=empty, timeout=10)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("hookrouter.lua", p.stderr)
        p = self.cli("check", cwd=empty, timeout=10)
        self.assertNotEqual(p.returncode, 0)

    def test_check_ok(self):
        cfg = self.setup_good()
        p = self.cli("check", "-c", cfg)
        self.assertEqual(p.returncode, 0, "check failed on a good config:\n%s" % p.stderr)
        lines = p.stdout.strip().splitlines()
        self.assertEqual(len(lines), 1, "one summary line expected: %r" % p.stdout)
        self.assertTrue(lines[0].startswith("ok"), p.stdout)
        # default config file in the current folder
        p = self.cli("check")
        self.assertEqual(p.returncode, 0, p.stderr)

    def test_check_broken_rule(self):
        cfg = self.setup_good()
        self.wd.rule("42", "return function(event)\n  local x = 1\n  x = = 2\nend\n")
        self.wd.rule("43", "return function(event)\n  if true then\nend\n")  # missing end
        p = self.cli("check", "-c", cfg)
        self.assertEqual(p.returncode, 1, p)
        self.assertRegex(p.stderr, r"rules/stores/42\.lua:3: ", p.stderr)
        self.assertRegex(p.stderr, r"rules/stores/43\.lua:\d+: ", "each error should be reported:\n" + p.stderr)

    def test_check_rule_not_returning_function(self):
        cfg = self.setup_good()
        self.wd.rule("44", "local x = 1\nreturn x\n")
        p = self.cli("check", "-c", cfg)
        self.assertEqual(p.returncode, 1, p)
        self.assertIn("44.lua", p.stderr)

    def test_check_unknown_target_and_file(self):
        cfg = self.setup_good()
        self.wd.rule("45", 'return function(e)\n  forward("nope", { a = 1 })\nend\n')
        p = self.cli("check", "-c", cfg)
        self.assertEqual(p.returncode, 1, "a rule using an unknown target must fail check:\n%s%s" % (p.stdout, p.stderr))
        self.assertIn("nope", p.stderr)
        os.unlink(self.wd.p("rules/stores/45.lua"))
        self.wd.rule("46", 'return function(e)\n  write("nofile", { a = 1 })\nend\n')
        p = self.cli("check", "-c", cfg)
        self.assertEqual(p.returncode, 1, "a rule using an unknown file must fail check:\n%s%s" % (p.stdout, p.stderr))
        self.assertIn("nofile", p.stderr)

    def test_check_config_errors(self):
        self.wd.rule(None, DEFAULT)
        cases = [
            (base_config(targets={"pos": {"url": 5}}), "targets.pos.url"),
            (base_config(targets={"pos": {"url": "http://127.0.0.1:1", "max_attempts": "x"}}),
             "targets.pos.max_attempts"),
            (base_config(listne="127.0.0.1:0"), "listne"),
            (base_config(limits={"body_bytes": "big"}), "limits.body_bytes"),
            (base_config(limits={"bogus_limit": 1}), "bogus_limit"),
            (base_config(endpoints={"/a": 5}), "endpoints"),
            (base_config(files={"audit": {"paht": "x"}}), "paht"),
            (base_config(targets={"pos": {"url": "ftp://x/y"}}), "targets.pos.url"),
            (base_config(listen="nonsense"), "listen"),
            (base_config(files={"audit": {"path": "x", "mode": "0999"}}), "files.audit.mode"),
            (base_config(files={"audit": {"path": "x", "mode": 640}}), "files.audit.mode"),
            (base_config(files={"audit": {"path": "x", "mode": True}}), "files.audit.mode"),
        ]
        nope = base_config()
        del nope["endpoints"]
        cases.append((nope, "endpoints"))
        for cfg, key in cases:
            self.wd.config(cfg)
            p = self.cli("check")
            self.assertEqual(p.returncode, 1, "config error %r not caught:\n%s%s" % (key, p.stdout, p.stderr))
            self.assertIn(key, p.stderr, "the error should name %r:\n%s" % (key, p.stderr))
        self.wd.config("return {\n  listen = ,\n}\n")
        p = self.cli("check")
        self.assertEqual(p.returncode, 1)
        self.assertRegex(p.stderr, r"hookrouter\.lua:2:", p.stderr)
        self.wd.config("return 42\n")
        p = self.cli("check")
        self.assertEqual(p.returncode, 1)

    def test_config_relative_paths_and_getenv(self):
        sub = self.wd.p("conf")
        os.makedirs(os.path.join(sub, "myrules"))
        with open(os.path.join(sub, "myrules", "default.lua"), "w") as f:
            f.write(DEFAULT)
        cfg = base_config(rules="myrules", tokens=[LuaRaw('os.getenv("HR_TEST_TOKEN")')])
        with open(os.path.join(sub, "c.lua"), "w") as f:
            f.write("return " + lua(cfg) + "\n")
        p = self.cli("check", "-c", os.path.join(sub, "c.lua"), env={"HR_TEST_TOKEN": "from-env"})
        self.assertEqual(p.returncode, 0, "relative rules folder / os.getenv in config:\n" + p.stderr)
        p = self.cli("test", "-c", "conf/c.lua", "--path", "/t", fixture_path("tracking.json"),
                     env={"HR_TEST_TOKEN": "from-env"})
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
        self.assertEqual(lines[0]["action"], "write")
        self.assertEqual(lines[0]["record"]["rule"], "default")

    def parse_lines(self, p):
        out = []
        for l in p.stdout.splitlines():
            if not l.strip():
                continue
            try:
                out.append(json.loads(l))
            except ValueError:
                self.fail("hookrouter test printed a line that is not JSON: %r" % l)
        return out

    def test_test_command(self):
        snk = self.sink()
        cfg = self.setup_good(snk.url + "/base")
        p = self.cli("test", "-c", cfg, "--path", "/aifi/checkout-zone/left", "--header", "X-Extra: hdr-val",
                     fixture_path("checkout-zone-left.json"))
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = self.parse_lines(p)
        self.assertEqual([l.get("action") for l in lines], ["forward", "forward", "write"], lines)
        f = lines[0]
        self.assertEqual(f["target"], "pos")
        self.assertEqual(f["method"], "POST")
        self.assertEqual(f["url"], snk.url + "/base/legacy")
        hdrs = {k.lower(): v for k, v in f["headers"].items()}
        self.assertEqual(hdrs.get("x-legacy"), "yes", f["headers"])
        self.assertEqual(hdrs.get("x-api-key"), "k-1", f["headers"])
        self.assertTrue(hdrs.get("content-type", "").startswith("application/json"), f["headers"])
        self.assertEqual(f["body"], {"zone": "7", "store": "77", "hdr": "hdr-val"}, "body should be the JSON value")
        g = lines[1]
        self.assertEqual(g["method"], "PUT")
        self.assertEqual(g["url"], snk.url + "/base/raw")
        self.assertEqual(g["body"], "raw-string-body")
        self.assertEqual({k.lower(): v for k, v in g["headers"].items()}.get("content-type"), "text/plain")
        self.assertEqual(lines[2], {"action": "write", "file": "audit",
                                    "record": {"type": "checkout-zone.left", "store": "77"}})
        time.sleep(0.3)
        self.assertEqual(snk.count(), 0, "hookrouter test must not send anything")
        self.assertFalse(os.path.exists(self.wd.p("var/audit.jsonl")), "hookrouter test must not write files")

    def test_test_command_several_payloads(self):
        cfg = self.setup_good()
        p = self.cli("test", "-c", cfg, "--path", "/aifi/transition/entered",
                     fixture_path("transition-entered.json"), fixture_path("variants/employee-role.json"),
                     fixture_path("checkout-zone-left.json"))
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = self.parse_lines(p)
        self.assertEqual(lines[0], {"action": "write", "file": "audit",
                                    "record": {"type": "transition.entered", "store": "1042", "rule": "default"}})
        self.assertEqual(lines[1], {"action": "write", "file": "audit",
                                    "record": {"type": "transition.entered", "store": "1042", "rule": "default"}})
        # checkout-zone-left.json posted to the transition path: store 77 rule, not a zone-left event
        self.assertEqual(lines[2], {"action": "write", "file": "audit",
                                    "record": {"type": "transition.entered", "store": "77"}})
        self.assertEqual(len(lines), 3)

    def test_test_command_drop(self):
        cfg = self.setup_good()
        body = fixture_json("variants/employee-role.json")
        body["storeId"] = 77
        path = self.wd.write("emp77.json", json.dumps(body))
        p = self.cli("test", "-c", cfg, "--path", "/aifi/transition/entered", path)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(self.parse_lines(p), [{"action": "drop", "reason": "employee"}])

    def test_test_command_rule_error(self):
        cfg = self.setup_good()
        self.wd.rule("77", 'return function(e)\n  error("bad rule here")\nend\n')
        p = self.cli("test", "-c", cfg, "--path", "/aifi/checkout-zone/left", fixture_path("checkout-zone-left.json"))
        self.assertEqual(p.returncode, 1, p)
        self.assertIn("bad rule here", p.stderr)
        self.wd.rule("77", 'return function(e)\n  while true do end\nend\n')
        p = self.cli("test", "-c", cfg, "--path", "/aifi/checkout-zone/left", fixture_path("checkout-zone-left.json"),
                     timeout=30)
        self.assertEqual(p.returncode, 1, "a runaway rule in test mode should be stopped: %r" % p)
        self.assertRegex(p.stderr, r"(?i)instruction")

    def test_test_command_bad_inputs(self):
        cfg = self.setup_good()
        bad = self.wd.write("bad.json", "{not json")
        p = self.cli("test", "-c", cfg, "--path", "/aifi/checkout-zone/left", bad)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("bad.json", p.stderr)
        p = self.cli("test", "-c", cfg, "--path", "/aifi/checkout-zone/left", self.wd.p("missing.json"))
        self.assertNotEqual(p.returncode, 0)
        p = self.cli("test", "-c", cfg, "--path", "/not/configured", fixture_path("tracking.json"))
        self.assertNotEqual(p.returncode, 0, "an unknown --path should be an error: %r" % p)

    def test_check_examples(self):
        ex = os.path.join(SOURCE_DIR, "examples", "hookrouter.lua")
        self.assertTrue(os.path.exists(ex), "examples/hookrouter.lua is missing")
        p = run_cli(["check", "-c", ex], cwd=self.wd.path, env={"AIFI_TOKEN": "example-token"})
        self.assertEqual(p.returncode, 0, "examples/hookrouter.lua fails check:\n%s%s" % (p.stdout, p.stderr))
        self.assertTrue(p.stdout.startswith("ok"), p.stdout)

    def test_examples_test_store42(self):
        ex = os.path.join(SOURCE_DIR, "examples", "hookrouter.lua")
        self.assertTrue(os.path.exists(ex), "examples/hookrouter.lua is missing")
        with open(ex) as f:
            m = re.search(r'\[\s*"([^"]+)"\s*\]\s*=\s*"checkout-zone\.left"', f.read())
        self.assertIsNotNone(m, "no checkout-zone.left endpoint in examples/hookrouter.lua")
        body = fixture_json("checkout-zone-left.json")
        body["storeId"] = 42
        path = self.wd.write("zl42.json", json.dumps(body))
        p = run_cli(["test", "-c", ex, "--path", m.group(1), path], cwd=self.wd.path,
                    env={"AIFI_TOKEN": "example-token"})
        self.assertEqual(p.returncode, 0, p.stderr)
        acts = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
        self.assertIn("forward", [a["action"] for a in acts], "store 42 should forward checkout-zone.left: %r" % acts)


if __name__ == "__main__":
    main()
