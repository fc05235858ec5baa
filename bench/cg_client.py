#!/usr/bin/env python3
"""Send N POSTs of one payload to hookrouter over one keep-alive connection, one at a time.

    bench/cg_client.py PORT PAYLOAD N [PATH] [TOKEN]

Used by scripts/bench-callgrind; exits 1 unless every reply is 200. Loopback only.
"""
import socket
import sys


def request_from_argv(argv):
    """(port, the raw POST request) from [PORT, PAYLOAD, PATH, TOKEN] (PATH and TOKEN
    optional); shared with bench/idle_conns.py."""
    port, payload_path = int(argv[0]), argv[1]
    path = argv[2] if len(argv) > 2 and argv[2] else "/aifi/checkout-zone/left"
    token = argv[3] if len(argv) > 3 else "bench-token"
    with open(payload_path, "rb") as f:
        body = f.read()
    return port, (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def main():
    n = int(sys.argv[3])
    port, req = request_from_argv([sys.argv[1], sys.argv[2]] + sys.argv[4:])
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


if __name__ == "__main__":
    main()
