"""SIGHUP reload: good rules swap in, broken ones keep the old, bursts coalesce, no request fails."""
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hrtest import *  # noqa: E402,F401,F403


FAILED_RE = r"reload failed error=[^\n]*\.lua\b"  # one per failed reload (not the follow-up line)


def versioned(v):
    return 'return function(event) write("audit", { v = %s, store = event.store }) end\n' % lua_str(v)


class ReloadTest(HRTestCase):
    def start(self, **cfg):
        self.wd.rule(None, versioned("d1"))
        self.wd.rule("42", versioned("s1"))
        cfg.setdefault("workers", 1)  # one loop: a reload is seen by the next request
        return self.router(base_config(**cfg))

    def send_and_get_v(self, r, store=42):
        before = len(self.wd.jsonl("var/audit.jsonl"))
        self.assertOk(r.post("/t", {"storeId": store}))
        got = wait_until(lambda: len(self.wd.jsonl("var/audit.jsonl")) > before and self.wd.jsonl("var/audit.jsonl"))
        self.assertTrue(got, "no audit line after a 200")
        return got[-1]["v"]

    def reloaded(self, r, count, timeout=5):
        ok = wait_until(lambda: r.count_log(r"(?<!\w)reloaded") >= count, timeout)
        self.assertTrue(ok, "expected %d 'reloaded' log lines; log:\n%s" % (count, r.log_tail()))

    def test_good_reload(self):
        r = self.start()
        h0 = r.healthz()
        self.assertEqual(h0["reloads"], 0)
        self.assertEqual(self.send_and_get_v(r), "s1")
        self.assertEqual(self.send_and_get_v(r, store=1), "d1")
        self.wd.rule("42", versioned("s2"))
        self.wd.rule("43", versioned("new43"))
        r.hup()
        self.reloaded(r, 1)
        self.assertEqual(self.send_and_get_v(r), "s2")
        self.assertEqual(self.send_and_get_v(r, store=43), "new43")
        self.assertEqual(self.send_and_get_v(r, store=1), "d1")
        h1 = r.healthz()
        self.assertEqual(h1["reloads"], 1, h1)
        self.assertIsNone(h1["last_reload_error"])
        self.assertIsInstance(h1["loaded_at"], str)
        # a removed store rule falls back to default after reload
        os.unlink(self.wd.p("rules/stores/43.lua"))
        r.hup()
        self.reloaded(r, 2)
        self.assertEqual(self.send_and_get_v(r, store=43), "d1")
        self.assertEqual(r.healthz()["reloads"], 2)

    def test_broken_rule_keeps_old(self):
        r = self.start()
        self.assertEqual(self.send_and_get_v(r), "s1")
        self.wd.rule("42", "-- line 1\nreturn function(event)\n  write(\"audit\", { v = \"s2\" }\nend\n")
        r.hup()
        m = r.wait_log(r"reload failed error=[^\n]*", 5)
        self.assertTrue(m, "no 'reload failed:' log line:\n" + r.log_tail())
        self.assertRegex(m.group(0), r"rules/stores/42\.lua:\d+:", "reload failure should say path:line")
        self.assertRegex(m.group(0), r"rules/stores/42\.lua:[34]:")
        self.assertEqual(self.send_and_get_v(r), "s1", "old rule must keep serving after a failed reload")
        h = r.healthz()
        self.assertEqual(h["reloads"], 0, h)
        self.assertIsInstance(h["last_reload_error"], str, h)
        self.assertIn("42.lua", h["last_reload_error"])
        # a rule that compiles but does not return a function is also refused
        self.wd.rule("42", "return 42\n")
        r.hup()
        self.assertTrue(wait_until(lambda: r.count_log(FAILED_RE) >= 2, 5),
                        "a rule returning a number should fail the reload:\n" + r.log_tail())
        self.assertEqual(self.send_and_get_v(r), "s1")
        # fix it: reload works again
        self.wd.rule("42", versioned("s3"))
        r.hup()
        self.reloaded(r, 1)
        self.assertEqual(self.send_and_get_v(r), "s3")
        self.assertEqual(r.healthz()["reloads"], 1)

    def test_broken_config_keeps_old(self):
        r = self.start()
        cfg_ok = open(self.wd.p("hookrouter.lua")).read()
        self.wd.write("hookrouter.lua", "return {\n  listen = \n")
        r.hup()
        m = r.wait_log(r"reload failed error=[^\n]*", 5)
        self.assertTrue(m, "no 'reload failed:' for a broken config:\n" + r.log_tail())
        self.assertIn("hookrouter.lua", m.group(0))
        self.assertEqual(self.send_and_get_v(r), "s1")
        # wrong type in the config
        self.wd.write("hookrouter.lua", cfg_ok.replace('"var/dead-letters.jsonl"', "12"))
        r.hup()
        self.assertTrue(wait_until(lambda: r.count_log(FAILED_RE) >= 2, 5), r.log_tail())
        self.assertEqual(self.send_and_get_v(r), "s1")
        self.assertTrue(r.alive())

    def test_config_change_applies(self):
        snk = self.sink()
        self.wd.rule(None, 'return function(e) forward("pos", { n = 1 }) end\n')
        self.wd.config(base_config(targets={"pos": target(snk.url + "/old")}))
        r = self.router()
        self.assertOk(r.post("/t", {}))
        self.assertEqual(snk.wait_for(1)[0].path, "/old")
        self.wd.config(base_config(targets={"pos": target(snk.url + "/new")}, tokens=[TOKEN2]))
        r.hup()
        self.reloaded(r, 1)
        self.assertEqual(r.post("/t", {}, token=TOKEN).status, 401, "old token still accepted after reload")
        self.assertOk(r.post("/t", {}, token=TOKEN2))
        self.assertEqual(snk.wait_for(2)[1].path, "/new")

    def test_listen_change_needs_restart(self):
        r = self.start()
        cfg = base_config(listen="127.0.0.1:1")
        self.wd.config(cfg)
        r.hup()
        m = r.wait_log(r"(?i)[^\n]*restart[^\n]*", 5)
        self.assertTrue(m, "changing listen should log that a restart is needed:\n" + r.log_tail())
        self.assertOk(r.post("/t", {}))

    def test_sighup_burst(self):
        r = self.start()
        self.wd.rule("42", versioned("burst-final"))
        for _ in range(30):
            r.hup()
        time.sleep(0.3)
        self.assertTrue(r.alive(), "router died during a SIGHUP burst")
        ok = wait_until(lambda: r.healthz()["reloads"] >= 1, 5)
        self.assertTrue(ok, r.healthz())
        self.assertEqual(self.send_and_get_v(r), "burst-final")
        n = r.healthz()["reloads"]
        self.assertGreaterEqual(n, 1)
        self.assertLessEqual(n, 30)

    def test_sighup_during_reload_not_lost(self):
        """Rules that change between two close SIGHUPs: the last version must win."""
        r = self.start()
        # a bulky rule tree makes each reload take a little time
        for i in range(200):
            self.wd.rule("s%d" % i, versioned("x%d" % i) + "-- " + "pad " * 200 + "\n")
        for k in range(5):
            self.wd.rule("42", versioned("k%d" % k))
            r.hup()
            time.sleep(0.005)
        final = versioned("final")
        self.wd.rule("42", final)
        r.hup()
        ok = wait_until(lambda: self.send_and_get_v(r) == "final", 6, interval=0.1)
        self.assertTrue(ok, "the last rule version never took effect (a SIGHUP was lost)")

    def test_requests_during_reloads_all_succeed(self):
        r = self.start()
        failures = []
        count = [0]
        stop = threading.Event()

        def sender(keepalive):
            c = None
            while not stop.is_set():
                try:
                    if keepalive:
                        if c is None:
                            c = r.raw()
                        c.send(http_req("POST", "/t", body=b'{"storeId":42}'))
                        resp = c.read_response()
                        if resp.status != 200:
                            failures.append((resp.status, resp.body[:200]))
                        if c.eof:
                            c.close()
                            c = None
                    else:
                        resp = r.post("/t", {"storeId": 42})
                        if resp.status != 200:
                            failures.append((resp.status, resp.body[:200]))
                    count[0] += 1
                except Exception as e:
                    failures.append(repr(e))
                    time.sleep(0.05)
                    if c:
                        c.close()
                        c = None
            if c:
                c.close()

        threads = [threading.Thread(target=sender, args=(k,)) for k in (True, True, False)]
        for t in threads:
            t.start()
        try:
            for i in range(20):
                self.wd.rule("42", versioned("loop%d" % i))
                r.hup()
                time.sleep(0.05)
        finally:
            time.sleep(0.2)
            stop.set()
            for t in threads:
                t.join(10)
        self.assertEqual(failures[:10], [], "%d of %d requests failed during reloads" % (len(failures), count[0]))
        self.assertGreater(count[0], 50)
        self.assertTrue(r.alive())
        self.assertGreaterEqual(r.healthz()["reloads"], 1)

    def test_request_spanning_a_reload(self):
        """Headers arrive, then a reload completes, then the body: the request must finish
        (on either rule set) with the right event type, and the router must not touch freed
        config memory (run under HR_SANITIZE / valgrind to see it)."""
        self.wd.rule(None, 'return function(e) write("audit", { v = "d1", type = e.type, path = e.path }) end\n')
        self.wd.config(base_config())
        r = self.router()
        conns = []
        for i in range(5):
            c = r.raw()
            req = http_req("POST", "/aifi/checkout-zone/left", body=b'{"storeId": "z", "i": %d}' % i)
            c.send(req[:-4])
            conns.append((c, req[-4:]))
        time.sleep(0.1)
        # a new config with different endpoints (so the old endpoint table goes away)
        self.wd.rule(None, 'return function(e) write("audit", { v = "d2", type = e.type, path = e.path }) end\n')
        eps = {k: v + ".renamed" for k, v in ENDPOINTS.items()}
        eps["/other/path/entirely"] = "other"
        self.wd.config(base_config(endpoints=eps))
        r.hup()
        self.reloaded(r, 1)
        # more reloads so the freed memory gets reused
        for k in range(3):
            self.wd.rule(None, 'return function(e) write("audit", { v = "d%d", type = e.type, path = e.path }) end\n' % (k + 3))
            r.hup()
            self.reloaded(r, k + 2)
        for c, rest in conns:
            try:
                c.send(rest)
                resp = c.read_response()
            finally:
                c.close()
            self.assertEqual(resp.status, 200, resp)
        self.assertTrue(r.alive(), "router died finishing requests that spanned a reload:\n" + r.log_tail())
        a = wait_until(lambda: len(self.wd.jsonl("var/audit.jsonl")) >= 5 and self.wd.jsonl("var/audit.jsonl"))
        self.assertTrue(a, self.wd.jsonl("var/audit.jsonl"))
        for line in a:
            self.assertIn(line["type"], ("checkout-zone.left", "checkout-zone.left.renamed"), line)
            self.assertEqual(line["path"], "/aifi/checkout-zone/left")

    def test_files_reopened_on_sighup(self):
        r = self.start()
        self.assertEqual(self.send_and_get_v(r), "s1")
        os.rename(self.wd.p("var/audit.jsonl"), self.wd.p("var/audit.jsonl.1"))
        r.hup()
        self.reloaded(r, 1)
        self.assertOk(r.post("/t", {"storeId": 42}))
        self.assertTrue(wait_until(lambda: len(self.wd.jsonl("var/audit.jsonl")) == 1),
                        "after logrotate + SIGHUP the new line did not go to a fresh var/audit.jsonl")
        self.assertEqual(len(read_jsonl(self.wd.p("var/audit.jsonl.1"))), 1)

    def test_files_reopened_on_a_failed_reload(self):
        # logrotate's SIGHUP while a broken rule is on disk: the reload fails, the old rules
        # keep serving, and the files are reopened all the same (a line written into the
        # rotated file could be lost when logrotate compresses and deletes it).
        r = self.start()
        self.assertEqual(self.send_and_get_v(r), "s1")
        os.rename(self.wd.p("var/audit.jsonl"), self.wd.p("var/audit.jsonl.1"))
        self.wd.rule("43", "return function(e\n")  # does not compile
        r.hup()
        self.assertTrue(r.wait_log(r"reload failed error=", 5), r.log_tail())
        self.assertOk(r.post("/t", {"storeId": 42}))
        self.assertTrue(wait_until(lambda: len(self.wd.jsonl("var/audit.jsonl")) == 1),
                        "after logrotate + a failed reload the line did not go to a fresh file")
        self.assertEqual(self.wd.jsonl("var/audit.jsonl")[0]["v"], "s1")
        self.assertEqual(len(read_jsonl(self.wd.p("var/audit.jsonl.1"))), 1)


if __name__ == "__main__":
    main()
