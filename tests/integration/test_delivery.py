"""Outbound delivery: retries with backoff, dead letters."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hrtest import *  # noqa: E402,F401,F403

FORWARD_RULE = r'''
return function(event)
  forward("pos", { n = event.body.n, store = event.store }, { path = "/in" })
end
'''


class DeliveryTest(HRTestCase):
    def start(self, snk, max_attempts=20, timeout_ms=2000, base=50, rmax=200, **cfg):
        self.wd.rule(None, FORWARD_RULE)
        targets = {"pos": target(snk.url, max_attempts=max_attempts, timeout_ms=timeout_ms,
                                 headers={"X-Api-Key": "k"})}
        return self.router(base_config(targets=targets, delivery={"retry_base_ms": base, "retry_max_ms": rmax},
                                       **cfg))

    def dead(self, n, timeout=5):
        got = wait_until(lambda: len(self.wd.dead_letters) >= n and self.wd.dead_letters, timeout)
        self.assertTrue(got, "dead letters: %d, expected %d" % (len(self.wd.dead_letters), n))
        return got

    def test_target_down_then_up(self):
        snk = self.sink(down=True)
        r = self.start(snk)
        eid = self.assertOk(r.post("/t", {"n": 1, "storeId": 9}))
        self.assertTrue(r.wait_log(r"(?i)retry[^\n]*id=%s" % eid, 3),
                        "no retry log line while the target is down:\n" + r.log_tail())
        time.sleep(0.3)
        snk.start()
        reqs = snk.wait_for(1, timeout=5)
        time.sleep(0.5)
        self.assertEqual(snk.count(), 1, "target got the event more than once: %r" % snk.requests)
        q = reqs[0]
        self.assertEqual(q.header("X-Hookrouter-Event-Id"), eid)
        self.assertEqual(q.json(), {"n": 1, "store": "9"})
        m = r.wait_log(r"delivered[^\n]*id=%s[^\n]*" % eid, 3)
        self.assertTrue(m, "no 'delivered id=%s' log line:\n%s" % (eid, r.log_tail()))
        line = m.group(0)
        self.assertIn("target=pos", line)
        self.assertIn("status=200", line)
        am = re.search(r"attempts=(\d+)", line)
        self.assertTrue(am and int(am.group(1)) > 1, "delivered line should show attempts > 1: %r" % line)
        self.assertEqual(self.wd.dead_letters, [])
        h = wait_until(lambda: (lambda h: h if h["outbox"]["pending"] == 0 else None)(r.healthz()), 3)
        self.assertTrue(h, "outbox still pending: %r" % r.healthz())
        self.assertGreaterEqual(h["outbox"]["delivered"], 1)
        self.assertGreaterEqual(h["outbox"]["retried"], 1)
        self.assertEqual(h["outbox"]["dead"], 0)

    def test_503_then_200_same_event_id(self):
        snk = self.sink(statuses=[503, 200])
        r = self.start(snk)
        eid = self.assertOk(r.post("/t", {"n": 2}))
        reqs = snk.wait_for(2, timeout=5)
        time.sleep(0.3)
        self.assertEqual(snk.count(), 2)
        self.assertEqual([q.header("X-Hookrouter-Event-Id") for q in reqs], [eid, eid])
        self.assertEqual(reqs[0].body, reqs[1].body)
        self.assertEqual(reqs[0].path, "/in")
        self.assertTrue(r.wait_log(r"delivered[^\n]*id=%s[^\n]*attempts=2" % eid, 3),
                        "no delivered line with attempts=2:\n" + r.log_tail())
        self.assertEqual(self.wd.dead_letters, [])

    def test_retryable_statuses(self):
        snk = self.sink(statuses=[429, 408, 500, 502, 200])
        r = self.start(snk)
        eid = self.assertOk(r.post("/t", {"n": 3}))
        snk.wait_for(5, timeout=6)
        time.sleep(0.3)
        self.assertEqual(snk.count(), 5)
        self.assertTrue(r.wait_log(r"delivered[^\n]*id=%s" % eid, 3))
        self.assertEqual(self.wd.dead_letters, [])

    def test_backoff_grows(self):
        snk = self.sink(statuses=[503, 503, 503, 503, 200])
        r = self.start(snk, base=100, rmax=10000)
        self.assertOk(r.post("/t", {"n": 4}))
        reqs = snk.wait_for(5, timeout=8)
        gaps = [b.t - a.t for a, b in zip(reqs, reqs[1:])]
        # exponential with (full) jitter: the total should be well above 4 * base when doubling
        self.assertGreater(sum(gaps), 0.15, "retries not backed off: gaps %r" % gaps)
        self.assertLess(sum(gaps), T(4.0), "backoff too slow for retry_base_ms=100: gaps %r" % gaps)

    def test_target_stays_down_dead_letter(self):
        snk = self.sink(down=True)
        r = self.start(snk, max_attempts=3)
        eid = self.assertOk(r.post("/t", {"n": 5, "storeId": "42"}))
        d = self.dead(1)[0]
        self.assertEqual(d.get("action"), "forward", d)
        self.assertIsInstance(d.get("reason"), str)
        self.assertTrue(d["reason"])
        ev = d.get("event") or {}
        self.assertEqual(ev.get("id"), eid, d)
        self.assertEqual(ev.get("type"), "test.event")
        self.assertEqual(ev.get("store"), "42")
        self.assertIn("accepted_at", ev)
        self.assertEqual(d.get("target"), "pos")
        self.assertEqual(d.get("url"), snk.url + "/in")
        self.assertEqual(d.get("method"), "POST")
        self.assertEqual(d.get("attempts"), 3)
        self.assertIn("last_status", d)
        self.assertIsNone(d["last_status"])
        self.assertIsInstance(d.get("last_error"), str)
        self.assertTrue(d["last_error"], "last_error is empty")
        body = d.get("body")
        if isinstance(body, str):
            body = json.loads(body)
        self.assertEqual(body, {"n": 5, "store": "42"})
        self.assertTrue(r.wait_log(r"(?i)dead[- _]?letter[^\n]*id=%s" % eid, 2),
                        "no dead-letter log line:\n" + r.log_tail())
        h = r.healthz()
        self.assertEqual(h["outbox"]["dead"], 1, h)
        self.assertEqual(h["outbox"]["pending"], 0, h)
        self.assertNotIn(TOKEN, open(self.wd.p("var/dead-letters.jsonl")).read())

    def test_400_dead_letter_at_once(self):
        snk = self.sink(status=400)
        r = self.start(snk)
        eid = self.assertOk(r.post("/t", {"n": 6}))
        d = self.dead(1)[0]
        time.sleep(0.4)
        self.assertEqual(snk.count(), 1, "a 400 must not be retried")
        self.assertEqual(d.get("attempts"), 1)
        self.assertEqual(d.get("last_status"), 400)
        self.assertEqual((d.get("event") or {}).get("id"), eid)
        self.assertEqual(len(self.wd.dead_letters), 1)

    def test_404_and_401_not_retried(self):
        snk = self.sink(statuses=[404, 401])
        r = self.start(snk)
        self.assertOk(r.post("/t", {"n": 7}))
        self.assertOk(r.post("/t", {"n": 8}))
        ds = self.dead(2)
        self.assertEqual(sorted(d.get("last_status") for d in ds), [401, 404])
        time.sleep(0.3)
        self.assertEqual(snk.count(), 2)

    def test_timeout_is_retried(self):
        snk = self.sink(delays=[1.5], delay=0)
        r = self.start(snk, timeout_ms=300)
        eid = self.assertOk(r.post("/t", {"n": 9}))
        reqs = snk.wait_for(2, timeout=5)
        self.assertEqual([q.header("X-Hookrouter-Event-Id") for q in reqs[:2]], [eid, eid])
        self.assertTrue(r.wait_log(r"delivered[^\n]*id=%s" % eid, 3), r.log_tail())

    def test_timeout_exhausted_dead_letter(self):
        snk = self.sink(delay=1.0)
        r = self.start(snk, timeout_ms=200, max_attempts=2)
        eid = self.assertOk(r.post("/t", {"n": 10}))
        d = self.dead(1, timeout=6)[0]
        self.assertEqual(d["event"]["id"], eid)
        self.assertEqual(d.get("attempts"), 2)
        self.assertIsNone(d.get("last_status"))
        self.assertRegex(d.get("last_error") or "", r"(?i)time")

    def test_many_events_all_delivered(self):
        snk = self.sink()
        r = self.start(snk)
        n = 200
        ids = set()
        for i in range(n):
            ids.add(self.assertOk(r.post("/t", {"n": i})))
        reqs = snk.wait_for(n, timeout=10)
        time.sleep(0.2)
        self.assertEqual(snk.count(), n)
        self.assertEqual({q.header("X-Hookrouter-Event-Id") for q in reqs}, ids)
        self.assertEqual(sorted(q.json()["n"] for q in reqs), list(range(n)))

    def test_one_target_down_does_not_block_another(self):
        down = self.sink(down=True)
        up = self.sink()
        self.wd.rule(None, r'''
return function(event)
  forward("down", { n = event.body.n })
  forward("up", { n = event.body.n })
end
''')
        r = self.router(base_config(targets={"down": target(down.url, max_attempts=50),
                                             "up": target(up.url)},
                                    delivery={"retry_base_ms": 50, "retry_max_ms": 200}))
        for i in range(3):
            self.assertOk(r.post("/t", {"n": i}))
        up.wait_for(3, timeout=3)

    def test_write_and_forward_from_same_event(self):
        snk = self.sink()
        self.wd.rule(None, r'''
return function(event)
  write("audit", { id = event.id })
  forward("pos", { n = 1 })
  write("other", { id = event.id, second = true })
end
''')
        r = self.router(base_config(targets={"pos": target(snk.url)},
                                    files={"audit": {"path": "var/audit.jsonl"},
                                           "other": {"path": "var/other.jsonl"}}))
        eid = self.assertOk(r.post("/t", {}))
        snk.wait_for(1)
        self.assertTrue(wait_until(lambda: self.wd.jsonl("var/audit.jsonl") == [{"id": eid}]),
                        self.wd.jsonl("var/audit.jsonl"))
        self.assertTrue(wait_until(lambda: self.wd.jsonl("var/other.jsonl") == [{"id": eid, "second": True}]),
                        "var/other.jsonl: %r" % self.wd.jsonl("var/other.jsonl"))

    def test_keepalive_connections_reused(self):
        snk = self.sink()
        r = self.start(snk)
        n = 20
        for i in range(n):
            self.assertOk(r.post("/t", {"n": i}))
            snk.wait_for(i + 1)  # one at a time, so one connection can serve all
            wait_until(lambda: snk.completed >= i + 1)
            wait_until(lambda: r.count_log(r"delivered id=") >= i + 1, 2)  # the router has the answer
        peers = {q.peer for q in snk.requests}
        self.assertLessEqual(len(peers), 3, "%d connections for %d sequential deliveries: no keep-alive reuse"
                             % (len(peers), n))

    def check_mode(self, mode):
        snk = self.sink(mode=mode, response_body=b'{"answer":"' + b"z" * 3000 + b'"}')
        r = self.start(snk, max_attempts=2)
        ids = []
        for i in range(5):
            ids.append(self.assertOk(r.post("/t", {"n": i})))
            snk.wait_for(i + 1)
        for eid in ids:
            self.assertTrue(r.wait_log(r"delivered[^\n]*id=%s[^\n]*status=200[^\n]*attempts=1" % eid, 3),
                            "%s response: event %s not delivered at the first attempt:\n%s" % (mode, eid, r.log_tail()))
        self.assertEqual(snk.count(), 5)
        self.assertEqual(self.wd.dead_letters, [])

    def test_response_connection_close(self):
        self.check_mode("close")

    def test_response_chunked(self):
        self.check_mode("chunked")

    def test_response_close_delimited(self):
        self.check_mode("eof")

    def test_target_by_hostname(self):
        snk = self.sink()
        self.wd.rule(None, FORWARD_RULE)
        r = self.router(base_config(targets={"pos": target("http://localhost:%d" % snk.port)}))
        eid = self.assertOk(r.post("/t", {"n": 1}))
        q = snk.wait_for(1)[0]
        self.assertEqual(q.header("X-Hookrouter-Event-Id"), eid)
        self.assertEqual(q.header("Host"), "localhost:%d" % snk.port)

    def test_queued_delivery_survives_reload(self):
        """Queued actions are self-contained: a reload that renames the target does not lose them."""
        snk = self.sink(down=True)
        r = self.start(snk, max_attempts=50)
        eid = self.assertOk(r.post("/t", {"n": 1}))
        self.assertTrue(r.wait_log(r"retry[^\n]*id=%s" % eid, 3))
        self.wd.rule(None, 'return function(e) forward("pos2", { n = 2 }) end\n')
        self.wd.config(base_config(targets={"pos2": target("http://127.0.0.1:9/x")},
                                   delivery={"retry_base_ms": 50, "retry_max_ms": 200}))
        r.hup()
        self.assertTrue(r.wait_log(r"reloaded", 3), r.log_tail())
        snk.start()
        q = snk.wait_for(1)[0]
        self.assertEqual(q.header("X-Hookrouter-Event-Id"), eid)
        self.assertEqual(q.json(), {"n": 1})

    def test_write_failure_dead_letter(self):
        os.makedirs(self.wd.p("ro"))
        self.wd.rule(None, 'return function(e) write("bad", { n = e.body.n }) end\n')
        r = self.router(base_config(files={"bad": {"path": "ro/sub-is-a-file/x.jsonl"}}))
        self.wd.write("ro/sub-is-a-file", "not a folder")
        eid = self.assertOk(r.post("/t", {"n": 1}))
        d = self.dead(1)[0]
        self.assertEqual((d.get("event") or {}).get("id"), eid, d)
        self.assertEqual(d.get("action"), "write", d)
        self.assertTrue(r.alive())

    def test_write_retried_on_enospc(self):
        """Regression (issue 9.1): a write() hitting ENOSPC (its file a symlink to /dev/full) is
        retried on the schedule, not dead-lettered, and written once there is room."""
        self.wd.rule(None, 'return function(e) write("audit", { n = e.body.n }) end\n')
        os.symlink("/dev/full", self.wd.p("var", "audit.jsonl"))
        r = self.router(base_config(delivery={"retry_base_ms": 20, "retry_max_ms": 50}))
        eid = self.assertOk(r.post("/t", {"n": 7}))
        self.assertTrue(r.wait_log(r"retry id=%s [^\n]*file=audit error=[^\n]*No space left[^\n]* attempts=2 " % eid, 5),
                        r.log_tail())
        self.assertEqual(self.wd.dead_letters, [])
        self.assertEqual(r.healthz()["outbox"]["pending"], 1)
        os.unlink(self.wd.p("var", "audit.jsonl"))
        self.assertTrue(wait_until(lambda: self.wd.jsonl("var/audit.jsonl") == [{"n": 7}], 5), r.log_tail())
        self.assertTrue(r.wait_log(r"delivered id=%s[^\n]*action=write" % eid, 3), r.log_tail())
        self.assertEqual(self.wd.dead_letters, [])

    def test_failed_rule_dead_letter_kept_in_spool_when_the_file_fails(self):
        """Regression (issue 9.2): the dead letter of a failed rule that cannot be appended
        (ENOSPC) goes to the outbox, which keeps it in the spool until it can be written."""
        self.wd.rule(None, 'return function(e) error("boom " .. e.body.n) end\n')
        os.makedirs(self.wd.p("var"), exist_ok=True)
        os.symlink("/dev/full", self.wd.p("var", "dead-letters.jsonl"))
        r = self.router(base_config(delivery={"retry_base_ms": 20, "retry_max_ms": 50}))
        self.assertEqual(r.post("/t", {"n": 3}).status, 500)
        self.assertTrue(r.wait_log(r"keeping it in the spool to retry", 5), r.log_tail())
        self.assertTrue(r.wait_log(r"retry id=[^\n]*file=dead_letters[^\n]*No space left", 5), r.log_tail())
        self.assertGreaterEqual(r.healthz()["outbox"]["pending"], 1)
        os.unlink(self.wd.p("var", "dead-letters.jsonl"))
        self.assertTrue(wait_until(lambda: self.wd.dead_letters, 5), r.log_tail())
        self.assertIn("boom 3", self.wd.dead_letters[0]["error"])

    def test_created_files_private_unless_mode(self):
        """Regression (issue 9.5): spool segments, dead letters, outputs and incoming/ are 0600
        and new folders 0700; files.<name>.mode sets an output's mode; existing files keep theirs."""
        snk = self.sink(status=400)  # permanent: dead-lettered at once
        self.wd.rule(None, 'return function(e)\n  forward("pos", { n = e.body.n })\n'
                           '  write("shared", { n = e.body.n })\n  write("old", { n = e.body.n })\nend\n')
        self.wd.write("var/old.jsonl", "", mode=0o644)
        r = self.router(base_config(targets={"pos": target(snk.url, max_attempts=1)},
                                    files={"shared": {"path": "out/shared.jsonl", "mode": "0640"},
                                           "old": {"path": "var/old.jsonl", "mode": "0600"}},
                                    dead_letters="dl/dead-letters.jsonl", spool_dir="sp/q"))
        self.assertOk(r.post("/t", {"n": 1}))
        self.assertTrue(wait_until(lambda: os.path.exists(self.wd.p("dl", "dead-letters.jsonl")), 5),
                        r.log_tail())
        self.assertTrue(wait_until(lambda: os.path.exists(self.wd.p("out", "shared.jsonl")), 5),
                        r.log_tail())
        mode = lambda *p: os.stat(self.wd.p(*p)).st_mode & 0o777
        self.assertEqual(mode("dl", "dead-letters.jsonl"), 0o600)
        self.assertEqual(mode("dl"), 0o700)
        self.assertEqual(mode("out", "shared.jsonl"), 0o640)
        self.assertEqual(mode("out"), 0o700)
        self.assertEqual(mode("var", "old.jsonl"), 0o644, "an existing file's mode must not change")
        self.assertEqual(mode("sp"), 0o700)
        self.assertEqual(mode("sp", "q"), 0o700)
        self.assertEqual(mode("sp", "q", "incoming"), 0o700)
        segs = [f for f in os.listdir(self.wd.p("sp", "q")) if f != "incoming"]
        self.assertTrue(segs, os.listdir(self.wd.p("sp", "q")))
        for f in segs:
            self.assertEqual(mode("sp", "q", f), 0o600, f)


if __name__ == "__main__":
    main()
