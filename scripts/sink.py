#!/usr/bin/env python3
"""A logging HTTP sink that stands in for a legacy endpoint while you try hookrouter.

    scripts/sink.py [PORT] [STATUS]     (default 9000, 200; binds 127.0.0.1 only)

Prints every request it gets (method, path, headers, body) and answers STATUS.
"""
import http.server
import sys

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
STATUS = int(sys.argv[2]) if len(sys.argv) > 2 else 200


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        print(f"--- {self.command} {self.path}", flush=True)
        for k, v in self.headers.items():
            print(f"{k}: {v}")
        print()
        print(body.decode("utf-8", "replace"), flush=True)
        self.send_response(STATUS)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = do_PATCH = do_POST

    def log_message(self, fmt, *args):
        pass


if __name__ == "__main__":
    print(f"sink: listening on 127.0.0.1:{PORT}, answering {STATUS}", flush=True)
    http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
