"""Rules that answer: request()/respond(), reply deadlines and fallbacks, many suspended rules,
SIGHUP and SIGTERM while rules wait, `hookrouter test --reply`, and the shipped examples."""
import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hrtest import *  # noqa: E402,F401,F403

EXAMPLES = os.path.join(SOURCE_DIR, "examples")
VERIFY = "/aifi/entry-code/verify"
MUTATOR = "/aifi/cart-mutator"
FALLBACK = {"status": "FAILED", "reason": "retailer unavailable"}
MEMBER_OK = {"valid": True, "member": {"id": 60417}, "session": "cc256d83-a307-483e-b3bf-3740cb925f92",
             "message": "welcome back"}


class SlowSink:
    """An asyncio HTTP/1.1 sink for many concurrent connections: answers every request after
    `delay` seconds with `body` (JSON). blackhole=True: listens but never accepts."""

    def __init__(self, delay=0.0, body=None, status=200, blackhole=False):
        self.delay, self.status = delay, status
        self.body = json.dumps(body if body is not None else MEMBER_OK).encode()
        self.requests = []
        self.loop = asyncio.new_event_loop()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(2048)
        self.port = self.sock.getsockname()[1]
        self.server = None
        if not blackhole:
            ready = threading.Event()
            self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
            self.thread.start()
            ready.wait(5)

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)

        async def start():
            self.server = await asyncio.start_server(self._conn, sock=self.sock, backlog=2048)
        self.loop.run_until_complete(start())
        ready.set()
        self.loop.run_forever()

    async def _conn(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        n = int(line.split(b":")[1])
                body = await reader.readexactly(n) if n else b""
                self.requests.append((head.split(b"\r\n")[0].decode(), body))
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % (self.status, len(self.body)) + self.body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError,
                asyncio.CancelledError):
            pass
        finally:
            try:
                writer.close()
            except RuntimeError:
                pass

    def stop(self):
        if self.server is not None:
            async def close():
                self.server.close()
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            fut = asyncio.run_coroutine_threadsafe(close(), self.loop)
            fut.result(5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()
        self.sock.close()


def post_json(port, path, body, timeout=10.0):
    t0 = time.monotonic()
    r = post(port, path, body, timeout=timeout)
    return r, time.monotonic() - t0


class ReplyTest(HRTestCase):
    def slow_sink(self, **kw):
        s = SlowSink(**kw)
        self.addCleanup(s.stop)
        return s

    def setup_rules(self):
        """The shipped example rules (lib/members.lua, lib/pricing.lua, lib/payments.lua, stores/77.lua)."""
        for rel in ("lib/members.lua", "lib/pricing.lua", "lib/payments.lua", "lib/aifi.lua", "stores/77.lua"):
            with open(os.path.join(EXAMPLES, "rules", rel)) as f:
                self.wd.write("rules/" + rel, f.read())

    def config(self, members_url, pricing_url="http://127.0.0.1:9", verify_timeout=500,
               **kw):
        eps = dict(ENDPOINTS)
        eps[VERIFY] = {"event": "entry-code.verify", "reply_timeout_ms": verify_timeout,
                       "fallback": {"status": 200, "body": FALLBACK}}
        eps[MUTATOR] = {"event": "cart-mutator", "reply_timeout_ms": 800}  # no fallback
        cfg = base_config(targets={"members": target(members_url + "/members", timeout_ms=1000),
                                   "pricing": target(pricing_url, timeout_ms=1000)},
                          endpoints=eps, **kw)
        return cfg

    def verify_body(self):
        return fixture_json("entry-code-verify.json")

    # ------------------------------------------------------------------ answers

    def test_good_answer_translated(self):
        snk = self.slow_sink(delay=0.05)
        self.setup_rules()
        r = self.router(self.config(snk.url))
        resp, dt = post_json(r.port, VERIFY, self.verify_body())
        self.assertEqual(resp.status, 200, resp.body)
        self.assertEqual(resp.json(), {"status": "SUCCESS", "reason": "welcome back",
                                       "sessionId": MEMBER_OK["session"], "customerId": 60417})
        self.assertEqual(resp.header("content-type"), "application/json")
        self.assertEqual(len(snk.requests), 1)
        line, body = snk.requests[0]
        self.assertEqual(line, "POST /members/entry-codes/check HTTP/1.1")
        self.assertEqual(json.loads(body)["code"], "EC-4F7K2QXN9D")
        self.assertRegex(r.log(), r"event id=\S+ type=entry-code.verify store=77 rule=stores/77.lua "
                                  r"actions=none requests=1 reply=200")
        # a webhook whose rule does not respond() keeps the 200 {"id"} reply
        self.wd.rule(None, 'return function(e) write("audit", {t = e.type}) end\n')
        self.assertOk(r.post("/aifi/customer", {"x": 1}))

    def test_slow_sink_gets_fallback_at_deadline(self):
        snk = self.slow_sink(delay=0.8)  # answers after the 500 ms deadline, before its 1 s timeout
        self.setup_rules()
        r = self.router(self.config(snk.url))
        resp, dt = post_json(r.port, VERIFY, self.verify_body())
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.json(), FALLBACK)
        self.assertGreaterEqual(dt, 0.49)
        self.assertLess(dt, T(0.5) + 0.25, "fallback not sent at the deadline")
        wait_until(lambda: self.wd.dead_letters, 3)  # written through the outbox
        dl = self.wd.dead_letters
        self.assertEqual(len(dl), 1, dl)
        self.assertIn("reply deadline exceeded (500 ms)", json.dumps(dl[0]))
        self.assertTrue(r.wait_log(r"late answer dropped id=\S+ target=members status=200", 3),
                        r.log_tail())
        self.assertEqual(r.healthz()["replies"], {"waiting": 0, "fallbacks": 1, "late_answers": 1})

    def test_dead_sinks(self):
        hole = self.slow_sink(blackhole=True)  # accepts TCP, never answers
        refused = Sink(down=True)
        self.setup_rules()
        r = self.router(self.config(hole.url, pricing_url=refused.url))
        resp, dt = post_json(r.port, VERIFY, self.verify_body())
        self.assertEqual(resp.json(), FALLBACK)
        self.assertGreaterEqual(dt, 0.49)
        self.assertLess(dt, T(0.5) + 0.25)
        # the pricing rule fails at once on a refused connection; that endpoint has no
        # fallback: 500 as for any failed rule, and a dead letter naming the connect error
        resp, dt = post_json(r.port, MUTATOR, fixture_json("cart-mutator.json") | {"storeId": 77})
        self.assertEqual(resp.status, 500, resp.body)
        self.assertLess(dt, 0.4)
        self.assertTrue(wait_until(lambda: len(self.wd.dead_letters) == 2))
        self.assertIn("connect error", json.dumps(self.wd.dead_letters[1]))
        # a refused member service: the rule itself answers FAILED (no wait for the deadline)
        self.wd.config(self.config(refused.url))
        r.hup()
        self.assertTrue(r.wait_log("reloaded", 5))
        resp, dt = post_json(r.port, VERIFY, self.verify_body())
        self.assertEqual(resp.json()["reason"], "member service unavailable")
        self.assertLess(dt, 0.4)

    def test_deadline_without_fallback_and_rule_waiting_forever(self):
        hole = self.slow_sink(blackhole=True)
        self.wd.rule("77", 'return function(e)\n'
                           '  while true do request("members", {}, { timeout_ms = 100 }) end\n'
                           'end\n')
        r = self.router(self.config(hole.url))
        resp, dt = post_json(r.port, MUTATOR, {"storeId": 77})
        self.assertEqual(resp.status, 504, resp.body)
        self.assertEqual(resp.json()["error"], "reply deadline exceeded")
        self.assertGreaterEqual(dt, 0.79)
        self.assertLess(dt, T(0.8) + 0.3)
        self.assertTrue(wait_until(lambda: self.wd.dead_letters, 3))  # through the outbox
        self.assertIn("reply deadline exceeded (800 ms)", json.dumps(self.wd.dead_letters[0]))

    def test_respond_forms_and_actions(self):
        snk = self.slow_sink(body={"n": 5})
        out = self.sink()
        self.wd.rule(None, 'return function(e)\n'
                           '  local res = assert(request("members", e.body))\n'
                           '  forward("pos", { n = res.body.n })\n'
                           '  respond(202, "n=" .. res.body.n, { ["X-Answer"] = "yes" })\n'
                           'end\n')
        cfg = self.config(snk.url)
        cfg["targets"]["pos"] = target(out.url)
        r = self.router(cfg)
        resp = r.post("/aifi/customer", {"a": 1})
        self.assertEqual(resp.status, 202)
        self.assertEqual(resp.body, b"n=5")
        self.assertEqual(resp.header("x-answer"), "yes")
        self.assertTrue(resp.header("content-type").startswith("text/plain"))
        self.assertEqual(out.wait_for(1)[0].json(), {"n": 5})

    # ------------------------------------------------------------------ load

    def test_many_suspended_rules_do_not_slow_others(self):
        n = 300
        snk = self.slow_sink(delay=1.0)
        self.wd.rule("77", 'return function(e)\n'
                           '  local res = request("members", {}, { timeout_ms = 8000 })\n'
                           '  respond(200, { status = res and res.body.valid and "SUCCESS" or "FAILED" })\n'
                           'end\n')
        self.wd.rule(None, 'return function(e) write("audit", { t = e.type }) end\n')
        r = self.router(self.config(snk.url, verify_timeout=10000))
        results = []
        lock = threading.Lock()

        def one():
            try:
                resp, dt = post_json(r.port, VERIFY, self.verify_body(), timeout=10)
                with lock:
                    results.append((resp.status, resp.json().get("status"), dt))
            except Exception as e:  # noqa: BLE001
                with lock:
                    results.append((None, repr(e), 0))

        threads = [threading.Thread(target=one) for _ in range(n)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        self.assertTrue(wait_until(lambda: r.healthz()["replies"]["waiting"] >= n * 0.9, 5),
                        r.healthz())
        lat = []
        while time.monotonic() - t0 < 0.9 and len(lat) < 300:
            t1 = time.monotonic()
            self.assertOk(r.post("/aifi/customer", {"x": 1}))
            lat.append(time.monotonic() - t1)
        for t in threads:
            t.join(15)
        total = time.monotonic() - t0
        bad = [x for x in results if x[0] != 200 or x[1] != "SUCCESS"]
        self.assertEqual(bad, [], "%d of %d failed" % (len(bad), n))
        lat.sort()
        p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99) - 1]
        print("\n  %d suspended rules answered in %.2fs; %d other webhooks meanwhile: p50 %.1f ms, "
              "p99 %.1f ms" % (n, total, len(lat), p50 * 1e3, p99 * 1e3), file=sys.stderr)
        self.assertGreater(len(lat), 20)
        self.assertLess(p99, T(0.1), "other webhooks slowed down while rules wait")
        self.assertLess(total, 4.0 if not WRAP else 20.0)

    # ------------------------------------------------------------------ signals

    def test_sighup_while_suspended(self):
        snk = self.slow_sink(delay=0.6)
        self.wd.rule("77", 'return function(e)\n  local res = request("members", {})\n'
                           '  respond(200, { v = "old", ok = res ~= nil })\nend\n')
        r = self.router(self.config(snk.url, verify_timeout=3000))
        results = []
        threads = [threading.Thread(target=lambda: results.append(post_json(r.port, VERIFY, {"storeId": 77})[0]))
                   for _ in range(5)]
        for t in threads:
            t.start()
        self.assertTrue(wait_until(lambda: r.healthz()["replies"]["waiting"] == 5, 3))
        self.wd.rule("77", 'return function(e) respond(200, { v = "new" }) end\n')
        r.hup()
        self.assertTrue(r.wait_log("reloaded", 3))
        self.assertEqual(post_json(r.port, VERIFY, {"storeId": 77})[0].json(), {"v": "new"})
        for t in threads:
            t.join(5)
        self.assertEqual([x.json() for x in results], [{"v": "old", "ok": True}] * 5)

    def test_sigterm_while_suspended(self):
        snk = self.slow_sink(delay=10)
        self.wd.rule("77", 'return function(e) request("members", {}) respond(200, "too late") end\n')
        r = self.router(self.config(snk.url, verify_timeout=20000))
        results = []
        lock = threading.Lock()

        def one(path):
            resp, dt = post_json(r.port, path, {"storeId": 77}, timeout=10)
            with lock:
                results.append((path, resp.status, resp.body, dt))

        threads = [threading.Thread(target=one, args=(VERIFY if i % 2 else MUTATOR,)) for i in range(20)]
        for t in threads:
            t.start()
        self.assertTrue(wait_until(lambda: r.healthz()["replies"]["waiting"] == 20, 5))
        t0 = time.monotonic()
        r.signal(signal.SIGTERM)
        for t in threads:
            t.join(5)
        self.assertEqual(len(results), 20)
        for path, status, body, dt in results:
            if path == VERIFY:
                self.assertEqual((status, json.loads(body)), (200, FALLBACK))
            else:
                self.assertEqual(status, 503, body)
        self.assertEqual(r.wait_exit(5), 0)
        self.assertLess(time.monotonic() - t0, T(2.0), "shutdown waited for suspended rules")
        self.assertEqual(len(self.wd.dead_letters), 20)

    # ------------------------------------------------------------------ hookrouter test --reply

    def cli(self, path, payload, *extra):
        return run_cli(["test", "-c", os.path.join(EXAMPLES, "hookrouter.lua"), "--path", path]
                       + list(extra) + [os.path.join(EXAMPLES, "payloads", payload)])

    def test_cli_reply_json_examples(self):
        p = self.cli(VERIFY, "entry-code-verify-77.json", "--reply",
                     os.path.join(EXAMPLES, "replies", "members-valid.json"))
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = [json.loads(x) for x in p.stdout.splitlines()]
        self.assertEqual([x["action"] for x in lines], ["request", "respond"])
        self.assertEqual(lines[0]["target"], "members")
        self.assertEqual(lines[0]["method"], "POST")
        self.assertEqual(lines[0]["url"], "http://127.0.0.1:9001/members/entry-codes/check")
        self.assertEqual(lines[0]["body"]["code"], "EC-4F7K2QXN9D")
        self.assertIn("Authorization", lines[0]["headers"])
        self.assertEqual(lines[1], {"action": "respond", "status": 200,
                                    "body": {"status": "SUCCESS", "reason": "welcome back",
                                             "sessionId": "cc256d83-a307-483e-b3bf-3740cb925f92",
                                             "customerId": 60417}})
        p = self.cli(MUTATOR, "cart-mutator-1042.json", "--reply",
                     os.path.join(EXAMPLES, "replies", "pricing.json"))
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = [json.loads(x) for x in p.stdout.splitlines()]
        self.assertEqual([x["action"] for x in lines], ["request", "respond"])
        self.assertEqual(lines[0]["target"], "pricing")
        body = lines[1]["body"]
        self.assertEqual((body["totalPrice"], body["totalTax"], body["subtotalPrice"]),
                         ("6.97", "1.11", "5.86"))
        self.assertEqual(len(body["cart"]), 4)
        self.assertEqual(body["cart"][1], {"barcode": "DEPOSIT-025", "name": "Bottle deposit",
                                           "quantity": 2, "price": "0.25"})
        self.assertEqual(body["orderId"], 3307815)

    def test_cli_reply_lua_stub_and_none(self):
        stub = os.path.join(EXAMPLES, "replies", "members-by-code.lua")
        p = self.cli(VERIFY, "entry-code-verify-77.json", "--reply", stub)
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = [json.loads(x) for x in p.stdout.splitlines()]
        self.assertEqual(lines[-1]["body"]["status"], "SUCCESS")
        p = self.cli(VERIFY, "entry-code-verify-77.json", "--reply",
                     os.path.join(EXAMPLES, "replies", "members-down.lua"))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout.splitlines()[-1])["body"]["reason"],
                         "member service unavailable")
        self.assertIn("connect error", p.stderr)
        # without --reply, request() gets nil and a message; the pricing rule then fails
        p = self.cli(MUTATOR, "cart-mutator-1042.json")
        self.assertEqual(p.returncode, 1)
        self.assertIn("give --reply", p.stderr)
        # a stub with headers and a string body; respond() headers are printed
        self.wd.write("stub.lua", 'return function(t, b, o)\n'
                                  '  return { status = 201, headers = { ["X-A"] = "1" }, body = o.method .. " " .. t }\nend\n')
        self.wd.rule(None, 'return function(e)\n  local r = request("members", "hi")\n'
                           '  respond(r.status, r.body .. " " .. r.headers["x-a"], { ["X-B"] = "2" })\nend\n')
        self.wd.config(self.config("http://127.0.0.1:9"))
        self.wd.write("p.json", "{}")
        p = run_cli(["test", "-c", self.wd.p("hookrouter.lua"), "--path", "/aifi/customer",
                     "--reply", self.wd.p("stub.lua"), self.wd.p("p.json")])
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout.splitlines()[-1]),
                         {"action": "respond", "status": 201, "body": "POST members 1",
                          "headers": {"X-B": "2"}})

    def test_config_errors(self):
        eps = dict(ENDPOINTS)
        eps[VERIFY] = {"event": "entry-code.verify", "reply_timeout_ms": 0,
                       "fallback": {"status": 99, "body": 5, "bogus": 1}}
        self.wd.config(base_config(endpoints=eps))
        p = run_cli(["check", "-c", self.wd.p("hookrouter.lua")])
        self.assertEqual(p.returncode, 1)
        for want in ('endpoints["/aifi/entry-code/verify"].reply_timeout_ms: must be between',
                     'endpoints["/aifi/entry-code/verify"].fallback.status: must be between',
                     'endpoints["/aifi/entry-code/verify"].fallback.body: expected a table',
                     'endpoints["/aifi/entry-code/verify"].fallback.bogus: unknown key'):
            self.assertIn(want, p.stderr)


if __name__ == "__main__":
    main()
