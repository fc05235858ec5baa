"""Inbound HTTP: status codes, auth, keep-alive, pipelining, chunked, 100-continue, timeouts."""
import json
import os
import re
import socket
import shutil
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hrtest import *  # noqa: E402,F401,F403

AUDIT_RULE = r'''
return function(event)
  write("audit", { id = event.id, type = event.type, body = event.body,
                   te = event.headers["transfer-encoding"], ua = event.headers["user-agent"] })
end
'''


class HttpTest(HRTestCase):
    def start(self, **cfg):
        self.wd.rule(None, AUDIT_RULE)
        kw = {"tokens": [TOKEN, TOKEN2]}
        kw.update(cfg)
        return self.router(base_config(**kw))

    def audit(self, n, timeout=3):
        got = wait_until(lambda: len(self.wd.jsonl("var/audit.jsonl")) >= n and self.wd.jsonl("var/audit.jsonl"), timeout)
        self.assertTrue(got, "audit has %d lines, expected %d" % (len(self.wd.jsonl("var/audit.jsonl")), n))
        return got

    # --- auth -----------------------------------------------------------------------------
    def test_auth(self):
        r = self.start()
        body = fixture_bytes("customer-created.json")
        cases = [
            ("missing", None, {}),
            ("wrong", "nope", {}),
            ("prefix of the token", TOKEN[:-1], {}),
            ("token plus a char", TOKEN + "x", {}),
            ("empty bearer", "", {}),
        ]
        for what, tok, hdr in cases:
            resp = r.post("/aifi/customer", body, token=tok, headers=hdr)
            self.assertEqual(resp.status, 401, "%s token: %r" % (what, resp))
            self.assertTrue((resp.header("WWW-Authenticate") or "").startswith("Bearer"),
                            "%s: WWW-Authenticate is %r" % (what, resp.header("WWW-Authenticate")))
        resp = r.post("/aifi/customer", body, token=None, headers={"Authorization": "Basic " + TOKEN})
        self.assertEqual(resp.status, 401, "Basic auth with the token must not pass: %r" % resp)
        # rotation: both configured tokens work
        self.assertOk(r.post("/aifi/customer", body, token=TOKEN))
        self.assertOk(r.post("/aifi/customer", body, token=TOKEN2))
        self.assertEqual(len(self.audit(2)), 2)
        time.sleep(0.1)
        self.assertEqual(len(self.wd.jsonl("var/audit.jsonl")), 2, "a rejected request ran the rule")
        log = r.log()
        for t in (TOKEN, TOKEN2, "nope"):
            self.assertNotIn(t, log, "token %r appears in the log" % t)

    def test_insecure_no_auth(self):
        r = self.start(tokens=[], insecure_no_auth=True)
        self.assertOk(r.post("/aifi/customer", {"a": 1}, token=None))

    def test_empty_tokens_refuses_to_start(self):
        self.wd.rule(None, AUDIT_RULE)
        self.wd.config(base_config(tokens=[]))
        p = run_cli(["run", "-c", self.wd.p("hookrouter.lua")], cwd=self.wd.path, timeout=10)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("tokens", p.stderr + p.stdout)

    # --- status codes ---------------------------------------------------------------------
    def test_404_405_healthz(self):
        r = self.start()
        resp = r.post("/aifi/nope", {"a": 1})
        self.assertEqual(resp.status, 404, resp)
        resp = r.post("/aifi/customer/", {"a": 1})
        self.assertEqual(resp.status, 404, "paths are exact: %r" % resp)
        resp = r.post("/", {"a": 1})
        self.assertEqual(resp.status, 404, resp)
        for m in ("GET", "PUT", "DELETE"):
            resp = r.request(m, "/aifi/customer", body=b"{}" if m == "PUT" else None)
            self.assertEqual(resp.status, 405, "%s: %r" % (m, resp))
            self.assertIn("POST", resp.header("Allow") or "", "%s: Allow header %r" % (m, resp.headers))
        resp = r.request("GET", "/healthz", token=None)
        self.assertEqual(resp.status, 200)
        self.assertIn("json", resp.header("Content-Type") or "")
        h = resp.json()
        self.assertEqual(h.get("status"), "ok")
        self.assertIsInstance(h.get("loaded_at"), str)
        self.assertIsInstance(h.get("reloads"), int)
        self.assertEqual(h.get("reloads"), 0)
        self.assertIn("last_reload_error", h)
        self.assertIsNone(h["last_reload_error"])
        ob = h.get("outbox")
        self.assertIsInstance(ob, dict, h)
        for k in ("pending", "delivered", "dead", "retried"):
            self.assertIsInstance(ob.get(k), int, "outbox.%s in %r" % (k, h))
        self.assertEqual(len(self.wd.jsonl("var/audit.jsonl")), 0)

    def test_413_body_too_large(self):
        r = self.start(limits={"body_bytes": 1024})
        ok = b'{"pad":"' + b"x" * 900 + b'"}'
        self.assertOk(r.post("/aifi/customer", ok))
        big = b'{"pad":"' + b"x" * 3000 + b'"}'
        resp = r.post("/aifi/customer", big)
        self.assertEqual(resp.status, 413, resp)
        # chunked, over the limit
        with r.raw() as c:
            c.send(http_req("POST", "/aifi/customer", body=None,
                            headers={"Transfer-Encoding": "chunked"}) + chunked([big[:1500], big[1500:]]))
            resp = c.read_response()
            self.assertEqual(resp.status, 413, resp)
        # a huge Content-Length is refused before the body is sent
        with r.raw() as c:
            c.send(b"POST /aifi/customer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                   + b"\r\nContent-Length: 10000000000\r\n\r\n")
            resp = c.read_response()
            self.assertEqual(resp.status, 413, resp)
        self.assertEqual(len(self.audit(1)), 1)
        self.assertOk(r.post("/aifi/customer", ok), "after the 413s")

    def test_431_header_too_large(self):
        r = self.start(limits={"header_bytes": 4096})
        with r.raw() as c:
            c.send(http_req("POST", "/aifi/customer", body=b"{}", headers={"X-Big": "y" * 6000}))
            resp = c.read_response()
            self.assertEqual(resp.status, 431, resp)
        # many small headers adding up
        with r.raw() as c:
            hdrs = {"X-H%03d" % i: "v" * 60 for i in range(100)}
            c.send(http_req("POST", "/aifi/customer", body=b"{}", headers=hdrs))
            resp = c.read_response()
            self.assertEqual(resp.status, 431, resp)
        # just under the limit passes
        self.assertOk(r.post("/aifi/customer", b"{}", headers={"X-Big": "y" * 3000}))

    def test_431_default_limit_16k(self):
        r = self.start()
        self.assertOk(r.post("/aifi/customer", b"{}", headers={"X-Big": "y" * 12000}))
        with r.raw() as c:
            c.send(http_req("POST", "/aifi/customer", body=b"{}", headers={"X-Big": "y" * 20000}))
            self.assertEqual(c.read_response().status, 431)

    def test_malformed_http_400_and_close(self):
        r = self.start()
        for garbage in [b"GARBAGE\r\n\r\n", b"POST /aifi/customer HTTP/9.9\r\n\r\n",
                        b"POST /aifi/customer HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
                        b"POST /aifi/customer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                        + b"\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]:
            with r.raw() as c:
                c.send(garbage)
                resp = c.read_response()
                self.assertEqual(resp.status, 400, "for %r: %r" % (garbage, resp))
                self.assertTrue(c.closed_within(T(2)), "connection not closed after 400 for %r" % garbage)
        self.assertEqual(r.healthz()["status"], "ok")

    def test_invalid_json_400_names_where(self):
        r = self.start()
        resp = r.post("/aifi/customer", b'{"a": 1,\n  "b": }')
        self.assertEqual(resp.status, 400, resp)
        j = resp.json()
        err = j.get("error", "")
        self.assertTrue(err.startswith("invalid JSON"), err)
        self.assertRegex(err, r"(?i)line\D{0,3}2\b", "error should name line 2: %r" % err)
        self.assertRegex(err, r"(?i)col", "error should name the column: %r" % err)
        for bad in [b"", b"{", b'{"a":1} trailing', b"\xff\xfe", b"{'a': 1}"]:
            resp = r.post("/aifi/customer", bad)
            self.assertEqual(resp.status, 400, "%r: %r" % (bad, resp))
            self.assertTrue(resp.json().get("error", "").startswith("invalid JSON"), resp)
        time.sleep(0.1)
        self.assertEqual(self.wd.jsonl("var/audit.jsonl"), [])

    def test_json_rfc8259_strict_400_names_where_and_why(self):
        r = self.start()
        cases = [
            (b'{"a": 1e400}', "line 1, column 7 (byte 6): number '1e400' out of range"),
            (b'{"a": -1e400}', "line 1, column 7 (byte 6): number '-1e400' out of range"),
            (b'{"a":\n 01}', "line 2, column 2 (byte 7): invalid number '01' (leading zero)"),
            (b'[-01]', "line 1, column 2 (byte 1): invalid number '-01' (leading zero)"),
            (b'[1.]', "line 1, column 2 (byte 1): invalid number '1.' (digit expected after '.')"),
            (b'[.5]', "line 1, column 2 (byte 1): invalid number '.5' (digit expected before '.')"),
            (b'[-.5]', "line 1, column 2 (byte 1): invalid number '-.5' (digit expected before '.')"),
            (b'[+1]', "line 1, column 2 (byte 1): invalid number '+1' (leading '+')"),
            (b'[1e]', "line 1, column 2 (byte 1): invalid number '1e' (digit expected in exponent)"),
            (b'[1e+]', "line 1, column 2 (byte 1): invalid number '1e+' (digit expected in exponent)"),
            (b'{"storeId": "42\nx"}',
             "line 1, column 16 (byte 15): unescaped control character 0x0A in string"),
            (b'["\x00"]', "line 1, column 3 (byte 2): unescaped control character 0x00 in string"),
            (b'["\xe9"]', "line 1, column 3 (byte 2): invalid UTF-8 in string"),
            (b'[1,\x0c2]', "line 1, column 4 (byte 3): unexpected byte 0x0C"),
        ]
        for body, where in cases:
            resp = r.post("/aifi/customer", body)
            self.assertEqual(resp.status, 400, "%r: %r" % (body, resp))
            self.assertEqual(resp.json(), {"error": "invalid JSON at " + where}, body)
        log = wait_until(lambda: "unexpected byte 0x0C" in r.log() and r.log())
        self.assertIn("invalid number '01' (leading zero)", log)
        # underflow is a valid number (0.0), not an error
        resp = r.post("/aifi/customer", b'{"a": 1e-400, "b": [0, -0, 0.5e-3]}')
        self.assertEqual(resp.status, 200, resp)
        wait_until(lambda: len(self.wd.jsonl("var/audit.jsonl")) >= 1)
        self.assertEqual(len(self.wd.jsonl("var/audit.jsonl")), 1)

    # --- connection handling --------------------------------------------------------------
    def test_keep_alive(self):
        r = self.start()
        with r.raw() as c:
            ids = []
            for i in range(5):
                c.send(http_req("POST", "/aifi/customer", body=b'{"n":%d}' % i))
                resp = c.read_response()
                self.assertEqual(resp.status, 200, resp)
                self.assertNotEqual((resp.header("Connection") or "").lower(), "close")
                ids.append(resp.json()["id"])
            c.send(http_req("GET", "/healthz", body=None, token=None))
            self.assertEqual(c.read_response().status, 200)
            self.assertFalse(c.eof)
        self.assertEqual(len(set(ids)), 5)
        self.assertEqual([a["body"]["n"] for a in self.audit(5)], [0, 1, 2, 3, 4])

    def test_pipelining(self):
        r = self.start()
        with r.raw() as c:
            c.send(http_req("POST", "/aifi/customer", body=b'{"n":1}')
                   + http_req("POST", "/aifi/nope", body=b'{"n":2}')
                   + http_req("GET", "/aifi/customer", body=None)
                   + http_req("GET", "/healthz", body=None, token=None)
                   + http_req("POST", "/aifi/customer", body=b'{"n":3}'))
            got = [c.read_response() for _ in range(5)]
        self.assertEqual([g.status for g in got], [200, 404, 405, 200, 200], got)
        self.assertIn("id", got[0].json())
        self.assertEqual(got[3].json().get("status"), "ok")
        self.assertIn("id", got[4].json())
        self.assertEqual([a["body"]["n"] for a in self.audit(2)], [1, 3])

    def test_pipelining_many_small(self):
        r = self.start()
        n = 50
        with r.raw() as c:
            c.send(b"".join(http_req("POST", "/aifi/customer", body=b'{"n":%d}' % i) for i in range(n)))
            got = [c.read_response() for _ in range(n)]
        self.assertEqual([g.status for g in got], [200] * n)
        self.assertEqual(sorted(a["body"]["n"] for a in self.audit(n)), list(range(n)))

    def test_chunked_body(self):
        r = self.start()
        body = fixture_bytes("checkout-zone-entered.json")
        parts = [body[:1], body[1:100], body[100:1000], body[1000:]]
        with r.raw() as c:
            c.send(http_req("POST", "/aifi/customer", body=None, headers={"Transfer-Encoding": "chunked"}))
            for p in parts:  # one chunk per send, with small pauses
                c.send(b"%x\r\n" % len(p) + p + b"\r\n")
                time.sleep(0.02)
            c.send(b"0\r\n\r\n")
            resp = c.read_response()
            self.assertEqual(resp.status, 200, resp)
            # the connection stays usable
            c.send(http_req("POST", "/aifi/customer", body=b'{"n":2}'))
            self.assertEqual(c.read_response().status, 200)
        a = self.audit(2)
        self.assertEqual(a[0]["body"], fixture_json("checkout-zone-entered.json"))
        self.assertEqual(a[1]["body"], {"n": 2})

    def test_expect_100_continue(self):
        r = self.start()
        body = b'{"n":100}'
        with r.raw() as c:
            head = http_req("POST", "/aifi/customer", body=body, headers={"Expect": "100-continue"})
            c.send(head[:-len(body)])
            first = c.read_response(timeout=3)
            self.assertEqual(first.status, 100, "expected 100 Continue before the body, got %r" % first)
            c.send(body)
            resp = c.read_response()
            self.assertEqual(resp.status, 200, resp)
        self.assertEqual(self.audit(1)[0]["body"], {"n": 100})

    def test_expect_100_continue_rejected_early(self):
        """A request that will be refused (bad token) need not get 100 Continue: a final status
        (401) is the right answer, without waiting for the body."""
        r = self.start()
        with r.raw() as c:
            c.send(b"POST /aifi/customer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer bad\r\n"
                   b"Content-Length: 9\r\nExpect: 100-continue\r\n\r\n")
            resp = c.read_response(timeout=3)
            self.assertEqual(resp.status, 401, resp)

    def test_http10_closes(self):
        r = self.start()
        with r.raw() as c:
            c.send(http_req("POST", "/aifi/customer", body=b'{"v":10}', version="HTTP/1.0"))
            resp = c.read_response()
            self.assertEqual(resp.status, 200, resp)
            self.assertTrue(c.closed_within(T(2)), "HTTP/1.0 connection not closed")
        with r.raw() as c:
            c.send(http_req("GET", "/healthz", body=None, token=None, version="HTTP/1.0", host=False))
            resp = c.read_response()
            self.assertEqual(resp.status, 200, resp)
            self.assertTrue(c.closed_within(T(2)))
        self.assertEqual(self.audit(1)[0]["body"], {"v": 10})

    def test_connection_close(self):
        r = self.start()
        with r.raw() as c:
            c.send(http_req("POST", "/aifi/customer", body=b'{"v":1}', headers={"Connection": "close"}))
            resp = c.read_response()
            self.assertEqual(resp.status, 200, resp)
            self.assertTrue(c.closed_within(T(2)), "connection not closed after Connection: close")
        self.audit(1)

    def test_missing_host_http11(self):
        """Not required by the spec, but a Host-less HTTP/1.1 request must not crash the router."""
        r = self.start()
        with r.raw() as c:
            c.send(http_req("POST", "/aifi/customer", body=b"{}", host=False))
            resp = c.read_response()
            self.assertIn(resp.status, (200, 400), resp)
        self.assertEqual(r.healthz()["status"], "ok")

    def test_slow_client_is_cut(self):
        r = self.start(limits={"request_timeout_ms": 500, "idle_timeout_ms": 2000})
        with r.raw() as c:
            t0 = time.monotonic()
            c.send(b"POST /aifi/customer HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            closed = False
            # dribble one byte every 100 ms: this must not reset the request timer
            while time.monotonic() - t0 < T(3):
                try:
                    c.send(b"a")
                except OSError:
                    closed = True
                    break
                if c.closed_within(0.1):
                    closed = True
                    break
            dt = time.monotonic() - t0
            self.assertTrue(closed, "slow client still connected after %.1fs (request_timeout_ms=500)" % dt)
            self.assertLess(dt, T(2.0), "slow client cut only after %.2fs" % dt)
        self.assertEqual(r.healthz()["status"], "ok")

    def test_slow_body_is_cut(self):
        r = self.start(limits={"request_timeout_ms": 500, "idle_timeout_ms": 2000})
        with r.raw() as c:
            t0 = time.monotonic()
            c.send(http_req("POST", "/aifi/customer", body=b'{"a":1}')[:-3])
            self.assertTrue(c.closed_within(T(2.5)), "a request with a missing body held the connection")
            self.assertLess(time.monotonic() - t0, T(2.0))

    def test_idle_keepalive_is_closed(self):
        r = self.start(limits={"request_timeout_ms": 2000, "idle_timeout_ms": 500})
        with r.raw() as c:
            c.send(http_req("POST", "/aifi/customer", body=b"{}"))
            self.assertEqual(c.read_response().status, 200)
            t0 = time.monotonic()
            self.assertTrue(c.closed_within(T(2.5)), "idle keep-alive connection not closed")
            dt = time.monotonic() - t0
            self.assertGreater(dt, 0.3, "idle connection closed too early (%.2fs)" % dt)

    def test_many_connections(self):
        r = self.start()
        conns = [r.raw() for _ in range(50)]
        try:
            for i, c in enumerate(conns):
                c.send(http_req("POST", "/aifi/customer", body=b'{"n":%d}' % i))
            for c in conns:
                self.assertEqual(c.read_response().status, 200)
        finally:
            for c in conns:
                c.close()
        self.assertEqual(len(self.audit(50)), 50)

    def test_client_disconnect_mid_request(self):
        r = self.start()
        for _ in range(20):
            c = r.raw()
            c.send(http_req("POST", "/aifi/customer", body=b'{"abc": 12345}')[:-5])
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()  # RST
        self.assertEqual(r.healthz()["status"], "ok")
        self.assertOk(r.post("/aifi/customer", {"after": 1}))

    def test_byte_by_byte(self):
        r = self.start()
        req = http_req("POST", "/aifi/customer", body=b'{"n": "bytes"}') + http_req("GET", "/healthz", body=None, token=None)
        with r.raw() as c:
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(len(req)):
                c.send(req[i:i + 1])
                if i % 20 == 0:
                    time.sleep(0.001)
            self.assertEqual(c.read_response().status, 200)
            self.assertEqual(c.read_response().status, 200)
        self.assertEqual(self.audit(1)[0]["body"], {"n": "bytes"})

    def test_smuggling_cl_and_te(self):
        r = self.start()
        with r.raw() as c:
            c.send(b"POST /aifi/customer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                   + b"\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                   + http_req("GET", "/healthz", body=None, token=None))
            resp = c.read_response()
            self.assertEqual(resp.status, 400, "Content-Length with Transfer-Encoding must be refused: %r" % resp)
            self.assertTrue(c.closed_within(T(2)))

    def test_default_body_limit_1mib(self):
        r = self.start()
        body = b'{"pad":"' + b"x" * (1024 * 1024 + 10) + b'"}'
        resp = r.post("/aifi/customer", body, timeout=10)
        self.assertEqual(resp.status, 413, resp)
        self.assertOk(post(r.port, "/aifi/customer", fixture_bytes("variants/large-events.json")))

    def test_reply_shape(self):
        r = self.start()
        resp = r.post("/aifi/customer", {"a": 1})
        self.assertOk(resp)
        self.assertIn("application/json", resp.header("Content-Type") or "")
        resp = r.post("/aifi/nope", {"a": 1})
        self.assertEqual(resp.status, 404)
        resp = r.post("/aifi/customer", {"a": 1}, token="bad")
        self.assertEqual(resp.status, 401)

    # --- strictness beyond llhttp 8.1 (issue 9) -------------------------------------------
    def send_split(self, c, data, bytewise):
        """Send data whole, or one byte per send (TCP_NODELAY, a pause now and then) so that
        the server sees it split at every possible place."""
        if not bytewise:
            c.send(data)
            return
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            c.send(data[i:i + 1])
            if i % 7 == 0:
                time.sleep(0.001)

    def head(self, extra=b"", te=True):
        return (b"POST /aifi/customer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                + b"\r\n" + (b"Transfer-Encoding: chunked\r\n" if te else b"") + extra + b"\r\n")

    def expect_refused(self, r, data, status, words):
        for bytewise in (False, True):
            with r.raw() as c:
                self.send_split(c, data, bytewise)
                resp = c.read_response()
                what = "for %r (bytewise=%s): %r" % (data, bytewise, resp)
                self.assertEqual(resp.status, status, what)
                self.assertIn("application/json", resp.header("Content-Type") or "", what)
                self.assertIn(words, json.loads(resp.body)["error"], what)
                self.assertTrue(c.closed_within(T(2)), "not closed " + what)
        self.assertIn(words, r.log())

    def test_chunk_data_without_crlf_400(self):
        r = self.start()
        # llhttp 8.1 skips any two bytes after chunk data: "XY" would hide a second request.
        self.expect_refused(r, self.head() + b"2\r\n{}XY0\r\n\r\n", 400, "chunk data not followed by CRLF")
        self.expect_refused(r, self.head() + b"2\r\n{}\rX0\r\n\r\n", 400, "chunk data not followed by CRLF")
        self.assertEqual(len(self.wd.jsonl("var/audit.jsonl")), 0)

    def test_huge_chunk_size_413_at_once(self):
        # The request timeout is long: a 413 that comes quickly cannot be the timeout's 408.
        r = self.start(limits={"body_bytes": 1024, "request_timeout_ms": 60000})
        self.expect_refused(r, self.head() + b"ffffffffffffffff\r\n", 413, "chunk size over the limit")
        self.expect_refused(r, self.head() + b"401\r\n", 413, "chunk size over the limit")
        # a first chunk within the limit, the second one past it
        self.expect_refused(r, self.head() + b"200\r\n" + b" " * 512 + b"\r\n201\r\n", 413, "chunk size over the limit")

    def test_chunk_extension_accepted(self):
        r = self.start()
        for bytewise in (False, True):
            with r.raw() as c:
                data = (self.head() + b"3;name=value\r\n{\"n\r\n4;x;y=\"q z\"\r\n\":%d}\r\n0\r\n\r\n" % int(bytewise)
                        + http_req("GET", "/healthz", body=None, token=None))
                self.send_split(c, data, bytewise)
                self.assertEqual(c.read_response().status, 200)
                self.assertEqual(c.read_response(method="GET").status, 200)
        self.assertEqual([a["body"] for a in self.audit(2)], [{"n": 0}, {"n": 1}])

    def test_empty_header_name_400(self):
        r = self.start()
        self.expect_refused(r, self.head(b": v\r\nContent-Length: 2\r\n", te=False) + b"{}", 400, "empty header name")

    def test_obs_fold_400(self):
        r = self.start()
        self.expect_refused(r, self.head(b"X-A: a\r\n b\r\nContent-Length: 2\r\n", te=False) + b"{}", 400, "obs-fold")
        self.expect_refused(r, self.head(b"X-A:\r\n\tb\r\nContent-Length: 2\r\n", te=False) + b"{}", 400, "obs-fold")
        self.assertEqual(len(self.wd.jsonl("var/audit.jsonl")), 0)

    def test_request_line_without_version_400(self):
        r = self.start()
        self.expect_refused(r, b"GET /\r\n", 400, "request line without HTTP version")
        self.expect_refused(r, b"GET /healthz\r\n\r\n", 400, "request line without HTTP version")

    def test_strict_checks_leave_pipelined_bodies_alone(self):
        # Body bytes that look like a fold, an empty name or a bad chunk end are not header
        # lines: the pre-scanner reads only the request heads.
        r = self.start()
        body = b'{"a":\r\n ":"}'
        data = (http_req("POST", "/aifi/customer", body=body)
                + self.head() + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
                + http_req("POST", "/aifi/customer", body=b'{"b":1}'))
        for bytewise in (False, True):
            with r.raw() as c:
                self.send_split(c, data, bytewise)
                for _ in range(3):
                    self.assertEqual(c.read_response().status, 200)
        self.assertEqual(len(self.audit(6)), 6)

    # --- connection cap (issue 9) ---------------------------------------------------------
    def test_max_connections_refuses_counts_and_logs(self):
        r = self.start(limits={"max_connections": 3}, workers=1)  # the cap is shared out per worker
        held = [r.raw() for _ in range(3)]
        try:
            for c in held:  # each one is surely accepted and counted
                c.send(http_req("POST", "/aifi/customer", body=b'{"n":1}'))
                self.assertEqual(c.read_response().status, 200)
            for _ in range(2):
                with r.raw() as extra:
                    self.assertTrue(extra.closed_within(T(2)), "connection past the cap not closed")
                    self.assertEqual(extra.buf, b"", "a refused connection gets no bytes")
            # the held ones still work
            held[0].send(http_req("POST", "/aifi/customer", body=b'{"n":2}'))
            self.assertEqual(held[0].read_response().status, 200)
        finally:
            held[0].close()
        # a slot is free again once the server has seen the close
        h = wait_until(lambda: self._healthz_or_none(r), T(5))
        self.assertTrue(h, "no /healthz after a slot was freed")
        # 2, plus the /healthz attempts made before the server saw the close
        self.assertGreaterEqual(h["connections_refused"], 2, h)
        self.assertEqual(h["connections"], 3, h)
        self.assertIn("limits.max_connections (3) reached: 1 connection refused", r.log())
        for c in held[1:]:
            c.close()

    def _healthz_or_none(self, r):
        try:
            return r.healthz()
        except Exception:
            return None

    @unittest.skipIf("valgrind" in os.environ.get("HR_WRAP", ""),
                     "valgrind keeps descriptors for itself and caps RLIMIT_NOFILE")
    def test_max_connections_default_and_rlimit(self):
        # No cap configured: derived from RLIMIT_NOFILE, which is raised to the hard limit.
        # The router inherits a low soft limit from here.
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        try:
            r = self.start()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        self.assertEqual(r.healthz()["connections_refused"], 0)
        with open("/proc/%d/limits" % r.proc.pid) as f:
            line = [l for l in f if l.startswith("Max open files")][0].split()
        self.assertEqual(line[3], line[4], "soft RLIMIT_NOFILE not raised to the hard one: %r" % line)
        self.assertEqual(line[4], str(hard) if hard != resource.RLIM_INFINITY else "unlimited")

    def test_max_connections_config_checked(self):
        self.wd.rule(None, AUDIT_RULE)
        self.wd.config(base_config(tokens=[TOKEN], limits={"max_connections": 0}))
        p = run_cli(["check", "-c", self.wd.p("hookrouter.lua")], cwd=self.wd.path, timeout=10)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("limits.max_connections", p.stderr + p.stdout)

    def test_emfile_no_spin_and_recovers(self):
        # Descriptors run out before the cap: accept fails with EMFILE. The error is logged (at
        # most once a second), the reserve fd lets the server accept and close the waiting
        # connections (counted as refused), the listener does not spin, and service resumes
        # once descriptors are free.
        r = self.start(limits={"max_connections": 100000}, workers=1)  # one reserve fd
        lim = 48
        if shutil.which("prlimit") is None:
            self.skipTest("prlimit (util-linux) is not installed")
        p = subprocess.run(["prlimit", "--pid", str(r.proc.pid), "--nofile=%d:%d" % (lim, lim)],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, "prlimit failed: " + p.stderr)
        conns = []
        try:
            for _ in range(lim + 10):
                conns.append(socket.create_connection(("127.0.0.1", r.port), timeout=T(5)))
            def cpu():
                with open("/proc/%d/stat" % r.proc.pid) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            self.assertTrue(wait_until(lambda: "accept: too many open files" in r.log(), T(5)), r.log_tail())
            t_first = time.monotonic()
            # the shed line follows once a shed found connections waiting (maybe not the first)
            self.assertTrue(wait_until(lambda: "out of file descriptors (RLIMIT_NOFILE)" in r.log(),
                                       T(5)), r.log_tail())
            # the connections past the descriptors were accepted and closed (the reserve fd)
            def closed_by_server():
                for c in conns[-5:]:
                    c.settimeout(T(5))
                    try:
                        if c.recv(1) != b"":
                            return False
                    except ConnectionResetError:
                        pass
                return True
            self.assertTrue(closed_by_server(), "connections past RLIMIT_NOFILE not closed")
            c0, t0 = cpu(), time.monotonic()
            time.sleep(0.5)
            used, spent = cpu() - c0, time.monotonic() - t0
            self.assertLess(used, spent * 0.5, "listener spins on EMFILE: %.2fs CPU in %.2fs" % (used, spent))
            # at most one line a second while it lasts (a loaded machine makes this test slow)
            allowed = int(time.monotonic() - t_first) + 2
            self.assertLessEqual(r.log().count("accept: too many open files"), allowed, r.log_tail())
        finally:
            for c in conns:
                c.close()
        h = wait_until(lambda: self._healthz_or_none(r), T(5))
        self.assertTrue(h, "no service after EMFILE")
        self.assertGreaterEqual(h["connections_refused"], 5, h)

    def test_max_connections_shared_by_workers(self):
        # With workers = 2, max_connections = 2 gives each worker 1: whatever way the kernel
        # spreads connections, at most 2 of them are served at once, at least 1.
        r = self.start(workers=2, limits={"max_connections": 2})
        conns = [r.raw() for _ in range(8)]
        served = 0
        try:
            for c in conns:
                try:
                    c.send(http_req("POST", "/aifi/customer", body=b'{"n":1}'))
                    if c.read_response().status == 200:
                        served += 1
                except (EOFError, OSError):
                    pass
        finally:
            for c in conns:
                c.close()
        self.assertGreaterEqual(served, 1)
        self.assertLessEqual(served, 2)
        self.assertIn("limits.max_connections (1) reached", r.log())


if __name__ == "__main__":
    main()
