"""GET /readyz: 200 while serving normally, 503 with the reasons while the spool is full or the
last reload failed, and back; /healthz stays 200 but says "degraded" (an open circuit too)."""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hrtest import *  # noqa: E402,F401,F403

RULE = 'return function(e) forward("pos", { n = e.body.n, pad = e.body.pad }) end\n'
BROKEN = 'return function(e) forward("pos", {\n'  # a syntax error


def readyz(r, method="GET"):
    return request(r.port, method, "/readyz", token=None)


class ReadyzTest(HRTestCase):
    def assertReady(self, r):
        resp = readyz(r)
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(resp.json(), {"status": "ready"})

    def assertNotReady(self, r, reason_re):
        resp = readyz(r)
        self.assertEqual(resp.status, 503, resp)
        j = resp.json()
        self.assertEqual(j["status"], "not ready", j)
        self.assertTrue(any(re.search(reason_re, x) for x in j["reasons"]), j)
        return j["reasons"]

    def reloaded(self, r, pattern, count):
        self.assertTrue(wait_until(lambda: r.count_log(pattern) >= count, 5), r.log_tail())

    def test_ready_at_start_head_and_methods(self):
        self.wd.rule(None, RULE)
        snk = self.sink()
        r = self.router(base_config(targets={"pos": target(snk.url)}))
        self.assertReady(r)
        head = readyz(r, "HEAD")
        self.assertEqual(head.status, 200, head)
        self.assertEqual(head.body, b"")
        post = readyz(r, "POST")
        self.assertEqual(post.status, 405, post)
        self.assertEqual(post.header("Allow"), "GET, HEAD")
        h = r.healthz()
        self.assertEqual(h["status"], "ok")
        self.assertEqual(h["reasons"], [])

    def test_failed_reload_then_good_reload(self):
        self.wd.rule(None, RULE)
        snk = self.sink()
        r = self.router(base_config(targets={"pos": target(snk.url)}))
        self.assertReady(r)
        self.wd.rule(None, BROKEN)
        r.hup()
        self.reloaded(r, r"reload failed error=", 1)
        reasons = self.assertNotReady(r, r"^last reload failed: .*\.lua")
        self.assertEqual(len(reasons), 1, reasons)
        h = r.healthz()
        self.assertEqual(h["status"], "degraded", h)
        self.assertEqual(h["reasons"], reasons)
        self.assertOk(r.post("/t", {"n": 1}))  # still serving the old rules
        self.wd.rule(None, RULE)
        r.hup()
        self.reloaded(r, r"(?<!\w)reloaded", 1)
        self.assertReady(r)
        h = r.healthz()
        self.assertEqual((h["status"], h["reasons"]), ("ok", []), h)

    def test_full_spool_then_drained(self):
        self.wd.rule(None, RULE)
        snk = self.sink(down=True)
        r = self.router(base_config(max_spool_bytes=4096, targets={
            "pos": target(snk.url, max_attempts=1000, retry_ms=[0, 200], circuit_probe_ms=200)}))
        self.assertReady(r)
        codes = []
        for i in range(40):
            codes.append(r.post("/t", {"n": i, "pad": "x" * 200}).status)
            if codes[-1] == 503:
                break
        self.assertEqual(codes[-1], 503, codes)
        reasons = self.assertNotReady(r, r"^spool full: \d+ bytes of max_spool_bytes 4096")
        h = r.healthz()
        self.assertEqual(h["status"], "degraded", h)
        self.assertIn(reasons[0], h["reasons"])
        acked = codes.count(200)
        snk.start()  # the target comes back: the backlog drains
        snk.wait_for(acked, timeout=T(10))
        self.assertTrue(wait_until(lambda: readyz(r).status == 200, 5), readyz(r))
        self.assertReady(r)
        self.assertOk(r.post("/t", {"n": 99}))

    def test_open_circuit_degrades_healthz_only(self):
        self.wd.rule(None, RULE)
        snk = self.sink(down=True)
        r = self.router(base_config(targets={
            "pos": target(snk.url, max_attempts=1000, retry_ms=[0, 20], circuit_failures=3,
                          circuit_probe_ms=60000)}))
        for i in range(3):
            self.assertOk(r.post("/t", {"n": i}))
        self.assertTrue(r.wait_log(r"circuit open target=pos", 5), r.log_tail())
        h = r.healthz()
        self.assertEqual(h["status"], "degraded", h)
        self.assertEqual(h["reasons"], ["circuit open: pos"])
        self.assertReady(r)

    def test_workers_2_same_answers(self):
        self.wd.rule(None, RULE)
        snk = self.sink()
        r = self.router(base_config(workers=2, targets={"pos": target(snk.url)}))
        for _ in range(8):  # fresh connections: either worker answers
            self.assertReady(r)
        self.wd.rule(None, BROKEN)
        r.hup()
        self.reloaded(r, r"reload failed error=", 2)  # each worker reloads
        seen = set()
        for _ in range(8):
            seen.add(tuple(self.assertNotReady(r, r"^last reload failed: ")))
            h = r.healthz()
            self.assertEqual(h["status"], "degraded", h)
        self.assertEqual(len(seen), 1, seen)
        self.wd.rule(None, RULE)
        r.hup()
        self.reloaded(r, r"(?<!\w)reloaded", 2)
        for _ in range(8):
            self.assertReady(r)
            self.assertEqual(r.healthz()["status"], "ok")


if __name__ == "__main__":
    main()
