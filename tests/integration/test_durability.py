"""Issue 4: nothing accepted is ever lost. The durable spool, recovery after kill -9 and torn
writes, retries that survive restarts, Retry-After, dead letters with every attempt, the
circuit breaker, spool limits (503), replay into a running router, per-target isolation, and
the spool / deadletters / replay commands."""
import glob
import os
import random
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hrtest import *  # noqa: E402,F401,F403

FORWARD_RULE = 'return function(e) forward("pos", { n = e.body.n }, { path = "/in" }) end\n'


class ScriptSink:
    """A sink whose answers come from a script of (status, headers) pairs; then `status`."""

    def __init__(self, script=None, status=200, delay=0.0):
        self.script = list(script or [])
        self.status = status
        self.delay = delay
        self.requests = []
        self.lock = threading.Lock()
        sink = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                with sink.lock:
                    sink.requests.append((time.monotonic(), dict(self.headers.items()), body))
                    st, hdrs = sink.script.pop(0) if sink.script else (sink.status, {})
                if sink.delay:
                    time.sleep(sink.delay)
                try:
                    self.send_response(st)
                    for k, v in hdrs.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                except OSError:
                    pass

        class S(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = S(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def count(self):
        with self.lock:
            return len(self.requests)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def ids_of(sink):
    with sink.lock:
        return [q.header("X-Hookrouter-Event-Id") for q in sink.requests]


class DurabilityTest(HRTestCase):
    def cfg(self, url, retry=(0, 100, 200), max_attempts=1000, probe=200, **kw):
        tkw = kw.pop("target_kw", {})
        t = target(url, max_attempts=max_attempts, timeout_ms=2000, retry_ms=list(retry),
                   circuit_probe_ms=probe)
        t.update(tkw)
        return base_config(targets={"pos": t}, **kw)

    def start(self, url, **kw):
        self.wd.rule(None, FORWARD_RULE)
        return self.router(self.cfg(url, **kw))

    def cli(self, *args):
        return run_cli(list(args) + ["-c", self.wd.p("hookrouter.lua")], cwd=self.wd.path)

    def kill(self, r):
        """kill -9 the router (and forget it: its exit status is not checked)."""
        r.kill()
        self._routers.remove(r)

    def segments(self):
        return sorted(glob.glob(self.wd.p("var", "spool", "seg-*.hrs")))

    # ---- crash safety ----------------------------------------------------------------------

    def test_kill9_under_load_loses_nothing(self):
        """Clients record every 200; the router is kill -9'd at random points several times
        with the target down; then the target comes up: every acknowledged id arrives."""
        snk = self.sink(down=True)
        self.wd.rule(None, FORWARD_RULE)
        self.wd.config(self.cfg(snk.url))
        acked, lock = [], threading.Lock()
        rnd = random.Random(4)
        for rnd_i in range(4):
            r = self.router()
            stop = threading.Event()

            def client():
                n = 0
                while not stop.is_set():
                    try:
                        resp = r.post("/t", {"n": n}, timeout=2)
                    except OSError:
                        return  # the router died under us: this one was not acknowledged
                    if resp.status == 200:
                        with lock:
                            acked.append(resp.json()["id"])
                    n += 1
            ts = [threading.Thread(target=client) for _ in range(4)]
            for t in ts:
                t.start()
            time.sleep(rnd.uniform(0.3, 0.9))
            self.kill(r)
            stop.set()
            for t in ts:
                t.join(5)
        self.assertGreater(len(acked), 50, "too few requests acknowledged to mean anything")
        snk.start()
        r = self.router()
        want = set(acked)
        ok = wait_until(lambda: want <= set(ids_of(snk)), 30)
        got = ids_of(snk)
        missing = want - set(got)
        self.assertFalse(ok is None and missing, "%d of %d acknowledged events never arrived: %r"
                         % (len(missing), len(want), sorted(missing)[:5]))
        dups = len(got) - len(set(got))
        print("\n  kill -9 x4: %d acknowledged, %d delivered, %d duplicates, %d corrupt/torn "
              "records skipped" % (len(want), len(got), dups, r.healthz()["outbox"]["spool_corrupt"]),
              file=sys.stderr)
        self.assertEqual(self.wd.dead_letters, [])

    def test_torn_tail_recovered(self):
        snk = self.sink(down=True)
        r = self.start(snk.url, retry=(600000,))  # first attempt in 10 min: only ACTION records
        ids = [self.assertOk(r.post("/t", {"n": i})) for i in range(5)]
        self.kill(r)
        segs = [s for s in self.segments() if os.path.getsize(s) > 0]
        self.assertTrue(segs, "no spool segment written")
        last = segs[-1]
        os.truncate(last, os.path.getsize(last) - 5)
        self.wd.config(self.cfg(snk.url))
        snk.start()
        r2 = self.router()
        reqs = snk.wait_for(4, timeout=5)
        time.sleep(0.3)
        self.assertEqual(sorted({q.header("X-Hookrouter-Event-Id") for q in reqs}), sorted(ids[:4]))
        self.assertTrue(r2.wait_log(r"skipped 1 corrupt or torn record", 2), r2.log_tail())
        self.assertTrue(r2.alive())
        self.assertEqual(r2.healthz()["outbox"]["spool_corrupt"], 1)

    def test_kill9_on_prepared_segment(self):
        """Segments after the first are prepared (zeros to the segment size): a kill -9 leaves
        the newest with a zero tail, which `hookrouter spool` and recovery read as its clean
        end (no skipped range, nothing lost), and every acknowledged event arrives."""
        snk = self.sink(down=True)
        # max_spool_bytes / 8: segments of 64 KiB, which 1200 events fill more than twice
        r = self.start(snk.url, retry=(600000,), max_spool_bytes=512 * 1024)
        ids = [self.assertOk(r.post("/t", {"n": i})) for i in range(1200)]
        self.kill(r)
        segs = self.segments()
        self.assertGreaterEqual(len(segs), 3, segs)
        last = segs[-1]
        with open(last, "rb") as f:
            data = f.read()
        self.assertEqual(len(data), 64 * 1024, "the newest segment was not prepared")
        self.assertTrue(data.rstrip(b"\0"), "no record in the newest segment")
        self.assertGreater(len(data) - len(data.rstrip(b"\0")), 1024, "no zero tail")
        out = self.cli("spool").stdout
        self.assertNotIn("skipped", out)
        self.assertRegex(out, r"(?m)^pos\s+1200\s", out)
        self.assertRegex(out, r"segment\(s\), \d+ bytes \(\d+ on disk\)", out)
        self.wd.config(self.cfg(snk.url, max_spool_bytes=512 * 1024))
        snk.start()
        r2 = self.router()
        self.assertEqual(r2.healthz()["outbox"]["spool_corrupt"], 0)
        self.assertEqual(r2.healthz()["outbox"]["recovered"], 1200)
        reqs = snk.wait_for(1200, timeout=T(20))
        self.assertEqual(sorted({q.header("X-Hookrouter-Event-Id") for q in reqs}), sorted(ids))
        # recovery logs before it serves: no range, no empty segment, no torn record
        self.assertIsNone(re.search(r"spool: segment seg-|torn record", r2.log()), r2.log_tail())

    def test_attempts_survive_restart(self):
        snk = self.sink(down=True)
        r = self.start(snk.url, retry=(0, 100))
        eid = self.assertOk(r.post("/t", {"n": 1}))
        self.assertTrue(r.wait_log(r"retry id=%s[^\n]* attempts=3 " % eid, 5), r.log_tail())
        out = self.cli("spool").stdout
        self.assertRegex(out, r"(?m)^pos\s+1\s", out)
        self.kill(r)
        snk.start()
        r2 = self.router()
        m = r2.wait_log(r"delivered id=%s[^\n]*attempts=(\d+)" % eid, 5)
        self.assertTrue(m, r2.log_tail())
        self.assertGreaterEqual(int(m.group(1)), 4, "the attempt count restarted from 0")
        self.assertTrue(wait_until(lambda: r2.healthz()["outbox"]["pending"] == 0, 3))
        self.assertTrue(wait_until(lambda: "total pending: 0" in self.cli("spool").stdout, 3))

    def test_backlog_beyond_memory_cap_is_read_back_from_spool(self):
        """Pending actions past the outbox's in-memory cap (32 MiB) are dropped from memory and
        read back from the spool on their turn: every one arrives intact."""
        snk = self.sink(down=True)
        self.wd.rule(None, 'return function(e) forward("pos", e.body) end\n')
        r = self.router(self.cfg(snk.url, retry=(0, 100), log={"level": "debug"}))
        pad = "x" * 700000
        n = 52  # 52 * 700 KB > 32 MiB
        for i in range(n):
            self.assertOk(r.post("/t", {"n": i, "pad": pad}))
        self.assertEqual(r.healthz()["outbox"]["pending"], n)
        self.assertTrue(r.wait_log(r"bytes of actions in memory: id=\d+ waits on disk", 3),
                        "the cap was never reached: " + r.log_tail())
        snk.start()
        self.assertTrue(snk.wait_for(n, 30), "delivered %d of %d" % (snk.count(), n))
        got = sorted(q.json()["n"] for q in snk.requests[:n])
        self.assertEqual(got, list(range(n)))
        for q in snk.requests[:n]:
            self.assertEqual(q.json()["pad"], pad)
        self.assertTrue(wait_until(lambda: r.healthz()["outbox"]["pending"] == 0, 5))

    def test_finished_segments_deleted(self):
        snk = self.sink()
        r = self.start(snk.url)
        for i in range(20):
            self.assertOk(r.post("/t", {"n": i}))
        snk.wait_for(20)
        self.assertTrue(wait_until(lambda: r.healthz()["outbox"]["pending"] == 0, 3))
        r.stop()
        self.assertEqual(self.segments(), [], "finished segments stayed: %r" % self.segments())

    def test_dead_target_does_not_pin_the_spool(self):
        """One event for a target that stays down, then a stream for a healthy one: compaction
        copies the pending event forward, so the spool stays bounded and nothing gets a 503;
        after a restart the event is still pending with its attempt count."""
        dead = self.sink(down=True)
        ok = self.sink()
        self.wd.rule(None, 'return function(e) if e.body.dead then forward("dead", { n = e.body.n }) '
                           'else forward("pos", { n = e.body.n, pad = e.body.pad }) end end\n')
        max_bytes = 512 * 1024  # segments of max / 8 = 64 KiB
        cfg = base_config(max_spool_bytes=max_bytes, targets={
            "dead": target(dead.url, max_attempts=1000, retry_ms=[0, 300], circuit_probe_ms=300),
            "pos": target(ok.url, retry_ms=[0, 100])})
        r = self.router(cfg)
        eid = self.assertOk(r.post("/t", {"n": 0, "dead": True}))
        self.assertTrue(r.wait_log(r"retry id=%s[^\n]* attempts=2 " % eid, 5), r.log_tail())
        pad = "x" * 700
        codes, peak, n = [], 0, 1500  # ~1.1 MB of actions through a 512 KiB spool
        for i in range(1, n + 1):
            codes.append(r.post("/t", {"n": i, "pad": pad}).status)
            if i % 100 == 0:  # let the healthy target keep up: its backlog is not the point
                peak = max(peak, r.healthz()["outbox"]["spool_bytes"])
                wait_until(lambda: r.healthz()["outbox"]["pending"] <= 10, 5)
        self.assertEqual([c for c in codes if c != 200], [], "refused: %s" % r.log_tail())
        ok.wait_for(n, timeout=T(20))
        self.assertTrue(r.wait_log(r"spool: compacted seg-[0-9a-f]+\.hrs \(1 pending moved, \d+ "
                                   r"bytes freed\)", 5), r.log_tail())
        h = r.healthz()["outbox"]
        self.assertGreaterEqual(h["spool_compactions"], 1)
        self.assertLessEqual(peak, max_bytes)
        self.assertTrue(wait_until(lambda: r.healthz()["outbox"]["pending"] == 1, 5), r.log_tail())
        self.assertLess(r.healthz()["outbox"]["spool_bytes"], max_bytes // 2)
        seen = [int(m) for m in re.findall(r"retry id=%s[^\n]* attempts=(\d+) " % eid, r.log())]
        self.assertGreaterEqual(max(seen), 2)
        r.stop()
        out = self.cli("spool").stdout
        self.assertRegex(out, r"(?m)^dead\s+1\s", out)
        self.assertIn("total pending: 1", out)
        # restart with the target up: the same event, its attempt count carried on
        dead.start()
        r2 = self.router()
        m = r2.wait_log(r"delivered id=%s[^\n]*attempts=(\d+)" % eid, T(5))
        self.assertTrue(m, r2.log_tail())
        self.assertGreater(int(m.group(1)), max(seen), "the attempt count restarted")
        self.assertEqual(r2.healthz()["outbox"]["recovered"], 1)
        self.assertTrue(wait_until(lambda: r2.healthz()["outbox"]["pending"] == 0, 3))
        self.assertEqual(dead.count(), 1)

    # ---- delivery policy -------------------------------------------------------------------

    def test_400_dead_letter_with_attempt_log(self):
        snk = ScriptSink(script=[(503, {}), (400, {})])
        self.addCleanup(snk.stop)
        r = self.start(snk.url, retry=(0, 50))
        eid = self.assertOk(r.post("/t", {"n": 7}))
        d = wait_until(lambda: self.wd.dead_letters, 5)
        self.assertTrue(d, r.log_tail())
        time.sleep(0.3)
        self.assertEqual(snk.count(), 2, "a 400 must not be retried")
        d = d[0]
        self.assertEqual(d["reason"], "rejected")
        self.assertEqual(d["event"]["id"], eid)
        self.assertEqual(d["target"], "pos")
        self.assertEqual(d["body"], {"n": 7})
        self.assertEqual([(a["attempt"], a["status"]) for a in d["attempt_log"]], [(1, 503), (2, 400)])
        for a in d["attempt_log"]:
            self.assertIn("at", a)
        self.assertEqual(d["headers"].get("X-Hookrouter-Event-Id"), eid)

    def test_503_retry_after_honoured(self):
        snk = ScriptSink(script=[(503, {"Retry-After": "1"})])
        self.addCleanup(snk.stop)
        r = self.start(snk.url, retry=(0, 10))
        eid = self.assertOk(r.post("/t", {"n": 1}))
        self.assertTrue(wait_until(lambda: snk.count() >= 2, 4))
        (t0, h0, _), (t1, h1, _) = snk.requests[:2]
        self.assertGreaterEqual(t1 - t0, 0.9, "Retry-After: 1 not honoured (%.3fs)" % (t1 - t0))
        self.assertEqual(h0.get("X-Hookrouter-Event-Id"), eid)
        self.assertEqual(h1.get("X-Hookrouter-Event-Id"), eid)

    def test_flapping_target_circuit_opens_and_closes(self):
        snk = ScriptSink(script=[(500, {})] * 6)
        self.addCleanup(snk.stop)
        r = self.start(snk.url, retry=(0, 20), probe=400,
                       target_kw={"circuit_failures": 3, "concurrency": 1})
        ids = [self.assertOk(r.post("/t", {"n": i})) for i in range(3)]
        self.assertTrue(r.wait_log(r"circuit open target=pos", 3), r.log_tail())
        self.assertEqual(r.healthz()["outbox"]["targets"]["pos"]["circuit"], "open")
        self.assertTrue(r.wait_log(r"circuit closed target=pos", 8), r.log_tail())
        self.assertTrue(wait_until(lambda: r.healthz()["outbox"]["pending"] == 0, 5), r.log_tail())
        self.assertEqual(r.healthz()["outbox"]["targets"]["pos"]["circuit"], "closed")
        got = {h.get("X-Hookrouter-Event-Id") for _, h, _ in snk.requests}
        self.assertEqual(got, set(ids))
        # while open, the target was probed rather than hammered: 6 failures over >= 3 probes
        times = [t for t, _, _ in snk.requests]
        self.assertGreater(times[-1] - times[0], 0.7, "no pause while the circuit was open")

    def test_spool_full_503(self):
        snk = self.sink(down=True)
        r = self.start(snk.url, retry=(600000,), max_spool_bytes=4096)
        codes, acked = [], []
        for i in range(40):
            resp = r.post("/t", {"n": i, "pad": "x" * 200})
            codes.append(resp.status)
            if resp.status == 200:
                acked.append(resp.json()["id"])
            else:
                self.assertEqual(resp.status, 503, resp)
                self.assertIn("spool full", resp.json()["error"])
        self.assertIn(503, codes)
        self.assertTrue(acked)
        self.assertTrue(r.wait_log(r"spool full", 2), r.log_tail())
        h = r.healthz()
        self.assertGreaterEqual(h["outbox"]["refused"], codes.count(503))
        self.assertTrue(r.alive())
        # nothing accepted was dropped: after a restart with the target up, all arrive
        r.stop()
        snk.start()
        self.wd.config(self.cfg(snk.url, max_spool_bytes=4096))
        r2 = self.router()
        snk.wait_for(len(acked), timeout=5)
        self.assertEqual(set(ids_of(snk)), set(acked))
        self.assertOk(r2.post("/t", {"n": 99}))  # space again

    def test_slow_target_does_not_delay_another(self):
        slow = self.sink(delay=2.0)
        fast = self.sink()
        self.wd.rule(None, 'return function(e) forward("slow", { n = e.body.n }) '
                           'forward("fast", { n = e.body.n }) end\n')
        r = self.router(base_config(targets={
            "slow": target(slow.url, timeout_ms=5000, concurrency=2, retry_ms=[0, 100]),
            "fast": target(fast.url, retry_ms=[0, 100])}))
        t0 = time.monotonic()
        for i in range(10):
            self.assertOk(r.post("/t", {"n": i}))
        fast.wait_for(10, timeout=2)
        self.assertLess(time.monotonic() - t0, T(1.5), "the fast target waited for the slow one")
        self.assertLessEqual(slow.count(), 2, "concurrency = 2 not honoured")
        self.assertEqual(r.healthz()["outbox"]["targets"]["slow"]["in_flight"], 2)

    def test_ordered_lane_blocks_only_its_store(self):
        snk = ScriptSink(script=[(500, {}), (500, {})])
        self.addCleanup(snk.stop)
        self.wd.rule(None, 'return function(e) forward("pos", { n = e.body.n, s = e.store }) end\n')
        r = self.router(self.cfg(snk.url, retry=(0, 300), target_kw={"ordered": True}))
        self.assertOk(r.post("/t", {"n": 1, "storeId": "A"}))
        time.sleep(0.05)
        self.assertOk(r.post("/t", {"n": 2, "storeId": "A"}))
        self.assertOk(r.post("/t", {"n": 3, "storeId": "B"}))
        self.assertTrue(wait_until(lambda: snk.count() >= 5, 5))
        seq = [json.loads(b)["n"] for _, _, b in snk.requests]
        # A1 fails twice (its lane waits), B3 goes meanwhile, A2 only after A1 got through
        self.assertLess(seq.index(3), len(seq) - 2, seq)
        self.assertLess(len(seq) - 1 - seq[::-1].index(1), seq.index(2), "A2 overtook A1: %r" % seq)

    # ---- dead letters and replay ---------------------------------------------------------

    def test_replay_into_running_router(self):
        snk = ScriptSink(script=[(422, {})])
        self.addCleanup(snk.stop)
        r = self.start(snk.url)
        eid = self.assertOk(r.post("/t", {"n": 5, "storeId": 3}))
        self.assertTrue(wait_until(lambda: self.wd.dead_letters, 5), r.log_tail())
        out = self.cli("deadletters", "--target", "pos")
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = [json.loads(l) for l in out.stdout.splitlines()]
        self.assertEqual([l["event"]["id"] for l in lines], [eid])
        self.assertEqual(lines[0]["body"], {"n": 5})
        self.assertEqual(self.cli("deadletters", "--target", "nope").stdout, "")
        self.assertEqual(self.cli("deadletters", "--since", "1h").stdout.count("\n"), 1)
        rep = self.cli("replay", "--target", "pos", "--since", "1h")
        self.assertEqual(rep.returncode, 0, rep.stderr)
        self.assertIn("replayed 1 dead letters", rep.stdout)
        self.assertTrue(wait_until(lambda: snk.count() >= 2, 4),
                        "the running router did not pick the replay up:\n" + r.log_tail())
        _, h, body = snk.requests[1]
        self.assertEqual(h.get("X-Hookrouter-Event-Id"), eid)
        self.assertEqual(json.loads(body), {"n": 5})
        self.assertTrue(r.wait_log(r"delivered id=%s" % eid, 3))
        again = self.cli("replay", "--id", lines[0]["id"])
        self.assertIn("replayed 0 dead letters (1 already replayed", again.stdout)
        time.sleep(1.3)
        self.assertEqual(snk.count(), 2, "a second replay duplicated the event")
        self.assertGreaterEqual(r.healthz()["outbox"]["replayed"], 1)

    def test_dead_letters_hold_no_credentials_and_replay_restores_them(self):
        snk = ScriptSink(script=[(422, {})])
        self.addCleanup(snk.stop)
        self.wd.rule(None, 'return function(e) forward("pos", e.body, { headers = '
                           '{ ["X-Session-Token"] = "rule-secret", ["X-Plain"] = "p" } }) end\n')
        cfg = self.cfg(snk.url, target_kw={"headers": {"X-Api-Key": "k-secret", "Authorization": "Basic c2VjcmV0"}})
        r = self.router(cfg)
        self.assertOk(r.post("/t", {"n": 1}))
        self.assertTrue(wait_until(lambda: self.wd.dead_letters, 5), r.log_tail())
        raw = open(self.wd.p("var/dead-letters.jsonl")).read()
        for secret in ("k-secret", "c2VjcmV0", "rule-secret", TOKEN):
            self.assertNotIn(secret, raw)
        hs = {k.lower(): v for k, v in self.wd.dead_letters[0]["headers"].items()}
        self.assertEqual((hs["x-api-key"], hs["authorization"], hs["x-session-token"], hs["x-plain"]),
                         ("[redacted]", "[redacted]", "[redacted]", "p"))
        rep = self.cli("replay", "--target", "pos")
        self.assertEqual(rep.returncode, 0, rep.stderr)
        self.assertIn("X-Session-Token was redacted", rep.stderr)
        self.assertTrue(wait_until(lambda: snk.count() >= 2, 4), r.log_tail())
        _, h, _ = snk.requests[1]
        self.assertEqual((h.get("X-Api-Key"), h.get("Authorization"), h.get("X-Plain")),
                         ("k-secret", "Basic c2VjcmV0", "p"))
        self.assertIsNone(h.get("X-Session-Token"))

    def test_fsync_modes_accept(self):
        for mode in ("interval", "never"):
            snk = self.sink()
            self.wd.rule(None, FORWARD_RULE)
            r = self.router(self.cfg(snk.url, fsync=mode, fsync_interval_ms=100))
            ids = [self.assertOk(r.post("/t", {"n": i})) for i in range(5)]
            snk.wait_for(5)
            self.assertEqual(set(ids_of(snk)), set(ids))
            r.stop()

    def test_config_errors_name_the_key(self):
        self.wd.rule(None, FORWARD_RULE)
        self.wd.config(self.cfg("http://127.0.0.1:9/x", fsync="sometimes",
                                target_kw={"retry_ms": "soon", "rate": -1}))
        out = self.cli("check")
        self.assertEqual(out.returncode, 1)
        self.assertIn("fsync: expected \"always\", \"interval\" or \"never\"", out.stderr)
        self.assertIn("targets.pos.retry_ms: expected a table", out.stderr)
        self.assertIn("targets.pos.rate: must be between 0", out.stderr)


if __name__ == "__main__":
    main()
