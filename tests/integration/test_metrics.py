"""GET /metrics: the Prometheus text format 0.0.4, parsed here and checked to add up (accepted
= delivered + dead + pending per target, histogram buckets monotone with +Inf = _count) during
and after a run with a healthy target, a dead one, a rule failure, a 401, a good and a failed
reload; the same totals from every worker with workers = 2; metrics.token; admin_listen."""
import os
import re
import shutil
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hrtest import *  # noqa: E402,F401,F403

# forward to the target the body names; fail the rule on demand
RULE = ('return function(e)\n'
        '  if e.body.fail then error("asked to fail") end\n'
        '  forward(e.body.to, { n = e.body.n })\n'
        'end\n')
BROKEN = 'return function(e) forward("pos", {\n'  # a syntax error
PATH = "/aifi/checkout"
TYPE = ENDPOINTS[PATH]
WEIRD = 'we"ird\\name'  # a target name that needs escaping

LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')


def unescape(v):
    return re.sub(r'\\(.)', lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), v)


class Exposition:
    """One scrape, parsed: samples[(name, frozenset of labels)] = value; types[family]."""

    def __init__(self, text):
        self.text = text
        self.samples = {}
        self.types = {}
        self.helps = set()
        for line in text.splitlines():
            if line.startswith("# HELP "):
                self.helps.add(line.split(" ")[2])
                continue
            if line.startswith("# TYPE "):
                _, _, name, typ = line.split(" ")
                self.types[name] = typ
                continue
            m = SAMPLE_RE.match(line)
            if not m:
                raise AssertionError("not a sample line: %r" % line)
            labels = frozenset((k, unescape(v)) for k, v in LABEL_RE.findall(m.group(2) or ""))
            key = (m.group(1), labels)
            if key in self.samples:
                raise AssertionError("duplicate sample: %r" % line)
            self.samples[key] = float(m.group(3))

    def family_of(self, name):
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and self.types.get(name[: -len(suffix)]) == "histogram":
                return name[: -len(suffix)]
        return name

    def get(self, name, **labels):
        """The sample with exactly these labels; 0 if absent."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def sum(self, name, **labels):
        """Sum of the samples of name whose labels include these."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)

    def label_values(self, name, label):
        return {dict(ls).get(label) for (n, ls) in self.samples if n == name}

    def histograms(self, name):
        """{labels without le: [(le, cumulative count)...]} plus _count and _sum per labels."""
        out = {}
        for (n, ls), v in self.samples.items():
            if n == name + "_bucket":
                d = dict(ls)
                le = d.pop("le")
                out.setdefault(frozenset(d.items()), []).append(
                    (float("inf") if le == "+Inf" else float(le), v))
        return {k: sorted(b) for k, b in out.items()}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class MetricsTest(HRTestCase):
    def scrape(self, port, token=None, expect=200):
        resp = request(port, "GET", "/metrics", token=token)
        self.assertEqual(resp.status, expect, resp)
        if expect != 200:
            return resp
        self.assertEqual(resp.header("Content-Type"), "text/plain; version=0.0.4")
        e = Exposition(resp.body.decode("utf-8"))
        self.check_format(e)
        return e

    def check_format(self, e):
        """HELP and TYPE for every sample's family; buckets monotone; +Inf == _count."""
        for (name, _) in e.samples:
            fam = e.family_of(name)
            self.assertIn(fam, e.types, "no TYPE for %s" % name)
            self.assertIn(fam, e.helps, "no HELP for %s" % name)
        for fam, typ in e.types.items():
            if typ != "histogram":
                continue
            for labels, buckets in e.histograms(fam).items():
                counts = [c for _, c in buckets]
                self.assertEqual(counts, sorted(counts), (fam, labels, buckets))
                self.assertEqual(buckets[-1][0], float("inf"), (fam, buckets))
                self.assertEqual(buckets[-1][1], e.get(fam + "_count", **dict(labels)),
                                 (fam, labels))
        if shutil.which("promtool"):
            p = subprocess.run(["promtool", "check", "metrics"], input=e.text.encode(),
                               capture_output=True, timeout=T(20))
            self.assertEqual(p.returncode, 0, p.stdout.decode() + p.stderr.decode())

    def check_targets_add_up(self, e):
        targets = e.label_values("hookrouter_actions_accepted_total", "target")
        self.assertTrue(targets)
        for t in targets:
            acc = e.get("hookrouter_actions_accepted_total", target=t)
            done = (e.get("hookrouter_deliveries_total", target=t, result="delivered")
                    + e.get("hookrouter_deliveries_total", target=t, result="dead"))
            pend = e.get("hookrouter_queue_pending", target=t)
            self.assertEqual(acc, done + pend, (t, acc, done, pend))
            self.assertEqual(e.get("hookrouter_dead_letters_total", target=t),
                             e.get("hookrouter_deliveries_total", target=t, result="dead"))

    def config(self, pos_url, dead_url, **kw):
        return base_config(targets={
            "pos": target(pos_url),
            "dead": target(dead_url, max_attempts=2, retry_ms=[20], timeout_ms=1000),
        }, **kw)

    def test_figures_add_up_during_and_after_a_run(self):
        self.wd.rule(None, RULE)
        pos, dead = self.sink(), self.sink(down=True)
        r = self.router(self.config(pos.url, dead.url))
        e0 = self.scrape(r.port)
        for fam in ("process_resident_memory_bytes", "process_open_fds",
                    "process_start_time_seconds"):
            self.assertGreater(e0.get(fam), 0, fam)
        self.assertIn(("hookrouter_build_info", frozenset({("version", e0.label_values(
            "hookrouter_build_info", "version").pop())})), e0.samples)
        loaded0 = e0.get("hookrouter_config_loaded_timestamp_seconds")
        self.assertGreater(loaded0, 1.6e9)

        n_pos, n_dead = 6, 3
        for i in range(n_pos):
            self.assertOk(r.post(PATH, {"to": "pos", "n": i}))
        during = self.scrape(r.port)  # deliveries may be under way
        self.check_targets_add_up(during)
        for i in range(n_dead):
            self.assertOk(r.post(PATH, {"to": "dead", "n": i}))
        self.assertEqual(r.post(PATH, {"fail": True}).status, 500)
        self.assertEqual(r.post(PATH, {"to": "pos"}, token="wrong").status, 401)
        self.check_targets_add_up(self.scrape(r.port))

        def settled():
            e = self.scrape(r.port)
            return (e.get("hookrouter_deliveries_total", target="dead", result="dead") == n_dead
                    and e.get("hookrouter_deliveries_total", target="pos",
                              result="delivered") == n_pos)
        self.assertTrue(wait_until(settled, 10), r.log_tail())
        e = self.scrape(r.port)
        self.check_targets_add_up(e)
        self.assertEqual(e.get("hookrouter_queue_pending", target="pos"), 0)
        self.assertEqual(e.get("hookrouter_queue_oldest_age_seconds", target="pos"), 0)
        self.assertGreaterEqual(e.get("hookrouter_deliveries_total", target="dead",
                                      result="retried"), n_dead)
        self.assertEqual(e.get("hookrouter_dead_letters_total", target="dead"), n_dead)
        self.assertEqual(e.get("hookrouter_delivery_lag_seconds_count", target="pos"), n_pos)
        self.assertEqual(e.get("hookrouter_delivery_lag_seconds_count", target="dead"), 0)
        self.assertEqual(e.get("hookrouter_delivery_duration_seconds_count", target="pos"),
                         n_pos)
        self.assertIn(e.get("hookrouter_circuit_open", target="pos"), (0.0,))
        # the router's side
        self.assertEqual(e.get("hookrouter_events_total", type=TYPE, outcome="accepted"),
                         n_pos + n_dead)
        self.assertEqual(e.get("hookrouter_events_total", type=TYPE, outcome="rule_failed"), 1)
        self.assertEqual(e.get("hookrouter_events_total", type=TYPE, outcome="refused"), 1)
        self.assertEqual(e.get("hookrouter_requests_total", endpoint=PATH, code="200"),
                         n_pos + n_dead)
        self.assertEqual(e.get("hookrouter_requests_total", endpoint=PATH, code="500"), 1)
        self.assertEqual(e.get("hookrouter_requests_total", endpoint=PATH, code="401"), 1)
        self.assertGreaterEqual(e.get("hookrouter_requests_total", endpoint="/metrics",
                                      code="200"), 4)
        self.assertEqual(e.get("hookrouter_rule_duration_seconds_count", type=TYPE),
                         n_pos + n_dead + 1)
        # a path that is no endpoint does not add a series of its own
        self.assertEqual(request(r.port, "POST", "/nope/" + "x" * 20, body={}).status, 404)
        e = self.scrape(r.port)
        self.assertEqual(e.get("hookrouter_requests_total", endpoint="other", code="404"), 1)
        self.assertFalse([ls for (n, ls) in e.samples if n == "hookrouter_requests_total"
                          and ("endpoint", "/nope/" + "x" * 20) in ls])

        # a failed reload, then a good one
        self.wd.rule(None, BROKEN)
        r.hup()
        self.assertTrue(r.wait_reloads(1, r"reload failed error="), r.log_tail())
        e = self.scrape(r.port)
        self.assertEqual(e.get("hookrouter_reloads_total", result="failed"), 1)
        self.assertEqual(e.get("hookrouter_reloads_total", result="ok"), 0)
        self.assertEqual(e.get("hookrouter_config_loaded_timestamp_seconds"), loaded0)
        self.wd.rule(None, RULE)
        r.hup()
        self.assertTrue(r.wait_reloads(1), r.log_tail())
        e = self.scrape(r.port)
        self.assertEqual(e.get("hookrouter_reloads_total", result="ok"), 1)
        self.assertGreaterEqual(e.get("hookrouter_config_loaded_timestamp_seconds"), loaded0)
        # counters survive the reload
        self.assertEqual(e.get("hookrouter_events_total", type=TYPE, outcome="accepted"),
                         n_pos + n_dead)
        head = request(r.port, "HEAD", "/metrics", token=None)
        self.assertEqual((head.status, head.body), (200, b""))
        self.assertEqual(request(r.port, "POST", "/metrics", token=None).status, 405)

    def test_workers_2_give_the_same_totals_from_every_worker(self):
        self.wd.rule(None, RULE)
        pos, dead = self.sink(), self.sink(down=True)
        r = self.router(self.config(pos.url, dead.url, workers=2))
        n = 20
        for i in range(n):
            self.assertOk(r.post(PATH, {"to": "pos", "n": i}))
        self.assertEqual(r.post(PATH, {"fail": True}).status, 500)
        self.assertTrue(wait_until(lambda: self.scrape(r.port).get(
            "hookrouter_deliveries_total", target="pos", result="delivered") == n, 10))
        seen = set()
        for _ in range(8):  # fresh connections: the kernel spreads them over the workers
            e = self.scrape(r.port)
            self.check_targets_add_up(e)
            seen.add((e.get("hookrouter_events_total", type=TYPE, outcome="accepted"),
                      e.get("hookrouter_events_total", type=TYPE, outcome="rule_failed"),
                      e.get("hookrouter_requests_total", endpoint=PATH, code="200"),
                      e.get("hookrouter_rule_duration_seconds_count", type=TYPE),
                      e.get("hookrouter_actions_accepted_total", target="pos")))
        self.assertEqual(seen, {(n, 1, n, n + 1, n)})
        self.assertTrue(all(h > 0 for h in r.healthz()["worker_events"]),
                        "both workers took events")

    def test_metrics_token(self):
        self.wd.rule(None, RULE)
        cfg = self.config(self.sink().url, self.sink().url, metrics={"token": "scrape-me"})
        cfg["targets"][WEIRD] = target(self.sink().url)
        r = self.router(cfg)
        resp = self.scrape(r.port, token=None, expect=401)
        self.assertEqual(resp.header("WWW-Authenticate"), "Bearer")
        self.scrape(r.port, token=TOKEN, expect=401)  # a webhook token is not the metrics one
        self.assertTrue(r.count_log(r"status=401 path=/metrics .*missing metrics token") >= 1)
        e = self.scrape(r.port, token="scrape-me")
        self.assertEqual(e.get("hookrouter_requests_total", endpoint="/metrics", code="401"), 2)
        # a label value with a quote, a backslash: escaped on the wire, the same once parsed
        self.assertIn('target="we\\"ird\\\\name"', e.text)
        self.assertEqual(e.get("hookrouter_queue_pending", target=WEIRD), 0)
        self.check_targets_add_up(e)
        self.assertEqual(request(r.port, "GET", "/healthz", token=None).status, 200)

    def test_store_labels(self):
        self.wd.rule(None, RULE)
        r = self.router(self.config(self.sink().url, self.sink().url,
                                    metrics={"store_labels": True}))
        self.assertOk(r.post(PATH, {"to": "pos", "storeId": "s-1"}))
        e = self.scrape(r.port)
        self.assertEqual(e.get("hookrouter_events_total", type=TYPE, store="s-1",
                               outcome="accepted"), 1)
        # More label sets than the router memoises (8), interleaved, and stores that differ
        # only in their last byte or length: each counted in its own series.
        stores = ["s-%d" % i for i in range(12)] + ["s-1x", "s-"]
        sent = {}
        for round_ in range(3):
            for i, st in enumerate(stores):
                if (i + round_) % 3:
                    self.assertOk(r.post(PATH, {"to": "pos", "storeId": st}))
                    sent[st] = sent.get(st, 0) + 1
        sent["s-1"] += 1
        e = self.scrape(r.port)
        for st, n in sent.items():
            self.assertEqual(e.get("hookrouter_events_total", type=TYPE, store=st,
                                   outcome="accepted"), n, st)
        self.assertEqual(e.get("hookrouter_requests_total", endpoint=PATH, code="200"),
                         sum(sent.values()))

    def test_admin_listen_serves_the_admin_paths_apart(self):
        self.wd.rule(None, RULE)
        admin = free_port()
        r = self.router(self.config(self.sink().url, self.sink().url,
                                    admin_listen="127.0.0.1:%d" % admin, workers=2))
        self.assertTrue(r.count_log(r"admin paths .* on 127\.0\.0\.1:%d" % admin) >= 1)
        for path in ("/metrics", "/healthz", "/readyz"):
            self.assertEqual(request(r.port, "GET", path, token=None).status, 404, path)
            self.assertEqual(request(admin, "GET", path, token=None).status, 200, path)
        self.assertEqual(request(admin, "POST", PATH, body={"to": "pos"}).status, 404)
        self.assertOk(r.post(PATH, {"to": "pos"}))
        e = self.scrape(admin)
        self.assertEqual(e.get("hookrouter_events_total", type=TYPE, outcome="accepted"), 1)
        for path in ("/metrics", "/healthz", "/readyz", PATH):  # summed over both workers
            self.assertEqual(e.get("hookrouter_requests_total", endpoint=path, code="404"), 1)

    def test_check_validates_the_keys(self):
        self.wd.rule(None, RULE)
        for bad, msg in (({"metrics": {"tokn": "x"}}, r"metrics\.tokn"),
                         ({"metrics": {"store_labels": "yes"}}, r"metrics\.store_labels"),
                         ({"metrics": {"token": ""}}, r"metrics\.token"),
                         ({"admin_listen": "nowhere"}, r"admin_listen")):
            path = self.wd.config(base_config(**bad))
            p = run_cli(["check", "-c", path], cwd=self.wd.path)
            self.assertNotEqual(p.returncode, 0, bad)
            self.assertRegex(p.stdout + p.stderr, msg)


if __name__ == "__main__":
    unittest.main()
