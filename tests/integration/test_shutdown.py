"""SIGTERM/SIGINT: stop accepting, finish in-flight requests, finish in-flight deliveries within
the grace period, and leave the rest in the spool (not in dead letters) for the next start."""
import os
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hrtest import *  # noqa: E402,F401,F403

FORWARD_RULE = 'return function(e) forward("pos", { n = e.body.n }) end\n'


class ShutdownTest(HRTestCase):
    def start(self, snk, grace_ms=5000, max_attempts=5, **cfg):
        self.wd.rule(None, FORWARD_RULE)
        return self.router(base_config(targets={"pos": target(snk.url, max_attempts=max_attempts, timeout_ms=5000)},
                                       shutdown_grace_ms=grace_ms,
                                       delivery={"retry_base_ms": 100, "retry_max_ms": 200}, **cfg))

    def test_sigterm_drains_slow_sink(self):
        snk = self.sink(delay=1.0)
        r = self.start(snk)
        ids = [self.assertOk(r.post("/t", {"n": i})) for i in range(3)]
        t0 = time.monotonic()
        r.signal(signal.SIGTERM)
        code = r.wait_exit(10)
        dt = time.monotonic() - t0
        self.assertEqual(code, 0, "exit code %r after SIGTERM; log:\n%s" % (code, r.log_tail()))
        self.assertEqual(snk.count(), 3, "sink got %d of 3 before the router exited" % snk.count())
        self.assertTrue(wait_until(lambda: snk.completed == 3, 2))
        self.assertGreater(dt, 0.8, "router exited after %.2fs, before the slow sink answered" % dt)
        self.assertEqual(sorted(q.header("X-Hookrouter-Event-Id") for q in snk.requests), sorted(ids))
        self.assertEqual(self.wd.dead_letters, [], "nothing should be dead-lettered")

    def test_new_connections_refused_during_drain(self):
        snk = self.sink(delay=1.5)
        r = self.start(snk)
        self.assertOk(r.post("/t", {"n": 1}))
        time.sleep(0.1)
        r.signal(signal.SIGTERM)
        time.sleep(0.3)
        self.assertTrue(r.alive(), "router should still be draining (sink answers after 1.5 s)")
        try:
            s = socket.create_connection(("127.0.0.1", r.port), timeout=1)
        except ConnectionRefusedError:
            pass
        else:
            # accepted at the TCP level: it must at least not be served
            s.sendall(http_req("GET", "/healthz", body=None, token=None))
            s.settimeout(1)
            try:
                data = s.recv(100)
            except (socket.timeout, ConnectionResetError):
                data = b""
            s.close()
            self.fail("a new connection was accepted after SIGTERM (got %r)" % data[:60])
        self.assertEqual(r.wait_exit(10), 0)
        self.assertEqual(snk.count(), 1)

    def test_down_target_stays_in_spool_on_shutdown(self):
        """Issue 4 changed this promise: what is undelivered at the end of the grace period stays
        in the spool (no dead letter with reason "shutdown"), and the next start delivers it."""
        snk = self.sink(down=True)
        r = self.start(snk, grace_ms=500, max_attempts=100)
        ids = [self.assertOk(r.post("/t", {"n": i})) for i in range(3)]
        time.sleep(0.2)
        t0 = time.monotonic()
        r.signal(signal.SIGTERM)
        code = r.wait_exit(10)
        dt = time.monotonic() - t0
        self.assertEqual(code, 0, r.log_tail())
        self.assertLess(dt, T(3.0), "shutdown took %.2fs with shutdown_grace_ms=500" % dt)
        self.assertEqual(self.wd.dead_letters, [], "undelivered events must stay in the spool")
        self.assertRegex(r.log(), r"3 undelivered action\(s\) stay in the spool")
        snk.start()
        r2 = self.router()
        reqs = snk.wait_for(3, timeout=10)
        self.assertEqual(sorted({q.header("X-Hookrouter-Event-Id") for q in reqs}), sorted(ids))
        self.assertEqual(sorted(q.json()["n"] for q in reqs[:3]), [0, 1, 2])
        self.assertTrue(r2.wait_log(r"recovered 3 pending action", 3), r2.log_tail())
        self.assertEqual(self.wd.dead_letters, [])

    def test_in_flight_request_finishes(self):
        snk = self.sink()
        r = self.start(snk)
        c = r.raw()
        try:
            req = http_req("POST", "/t", body=b'{"n": 77}')
            c.send(req[:-5])
            time.sleep(0.2)
            r.signal(signal.SIGTERM)
            time.sleep(0.2)
            c.send(req[-5:])
            resp = c.read_response()
            self.assertEqual(resp.status, 200, "in-flight request was not finished: %r" % resp)
        finally:
            c.close()
        self.assertEqual(r.wait_exit(10), 0, r.log_tail())
        self.assertEqual([q.json() for q in snk.requests], [{"n": 77}])

    def test_idle_keepalive_does_not_block_exit(self):
        snk = self.sink()
        r = self.start(snk)
        c = r.raw()
        try:
            c.send(http_req("POST", "/t", body=b'{"n": 1}'))
            self.assertEqual(c.read_response().status, 200)
            snk.wait_for(1)
            t0 = time.monotonic()
            r.signal(signal.SIGTERM)
            self.assertEqual(r.wait_exit(5), 0, "an idle keep-alive connection kept the router alive")
            self.assertLess(time.monotonic() - t0, T(2.0))
        finally:
            c.close()

    def test_sigint(self):
        snk = self.sink()
        r = self.start(snk)
        self.assertOk(r.post("/t", {"n": 5}))
        snk.wait_for(1)
        r.signal(signal.SIGINT)
        self.assertEqual(r.wait_exit(10), 0, r.log_tail())

    def test_sigterm_idle_is_fast(self):
        r = self.start(self.sink())
        t0 = time.monotonic()
        r.signal(signal.SIGTERM)
        self.assertEqual(r.wait_exit(5), 0, r.log_tail())
        self.assertLess(time.monotonic() - t0, T(1.0))

    def test_sigterm_under_load(self):
        snk = self.sink(delay=0.05)
        r = self.start(snk, grace_ms=3000)
        ok_ids = []
        errors = []
        stop = threading.Event()

        def sender():
            while not stop.is_set():
                try:
                    resp = r.post("/t", {"n": len(ok_ids)}, timeout=3)
                    if resp.status == 200:
                        ok_ids.append(resp.json()["id"])
                    else:
                        errors.append(resp.status)
                except OSError:
                    return  # refused/reset once the listener is closed
        ts = [threading.Thread(target=sender) for _ in range(3)]
        for t in ts:
            t.start()
        time.sleep(0.5)
        r.signal(signal.SIGTERM)
        code = r.wait_exit(15)
        stop.set()
        for t in ts:
            t.join(5)
        self.assertEqual(code, 0, r.log_tail())
        self.assertEqual(errors, [])
        # every accepted event was delivered, dead-lettered, or is delivered by the next start
        # from the spool: nothing lost
        r2 = self.router()
        wait_until(lambda: r2.healthz()["outbox"]["pending"] == 0, 10)
        delivered = {q.header("X-Hookrouter-Event-Id") for q in snk.requests}
        dead = {(d.get("event") or {}).get("id") for d in self.wd.dead_letters}
        missing = set(ok_ids) - delivered - dead
        self.assertEqual(missing, set(), "%d accepted events were neither delivered nor dead-lettered" % len(missing))


if __name__ == "__main__":
    main()
