"""workers = 2: per-core front workers (SO_REUSEPORT listeners, a rule set each) feeding the one
outbox. Both workers get traffic; replies, deliveries, reloads, request() rules, SIGTERM and
kill -9 behave exactly as with one worker."""
import json
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hrtest import *  # noqa: E402,F401,F403

FORWARD_RULE = ('return function(e)\n'
                '  forward("pos", { n = e.body.n, store = e.store, s = e.body.s },\n'
                '          { path = "/in", headers = { ["X-Store"] = e.store } })\n'
                '  write("audit", { n = e.body.n })\n'
                'end\n')


def versioned(v):
    return 'return function(e) write("audit", { v = %s, n = e.body.n }) end\n' % lua_str(v)


def post_many(port, n, body_fn, path="/t", threads=4):
    """POST n bodies, each on its own connection, from a few threads; returns the responses
    in order of i."""
    out = [None] * n
    idx = iter(range(n))
    lock = threading.Lock()

    def run():
        while True:
            with lock:
                i = next(idx, None)
            if i is None:
                return
            out[i] = post(port, path, body_fn(i))
    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return out


class WorkersTest(HRTestCase):
    def cfg(self, **kw):
        return base_config(workers=2, **kw)

    def assert_both_workers(self, r):
        h = r.healthz()
        self.assertEqual(h["workers"], 2, h)
        self.assertEqual(len(h["worker_events"]), 2, h)
        self.assertTrue(all(n > 0 for n in h["worker_events"]),
                        "a worker got no events (SO_REUSEPORT should spread connections): %r" % h)
        return h

    def test_traffic_reaches_sink_on_both_workers(self):
        snk = self.sink()
        self.wd.rule(None, FORWARD_RULE)
        r = self.router(self.cfg(targets={"pos": target(snk.url)}))
        self.assertRegex(r.log(), r"listening on 127\.0\.0\.1:\d+ \(2 workers\)")
        n = 60
        resps = post_many(r.port, n, lambda i: {"n": i, "storeId": 42, "s": "\u00e9\u4e2d"})
        ids = [self.assertOk(x, "event %d" % i) for i, x in enumerate(resps)]
        got = snk.wait_for(n, 10)
        self.assertEqual(len(got), n)
        by_id = {q.header("X-Hookrouter-Event-Id"): q for q in got}
        self.assertEqual(set(by_id), set(ids))
        for i, eid in enumerate(ids):
            q = by_id[eid]
            self.assertEqual(q.method, "POST")
            self.assertEqual(q.path, "/in")
            self.assertEqual(q.header("X-Store"), "42")
            self.assertEqual(q.header("Content-Type"), "application/json")
            self.assertEqual(q.header("User-Agent"), "hookrouter/" + VERSION)
            self.assertEqual(q.json(), {"n": i, "store": "42", "s": "\u00e9\u4e2d"})
        audit = wait_until(lambda: len(self.wd.jsonl("var/audit.jsonl")) >= n and
                           self.wd.jsonl("var/audit.jsonl"))
        self.assertEqual(sorted(a["n"] for a in audit), list(range(n)))
        h = self.assert_both_workers(r)
        self.assertEqual(h["events"]["accepted"], n, h)
        self.assertEqual(sum(h["worker_events"]), n, h)
        self.assertTrue(wait_until(lambda: r.healthz()["outbox"]["delivered"] == 2 * n), r.healthz())
        self.assertEqual(r.healthz()["outbox"]["pending"], 0)
        # rejections are counted on whichever worker saw them, and summed
        for _ in range(6):
            self.assertEqual(post(r.port, "/t", {"n": 0}, token="wrong").status, 401)
        self.assertEqual(r.healthz()["events"]["rejected"], 6)

    def test_reload_good_and_broken_on_all_workers(self):
        self.wd.rule(None, versioned("v1"))
        r = self.router(self.cfg())
        self.wd.rule(None, versioned("v2"))
        r.hup()
        self.assertTrue(wait_until(lambda: r.count_log(r"(?<!\w)reloaded ") >= 2, 5),
                        "each worker logs its reload:\n" + r.log_tail())
        n = 40
        for x in post_many(r.port, n, lambda i: {"n": i}):
            self.assertOk(x)
        audit = wait_until(lambda: len(self.wd.jsonl("var/audit.jsonl")) >= n and
                           self.wd.jsonl("var/audit.jsonl"))
        self.assertEqual({a["v"] for a in audit}, {"v2"}, "a worker kept the old rule")
        h = self.assert_both_workers(r)
        self.assertEqual(h["reloads"], 1, h)
        # a broken rule: every worker refuses it and keeps v2
        self.wd.rule(None, "return function(e)\n  write(\"audit\", { v = \"v3\" }\n")
        r.hup()
        self.assertTrue(wait_until(lambda: r.count_log(r"reload failed error=[^\n]*default\.lua:") >= 2, 5),
                        r.log_tail())
        for x in post_many(r.port, n, lambda i: {"n": 100 + i}):
            self.assertOk(x)
        audit = wait_until(lambda: len(self.wd.jsonl("var/audit.jsonl")) >= 2 * n and
                           self.wd.jsonl("var/audit.jsonl"))
        self.assertEqual({a["v"] for a in audit}, {"v2"})
        h = r.healthz()
        self.assertEqual(h["reloads"], 1, h)
        self.assertIn("default.lua", h["last_reload_error"])

    def test_sigterm_drains_and_exits_0(self):
        snk = self.sink(delay=0.05)
        self.wd.rule(None, FORWARD_RULE)
        r = self.router(self.cfg(targets={"pos": target(snk.url, concurrency=2)}))
        n = 30
        for x in post_many(r.port, n, lambda i: {"n": i, "storeId": 7}):
            self.assertOk(x)
        self.assertEqual(r.stop(signal.SIGTERM, timeout=20), 0)
        self.assertEqual(snk.count(), n, "SIGTERM should let the outbox drain within the grace")
        log = r.log()
        self.assertEqual(log.count("shutdown: no longer accepting connections"), 2, log)
        self.assertIn("stopped: %d delivered" % (2 * n), log)

    def test_request_rules_on_workers(self):
        snk = self.sink(response_body=b'{"valid":true,"who":"m"}')
        self.wd.rule(None, 'return function(e)\n'
                           '  local res, err = request("members", { n = e.body.n })\n'
                           '  if not res then return respond(502, { error = err }) end\n'
                           '  respond(200, { n = e.body.n, valid = res.body.valid, who = res.body.who })\n'
                           '  write("audit", { n = e.body.n })\n'
                           'end\n')
        r = self.router(self.cfg(targets={"members": target(snk.url)}))
        n = 30
        resps = post_many(r.port, n, lambda i: {"n": i})
        for i, x in enumerate(resps):
            self.assertEqual(x.status, 200, x)
            self.assertEqual(x.json(), {"n": i, "valid": True, "who": "m"})
        self.assertEqual(sorted(q.json()["n"] for q in snk.wait_for(n)), list(range(n)))
        self.assert_both_workers(r)

    def test_kill9_under_load_then_restart_loses_nothing(self):
        snk = self.sink(down=True)
        self.wd.rule(None, FORWARD_RULE)
        self.wd.config(self.cfg(targets={"pos": target(snk.url, max_attempts=1000,
                                                       retry_ms=[0, 100, 200],
                                                       circuit_probe_ms=200)}))
        r = self.router()
        acked, lock, stop = [], threading.Lock(), threading.Event()

        def client():
            n = 0
            while not stop.is_set():
                try:
                    resp = r.post("/t", {"n": n}, timeout=2)
                except OSError:
                    return
                if resp.status == 200:
                    with lock:
                        acked.append(resp.json()["id"])
                n += 1
        ts = [threading.Thread(target=client) for _ in range(4)]
        for t in ts:
            t.start()
        time.sleep(0.7)
        r.kill()
        self._routers.remove(r)
        stop.set()
        for t in ts:
            t.join(5)
        self.assertGreater(len(acked), 50)
        snk.start()
        r = self.router()
        want = set(acked)
        ids = lambda: {q.header("X-Hookrouter-Event-Id") for q in list(snk.requests)}
        wait_until(lambda: want <= ids(), 20)
        missing = want - ids()
        self.assertFalse(missing, "%d of %d acknowledged events never arrived"
                         % (len(missing), len(want)))


if __name__ == "__main__":
    main()
