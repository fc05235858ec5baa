#!/usr/bin/env python3
"""Open N keep-alive connections to hookrouter, send one request on each, keep them idle.

    bench/idle_conns.py PORT N PAYLOAD PID [PATH] [TOKEN]

Prints the router's VmRSS and VmHWM (from /proc/PID/status) with the N connections open and
idle, then closes them. Used by `scripts/bench --idle N`. Loopback only.
"""
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cg_client import request_from_argv  # noqa: E402  (the same request as the callgrind client)

n, pid = int(sys.argv[2]), sys.argv[4]
port, req = request_from_argv([sys.argv[1], sys.argv[3]] + sys.argv[5:])


def status(key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return 0.0


rss_before = status("VmRSS")
socks, pending, ok = [], [], 0
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(req)
    socks.append(s)
    pending.append(s)
    if len(pending) == 500 or i == n - 1:  # read the replies in batches
        for t in pending:
            if t.recv(65536).startswith(b"HTTP/1.1 200"):
                ok += 1
        pending = []
print(f"idle-connections n={n} ok={ok} rss_before_mb={rss_before:.1f} "
      f"rss_idle_mb={status('VmRSS'):.1f} rss_peak_mb={status('VmHWM'):.1f}")
for s in socks:
    s.close()
sys.exit(0 if ok == n else 1)
