"""Issue 11, signed deliveries: Standard Webhooks and legacy hmac-sha256 signatures on forwards
and request(), checked here by an independent implementation (Python's hmac and base64); the
same webhook-id on a retry with a new timestamp; two secrets; a reload that drops `sign`;
inbound verification (good -> 200, bad / stale / missing -> 401); and no secret in the log,
the dead letters, the spool files or `hookrouter test` output."""
import base64
import glob
import hashlib
import hmac
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hrtest import *  # noqa: E402,F401,F403

SW_KEY1 = b"sw-key-one:7f3a9c1e5b2d8046"
SW_KEY2 = b"sw-key-two:e4b1c8a2d9f60357"
IN_KEY1 = b"in-key-one:0a1b2c3d4e5f6071"
IN_KEY2 = b"in-key-two:5f4e3d2c1b0a9182"
HMAC_SECRET = "legacy-hmac-secret-Q9x2w7"


def whsec(key):
    return "whsec_" + base64.b64encode(key).decode()


# Every form a secret could leak in: the whsec text, its base64 part, the key bytes.
SECRETS = [whsec(k) for k in (SW_KEY1, SW_KEY2, IN_KEY1, IN_KEY2)]
SECRETS += [base64.b64encode(k).decode() for k in (SW_KEY1, SW_KEY2, IN_KEY1, IN_KEY2)]
SECRETS += [k.decode() for k in (SW_KEY1, SW_KEY2, IN_KEY1, IN_KEY2)] + [HMAC_SECRET]


def sw_sign(key, msg_id, ts, body):
    mac = hmac.new(key, b"%s.%s.%s" % (msg_id.encode(), str(ts).encode(), body), hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


RULE = r'''
return function(event)
  local b = event.body
  if event.type == "signed.in" then
    forward("plain", { got = b.n, sig = event.headers["webhook-signature"] ~= nil })
    return
  end
  if b.ask then
    local res, err = request(b.ask, { q = b.n })
    respond(200, { status = res and res.status or err })
    return
  end
  for _, to in ipairs(b.to or {}) do
    -- the scheme's own headers replace what a rule sets
    forward(to, { n = b.n, to = to },
            { headers = { ["webhook-id"] = "forged", ["X-Signature"] = "forged" } })
  end
  write("audit", { mac = hex.encode(crypto.hmac_sha256("rule-key", tostring(b.n))) })
end
'''

SW_SIGN = {"scheme": "standard-webhooks", "secrets": [whsec(SW_KEY1), whsec(SW_KEY2)]}
VERIFY = {"scheme": "standard-webhooks", "secrets": [whsec(IN_KEY1), whsec(IN_KEY2)],
          "tolerance_s": 300}


class SignTest(HRTestCase):
    def config(self, snk, sign=True):
        targets = {
            "sw": target(snk.url + "/sw", retry_ms=[0, 2500], max_attempts=3),
            "hex": target(snk.url + "/hex", sign={"scheme": "hmac-sha256", "secret": HMAC_SECRET}),
            "b64": target(snk.url + "/b64", sign={"scheme": "hmac-sha256", "secret": HMAC_SECRET,
                                                  "header": "X-Hub-Signature-256",
                                                  "encoding": "base64", "prefix": "sha256="}),
            "plain": target(snk.url + "/plain"),
        }
        if sign:
            targets["sw"]["sign"] = SW_SIGN
        endpoints = dict(ENDPOINTS)
        endpoints["/signed"] = {"event": "signed.in", "verify": VERIFY}
        return base_config(targets=targets, endpoints=endpoints)

    def start(self, snk, **kw):
        self.wd.rule(None, RULE)
        return self.router(self.config(snk, **kw))

    def assert_sw(self, req, eid, keys=(SW_KEY1, SW_KEY2)):
        """req carries a valid Standard Webhooks signature per key, in order, for event eid."""
        self.assertEqual(req.header_all("webhook-id"), [eid], req.headers)
        ts = req.header("webhook-timestamp")
        self.assertRegex(ts or "", r"^[0-9]+$")
        self.assertLess(abs(int(ts) - time.time()), 10, "timestamp is not now: %s" % ts)
        want = " ".join(sw_sign(k, eid, ts, req.body) for k in keys)
        self.assertEqual(req.header("webhook-signature"), want)
        return int(ts)

    def no_secrets(self, what, data):
        if isinstance(data, bytes):
            data = data.decode("latin-1")
        for s in SECRETS:
            self.assertNotIn(s, data, "a secret is in %s" % what)

    def test_standard_webhooks_retry_keeps_the_id_with_a_new_timestamp(self):
        snk = self.sink(statuses=[503, 200])
        r = self.start(snk)
        eid = self.assertOk(r.post("/t", {"n": 1, "to": ["sw"]}))
        reqs = snk.wait_for(2, timeout=10)
        self.assertEqual([q.path for q in reqs], ["/sw", "/sw"])
        self.assertEqual(reqs[0].body, reqs[1].body)
        t1 = self.assert_sw(reqs[0], eid)
        t2 = self.assert_sw(reqs[1], eid)
        self.assertGreaterEqual(t2 - t1, 1, "the retry kept the first attempt's timestamp")
        self.assertEqual(reqs[0].header_all("x-hookrouter-event-id"), [eid])
        # one secret alone verifies its part (a receiver that knows only the new one)
        sigs = reqs[1].header("webhook-signature").split(" ")
        self.assertEqual(sigs[1], sw_sign(SW_KEY2, eid, t2, reqs[1].body))
        self.assertTrue(r.wait_log(r"delivered id=%s .*target=sw status=200 attempts=2" % eid, 5))

    def test_legacy_hmac_hex_and_base64_with_prefix(self):
        snk = self.sink()
        r = self.start(snk)
        self.assertOk(r.post("/t", {"n": 2, "to": ["hex", "b64", "plain"]}))
        reqs = {q.path: q for q in snk.wait_for(3)}
        key = HMAC_SECRET.encode()
        hexq, b64q, plain = reqs["/hex"], reqs["/b64"], reqs["/plain"]
        self.assertEqual(hexq.header_all("x-signature"),
                         [hmac.new(key, hexq.body, hashlib.sha256).hexdigest()])
        self.assertEqual(hexq.header("webhook-id"), "forged")  # only the scheme's header is set
        mac = hmac.new(key, b64q.body, hashlib.sha256).digest()
        self.assertEqual(b64q.header("x-hub-signature-256"), "sha256=" + base64.b64encode(mac).decode())
        self.assertEqual(b64q.header("x-signature"), "forged")  # not this target's header
        self.assertIsNone(plain.header("webhook-signature"))
        self.assertEqual(plain.header("x-signature"), "forged")

    def test_request_to_a_signing_target_is_signed(self):
        snk = self.sink()
        r = self.start(snk)
        resp = r.post("/t", {"n": 3, "ask": "sw"})
        self.assertEqual(resp.status, 200, resp.body)
        self.assertEqual(resp.json(), {"status": 200})
        q = snk.wait_for(1)[0]
        self.assertEqual(json.loads(q.body), {"q": 3})
        self.assert_sw(q, q.header("x-hookrouter-event-id"))

    def test_reload_without_sign_sends_the_queued_action_unsigned(self):
        snk = self.sink(down=True)
        r = self.start(snk)
        eid = self.assertOk(r.post("/t", {"n": 4, "to": ["sw"]}))
        self.assertTrue(r.wait_log(r"retry id=%s" % eid, 5), r.log_tail())
        self.wd.config(self.config(snk, sign=False))
        r.hup()
        self.assertTrue(r.wait_log(r"reloaded", 5), r.log_tail())
        snk.start()
        q = snk.wait_for(1, timeout=10)[0]
        self.assertEqual(q.header("x-hookrouter-event-id"), eid)
        for h in ("webhook-timestamp", "webhook-signature"):
            self.assertIsNone(q.header(h), "%s sent after sign was removed" % h)
        self.assertEqual(q.header("webhook-id"), "forged")  # the rule's own, no longer replaced

    def test_inbound_verification(self):
        snk = self.sink()
        r = self.start(snk)
        body = b'{"n":5,"storeId":7}'
        now = int(time.time())

        def send(ts, sig, msg_id="msg_2kdX1", drop=None, token=None):
            h = {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}
            if drop:
                del h[drop]
            return r.post("/signed", body, token=token, headers=h)

        # good: signed with the second secret, among another scheme's signature; no token asked
        resp = send(now, "v1a,AAAA " + sw_sign(IN_KEY2, "msg_2kdX1", now, body))
        self.assertOk(resp)
        self.assertEqual(json.loads(snk.wait_for(1)[0].body), {"got": 5, "sig": True})
        self.assertOk(send(now - 250, sw_sign(IN_KEY1, "msg_2kdX1", now - 250, body)))
        cases = [
            ("bad", send(now, sw_sign(b"another-key", "msg_2kdX1", now, body))),
            ("bad", send(now, sw_sign(IN_KEY1, "msg_other", now, body))),  # id not the signed one
            ("bad", send(now, sw_sign(IN_KEY1, "msg_2kdX1", now, body + b" "))),
            ("bad", send("soon", sw_sign(IN_KEY1, "msg_2kdX1", "soon", body))),
            ("stale", send(now - 1000, sw_sign(IN_KEY1, "msg_2kdX1", now - 1000, body))),
            ("stale", send(now + 1000, sw_sign(IN_KEY1, "msg_2kdX1", now + 1000, body))),
            ("missing", send(now, sw_sign(IN_KEY1, "msg_2kdX1", now, body), drop="webhook-signature")),
            ("missing", send(now, sw_sign(IN_KEY1, "msg_2kdX1", now, body), drop="webhook-id")),
            ("missing", r.post("/signed", body)),  # a bearer token is no signature
        ]
        for i, (what, resp) in enumerate(cases):
            self.assertEqual(resp.status, 401, "case %d (%s): %s %r" % (i, what, resp.status, resp.body))
            self.assertTrue(resp.json()["error"].startswith("%s webhook signature" % what),
                            "case %d: %r" % (i, resp.body))
        for what, n in (("bad", 4), ("stale", 2), ("missing", 3)):
            self.assertTrue(wait_until(lambda: r.count_log(
                r"info +rejected status=401 path=/signed peer=127\.0\.0\.1:[0-9]+ reason=\"%s webhook signature\""
                % what) == n, 3), "%s: %s" % (what, r.log_tail()))
        time.sleep(0.2)
        self.assertEqual(snk.count(), 2, "a refused request reached the rule")
        # an endpoint without verify still asks the token
        self.assertEqual(r.post("/t", {"n": 6}, token=None).status, 401)

    def test_no_secret_in_log_dead_letters_spool_or_test_output(self):
        snk = self.sink(status=400)  # rejected: every forward is a dead letter
        r = self.start(snk)
        for n in range(3):
            self.assertOk(r.post("/t", {"n": n, "to": ["sw", "hex", "b64"]}))
        now = int(time.time())
        body = b'{"n":9}'
        self.assertOk(r.post("/signed", body, token=None, headers={
            "webhook-id": "m1", "webhook-timestamp": str(now),
            "webhook-signature": sw_sign(IN_KEY1, "m1", now, body)}))
        self.assertEqual(r.post("/signed", body, token=None, headers={
            "webhook-id": "m1", "webhook-timestamp": str(now), "webhook-signature": "v1,AAAA"}).status, 401)
        got = wait_until(lambda: len(self.wd.dead_letters) >= 10 and self.wd.dead_letters, 10)
        self.assertTrue(got, "dead letters: %r" % self.wd.dead_letters)
        # the spool while it holds the actions (a clean stop may remove finished segments)
        files = [f for f in glob.glob(self.wd.p("var", "spool", "**"), recursive=True) if os.path.isfile(f)]
        self.assertTrue(files, "no spool files")
        self.assertTrue(any(b"X-Hookrouter-Event-Id" in open(f, "rb").read() for f in files),
                        "the spool files hold no action: %r" % files)  # the grep reads them
        for f in files:
            data = open(f, "rb").read()
            self.no_secrets(f, data)
            self.assertNotIn(b"webhook-signature", data.lower())
        r.stop()
        self.no_secrets("the log", r.log())
        dl = open(self.wd.p("var", "dead-letters.jsonl"), "rb").read()
        self.no_secrets("the dead letters", dl)
        self.assertNotIn(b"webhook-signature", dl.lower())  # signatures are made at send time
        # hookrouter test: the same sandbox (crypto, hex), and its output shows no secret
        self.wd.write("ev.json", json.dumps({"n": 7, "to": ["sw", "hex"]}))
        p = run_cli(["test", "-c", self.wd.p("hookrouter.lua"), "--path", "/t", self.wd.p("ev.json")],
                    cwd=self.wd.path)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.no_secrets("hookrouter test output", p.stdout + p.stderr)
        acts = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
        self.assertEqual([a.get("target") for a in acts if a["action"] == "forward"], ["sw", "hex"])
        mac = hmac.new(b"rule-key", b"7", hashlib.sha256).hexdigest()
        self.assertIn(mac, p.stdout, "crypto.hmac_sha256 in hookrouter test: %s" % p.stdout)
        p = run_cli(["check", "-c", self.wd.p("hookrouter.lua")], cwd=self.wd.path)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.no_secrets("hookrouter check output", p.stdout + p.stderr)


if __name__ == "__main__":
    main()
