"""outbox = { kind = "redis" } (issue 15): several nodes share one backlog in Redis streams.
Two nodes accept while the target hangs, one is killed with -9, the target comes up: every
accepted event is delivered (duplicates counted, none lost) and the survivor claimed the dead
node's work; Redis killed -> 503 and /readyz 503, restarted -> accepting and delivering, nothing
lost (AOF, fsync always); an ordered target keeps one store's order while both nodes accept.
Each test starts its own redis-server on a free port; skipped only when the build has no
hiredis (`check` says "built without Redis support")."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hrtest import *  # noqa: E402,F401,F403
import hrtest  # noqa: E402

RULE = 'return function(e) forward("pos", { n = e.body.n, store = e.body.storeId }) end\n'


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def redis_server_bin():
    return shutil.which("redis-server") or ("/usr/bin/redis-server"
                                            if os.path.exists("/usr/bin/redis-server") else None)


class RedisServer:
    """A redis-server of our own on a free loopback port, AOF with fsync always."""

    def __init__(self, replicaof=None):
        self.dir = tempfile.mkdtemp(prefix="hrtest-redis-")
        self.port = free_port()
        self.proc = None
        self.replicaof = replicaof  # the primary's port
        self.start()

    def start(self):
        self.log = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = subprocess.Popen(
            [redis_server_bin(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", self.dir,
             "--daemonize", "no", "--repl-diskless-sync-delay", "0"]
            + (["--replicaof", "127.0.0.1", str(self.replicaof)] if self.replicaof else []),
            stdout=self.log, stderr=subprocess.STDOUT)
        hrtest._PROCS.add(self.proc)
        ok = wait_until(lambda: self._ping(), 10)
        assert ok, "redis-server did not start"

    def _ping(self):
        try:
            return self.cmd("PING") == "PONG"
        except OSError:
            return False
        except RuntimeError as e:  # "LOADING ...": a restart reads its append-only file first
            if str(e).startswith("LOADING"):
                return False
            raise

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.close()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def cmd(self, *args):
        """One command over RESP; the reply decoded (bulk strings as str)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            out = b"*%d\r\n" % len(args)
            for a in args:
                a = a if isinstance(a, bytes) else str(a).encode()
                out += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(out)
            f = s.makefile("rb")
            return self._read(f)

    def _read(self, f):
        line = f.readline()
        if not line:
            raise OSError("closed")
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise RuntimeError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = f.read(n + 2)[:-2]
            return data.decode("utf-8", "replace")
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self._read(f) for _ in range(n)]
        raise OSError("bad reply %r" % line)


class BlackHole:
    """A port that accepts connections and never answers (attempts hang until their timeout)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stopped = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
                self.conns.append(c)
            except OSError:
                return

    def stop(self):
        self.stopped = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in self.conns:
            c.close()


def redis_config(rport, claim_idle_ms=1500, **target_kw):
    t = dict(timeout_ms=700, max_attempts=1000, retry_ms=[200], circuit_failures=1000)
    t.update(target_kw)
    return t, {"kind": "redis", "url": "redis://127.0.0.1:%d/0" % rport, "prefix": "hrt",
               "claim_idle_ms": claim_idle_ms}


class RedisOutboxTest(HRTestCase):
    @classmethod
    def setUpClass(cls):
        if not redis_server_bin():
            raise unittest.SkipTest("redis-server not found on PATH or /usr/bin "
                                    "(scripts/setup.sh installs it)")

    def setUp(self):
        super().setUp()
        self.redis = RedisServer()
        self.addCleanup(self.redis.stop)
        self.wd.rule(None, RULE)

    def write_config(self, port, ordered=False, claim_idle_ms=1500, workers=1):
        t, ob = redis_config(self.redis.port, claim_idle_ms, ordered=ordered)
        t["url"] = "http://127.0.0.1:%d" % port
        self.wd.config(base_config(targets={"pos": t}, outbox=ob, workers=workers))
        res = run_cli(["check", "-c", self.wd.p("hookrouter.lua")])
        if "built without Redis support" in res.stdout + res.stderr:
            self.skipTest("this build has no Redis outbox (configured without hiredis)")
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)

    def node(self):
        r = Router(self.wd, start=False)
        self._routers.append(r)
        r.start()
        self.assertTrue(r.wait_log(r"redis: connected to", 10), r.log_tail())
        return r

    def post_n(self, r, n, store="42"):
        return r.post("/aifi/checkout", {"storeId": store, "n": n})

    def delivered(self, snk):
        """n of every request the sink answered 200, in arrival order."""
        with snk.lock:
            reqs = list(snk.requests)
        return [q.json()["n"] for q in reqs]

    # -----------------------------------------------------------------------------------------

    def test_two_nodes_kill_one_survivor_claims_and_delivers_everything(self):
        hole = BlackHole()
        self.addCleanup(hole.stop)
        self.write_config(hole.port)
        a, b = self.node(), self.node()
        accepted = []
        lock = threading.Lock()

        def sender(r, start):
            for i in range(start, start + 120):
                resp = self.post_n(r, i)
                if resp.status == 200:
                    with lock:
                        accepted.append(i)

        ts = [threading.Thread(target=sender, args=(a, 0)),
              threading.Thread(target=sender, args=(b, 1000))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertEqual(len(accepted), 240)
        # a holds attempts in flight (hanging on the black hole): kill it in the middle of them
        self.assertTrue(wait_until(lambda: a.count_log(r"retry id=") >= 10, 10), a.log_tail())
        claims_before = b.count_log(r"redis: claimed \d+ entr")
        a.kill()
        killed_at = time.monotonic()
        # What the dead node still held. On a slow build a's attempts can outlast claim_idle_ms
        # before the kill, so b may already have claimed them all: then there is nothing left
        # for it to claim, and the delivery check below is what matters.
        a_name = re.search(r"as consumer (\S+):", a.log()).group(1)
        held = dict((c, int(k)) for c, k in
                    (self.redis.cmd("XPENDING", "hrt:t:pos", "hookrouter")[3] or []))
        self._routers.remove(a)  # killed on purpose: no exit status to check
        # b claims a's entries after claim_idle_ms while its circuit is closed; b's own
        # attempts may have opened it (a slow build), so the target comes back first
        time.sleep(0.3)
        hole.stop()
        snk = self.sink(down=True)
        snk.port = hole.port
        snk.start()
        if held.get(a_name, 0):
            self.assertTrue(wait_until(lambda: b.count_log(r"redis: claimed \d+ entr") >
                                       claims_before, 20), b.log_tail())
        else:
            self.assertGreater(claims_before, 0, "a held nothing, and b claimed nothing from it")
        claim_delay = time.monotonic() - killed_at
        self.assertTrue(wait_until(lambda: set(self.delivered(snk)) >= set(accepted), 25),
                        "missing: %r\n%s" % (sorted(set(accepted) - set(self.delivered(snk)))[:20],
                                             b.log_tail()))
        got = self.delivered(snk)
        dups = len(got) - len(set(got))
        print("redis failover: %d accepted, %d requests to the target, %d duplicates; the "
              "dead node's work was claimed %.2f s after the kill (claim_idle_ms 1500)"
              % (len(accepted), len(got), dups, claim_delay), file=sys.stderr)
        self.assertEqual(set(got), set(accepted))
        # everything is acknowledged and deleted: nothing pending, nothing waiting
        self.assertTrue(wait_until(lambda: self.redis.cmd("XLEN", "hrt:t:pos") == 0
                                   and self.redis.cmd("ZCARD", "hrt:delay") == 0, 5))
        # the dead node's consumer, holding nothing now, is swept from the group
        self.assertTrue(wait_until(
            lambda: len(self.redis.cmd("XINFO", "CONSUMERS", "hrt:t:pos", "hookrouter")) == 1, 10),
            self.redis.cmd("XINFO", "CONSUMERS", "hrt:t:pos", "hookrouter"))
        self.assertTrue(b.count_log(r"removed 1 consumer\(s\) of stopped nodes"), b.log_tail())

    def test_redis_lost_503_then_back_nothing_lost(self):
        snk = self.sink(down=True)
        self.write_config(snk.port, workers=2)  # front workers hand over to the Redis outbox
        r = self.node()
        before = []
        for i in range(20):
            self.assertOk(self.post_n(r, i))
            before.append(i)
        self.redis.kill()
        self.assertTrue(wait_until(lambda: self.post_n(r, 999).status == 503, 5), r.log_tail())
        self.assertTrue(r.wait_log(r"redis: connection to .* lost", 5), r.log_tail())
        self.assertTrue(r.wait_log(r"rejected status=503", 5), r.log_tail())
        ready = request(r.port, "GET", "/readyz", token=None)
        self.assertEqual(ready.status, 503, ready)
        self.assertTrue(any("redis unreachable" in x for x in ready.json()["reasons"]), ready.json())
        self.redis.start()
        self.assertTrue(wait_until(
            lambda: request(r.port, "GET", "/readyz", token=None).status == 200, 10), r.log_tail())
        after = []
        for i in range(100, 120):
            self.assertOk(self.post_n(r, i))
            after.append(i)
        snk.start()
        self.assertTrue(wait_until(lambda: set(self.delivered(snk)) >= set(before + after), 15),
                        r.log_tail())
        self.assertNotIn(999, self.delivered(snk))

    def test_ordered_target_keeps_store_order_across_two_nodes(self):
        # a few retries of lane heads on the way; slow answers, so that heads are in flight
        # when their owner is killed
        snk = self.sink(statuses=[503] * 6, delay=0.05)
        self.write_config(snk.port, ordered=True, claim_idle_ms=1000)
        a = self.node()
        self.assertTrue(a.wait_log(r"now delivers ordered lane", 5), a.log_tail())
        b = self.node()  # the lanes are a's: b accepts, a delivers, until a dies
        stores = ["s%d" % k for k in range(6)]
        per, half = 24, 12

        def sender(store, rng, nodes):
            for i in rng:
                r = nodes[i % len(nodes)]  # one store's events through both nodes
                self.assertOk(self.post_n(r, i, store))

        def send(rng, nodes):
            ts = [threading.Thread(target=sender, args=(s, rng, nodes)) for s in stores]
            for t in ts:
                t.start()
            for t in ts:
                t.join()

        def seen():
            with snk.lock:
                reqs = list(snk.requests)
            by = {}
            for q in reqs:
                j = q.json()
                by.setdefault(j["store"], []).append(j["n"])
            return by

        def covered(n):
            want = {(s, i) for s in stores for i in range(n)}
            return lambda: {(s, i) for s, v in seen().items() for i in v} >= want

        send(range(half), [a, b])
        self.assertTrue(wait_until(covered(4), 10), seen())
        a.kill()  # the lane owner, in the middle of its lanes: the leases move to b
        self._routers.remove(a)
        send(range(half, per), [b])
        self.assertTrue(wait_until(covered(per), 20), "%r\n%s" % (seen(), b.log_tail()))
        self.assertTrue(b.count_log(r"now delivers ordered lane"), b.log_tail())
        by = seen()
        total = sum(len(v) for v in by.values())
        print("ordered: %d requests for %d events across the failover" % (total, len(stores) * per),
              file=sys.stderr)
        # beyond the 6 answered 503, at most one head per lane (8) sent again after the kill
        self.assertLessEqual(total, len(stores) * per + 6 + 8, by)
        for s in stores:
            got = by[s]
            # a retried head (or one a's death left unacknowledged) repeats in place; nothing
            # is ever overtaken
            dedup = [n for k, n in enumerate(got) if k == 0 or got[k - 1] != n]
            self.assertEqual(dedup, list(range(per)), "store %s got %r" % (s, got))

    def test_cli_deadletters_replay_spool_against_redis(self):
        snk = self.sink(status=400)  # rejected: dead-lettered at the first attempt
        self.write_config(snk.port)
        r = self.node()
        ids = [self.assertOk(self.post_n(r, i)) for i in range(3)]
        self.assertTrue(wait_until(lambda: self.redis.cmd("XLEN", "hrt:dead") == 3, 5),
                        r.log_tail())
        os.unlink(self.wd.p("var", "dead-letters.jsonl"))  # the node's copy: Redis has them all
        cfg = ["-c", self.wd.p("hookrouter.lua")]
        res = run_cli(["deadletters"] + cfg)
        self.assertEqual(res.returncode, 0, res.stderr)
        lines = [json.loads(x) for x in res.stdout.splitlines()]
        self.assertEqual(sorted(x["event"]["id"] for x in lines), sorted(ids))
        self.assertEqual({x["last_status"] for x in lines}, {400})
        snk.status = 200
        res = run_cli(["replay"] + cfg)
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertIn("replayed 3 dead letters into redis", res.stdout)
        self.assertTrue(wait_until(lambda: snk.completed >= 6, 5), r.log_tail())
        self.assertEqual(sorted(self.delivered(snk)[3:]), [0, 1, 2])
        res = run_cli(["replay"] + cfg)
        self.assertIn("replayed 0 dead letters into redis", res.stdout)
        self.assertIn("3 already replayed", res.stdout)
        # spool: the backlog per target, from Redis
        r.stop()
        self._routers.remove(r)
        for i in range(4):
            self.redis.cmd("XADD", "hrt:t:pos", "*", "c", "x")
        res = run_cli(["spool"] + cfg)
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertRegex(res.stdout, r"(?m)^pos +4 +0 +0 -$")
        self.assertIn("total pending: 4", res.stdout)

    def test_oom_and_missing_replicas_get_503(self):
        snk = self.sink()
        self.write_config(snk.port)
        r = self.node()
        self.assertOk(self.post_n(r, 1))
        self.redis.cmd("CONFIG", "SET", "maxmemory", "1")  # every write is now refused: OOM
        resp = self.post_n(r, 2)
        self.assertEqual(resp.status, 503, resp)
        self.assertIn("spool full", resp.json()["error"])
        self.assertTrue(r.wait_log(r"redis: an event was not stored \(OOM ", 5), r.log_tail())
        self.redis.cmd("CONFIG", "SET", "maxmemory", "0")
        self.assertOk(self.post_n(r, 3))
        # wait_replicas = 1 with no replica: WAIT times out, the sender gets 503
        t, ob = redis_config(self.redis.port)
        t["url"] = snk.url
        ob.update(wait_replicas=1, wait_timeout_ms=50)
        self.wd.config(base_config(targets={"pos": t}, outbox=ob))
        r.stop()
        self._routers.remove(r)
        r = self.node()
        resp = self.post_n(r, 4)
        self.assertEqual(resp.status, 503, resp)
        self.assertTrue(r.wait_log(r"redis: WAIT 1: only 0 replica\(s\) acknowledged within 50 ms",
                                   5), r.log_tail())
        self.assertTrue(wait_until(lambda: {1, 3, 4} <= set(self.delivered(snk)), 5))
        self.assertNotIn(2, self.delivered(snk))

    def test_write_actions_go_through_redis_too(self):
        self.wd.rule(None, 'return function(e) forward("pos", { n = e.body.n })\n'
                           '  write("audit", { n = e.body.n }) end\n')
        snk = self.sink()
        self.write_config(snk.port)
        r = self.node()
        for i in range(5):
            self.assertOk(self.post_n(r, i))
        self.assertTrue(wait_until(lambda: len(self.wd.jsonl("var/audit.jsonl") or []) == 5, 5),
                        r.log_tail())
        self.assertEqual(sorted(x["n"] for x in self.wd.jsonl("var/audit.jsonl")), list(range(5)))
        self.assertTrue(wait_until(lambda: sorted(self.delivered(snk)) == list(range(5)), 5))
        self.assertEqual(self.redis.cmd("XLEN", "hrt:f:audit"), 0)  # acknowledged and deleted
        # /metrics counts this node's deliveries from Redis as the spool outbox counts its own
        # (a delivery is counted once its answer is read and acknowledged: after the sink has it)
        key = 'hookrouter_deliveries_total{target="%s",result="delivered"}'
        self.assertTrue(wait_until(lambda: all(self.metrics(r).get(key % t) == 5
                                               for t in ("pos", "(writes)")), 5))
        m = self.metrics(r)
        for tgt in ("pos", "(writes)"):
            self.assertEqual(m['hookrouter_actions_accepted_total{target="%s"}' % tgt], 5, tgt)
            self.assertEqual(m['hookrouter_deliveries_total{target="%s",result="delivered"}'
                               % tgt], 5, tgt)
            self.assertEqual(m['hookrouter_queue_pending{target="%s"}' % tgt], 0, tgt)
        self.assertEqual(m['hookrouter_delivery_duration_seconds_count{target="pos"}'], 5)
        self.assertEqual(m['hookrouter_delivery_lag_seconds_count{target="pos"}'], 5)

    def metrics(self, r):
        """GET /metrics as {'name{labels}': value}."""
        resp = r.request("GET", "/metrics", token=None)
        self.assertEqual(resp.status, 200)
        out = {}
        for line in resp.body.decode().splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def test_circuit_opens_per_node_and_closes_when_the_target_is_back(self):
        snk = self.sink(down=True)
        self.write_config(snk.port)  # skips without Redis support
        t, ob = redis_config(self.redis.port)
        # retries wait 1.5 s in the delayed set: probes meanwhile find the stream empty
        t.update(url=snk.url, circuit_failures=2, circuit_probe_ms=300, retry_ms=[0, 1500])
        self.wd.config(base_config(targets={"pos": t}, outbox=ob))
        r = self.node()
        for i in range(4):
            self.assertOk(self.post_n(r, i))
        self.assertTrue(r.wait_log(r"circuit open target=pos", 5), r.log_tail())
        time.sleep(1.0)  # a few probe periods with the target still down
        snk.start()
        self.assertTrue(r.wait_log(r"circuit closed target=pos", 5), r.log_tail())
        self.assertTrue(wait_until(lambda: sorted(set(self.delivered(snk))) == [0, 1, 2, 3], 5),
                        r.log_tail())
        # one probe per probe period at most, not one per poll of an empty stream
        self.assertLess(r.count_log(r"sending one probe"), 10, r.log_tail())

    def test_wait_replicas_with_a_replica_and_a_replica_is_not_a_primary(self):
        snk = self.sink()
        self.write_config(snk.port)  # skips without Redis support
        replica = RedisServer(replicaof=self.redis.port)
        self.addCleanup(replica.stop)
        self.assertTrue(wait_until(lambda: "master_link_status:up" in
                                   replica.cmd("INFO", "replication"), 10))
        t, ob = redis_config(self.redis.port)
        t["url"] = snk.url
        ob.update(wait_replicas=1, wait_timeout_ms=2000)
        self.wd.config(base_config(targets={"pos": t}, outbox=ob))
        r = self.node()
        self.assertOk(self.post_n(r, 1))  # WAIT 1: the replica has it
        self.assertTrue(wait_until(lambda: self.delivered(snk) == [1], 5), r.log_tail())
        r.stop()
        self._routers.remove(r)
        # a node pointed at the replica does not take it for the primary
        ob["url"] = "redis://127.0.0.1:%d/0" % replica.port
        self.wd.config(base_config(targets={"pos": t}, outbox=ob))
        r = Router(self.wd, start=False)
        self._routers.append(r)
        r.start()
        self.assertTrue(r.wait_log(r"redis: .*: it is a replica, not the primary", 5), r.log_tail())
        ready = request(r.port, "GET", "/readyz", token=None)
        self.assertEqual(ready.status, 503, ready)
        self.assertEqual(self.post_n(r, 2).status, 503)

    def test_acks_cut_off_by_redis_loss_are_sent_after_reconnect(self):
        snk = self.sink(delay=0.6)  # the answers come while Redis is down
        self.write_config(snk.port, claim_idle_ms=60000)  # no claim would save them in time
        r = self.node()
        for i in range(5):
            self.assertOk(self.post_n(r, i))
        self.assertTrue(wait_until(lambda: len(snk.requests) == 5, 5), r.log_tail())
        self.redis.kill()
        self.assertTrue(wait_until(lambda: snk.completed == 5, 5))
        self.redis.start()
        self.assertTrue(r.wait_log(r"redis: sent the \d+ acknowledgement\(s\) that were cut off", 10),
                        r.log_tail())
        # acknowledged and deleted: nothing pending that a claim would send a second time
        self.assertTrue(wait_until(lambda: self.redis.cmd("XLEN", "hrt:t:pos") == 0, 5),
                        self.redis.cmd("XPENDING", "hrt:t:pos", "hookrouter"))
        self.assertEqual(self.redis.cmd("XPENDING", "hrt:t:pos", "hookrouter")[0], 0)
        self.assertEqual(sorted(self.delivered(snk)), list(range(5)))

    def test_check_validates_outbox_keys(self):
        self.write_config(9)  # skips without Redis support
        cfg = base_config(targets={"pos": target("http://127.0.0.1:9")},
                          outbox={"kind": "redis", "url": "http://x"})
        self.wd.config(cfg)
        res = run_cli(["check", "-c", self.wd.p("hookrouter.lua")])
        self.assertEqual(res.returncode, 1)
        self.assertIn("outbox.url: expected redis://", res.stdout + res.stderr)
        cfg["outbox"] = {"kind": "rediss"}
        self.wd.config(cfg)
        res = run_cli(["check", "-c", self.wd.p("hookrouter.lua")])
        self.assertIn('outbox.kind: expected "spool" or "redis", got "rediss"',
                      res.stdout + res.stderr)
        cfg["outbox"] = {"kind": "redis"}
        self.wd.config(cfg)
        res = run_cli(["check", "-c", self.wd.p("hookrouter.lua")])
        self.assertIn("outbox.url: missing", res.stdout + res.stderr)


if __name__ == "__main__":
    main()
