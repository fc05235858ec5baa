"""Outbound HTTPS against a TLS peer started here (Python's ssl module), with certificates made
at test time by the openssl CLI (tests/tls/gen-certs.sh): delivery with a custom CA, keep-alive
and session resumption, verification failures retried then dead-lettered with their reason,
the system trust store by default, verify = false, client certificates, CA rotation on SIGHUP,
request() over https, proxies (CONNECT for https, absolute form for http, HTTPS_PROXY and
NO_PROXY from the environment) through a proxy started here, and `check` naming the key of a
bad tls file or proxy."""
import os
import shutil
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hrtest import *  # noqa: E402,F401,F403

FORWARD_RULE = r'''
return function(event)
  forward("pos", { n = event.body.n }, { path = "/in" })
end
'''

VERIFY_FAILED = "tls: certificate verify failed: self-signed certificate in certificate chain"
SYSTEM_HINT = (" (the server's certificate is not signed by a CA in the system trust store: set"
               " tls.ca_file to the CA that signed it)")


class TLSTest(HRTestCase):
    @classmethod
    def setUpClass(cls):
        cls.certs = make_certs(tempfile.mkdtemp(prefix="hrtest-certs-"))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.certs, ignore_errors=True)

    def cert(self, name):
        return os.path.join(self.certs, name)

    def copy_cert(self, name, as_name=None):
        """Copy a certificate file into the work dir's certs/ (for relative paths)."""
        os.makedirs(self.wd.p("certs"), exist_ok=True)
        dst = self.wd.p("certs", as_name or name)
        shutil.copyfile(self.cert(name), dst + ".tmp")
        os.replace(dst + ".tmp", dst)
        return dst

    def tls_sink(self, client_ca=None, **kw):
        return self.sink(tls=server_tls(self.certs, client_ca=client_ca), **kw)

    def config(self, snk, tls=None, max_attempts=20, **kw):
        t = target(snk.url, max_attempts=max_attempts, retry_ms=[0, 100, 200], **kw)
        if tls is not None:
            t["tls"] = tls
        return base_config(targets={"pos": t})

    def start(self, snk, tls=None, **kw):
        self.wd.rule(None, FORWARD_RULE)
        return self.router(self.config(snk, tls, **kw))

    def dead(self, n, timeout=8):
        got = wait_until(lambda: len(self.wd.dead_letters) >= n and self.wd.dead_letters, timeout)
        self.assertTrue(got, "dead letters: %d, expected %d" % (len(self.wd.dead_letters), n))
        return got

    # ------------------------------------------------------------------ delivery

    def test_https_delivery_keep_alive(self):
        snk = self.tls_sink()
        self.copy_cert("ca.pem")
        r = self.start(snk, tls={"ca_file": "certs/ca.pem"})  # relative to the config's folder
        for n in range(3):  # one after the other, so each finds the last one's connection idle
            eid = self.assertOk(r.post("/t", {"n": n}))
            self.assertTrue(r.wait_log(r"delivered[^\n]*id=%s" % eid, 3), r.log_tail())
        reqs = snk.wait_for(3)
        self.assertEqual([q.json() for q in reqs], [{"n": 0}, {"n": 1}, {"n": 2}])
        self.assertEqual(reqs[0].path, "/in")
        # Host carries no port only for 443; the sink listens elsewhere.
        self.assertEqual(reqs[0].header("Host"), "127.0.0.1:%d" % snk.port)
        # One handshake: the pool kept the TLS connection alive for the next events.
        self.assertEqual(snk.handshakes, 1, "TLS connections not reused: %d handshakes" % snk.handshakes)
        self.assertEqual(snk.tls_errors, [])
        self.assertEqual(self.wd.dead_letters, [])

    def test_session_resumed_on_new_connection(self):
        snk = self.tls_sink(mode="close")  # every answer closes its connection
        r = self.start(snk, tls={"ca_file": self.cert("ca.pem")})
        for n in range(3):
            eid = self.assertOk(r.post("/t", {"n": n}))
            self.assertTrue(r.wait_log(r"delivered[^\n]*id=%s" % eid, 3), r.log_tail())
        self.assertTrue(wait_until(lambda: snk.handshakes >= 3, 3), snk.handshakes)
        self.assertEqual(snk.handshakes, 3)
        # The first connection made the session; the later ones resumed it.
        self.assertGreaterEqual(snk.resumed, 1, "no TLS session was resumed")

    def test_wrong_ca_retried_then_dead_letter(self):
        snk = self.tls_sink()
        r = self.start(snk, tls={"ca_file": self.cert("other-ca.pem")}, max_attempts=3)
        eid = self.assertOk(r.post("/t", {"n": 1}))
        d = self.dead(1)[0]
        self.assertEqual(d["event"]["id"], eid)
        self.assertEqual(d["attempts"], 3)
        self.assertIsNone(d["last_status"])
        want = VERIFY_FAILED + " (the server's certificate is not signed by a CA in %s)" % (
            self.cert("other-ca.pem"))
        self.assertEqual(d["last_error"], want)
        self.assertEqual([a["error"] for a in d["attempt_log"]], [want] * 3)
        self.assertEqual(snk.count(), 0, "a request went out over an unverified connection")
        # The sink's thread records its side of a failed handshake after the router has seen
        # the failure, so the third may land just after the dead letter.
        self.assertTrue(wait_until(lambda: len(snk.tls_errors) >= 3, 3), snk.tls_errors)
        self.assertTrue(r.wait_log(r"retry[^\n]*id=%s" % eid, 3), r.log_tail())

    def test_system_trust_store_by_default(self):
        # No tls table: the system trust store, which does not know the test CA.
        snk = self.tls_sink()
        r = self.start(snk, max_attempts=2)
        self.assertOk(r.post("/t", {"n": 1}))
        d = self.dead(1)[0]
        self.assertEqual(d["last_error"], VERIFY_FAILED + SYSTEM_HINT)
        self.assertEqual(snk.count(), 0)

    def test_host_name_checked(self):
        # The certificate is for localhost and 127.0.0.1: another server_name fails.
        snk = self.tls_sink()
        r = self.start(snk, tls={"ca_file": self.cert("ca.pem"), "server_name": "pos.example.com"},
                       max_attempts=2)
        self.assertOk(r.post("/t", {"n": 1}))
        d = self.dead(1)[0]
        self.assertEqual(d["last_error"], "tls: certificate verify failed: hostname mismatch (the"
                         " certificate does not name pos.example.com; tls.server_name sets the name"
                         " to check)")
        self.assertEqual(snk.count(), 0)

    def test_verify_false_warns_and_delivers(self):
        snk = self.tls_sink()
        r = self.start(snk, tls={"verify": False})
        self.assertTrue(r.wait_log(r"warn[^\n]*targets\.pos\.tls\.verify = false", 3), r.log_tail())
        self.assertOk(r.post("/t", {"n": 7}))
        self.assertEqual(snk.wait_for(1)[0].json(), {"n": 7})
        n = r.count_log(r"tls\.verify = false")
        r.hup()
        self.assertTrue(wait_until(lambda: r.count_log(r"tls\.verify = false") > n, 3),
                        "no warning at the reload:\n" + r.log_tail())

    def test_handshake_counts_in_timeout(self):
        # A peer that accepts (the kernel's backlog) and never answers the ClientHello.
        mute = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        mute.bind(("127.0.0.1", 0))
        mute.listen(16)
        self.addCleanup(mute.close)
        self.wd.rule(None, FORWARD_RULE)
        t = target("https://127.0.0.1:%d" % mute.getsockname()[1], max_attempts=2, timeout_ms=300,
                   retry_ms=[0, 50], tls={"ca_file": self.cert("ca.pem")})
        r = self.router(base_config(targets={"pos": t}))
        t0 = time.monotonic()
        self.assertOk(r.post("/t", {"n": 1}))
        d = self.dead(1)[0]
        self.assertGreaterEqual(time.monotonic() - t0, 0.6)
        self.assertEqual([a["error"] for a in d["attempt_log"]], ["timed out after 300 ms"] * 2)

    # ------------------------------------------------------------------ client certificates

    def test_client_certificate_required(self):
        snk = self.tls_sink(client_ca="ca.pem")
        r = self.start(snk, tls={"ca_file": self.cert("ca.pem"), "client_cert": self.cert("client.pem"),
                                 "client_key": self.cert("client.key")})
        self.assertOk(r.post("/t", {"n": 1}))
        self.assertEqual(snk.wait_for(1)[0].json(), {"n": 1})
        self.assertEqual(self.wd.dead_letters, [])

    def test_client_certificate_missing_refused(self):
        snk = self.tls_sink(client_ca="ca.pem")
        r = self.start(snk, tls={"ca_file": self.cert("ca.pem")}, max_attempts=2)
        self.assertOk(r.post("/t", {"n": 1}))
        d = self.dead(1)[0]
        self.assertEqual(snk.count(), 0)
        self.assertEqual(d["attempts"], 2)
        # TLS 1.3: the server's alert comes after the client's handshake completed and its
        # request went out, so the server's close may reset the connection before the alert
        # is read: either is a refusal, retried.
        for a in d["attempt_log"]:
            self.assertIn(a["error"], ("tls: tlsv13 alert certificate required (the server wants"
                                       " a client certificate: set tls.client_cert and"
                                       " tls.client_key)",
                                       "127.0.0.1:%d: connection reset by peer" % snk.port))
        self.assertTrue(wait_until(lambda: len(snk.tls_errors) >= 2, 3), snk.tls_errors)
        self.assertEqual(len(snk.tls_errors), 2, snk.tls_errors)
        self.assertIn("PEER_DID_NOT_RETURN_A_CERTIFICATE", snk.tls_errors[0])

    # ------------------------------------------------------------------ rotation

    def test_ca_rotation_on_sighup(self):
        snk = self.tls_sink()
        trust = self.copy_cert("other-ca.pem", "trust.pem")  # the wrong CA first
        r = self.start(snk, tls={"ca_file": "certs/trust.pem"}, max_attempts=50)
        eid = self.assertOk(r.post("/t", {"n": 1}))
        self.assertTrue(r.wait_log(r"retry[^\n]*id=%s" % eid, 3), r.log_tail())
        self.assertEqual(snk.count(), 0)
        shutil.copyfile(self.cert("ca.pem"), trust)  # rotate the file in place, then SIGHUP
        r.hup()
        self.assertTrue(r.wait_log(r"reloaded", 3), r.log_tail())
        self.assertEqual(snk.wait_for(1, timeout=5)[0].json(), {"n": 1})
        self.assertTrue(r.wait_log(r"delivered[^\n]*id=%s" % eid, 3), r.log_tail())
        self.assertEqual(self.wd.dead_letters, [])

    def test_reload_with_a_bad_key_keeps_the_old_files(self):
        snk = self.tls_sink(client_ca="ca.pem")
        self.copy_cert("client.pem")
        key = self.copy_cert("client.key")
        tls = {"ca_file": self.cert("ca.pem"), "client_cert": "certs/client.pem",
               "client_key": "certs/client.key"}
        r = self.start(snk, tls=tls)
        self.assertOk(r.post("/t", {"n": 1}))
        snk.wait_for(1)
        shutil.copyfile(self.cert("other.key"), key)  # a key that does not match
        r.hup()
        m = r.wait_log(r"reload failed error=[^\n]*", 3)
        self.assertTrue(m, r.log_tail())
        self.assertIn("targets.pos.tls.client_key: ", m.group(0))
        self.assertIn("does not match", m.group(0))
        self.assertOk(r.post("/t", {"n": 2}))  # still delivered with the old, loaded key
        self.assertEqual(snk.wait_for(2)[1].json(), {"n": 2})

    # ------------------------------------------------------------------ request()

    def test_request_over_https(self):
        snk = self.tls_sink(response_body=b'{"n":41}')
        self.wd.rule(None, 'return function(e)\n'
                           '  local res = assert(request("members", e.body))\n'
                           '  respond(200, { n = res.body.n + 1 })\n'
                           'end\n')
        cfg = base_config(targets={"members": target(snk.url, tls={"ca_file": self.cert("ca.pem")})})
        r = self.router(cfg)
        resp = r.post("/aifi/customer", {"a": 1})
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(resp.json(), {"n": 42})
        self.assertEqual(snk.wait_for(1)[0].json(), {"a": 1})

    # ------------------------------------------------------------------ proxies

    def proxy(self, **kw):
        px = Proxy(**kw)
        self.addCleanup(px.stop)
        return px

    def test_https_through_a_connect_proxy(self):
        snk = self.tls_sink()
        px = self.proxy()
        r = self.start(snk, tls={"ca_file": self.cert("ca.pem")}, proxy=px.url)
        for n in range(2):
            eid = self.assertOk(r.post("/t", {"n": n}))
            self.assertTrue(r.wait_log(r"delivered[^\n]*id=%s" % eid, 3), r.log_tail())
        self.assertEqual([q.json() for q in snk.wait_for(2)], [{"n": 0}, {"n": 1}])
        # One tunnel, kept alive; TLS ran end to end through it (the sink did the handshake).
        self.assertEqual(px.lines, ["CONNECT 127.0.0.1:%d HTTP/1.1" % snk.port])
        self.assertEqual(snk.handshakes, 1)

    def test_http_through_a_proxy_in_absolute_form(self):
        snk = self.sink()
        px = self.proxy()
        r = self.start(snk, proxy=px.url)
        self.assertOk(r.post("/t", {"n": 3}))
        q = snk.wait_for(1)[0]
        self.assertEqual(q.json(), {"n": 3})
        self.assertEqual(q.path, "/in")
        self.assertEqual(px.lines, ["POST http://127.0.0.1:%d/in HTTP/1.1" % snk.port])

    def test_proxy_from_the_environment_and_no_proxy(self):
        snk = self.tls_sink()
        px = self.proxy()
        self.wd.rule(None, FORWARD_RULE)
        self.wd.config(self.config(snk, {"ca_file": self.cert("ca.pem")}))
        r = self.router(env={"HTTPS_PROXY": px.url, "NO_PROXY": "pos.example.com,.example.org"})
        self.assertOk(r.post("/t", {"n": 1}))
        snk.wait_for(1)
        self.assertEqual(px.lines, ["CONNECT 127.0.0.1:%d HTTP/1.1" % snk.port])
        r.stop()
        # NO_PROXY names the host: direct.
        r = self.router(env={"https_proxy": px.url, "no_proxy": "localhost, 127.0.0.1"})
        self.assertOk(r.post("/t", {"n": 2}))
        self.assertEqual(snk.wait_for(2)[1].json(), {"n": 2})
        self.assertEqual(len(px.lines), 1, px.lines)
        r.stop()
        # The target's own proxy = "" turns the environment's off.
        self.wd.config(self.config(snk, {"ca_file": self.cert("ca.pem")}, proxy=""))
        r = self.router(env={"HTTPS_PROXY": px.url})
        self.assertOk(r.post("/t", {"n": 3}))
        self.assertEqual(snk.wait_for(3)[2].json(), {"n": 3})
        self.assertEqual(len(px.lines), 1, px.lines)

    def test_proxy_refusing_connect_is_retried(self):
        snk = self.tls_sink()
        px = self.proxy(connect_status=403)
        r = self.start(snk, tls={"ca_file": self.cert("ca.pem")}, proxy=px.url, max_attempts=2)
        self.assertOk(r.post("/t", {"n": 1}))
        d = self.dead(1)[0]
        want = "proxy 127.0.0.1:%d refused CONNECT 127.0.0.1:%d: HTTP/1.1 403 Refused" % (
            px.port, snk.port)
        self.assertEqual([a["error"] for a in d["attempt_log"]], [want] * 2)
        self.assertEqual(snk.count(), 0)

    def test_check_proxy_errors(self):
        self.wd.rule(None, FORWARD_RULE)
        url = "https://127.0.0.1:9/never"
        for proxy, want in [("https://p:3128", "targets.pos.proxy: expected http://host:port"),
                            ("socks5://p:1080", "targets.pos.proxy: expected http://host:port"),
                            ("http://p:3128/path", "targets.pos.proxy: expected http://host:port"),
                            (5, "targets.pos.proxy: expected a string")]:
            self.wd.config(base_config(targets={"pos": target(url, proxy=proxy)}))
            p = run_cli(["check"], cwd=self.wd.path)
            self.assertEqual(p.returncode, 1, "%r passed check" % proxy)
            self.assertIn(want, p.stderr)
        self.wd.config(base_config(targets={"pos": target(url)}))
        p = run_cli(["check"], cwd=self.wd.path, env={"HTTPS_PROXY": "ftp://proxy.example:21"})
        self.assertEqual(p.returncode, 1)
        self.assertIn("targets.pos.proxy: (from HTTPS_PROXY) expected http://host:port", p.stderr)
        self.assertIn('proxy = "" on the target ignores the environment', p.stderr)
        # credentials are refused without being echoed (stderr goes to the journal)
        for k, v in [("HTTPS_PROXY", "http://alice:S3cretPw@proxy.example:3128"),
                     (None, "http://alice:S3cretPw@proxy.example:3128")]:
            if k:
                self.wd.config(base_config(targets={"pos": target(url)}))
                p = run_cli(["check"], cwd=self.wd.path, env={k: v})
            else:
                self.wd.config(base_config(targets={"pos": target(url, proxy=v)}))
                p = run_cli(["check"], cwd=self.wd.path)
            self.assertEqual(p.returncode, 1)
            self.assertIn("proxy credentials (user:password@) are not supported", p.stderr)
            self.assertNotIn("S3cretPw", p.stderr + p.stdout)
        # "host:port" without a scheme, as curl takes it, is an http:// proxy
        self.wd.config(base_config(targets={"pos": target(url)}))
        p = run_cli(["check"], cwd=self.wd.path, env={"HTTPS_PROXY": "proxy.example:3128"})
        self.assertEqual(p.returncode, 0, p.stderr)
        p = run_cli(["check"], cwd=self.wd.path, env={"HTTPS_PROXY": "http://proxy.example:3128"})
        self.assertEqual(p.returncode, 0, p.stderr)

    # ------------------------------------------------------------------ check

    def test_check_names_the_tls_key(self):
        self.wd.rule(None, FORWARD_RULE)
        url = "https://127.0.0.1:9/never"
        good = {"ca_file": self.cert("ca.pem"), "client_cert": self.cert("client.pem"),
                "client_key": self.cert("client.key")}
        self.wd.config(base_config(targets={"pos": target(url, tls=good)}))
        p = run_cli(["check"], cwd=self.wd.path)
        self.assertEqual(p.returncode, 0, p.stderr)
        missing = self.wd.p("nope.key")
        cases = [
            (dict(good, client_key=missing),
             "targets.pos.tls.client_key: %s: No such file or directory" % missing),
            (dict(good, client_key=self.cert("other.key")),
             "targets.pos.tls.client_key: %s: does not match %s (key values mismatch)"
             % (self.cert("other.key"), self.cert("client.pem"))),
            (dict(good, client_cert=missing), "targets.pos.tls.client_cert: %s: No such file" % missing),
            (dict(good, ca_file=missing), "targets.pos.tls.ca_file: %s: No such file" % missing),
            (dict(good, ca_file=self.cert("client.key")), "targets.pos.tls.ca_file: "),
            ({"client_key": self.cert("client.key")}, "targets.pos.tls.client_cert: missing"),
            ({"verify": "no"}, "targets.pos.tls.verify: expected true or false"),
            ({"cafile": "x"}, "targets.pos.tls.cafile: unknown key"),
        ]
        for tls, want in cases:
            self.wd.config(base_config(targets={"pos": target(url, tls=tls)}))
            p = run_cli(["check"], cwd=self.wd.path)
            self.assertEqual(p.returncode, 1, "%r passed check:\n%s" % (tls, p.stderr))
            self.assertIn(want, p.stderr)
        # tls on an http:// target is a mistake, not ignored.
        self.wd.config(base_config(targets={"pos": target("http://127.0.0.1:9/", tls=good)}))
        p = run_cli(["check"], cwd=self.wd.path)
        self.assertEqual(p.returncode, 1)
        self.assertIn("targets.pos.tls: only for https:// URLs", p.stderr)


if __name__ == "__main__":
    main()
