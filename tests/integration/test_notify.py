"""sd_notify: READY=1 once listening (every worker), RELOADING=1 + MONOTONIC_USEC then READY=1
around a reload (a failed one too, with a STATUS that says so), STOPPING=1 on SIGTERM, all as
datagrams on the Unix socket NOTIFY_SOCKET names (a path or '@' abstract); nothing without it."""
import os
import re
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hrtest import *  # noqa: E402,F401,F403

RULE = 'return function(e) write("audit", { store = e.store }) end\n'


class NotifySocket:
    """A bound AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, wd, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = "hookrouter-test-%d-%d" % (os.getpid(), id(self))
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            self.env = wd.p("notify.sock")
            self.sock.bind(self.env)
        self.msgs = []  # each: (arrival time, {VAR: value}, raw text)

    def recv(self, timeout=5.0):
        """The next datagram as a dict, or None after timeout."""
        self.sock.settimeout(T(timeout))
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return None
        text = data.decode("utf-8")
        fields = dict(line.split("=", 1) for line in text.split("\n") if line)
        self.msgs.append((time.monotonic(), fields, text))
        return fields

    def expect(self, test, var, timeout=5.0):
        """Receive until a datagram sets var; fail if none does."""
        deadline = time.monotonic() + T(timeout)
        while time.monotonic() < deadline:
            m = self.recv(max(0.05, deadline - time.monotonic()))
            if m is not None and var in m:
                return m
        test.fail("no %s= datagram within %.1fs; got %r" % (var, timeout, [t for _, _, t in self.msgs]))

    def close(self):
        self.sock.close()


def listening_sockets(pid):
    """{port: count} of the TCP sockets in LISTEN that process pid holds."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        m = re.match(r"socket:\[(\d+)\]$", link)
        if m:
            inodes.add(m.group(1))
    ports = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:
                    port = int(cols[1].rsplit(":", 1)[1], 16)
                    ports[port] = ports.get(port, 0) + 1
    return ports


class NotifyTest(HRTestCase):
    def notify(self, **kw):
        ns = NotifySocket(self.wd, **kw)
        self.addCleanup(ns.close)
        return ns

    def check_sequence(self, workers, abstract=False):
        ns = self.notify(abstract=abstract)
        self.wd.rule(None, RULE)
        r = self.router(base_config(workers=workers), env={"NOTIFY_SOCKET": ns.env}, wait=False)
        ready = ns.expect(self, "READY")
        self.assertEqual(ready["READY"], "1")
        self.assertIn("STATUS", ready)
        # READY=1 only once every worker listens: as it arrives, the process already holds one
        # listening socket per worker on the one port.
        self.assertEqual(list(listening_sockets(r.proc.pid).values()), [workers],
                         "at READY=1: %r" % listening_sockets(r.proc.pid))
        r.wait_listening()
        self.assertOk(r.post("/t", {"storeId": 42}))

        before_us = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6)
        r.hup()
        m = ns.expect(self, "RELOADING")
        after_us = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6)
        self.assertEqual(m["RELOADING"], "1")
        self.assertNotIn("READY", m)
        self.assertTrue(before_us <= int(m["MONOTONIC_USEC"]) <= after_us,
                        "MONOTONIC_USEC=%s not between %d and %d (CLOCK_MONOTONIC)"
                        % (m["MONOTONIC_USEC"], before_us, after_us))
        m = ns.expect(self, "READY")
        self.assertEqual(m["READY"], "1")
        self.assertRegex(m["STATUS"], r"\b1 reload\b")
        self.assertTrue(r.wait_log(r"reloaded .*reload=1\b", 5), r.log_tail())
        self.assertOk(r.post("/t", {"storeId": 42}))

        # A failed reload: READY=1 again (still serving), with a STATUS that says it failed.
        self.wd.rule("42", "return function(e\n")
        r.hup()
        m = ns.expect(self, "RELOADING")
        self.assertIn("MONOTONIC_USEC", m)
        m = ns.expect(self, "READY")
        self.assertRegex(m["STATUS"], r"^reload failed\b.*42\.lua")
        self.assertOk(r.post("/t", {"storeId": 42}))

        r.stop()
        m = ns.expect(self, "STOPPING")
        self.assertEqual(m["STOPPING"], "1")
        order = [k for _, f, _ in ns.msgs for k in ("READY", "RELOADING", "STOPPING") if k in f]
        self.assertEqual(order, ["READY", "RELOADING", "READY", "RELOADING", "READY", "STOPPING"])

    def test_sequence_one_worker(self):
        self.check_sequence(1)

    def test_sequence_two_workers(self):
        self.check_sequence(2)

    def test_abstract_socket(self):
        self.check_sequence(1, abstract=True)

    def test_hup_burst_gives_one_ready_per_reloading(self):
        ns = self.notify()
        self.wd.rule(None, RULE)
        r = self.router(base_config(workers=2), env={"NOTIFY_SOCKET": ns.env})
        ns.expect(self, "READY")
        for _ in range(5):
            r.hup()
        ns.expect(self, "RELOADING")
        ns.expect(self, "READY")
        # a late RELOADING from the burst must be followed by its READY
        while ns.recv(1.0) is not None:
            pass
        kinds = [k for _, f, _ in ns.msgs for k in ("READY", "RELOADING") if k in f]
        self.assertEqual(kinds[0], "READY")
        self.assertEqual(kinds[1::2], ["RELOADING"] * len(kinds[1::2]), kinds)
        self.assertEqual(kinds[2::2], ["READY"] * len(kinds[2::2]), kinds)
        self.assertEqual(kinds[-1], "READY", kinds)

    def test_no_ready_when_start_fails(self):
        ns = self.notify()
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        cfg = base_config(listen="127.0.0.1:%d" % taken.getsockname()[1])
        r = self.router(cfg, env={"NOTIFY_SOCKET": ns.env}, wait=False)
        r.start_failed = True  # the exit code 1 is the point
        self.assertEqual(r.wait_exit(10), 1, r.log_tail())
        self.assertIsNone(ns.recv(0.3), "a process that never listened must not say READY=1")

    def test_unset_or_unusable_socket_is_silent(self):
        self.wd.rule(None, RULE)
        for env in ({}, {"NOTIFY_SOCKET": self.wd.p("nobody-listens.sock")},
                    {"NOTIFY_SOCKET": "relative/path"}):
            r = self.router(base_config(), env=env)
            self.assertOk(r.post("/t", {"storeId": 42}))
            r.hup()
            self.assertTrue(r.wait_log(r"reloaded .*reload=1\b", 5), r.log_tail())
            self.assertOk(r.post("/t", {"storeId": 42}))
            r.stop()
            self.assertNotRegex(r.log(), r"notify|NOTIFY", "sd_notify failures log at debug only")


if __name__ == "__main__":
    main()
