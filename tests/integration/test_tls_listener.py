"""The TLS listener (top-level `tls`): fixtures over HTTPS with keep-alive, /healthz, plain HTTP,
garbage and a stalled handshake closed promptly, client certificates (client_ca_file), SIGHUP
rotation (also with workers = 2), a broken certificate on SIGHUP keeps the old one, tls added on
reload, and `check` naming the key of an unreadable or mismatched file. Certificates are made
at test time by the openssl CLI (tests/tls/gen-certs.sh)."""
import http.client
import os
import re
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hrtest import *  # noqa: E402,F401,F403

GEN_CERTS = os.path.join(SOURCE_DIR, "tests", "tls", "gen-certs.sh")

AUDIT_RULE = r'''
return function(event)
  write("audit", { id = event.id, type = event.type, store = event.store })
end
'''


def issue_leaf(d, name, cn="localhost"):
    """Another server certificate signed by the test CA in d (its own key and serial):
    d/<name>.pem (chain: leaf then CA) and d/<name>.key. Returns the leaf's serial (hex)."""
    def run(*args):
        subprocess.run(["openssl"] + list(args), cwd=d, check=True, capture_output=True)
    run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name + ".key")
    run("req", "-new", "-key", name + ".key", "-subj", "/CN=" + cn, "-out", name + ".csr")
    with open(os.path.join(d, name + ".ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-out", name + "-leaf.pem", "-extfile", name + ".ext")
    with open(os.path.join(d, name + "-leaf.pem")) as f, open(os.path.join(d, "ca.pem")) as g:
        chain = f.read() + g.read()
    with open(os.path.join(d, name + ".pem"), "w") as f:
        f.write(chain)
    return serial_of(os.path.join(d, name + "-leaf.pem"))


def serial_of(pem):
    out = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", pem], check=True,
                         capture_output=True, text=True).stdout
    return out.strip().split("=", 1)[1].upper()


class TlsListenerTest(HRTestCase):
    def setUp(self):
        super().setUp()
        self.certs = self.wd.p("tls")
        subprocess.run(["sh", GEN_CERTS, self.certs], check=True, capture_output=True)
        self.wd.rule(None, AUDIT_RULE)

    def cert(self, name):
        return os.path.join(self.certs, name)

    def start(self, tls=None, **kw):
        if tls is None:
            tls = {"cert_file": "tls/server-chain.pem", "key_file": "tls/server.key"}
        if tls:
            kw["tls"] = tls
        return self.router(base_config(**kw))

    def ctx(self, client_cert=False):
        c = ssl.create_default_context(cafile=self.cert("ca.pem"))
        if client_cert:
            c.load_cert_chain(self.cert("client.pem"), self.cert("client.key"))
        return c

    def https(self, r, client_cert=False, host="127.0.0.1"):
        return http.client.HTTPSConnection(host, r.port, timeout=T(5), context=self.ctx(client_cert))

    def get_json(self, conn, method, path, body=None, token=TOKEN):
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = "Bearer " + token
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, data

    def peer_serial(self, r):
        """The serial of the certificate a new verified connection sees (hex, upper case)."""
        with socket.create_connection(("127.0.0.1", r.port), timeout=T(5)) as raw:
            with self.ctx().wrap_socket(raw, server_hostname="127.0.0.1") as s:
                return s.getpeercert()["serialNumber"].upper()

    def closed_at_once(self, r, data, within=1.0):
        with r.raw() as c:
            c.send(data)
            t0 = time.monotonic()
            self.assertTrue(c.closed_within(T(within)), "connection still open after %r" % data[:20])
            self.assertNotIn(b"HTTP/1.1", c.buf, "an HTTP reply came back in clear")
            return time.monotonic() - t0

    # --- serving ----------------------------------------------------------------------------

    def test_fixtures_over_tls_with_keep_alive_and_healthz(self):
        r = self.start()
        self.assertRegex(r.log(), r"listening on 127\.0\.0\.1:\d+ \(TLS\)")
        # the certificate is named, and the test's 2-day certificate warns of its expiry (a
        # worker logs it as it loads the certificate: it may come after the listening line)
        self.assertTrue(r.wait_log(r"warn  tls: certificate /CN=localhost, issued by /CN=hookrouter"
                                   r" test CA, valid until \d{4}-\d\d-\d\dT[\d:]+Z: expires in"
                                   r" [12]\.\d days", T(5)), r.log_tail())
        names = sorted(n for n in FIXTURE_PATHS if os.path.exists(fixture_path(n)))
        self.assertGreater(len(names), 10)
        conn = self.https(r)
        conn.connect()
        local = conn.sock.getsockname()
        for name in names:
            status, body = self.get_json(conn, "POST", FIXTURE_PATHS[name], fixture_bytes(name))
            self.assertEqual(status, 200, "%s: %r" % (name, body[:300]))
            self.assertIn("id", json.loads(body))
        self.assertEqual(conn.sock.getsockname(), local, "keep-alive: one connection for all")
        status, body = self.get_json(conn, "GET", "/healthz", token=None)
        self.assertEqual(status, 200)
        h = json.loads(body)
        self.assertEqual(h["status"], "ok")
        self.assertEqual(h["events"]["accepted"], len(names))
        self.assertGreaterEqual(h["connections"], 1)
        conn.close()
        got = wait_until(lambda: len(self.wd.jsonl("var/audit.jsonl")) >= len(names))
        self.assertTrue(got, "audit lines for every fixture")
        # the name in the certificate works as well as the address; 401 goes out encrypted too
        conn = self.https(r, host="localhost")
        status, _ = self.get_json(conn, "POST", "/t", b'{"storeId": 1}', token="wrong")
        self.assertEqual(status, 401)
        conn.close()

    def test_big_body_and_pipelined_requests_over_tls(self):
        r = self.start()
        body = json.dumps({"storeId": 5, "pad": "x" * 200000}).encode()
        with socket.create_connection(("127.0.0.1", r.port), timeout=T(5)) as raw:
            with self.ctx().wrap_socket(raw, server_hostname="127.0.0.1") as s:
                one = http_req("POST", "/t", body, headers={"Content-Type": "application/json"})
                s.sendall(one + one + one)
                data = b""
                deadline = time.monotonic() + T(5)
                while data.count(b"HTTP/1.1 200") < 3 and time.monotonic() < deadline:
                    d = s.recv(65536)
                    if not d:
                        break
                    data += d
                self.assertEqual(data.count(b"HTTP/1.1 200"), 3, data[:500])

    # --- what is not TLS, or never finishes -------------------------------------------------

    def test_plain_http_is_closed_at_once_and_logged(self):
        r = self.start()
        self.closed_at_once(r, http_req("GET", "/healthz", token=None))
        self.assertTrue(r.wait_log(r"info  127\.0\.0\.1:\d+: closed: plain HTTP sent to the TLS listener"),
                        r.log_tail())
        # the router keeps serving HTTPS
        conn = self.https(r)
        self.assertEqual(self.get_json(conn, "GET", "/healthz", token=None)[0], 200)
        conn.close()

    def test_garbage_is_closed_at_once_and_logged(self):
        r = self.start()
        self.closed_at_once(r, b"\x00\x01garbage" * 8)
        self.assertTrue(r.wait_log(r"127\.0\.0\.1:\d+: closed: not a TLS handshake: first byte 0x00"),
                        r.log_tail())
        # a handshake record header followed by junk: OpenSSL refuses it
        self.closed_at_once(r, b"\x16\x03\x01\x00\x20" + b"\xff" * 32)
        self.assertTrue(r.wait_log(r"127\.0\.0\.1:\d+: closed: TLS handshake failed: tls: "), r.log_tail())

    def test_handshake_that_never_completes_is_closed_within_request_timeout(self):
        r = self.start(limits={"request_timeout_ms": 700, "idle_timeout_ms": 60000})
        with r.raw() as c:
            c.send(b"\x16\x03\x01\x02")  # the start of a ClientHello, and nothing more
            t0 = time.monotonic()
            self.assertTrue(c.closed_within(T(3)), "a stalled handshake is still open")
            took = time.monotonic() - t0
        self.assertGreater(took, 0.5, "closed before request_timeout_ms")
        self.assertLess(took, T(2.5))
        self.assertTrue(r.wait_log(r"closed: TLS handshake not complete within "
                                   r"limits\.request_timeout_ms \(700 ms\)"), r.log_tail())

    # --- client certificates ----------------------------------------------------------------

    def test_client_ca_requires_a_client_certificate(self):
        r = self.start(tls={"cert_file": "tls/server-chain.pem", "key_file": "tls/server.key",
                            "client_ca_file": "tls/ca.pem"})
        self.assertIn("(TLS, client certificates required)", r.log())
        conn = self.https(r, client_cert=True)
        status, body = self.get_json(conn, "POST", "/t", b'{"storeId": 3}')
        self.assertEqual(status, 200, body)
        conn.close()
        conn = self.https(r, client_cert=False)
        with self.assertRaises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            self.get_json(conn, "POST", "/t", b'{"storeId": 3}')
        conn.close()
        self.assertTrue(r.wait_log(r"closed: TLS handshake failed: tls: peer did not return a certificate"),
                        r.log_tail())
        # a certificate from another CA is refused too
        other = ssl.create_default_context(cafile=self.cert("ca.pem"))
        subprocess.run(["openssl", "req", "-x509", "-new", "-key", "other-ca.key", "-subj", "/CN=x",
                        "-days", "1", "-out", "self.pem"], cwd=self.certs, check=True, capture_output=True)
        other.load_cert_chain(self.cert("self.pem"), self.cert("other-ca.key"))
        conn = http.client.HTTPSConnection("127.0.0.1", r.port, timeout=T(5), context=other)
        with self.assertRaises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            self.get_json(conn, "POST", "/t", b'{"storeId": 3}')
        conn.close()
        self.assertEqual(len(self.wd.jsonl("var/audit.jsonl")), 1)

    # --- SIGHUP -----------------------------------------------------------------------------

    def reloaded(self, r, n):
        """Wait until n reloads reached every worker (each logs its own "reloaded" line; a
        connection may land on any of them)."""
        self.assertTrue(r.wait_reloads(n), r.log_tail())

    def test_sighup_rotates_and_a_broken_cert_keeps_the_old(self):
        self._live("server-chain.pem", "server.key")
        r = self.start(tls={"cert_file": "tls/live.pem", "key_file": "tls/live.key"})
        old_serial = serial_of(self.cert("server.pem"))
        self.assertEqual(self.peer_serial(r), old_serial)
        kept = self.https(r)
        self.assertEqual(self.get_json(kept, "GET", "/healthz", token=None)[0], 200)

        new_serial = issue_leaf(self.certs, "server2")
        self.assertNotEqual(new_serial, old_serial)
        self._live("server2.pem", "server2.key")
        r.hup()
        self.reloaded(r, 1)
        self.assertEqual(self.peer_serial(r), new_serial)
        # the connection made before the reload goes on with what it started with
        self.assertEqual(self.get_json(kept, "GET", "/healthz", token=None)[0], 200)
        kept.close()

        with open(self.cert("live.pem"), "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
        r.hup()
        m = r.wait_log(r"error reload failed error=[^\n]*tls\.cert_file: [^\n]*live\.pem: [^\n]+")
        self.assertTrue(m, r.log_tail())
        self.assertEqual(self.peer_serial(r), new_serial, "still serving the last good certificate")
        conn = self.https(r)
        status, body = self.get_json(conn, "GET", "/healthz", token=None)
        self.assertEqual(status, 200)
        h = json.loads(body)
        self.assertEqual(h["reload_failures"], 1)
        self.assertIn("tls.cert_file", h["last_reload_error"])
        conn.close()

    def _live(self, pem, key):
        """Copy a certificate and key over tls/live.pem and tls/live.key (as a deploy would)."""
        for src, dst in ((pem, "live.pem"), (key, "live.key")):
            with open(self.cert(src), "rb") as f:
                self.wd.write("tls/" + dst, f.read(), mode=0o600)

    def test_sighup_rotation_reaches_every_worker(self):
        self._live("server-chain.pem", "server.key")
        r = self.start(tls={"cert_file": "tls/live.pem", "key_file": "tls/live.key"}, workers=2)
        self.assertRegex(r.log(), r"listening on 127\.0\.0\.1:\d+ \(TLS\) \(2 workers\)")
        new_serial = issue_leaf(self.certs, "server2")
        self._live("server2.pem", "server2.key")
        r.hup()
        self.reloaded(r, 1)
        # connections from many source ports: the kernel spreads them over both workers
        serials = {self.peer_serial(r) for _ in range(16)}
        self.assertEqual(serials, {new_serial})

    def test_tls_added_on_reload_applies_to_new_connections(self):
        r = self.start(tls=False)
        kept = http.client.HTTPConnection("127.0.0.1", r.port, timeout=T(5))
        self.assertEqual(self.get_json(kept, "GET", "/healthz", token=None)[0], 200)
        self.wd.config(base_config(tls={"cert_file": "tls/server-chain.pem", "key_file": "tls/server.key"}))
        r.hup()
        self.reloaded(r, 1)
        self.assertTrue(r.wait_log(r"warn  reload: tls added: new connections on port \d+ now need HTTPS"),
                        r.log_tail())
        conn = self.https(r)
        self.assertEqual(self.get_json(conn, "GET", "/healthz", token=None)[0], 200)
        conn.close()
        self.assertEqual(self.get_json(kept, "GET", "/healthz", token=None)[0], 200,
                         "the plain connection opened before the reload stays plain")
        kept.close()
        self.closed_at_once(r, http_req("GET", "/healthz", token=None))

    # --- check --------------------------------------------------------------------------------

    def check(self, tls):
        self.wd.config(base_config(tls=tls))
        return run_cli(["check", "-c", self.wd.p("hookrouter.lua")])

    def test_check_names_the_key_of_a_bad_file(self):
        ok = self.check({"cert_file": "tls/server-chain.pem", "key_file": "tls/server.key",
                         "client_ca_file": "tls/ca.pem"})
        self.assertEqual(ok.returncode, 0, ok.stderr)
        cases = [
            ({"cert_file": "tls/nope.pem", "key_file": "tls/server.key"},
             r"hookrouter\.lua: tls\.cert_file: \S*/tls/nope\.pem: No such file or directory"),
            ({"cert_file": "tls/server-chain.pem", "key_file": "tls/nope.key"},
             r"hookrouter\.lua: tls\.key_file: \S*/tls/nope\.key: No such file or directory"),
            ({"cert_file": "tls/server-chain.pem", "key_file": "tls/other.key"},
             r"tls\.key_file: \S*/tls/other\.key: does not match \S*/tls/server-chain\.pem"),
            ({"cert_file": "tls/server-chain.pem", "key_file": "tls/server.key",
              "client_ca_file": "tls/missing-ca.pem"},
             r"tls\.client_ca_file: \S*/tls/missing-ca\.pem: No such file or directory"),
            ({"cert_file": "tls/server.key", "key_file": "tls/server.key"}, r"tls\.cert_file: \S*server\.key: "),
            ({"key_file": "tls/server.key"}, r"tls\.cert_file: missing"),
            ({"cert_file": "tls/server-chain.pem", "verify": False}, r"tls\.verify: unknown key"),
            ({"cert_file": 5}, r"tls\.cert_file: expected a string, got integer"),
        ]
        for tls, want in cases:
            res = self.check(tls)
            self.assertEqual(res.returncode, 1, "%r: %s" % (tls, res.stderr))
            self.assertRegex(res.stderr, want, tls)
        # a key inside the certificate file is fine
        with open(self.cert("server-chain.pem")) as f, open(self.cert("server.key")) as g:
            self.wd.write("tls/both.pem", f.read() + g.read())
        res = self.check({"cert_file": "tls/both.pem"})
        self.assertEqual(res.returncode, 0, res.stderr)


if __name__ == "__main__":
    main()
