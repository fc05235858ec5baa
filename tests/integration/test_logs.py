"""Logs (issue 12): log.format = "json" makes every stderr line one JSON object, and event lines
(accepted, delivered, retried, dead-lettered, rule failed, refused, circuit, reload) carry their
fields as keys; in text, values are logfmt pairs, quoted when they must be, and read back exactly;
nothing stops or waits when stderr is a full pipe nobody reads, /dev/full or closed."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hrtest  # noqa: E402
from hrtest import *  # noqa: E402,F401,F403

# A store id with a space, quotes, '=', a backslash, a newline, a tab, an escape byte and UTF-8.
NASTY = 'st "4" =2\\x\n\t\x1b\u00e9'

RULE = r'''return function(e)
  if e.body.kind == "fail" then error("boom in the rule for " .. e.store) end
  log.info("rule says", e.store)
  if e.body.kind == "drop" then drop("not wanted here") return end
  forward(e.body.to, { n = e.body.n })
end
'''


def logfmt(line):
    """Parse one logfmt line as go-logfmt / python-logfmt do: key=value pairs split on spaces,
    quoted values unescaped as Go string literals (\\" \\\\ \\n \\r \\t \\xNN) to bytes, then
    decoded as UTF-8 (with surrogateescape for bytes that are not); bare words are keys
    without a value (None). Raises ValueError on a syntax error."""
    out, i, n = {}, 0, len(line)
    esc = {"n": b"\n", "r": b"\r", "t": b"\t", '"': b'"', "\\": b"\\"}
    while i < n:
        while i < n and line[i] == " ":
            i += 1
        if i >= n:
            break
        j = i
        while j < n and line[j] not in ' ="':
            j += 1
        key = line[i:j]
        if j >= n or line[j] == " ":
            out.setdefault(key, None)
            i = j
            continue
        if line[j] == '"':
            raise ValueError("quote in a key at %d: %r" % (j, line))
        j += 1
        if j < n and line[j] == '"':
            j += 1
            buf = bytearray()
            while True:
                if j >= n:
                    raise ValueError("unterminated quote: %r" % line)
                c = line[j]
                j += 1
                if c == '"':
                    break
                if c != "\\":
                    buf += c.encode("utf-8", "surrogateescape")
                    continue
                e = line[j]
                j += 1
                if e in esc:
                    buf += esc[e]
                elif e == "x":
                    buf.append(int(line[j:j + 2], 16))
                    j += 2
                else:
                    raise ValueError("unknown escape \\%s: %r" % (e, line))
            if j < n and line[j] != " ":
                raise ValueError("no space after a quoted value at %d: %r" % (j, line))
            out[key] = buf.decode("utf-8", "surrogateescape")
        else:
            k = j
            while k < n and line[k] != " ":
                k += 1
            out[key] = line[j:k]
            j = k
        i = j
    return out


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class LogsTest(HRTestCase):
    def run_scenario(self, fmt):
        """Accepted, delivered, retried, dead-lettered, rule-failed, refused, dropped events, an
        open circuit, a good and a failed reload. Returns the router (stopped) and the ids."""
        self.wd.rule(None, RULE)
        ok = self.sink()
        flaky = self.sink(statuses=[503])            # retried once, then delivered
        gone = self.sink(status=400)                 # rejected: a dead letter at once
        down = self.sink(down=True)                  # connection refused: the circuit opens
        r = self.router(base_config(
            targets={"ok": target(ok.url), "flaky": target(flaky.url, retry_ms=[0, 50]),
                     "gone": target(gone.url), "down": target(down.url, max_attempts=1,
                                                              circuit_failures=1),
                     # logged while the config loads, before its format is known: held
                     "insecure": target("https://127.0.0.1:%d" % down.port,
                                        tls={"verify": False})},
            log={"level": "info", "format": fmt}))
        ids = {}
        for name, body in (("ok", {"storeId": NASTY, "to": "ok", "n": 1}),
                           ("flaky", {"storeId": "7", "to": "flaky", "n": 2}),
                           ("gone", {"storeId": "8", "to": "gone", "n": 3}),
                           ("down", {"storeId": "9", "to": "down", "n": 4}),
                           ("drop", {"storeId": "10", "kind": "drop"})):
            ids[name] = self.assertOk(r.post("/t", body))
        resp = r.post("/t", {"storeId": "11", "kind": "fail"})
        self.assertEqual(resp.status, 500, resp)
        ids["fail"] = resp.json()["id"]
        self.assertEqual(r.post("/t", {"storeId": "12"}, token=None).status, 401)
        self.assertEqual(r.post("/nowhere", {"a": 1}).status, 404)
        self.assertEqual(r.post("/t", b'{"storeId": 01}').status, 400)
        self.assertTrue(r.wait_log(r"delivered[^\n]*%s" % ids["flaky"], 5), r.log_tail())
        self.assertTrue(wait_until(lambda: len(self.wd.dead_letters) >= 3, 5), r.log_tail())
        r.hup()
        self.assertTrue(r.wait_log(r"reloaded", 5), r.log_tail())
        self.wd.rule("13", "return function(e)\n")  # a syntax error
        r.hup()
        self.assertTrue(r.wait_log(r"reload failed", 5), r.log_tail())
        r.stop()
        return r, ids

    def test_json_every_line_parses_and_events_carry_fields(self):
        r, ids = self.run_scenario("json")
        lines = [l for l in r.log().split("\n") if l and not l.startswith("==")]
        recs = []
        for l in lines:
            try:
                j = json.loads(l)
            except ValueError as e:
                self.fail("not JSON (%s): %r" % (e, l))
            self.assertIsInstance(j, dict, l)
            self.assertRegex(j.get("ts", ""), r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", l)
            self.assertIn(j.get("level"), ("debug", "info", "warn", "error"), l)
            self.assertIsInstance(j.get("msg"), str, l)
            recs.append(j)

        def one(msg, **want):
            got = [j for j in recs if j["msg"] == msg and all(j.get(k) == v for k, v in want.items())]
            self.assertTrue(got, "no %s line with %r in:\n%s" % (msg, want, "\n".join(lines)))
            return got[0]

        ev = one("event", id=ids["ok"])
        self.assertEqual((ev["type"], ev["store"], ev["rule"], ev["actions"]),
                         ("test.event", NASTY, "default.lua", "forward:ok"))
        self.assertIsInstance(ev["ms"], float)
        d = one("delivered", id=ids["ok"])
        self.assertEqual((d["store"], d["target"], d["status"], d["attempts"], d["action"]),
                         (NASTY, "ok", 200, 1, "forward"))
        self.assertIsInstance(d["ms"], int)
        rt = one("retry", id=ids["flaky"])
        self.assertEqual((rt["store"], rt["target"], rt["status"], rt["attempts"], rt["max_attempts"]),
                         ("7", "flaky", 503, 1, 3))
        self.assertEqual(one("delivered", id=ids["flaky"])["attempts"], 2)
        dl = one("dead-letter", id=ids["gone"])
        self.assertEqual((dl["type"], dl["store"], dl["target"], dl["status"], dl["attempts"],
                          dl["reason"]), ("test.event", "8", "gone", 400, 1, "rejected"))
        dl = one("dead-letter", id=ids["down"])
        self.assertEqual((dl["target"], dl["attempts"]), ("down", 1))
        self.assertIn("refused", dl["error"])
        self.assertNotIn("status", dl)
        self.assertEqual(one("circuit open", target="down")["failures"], 1)
        f = one("rule failed", id=ids["fail"])
        self.assertEqual((f["type"], f["store"], f["reply"]), ("test.event", "11", "error"))
        # the log line's error is the dead letter's, byte for byte (traceback and all)
        dead = {x["event"]["id"]: x for x in self.wd.dead_letters if x.get("event")}
        self.assertEqual(f["error"], dead[ids["fail"]]["error"])
        self.assertEqual(one("rule", id=ids["ok"])["text"], "rule says " + NASTY)
        self.assertEqual(one("rule", id=ids["ok"])["store"], NASTY)
        self.assertEqual(one("event", id=ids["drop"])["reason"], "not wanted here")
        rej = one("rejected", status=401)
        self.assertEqual((rej["path"], rej["reason"]), ("/t", "missing bearer token"))
        self.assertRegex(rej["peer"], r"^127\.0\.0\.1:\d+$")
        self.assertEqual(one("rejected", status=404)["path"], "/nowhere")
        self.assertIn("leading zero", one("rejected", status=400)["error"])
        rl = one("reloaded", reload=1)
        self.assertEqual((rl["endpoints"], rl["default_rule"]), (len(ENDPOINTS), "yes"))
        self.assertRegex(one("reload failed")["error"], r"rules/stores/13\.lua:\d+:")
        warn = [j for j in recs if "targets.insecure.tls.verify = false" in j["msg"]]
        self.assertTrue(warn and warn[0]["level"] == "warn", lines[:5])
        # the harness finds the port in the JSON line too
        self.assertTrue(any(j["msg"].startswith("listening on 127.0.0.1:") for j in recs))

    def test_text_values_are_logfmt(self):
        r, ids = self.run_scenario("text")
        lines = [l for l in r.log().split("\n") if l and not l.startswith("==")]
        stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (debug|info |warn |error) ")
        parsed = []
        for l in lines:
            self.assertRegex(l, stamp)
            try:
                parsed.append((l, logfmt(l)))
            except ValueError as e:
                self.fail("%s" % e)

        def one(word, **want):
            got = [p for l, p in parsed if word in p and p[word] is None
                   and all(p.get(k) == v for k, v in want.items())]
            self.assertTrue(got, "no %s line with %r in:\n%s" % (word, want, "\n".join(lines)))
            return got[0]

        ev = one("event", id=ids["ok"])
        self.assertEqual(ev["store"], NASTY)  # quoted, escaped, read back exactly
        self.assertEqual(ev["actions"], "forward:ok")
        d = one("delivered", id=ids["ok"])
        self.assertEqual((d["store"], d["status"], d["attempts"]), (NASTY, "200", "1"))
        self.assertEqual(one("rule", id=ids["ok"])["text"], "rule says " + NASTY)
        f = one("failed", id=ids["fail"])
        dead = {x["event"]["id"]: x for x in self.wd.dead_letters if x.get("event")}
        self.assertEqual(f["error"], dead[ids["fail"]]["error"])
        self.assertEqual(one("retry", id=ids["flaky"])["status"], "503")
        self.assertEqual(one("rejected", status="401")["reason"], "missing bearer token")
        self.assertEqual(one("event", id=ids["drop"])["reason"], "not wanted here")
        # a value with spaces is quoted on the line itself; one without is not
        raw = [l for l in lines if " rejected status=401 " in l]
        self.assertTrue(raw and raw[0].endswith(' reason="missing bearer token"'), raw)
        self.assertIn(" target=ok ", [l for l in lines if ids["ok"] in l and "delivered" in l][0])

    def test_invalid_format_is_a_config_error(self):
        self.wd.rule(None, RULE)
        self.wd.config(base_config(log={"format": "logfmt"}))
        res = run_cli(["check", "-c", "hookrouter.lua"], cwd=self.wd.path)
        self.assertEqual(res.returncode, 1, res)
        self.assertIn('log.format: expected text or json, got "logfmt"', res.stderr)


class StderrTest(HRTestCase):
    """Nothing waits for stderr or dies of it: events are accepted and delivered, and SIGTERM
    stops the router, whatever stderr is."""

    N = 400  # two lines an event: well past a 64 KiB pipe

    def start(self, wrap=(), **popen):
        self.wd.rule(None, 'return function(e) forward("pos", { n = e.body.n }) end\n')
        self.snk = self.sink()
        self.port = free_port()
        self.wd.config(base_config(targets={"pos": target(self.snk.url)},
                                   listen="127.0.0.1:%d" % self.port,
                                   log={"level": "info", "format": "json"}))
        p = subprocess.Popen(list(wrap) + WRAP + [BIN, "run", "-c", self.wd.p("hookrouter.lua")],
                             cwd=self.wd.path, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, env=clean_env(), **popen)
        hrtest._PROCS.add(p)
        self.addCleanup(self.kill, p)

        def up():
            try:
                return request(self.port, "GET", "/healthz", token=None, timeout=1).status == 200
            except OSError:
                return p.poll() is not None
        self.assertTrue(wait_until(up, 10) and p.poll() is None, "router did not start")
        return p

    def kill(self, p):
        if p.poll() is None:
            p.kill()
            p.wait(10)
        hrtest._PROCS.discard(p)

    def load(self, p):
        for i in range(self.N):
            resp = post(self.port, "/t", {"n": i}, timeout=T(5))
            self.assertEqual(resp.status, 200, "event %d: %r" % (i, resp))
        self.snk.wait_for(self.N, timeout=T(10))
        self.assertEqual(sorted(x.json()["n"] for x in self.snk.requests), list(range(self.N)))
        self.assertEqual(request(self.port, "GET", "/healthz", token=None).status, 200)

    def stop(self, p):
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(T(15)), 0)
        hrtest._PROCS.discard(p)

    def test_full_pipe_nobody_reads(self):
        rd, wr = os.pipe()
        self.addCleanup(os.close, rd)
        p = self.start(stderr=wr)
        os.close(wr)
        self.load(p)  # the pipe filled up long ago: nothing waited for it
        got = []
        t = threading.Thread(target=lambda: got.append(b"".join(iter(lambda: os.read(rd, 65536), b""))))
        t.start()  # now read: the lines after the drops get through, first the count
        self.stop(p)
        t.join(T(10))
        lines = router_lines(got[0].decode("utf-8"))
        self.assertEqual(lines[-1], "")
        recs = [json.loads(l) for l in lines[:-1]]  # every line whole
        lost = [j for j in recs if j["msg"] == "log lines dropped: stderr did not take them"]
        self.assertTrue(lost and lost[0]["level"] == "warn" and lost[0]["lines"] > 0, recs[-5:])
        events = sum(1 for j in recs if j["msg"] in ("event", "delivered"))
        self.assertGreaterEqual(events + sum(j["lines"] for j in lost), 2 * self.N)

    def test_dev_full(self):
        with open("/dev/full", "wb") as full:
            p = self.start(stderr=full)
        self.load(p)
        self.stop(p)

    def test_closed_stderr(self):
        if os.environ.get("HR_WRAP"):
            self.skipTest("HR_WRAP (valgrind) reports on the stderr this test closes")
        p = self.start(wrap=["sh", "-c", 'exec "$@" 2>&-', "sh"])
        self.load(p)
        self.stop(p)
        # no log line went into a file the router opened in place of descriptor 2
        for root, _, files in os.walk(self.wd.p("var")):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    self.assertNotIn(b'"level":"info"', f.read(), name)


if __name__ == "__main__":
    main()
