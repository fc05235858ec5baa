#!/usr/bin/env python3
"""Send N POSTs of one payload to hookrouter over one keep-alive connection, one at a time.

    bench/cg_client.py PORT PAYLOAD N [PATH] [TOKEN]

Used by scripts/bench-callgrind; exits 1 unless every reply is 200. Loopback only.
"""
import socket
import sys

port, payload_path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
path = sys.argv[4] if len(sys.argv) > 4 else "/aifi/checkout-zone/left"
token = sys.argv[5] if len(sys.argv) > 5 else "bench-token"
with open(payload_path, "rb") as f:
    body = f.read()
req = (
    f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
).encode() + body

s = socket.create_connection(("127.0.0.1", port))
buf = b""
for i in range(n):
    s.sendall(req)
    while True:  # read one reply: headers, then Content-Length bytes
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v)
            if len(buf) >= end + 4 + length:
                break
        chunk = s.recv(65536)
        if not chunk:
            sys.exit(f"cg_client: connection closed after {i} replies")
        buf += chunk
    status = head.split(" ", 2)[1]
    if status != "200":
        sys.exit(f"cg_client: reply {i + 1} was {head.splitlines()[0]!r}")
    buf = buf[end + 4 + length :]
s.close()
