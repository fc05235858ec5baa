"""Integration-test harness for hookrouter: drives the real binary on loopback.

Environment:
  HOOKROUTER_BIN  path to the hookrouter binary (default: first of <repo>/build*/hookrouter)
  HR_FIXTURES     folder of AiFi fixture bodies (default: <repo>/tests/fixtures)
  HR_SOURCE_DIR   repository root (default: two levels above this file)
  HR_WRAP         optional command prefix to run the router under, e.g.
                  "valgrind --leak-check=full --error-exitcode=99 --errors-for-leak-kinds=definite";
                  startup and shutdown waits are then longer and the exit status is checked.
  HR_TIME_SCALE   multiply every timeout by this (default 1, or 6 under HR_WRAP)
  HR_KEEP         keep each test's temp dir (its path is printed) for post-mortems

Python 3 standard library only.
"""

import atexit
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import signal as _signal_mod
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("HR_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.environ.get("HR_FIXTURES") or os.path.join(SOURCE_DIR, "tests", "fixtures")
WRAP = shlex.split(os.environ.get("HR_WRAP", ""))
SCALE = float(os.environ.get("HR_TIME_SCALE") or (6 if WRAP else 1))
KEEP = bool(os.environ.get("HR_KEEP"))

VERSION = "0.1.0"
TOKEN = "tok-Secret-abc123"
TOKEN2 = "tok-Rotated-xyz789"


def _find_bin():
    b = os.environ.get("HOOKROUTER_BIN")
    if b:
        return b
    cands = []
    for name in sorted(os.listdir(SOURCE_DIR)):
        p = os.path.join(SOURCE_DIR, name, "hookrouter")
        if name.startswith("build") and os.path.isfile(p) and os.access(p, os.X_OK):
            cands.append(p)
    if not cands:
        return os.path.join(SOURCE_DIR, "build", "hookrouter")
    cands.sort(key=lambda p: os.path.getmtime(p), reverse=True)  # the newest build
    return cands[0]


BIN = _find_bin()


def T(seconds):
    """A timeout scaled for slow runs (valgrind)."""
    return seconds * SCALE


# ---------------------------------------------------------------------------------------------
# Process registry: everything we start is stopped by PID at exit, whatever happens.

_PROCS = set()
_SINKS = set()


def _kill_all():
    for p in list(_PROCS):
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
            except Exception:
                pass
    for s in list(_SINKS):
        try:
            s.stop()
        except Exception:
            pass


atexit.register(_kill_all)


# ---------------------------------------------------------------------------------------------
# Small helpers

def wait_until(pred, timeout=5.0, interval=0.02, scale=True):
    """Poll pred() until it returns a truthy value (returned) or the timeout passes (None)."""
    deadline = time.monotonic() + (T(timeout) if scale else timeout)
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def read_jsonl(path):
    """Every line of a JSON-lines file, parsed; [] if the file does not exist.
    A line that is not JSON raises (with the line), since each line must be one JSON value."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path, "rb") as f:
        for i, line in enumerate(f.read().split(b"\n")):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError as e:
                raise AssertionError("%s line %d is not JSON (%s): %r" % (path, i + 1, e, line[:300]))
    return out


def read_lines(path):
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        return [l for l in f.read().split(b"\n") if l]


def fixture_path(name):
    return os.path.join(FIXTURES, name)


def fixture_bytes(name):
    with open(fixture_path(name), "rb") as f:
        return f.read()


def fixture_json(name):
    return json.loads(fixture_bytes(name))


class F:
    """A float tag, so that 1.0 and 1 compare unequal after typed_json."""
    __slots__ = ("v",)

    def __init__(self, v):
        self.v = float(v)

    def __eq__(self, o):
        return isinstance(o, F) and (o.v == self.v or (o.v != o.v and self.v != self.v))

    def __hash__(self):
        return hash(self.v)

    def __repr__(self):
        return "F(%r)" % self.v


def typed_json(data):
    """Parse JSON so that integers stay exact ints and floats are F(...): 1 != 1.0."""
    if isinstance(data, (bytes, bytearray)):
        data = data.decode("utf-8")
    return json.loads(data, parse_float=F, parse_constant=lambda c: F(float(c)))


# Lua source from Python values --------------------------------------------------------------

class LuaRaw(str):
    """A Lua expression written as is into a generated config."""


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LUA_KEYWORDS = set("and break do else elseif end false for function goto if in local nil not or "
                    "repeat return then true until while".split())


def lua_str(s):
    out = ['"']
    for ch in s.encode("utf-8"):
        c = chr(ch)
        if c == '"' or c == "\\":
            out.append("\\" + c)
        elif 32 <= ch < 127:
            out.append(c)
        else:
            out.append("\\%03d" % ch)
    out.append('"')
    return "".join(out)


def lua(v, indent=""):
    if isinstance(v, LuaRaw):
        return str(v)
    if v is None:
        return "nil"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return lua_str(v)
    inner = indent + "  "
    if isinstance(v, (list, tuple)):
        if not v:
            return "{}"
        return "{\n" + "".join(inner + lua(x, inner) + ",\n" for x in v) + indent + "}"
    if isinstance(v, dict):
        if not v:
            return "{}"
        parts = []
        for k, x in v.items():
            if isinstance(k, str) and _IDENT.match(k) and k not in _LUA_KEYWORDS:
                key = k
            else:
                key = "[" + lua(k) + "]"
            parts.append(inner + key + " = " + lua(x, inner) + ",\n")
        return "{\n" + "".join(parts) + indent + "}"
    raise TypeError("cannot write %r as Lua" % (v,))


# AiFi paths used by the tests: fixture file -> (path, event type) ------------------------------

ENDPOINTS = {
    "/aifi/transition/entered": "transition.entered",
    "/aifi/transition/left": "transition.left",
    "/aifi/checkout-zone/entered": "checkout-zone.entered",
    "/aifi/checkout-zone/left": "checkout-zone.left",
    "/aifi/checkout": "checkout",
    "/aifi/cart-mutator": "cart-mutator",
    "/aifi/order-price": "order-price",
    "/aifi/entry-code/verify": "entry-code.verify",
    "/aifi/entry-code/notify": "entry-code.notify",
    "/aifi/customer": "customer.created",
    "/aifi/remote-register": "remote-register",
    "/aifi/tracking": "tracking",
    "/aifi/suspected-fraud": "suspected-fraud",
    "/aifi/identity-matching": "identity-matching",
    "/aifi/planogram-error": "planogram-error",
    "/aifi/restricted-products-interactions": "restricted-products-interactions",
    "/t": "test.event",
}

FIXTURE_PATHS = {
    "transition-entered.json": "/aifi/transition/entered",
    "transition-left.json": "/aifi/transition/left",
    "checkout-zone-entered.json": "/aifi/checkout-zone/entered",
    "checkout-zone-left.json": "/aifi/checkout-zone/left",
    "checkout-draft.json": "/aifi/checkout",
    "checkout-completed.json": "/aifi/checkout",
    "cart-mutator.json": "/aifi/cart-mutator",
    "order-price.json": "/aifi/order-price",
    "entry-code-verify.json": "/aifi/entry-code/verify",
    "entry-code-notify.json": "/aifi/entry-code/notify",
    "customer-created.json": "/aifi/customer",
    "customer-updated.json": "/aifi/customer",
    "remote-register.json": "/aifi/remote-register",
    "tracking.json": "/aifi/tracking",
    "suspected-fraud.json": "/aifi/suspected-fraud",
    "identity-matching.json": "/aifi/identity-matching",
    "planogram-error.json": "/aifi/planogram-error",
    "restricted-products-interactions.json": "/aifi/restricted-products-interactions",
    "variants/checkout-reviewed.json": "/aifi/checkout",
    "variants/checkout-zone-id-integer.json": "/aifi/checkout-zone/left",
    "variants/employee-role.json": "/aifi/transition/entered",
    "variants/empty-metadata.json": "/aifi/transition/entered",
    "variants/large-events.json": "/aifi/checkout",
    "variants/large-integers.json": "/aifi/checkout",
    "variants/legacy-minimal-checkout-zone.json": "/aifi/checkout-zone/entered",
    "variants/legacy-session-token-only.json": "/aifi/checkout-zone/entered",
    "variants/remote-register-null-device.json": "/aifi/remote-register",
    "variants/session-object-only.json": "/aifi/transition/entered",
    "variants/store-external-id-null.json": "/aifi/transition/entered",
    "variants/store-id-integer.json": "/aifi/checkout-zone/left",
    "variants/store-id-string.json": "/aifi/checkout-zone/left",
    "variants/tracking-null-shopper.json": "/aifi/tracking",
    "variants/unicode-names.json": "/aifi/customer",
}


def expected_store(body, key="storeId"):
    """The store id the router should compute (normalised to a string), or None."""
    v = body
    for part in key.split("."):
        if not isinstance(v, dict) or part not in v:
            return None
        v = v[part]
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return v
    return None


# ---------------------------------------------------------------------------------------------
# Work dir: one per test, holding the config, rules, var/ and the router's stderr.

class Workdir:
    def __init__(self, prefix="hrtest-"):
        self.path = tempfile.mkdtemp(prefix=prefix)
        os.makedirs(os.path.join(self.path, "rules", "stores"), exist_ok=True)
        os.makedirs(os.path.join(self.path, "var"), exist_ok=True)

    def p(self, *rel):
        return os.path.join(self.path, *rel)

    def write(self, rel, text, mode=0o644):
        full = self.p(rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        data = text.encode("utf-8") if isinstance(text, str) else text
        # write then rename, so a reload never sees a half-written file
        tmp = full + ".tmp~"
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, full)
        return full

    def rule(self, store, text):
        """Write rules/stores/<store>.lua, or rules/default.lua when store is None."""
        if store is None:
            return self.write("rules/default.lua", text)
        return self.write("rules/stores/%s.lua" % store, text)

    def config(self, cfg, name="hookrouter.lua"):
        """Write a config from a dict (see base_config) or raw Lua source."""
        text = cfg if isinstance(cfg, str) else "return " + lua(cfg) + "\n"
        return self.write(name, text)

    def jsonl(self, rel):
        return read_jsonl(self.p(rel))

    @property
    def dead_letters(self):
        return read_jsonl(self.p("var", "dead-letters.jsonl"))

    def cleanup(self):
        if KEEP:
            print("kept work dir:", self.path, file=sys.stderr)
            return
        shutil.rmtree(self.path, ignore_errors=True)


def base_config(targets=None, files=None, **kw):
    """The standard test config as a dict. Keys in kw override or add top-level keys."""
    cfg = {
        "listen": "127.0.0.1:0",
        "tokens": [TOKEN],
        "endpoints": dict(ENDPOINTS),
        "rules": "rules",
        "targets": targets or {},
        "files": files if files is not None else {"audit": {"path": "var/audit.jsonl"}},
        "dead_letters": "var/dead-letters.jsonl",
        "log": {"level": "info"},
    }
    if not cfg["targets"]:
        del cfg["targets"]
    cfg.update(kw)
    return cfg


def target(url, **kw):
    t = {"url": url, "timeout_ms": 2000, "max_attempts": 3}
    t.update(kw)
    return t


# ---------------------------------------------------------------------------------------------
# HTTP client helpers

class Resp:
    def __init__(self, status, reason, headers, body, version=None):
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value)
        self.body = body
        self.version = version

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            raise AssertionError("response body is not JSON: %r" % self.body[:500])

    def __repr__(self):
        return "<Resp %s %r %r>" % (self.status, self.headers, self.body[:300])


def request(port, method, path, body=None, headers=None, token=TOKEN, timeout=5.0):
    """One request on a fresh connection (http.client). token=None: no Authorization."""
    h = {}
    if token is not None:
        h["Authorization"] = "Bearer " + token
    if body is not None and not isinstance(body, (bytes, bytearray)):
        body = body.encode("utf-8") if isinstance(body, str) else json.dumps(body).encode()
    if body is not None:
        h["Content-Type"] = "application/json"
    h.update(headers or {})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=T(timeout))
    try:
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        return Resp(r.status, r.reason, list(r.getheaders()), data, r.version)
    finally:
        conn.close()


def post(port, path, body, token=TOKEN, headers=None, timeout=5.0):
    return request(port, "POST", path, body=body, headers=headers, token=token, timeout=timeout)


def post_fixture(port, name, path=None, **kw):
    return post(port, path or FIXTURE_PATHS[name], fixture_bytes(name), **kw)


def http_req(method, path, body=b"", headers=None, token=TOKEN, version="HTTP/1.1", host=True):
    """Raw request bytes (for RawConn): Content-Length set when body is not None."""
    lines = ["%s %s %s" % (method, path, version)]
    if host:
        lines.append("Host: 127.0.0.1")
    if token is not None:
        lines.append("Authorization: Bearer " + token)
    if body is not None:
        if isinstance(body, str):
            body = body.encode("utf-8")
        lines.append("Content-Length: %d" % len(body))
    for k, v in (headers or {}).items():
        lines.append("%s: %s" % (k, v))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


class RawConn:
    """A raw TCP connection for pipelining, chunked, malformed and slow cases."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=T(timeout))
        self.buf = b""
        self.eof = False

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out waiting for data (have %r)" % self.buf[:200])
        self.sock.settimeout(left)
        try:
            d = self.sock.recv(65536)
        except ConnectionResetError:
            d = b""
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def _read_until(self, sep, deadline):
        while sep not in self.buf:
            if not self._fill(deadline):
                raise EOFError("connection closed before %r (have %r)" % (sep, self.buf[:300]))
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def _read_n(self, n, deadline):
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise EOFError("connection closed after %d of %d body bytes" % (len(self.buf), n))
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_response(self, timeout=5.0, method="POST"):
        """Read one response (a 1xx is returned as is, without a body)."""
        deadline = time.monotonic() + T(timeout)
        head = self._read_until(b"\r\n\r\n", deadline).decode("latin-1")
        lines = head.split("\r\n")
        m = re.match(r"^(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
        if not m:
            raise AssertionError("bad status line: %r" % lines[0])
        version, status, reason = m.group(1), int(m.group(2)), m.group(3) or ""
        headers = []
        for l in lines[1:]:
            if not l:
                continue
            k, _, v = l.partition(":")
            headers.append((k.strip(), v.strip()))
        r = Resp(status, reason, headers, b"", version)
        if status < 200 or status in (204, 304) or method == "HEAD":
            return r
        te = (r.header("transfer-encoding") or "").lower()
        if "chunked" in te:
            body = b""
            while True:
                size_line = self._read_until(b"\r\n", deadline)
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    # trailers
                    while self._read_until(b"\r\n", deadline) != b"\r\n":
                        pass
                    break
                body += self._read_n(size, deadline)
                self._read_until(b"\r\n", deadline)
            r.body = body
        elif r.header("content-length") is not None:
            r.body = self._read_n(int(r.header("content-length")), deadline)
        else:
            while self._fill(deadline):
                pass
            r.body, self.buf = self.buf, b""
        return r

    def closed_within(self, timeout):
        """True if the peer closes (EOF or reset) within timeout seconds (data is kept)."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
            return True
        except (socket.timeout, TimeoutError):
            return False
        except OSError:
            return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def chunked(parts):
    out = b""
    for p in parts:
        if isinstance(p, str):
            p = p.encode("utf-8")
        out += b"%x\r\n" % len(p) + p + b"\r\n"
    return out + b"0\r\n\r\n"


# ---------------------------------------------------------------------------------------------
# Router process

PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY")


def clean_env():
    """The environment for the binary: ours without proxy variables (the router would send
    its loopback deliveries through a proxy the machine names); a test sets its own."""
    return {k: v for k, v in os.environ.items() if k not in PROXY_VARS}


VALGRIND_LINE = re.compile(r"==\d+==")


def router_lines(text):
    """The lines of a router's stderr (text split at newlines, the last piece kept), without
    valgrind's own report lines ("==pid== ..."), which share that stream under HR_WRAP."""
    return [l for l in text.split("\n") if not VALGRIND_LINE.match(l)]


class Router:
    LISTEN_RE = re.compile(r"listening on (?:https?://)?(?:127\.0\.0\.1|\[::1\]|localhost):(\d+)")

    def __init__(self, wd, config="hookrouter.lua", args=None, env=None, start=True, wait=True):
        self.wd = wd
        self.config = wd.p(config) if not os.path.isabs(config) else config
        self.args = args
        self.env = env
        self.proc = None
        self.port = None
        self.stderr_path = wd.p("router.%d.stderr" % id(self))
        self.stdout_path = wd.p("router.%d.stdout" % id(self))
        self.exit_code = None
        if start:
            self.start(wait=wait)

    def start(self, wait=True):
        cmd = WRAP + [BIN, "run", "-c", self.config] + (self.args or [])
        env = clean_env()
        env.update(self.env or {})
        self._err = open(self.stderr_path, "wb")
        self._out = open(self.stdout_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.wd.path, stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=self._err, env=env)
        _PROCS.add(self.proc)
        if wait:
            self.wait_listening()
        return self

    def log(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n=40):
        return "\n".join(self.log().splitlines()[-n:])

    def wait_listening(self, timeout=10.0):
        def ready():
            m = self.LISTEN_RE.search(self.log())
            if m:
                return m
            if self.proc.poll() is not None:
                self.start_failed = True
                raise AssertionError("router exited with %s before listening; stderr:\n%s"
                                     % (self.proc.returncode, self.log_tail()))
            return None

        m = wait_until(ready, timeout)
        if not m:
            raise AssertionError("no 'listening on 127.0.0.1:PORT' log line within %.1fs; stderr:\n%s"
                                 % (T(timeout), self.log_tail()))
        self.port = int(m.group(1))
        if self.port == 0:
            raise AssertionError("router logged port 0 instead of the bound port: %r" % m.group(0))
        return self.port

    def wait_log(self, pattern, timeout=5.0, after=0):
        """Wait for a regex in stderr (searched from character offset `after`); returns the match."""
        rx = re.compile(pattern)
        return wait_until(lambda: rx.search(self.log()[after:]), timeout)

    def count_log(self, pattern):
        return len(re.findall(pattern, self.log()))

    def workers(self):
        """Front workers, from the "listening on ... (N workers)" line (1 if it names none)."""
        m = re.search(r"listening on \S+ .*\((\d+) workers\)", self.log())
        return int(m.group(1)) if m else 1

    def wait_reloads(self, n, pattern=r"(?<!\w)reloaded ", timeout=10):
        """True once n reloads (each logs one line per worker: pattern) reached every worker:
        one line is not enough, a slower worker may not have read the files yet."""
        want = n * self.workers()
        return wait_until(lambda: self.count_log(pattern) >= want, timeout)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def hup(self):
        self.signal(signal.SIGHUP)

    def wait_exit(self, timeout):
        try:
            self.exit_code = self.proc.wait(timeout=T(timeout))
        except subprocess.TimeoutExpired:
            return None
        self._close_files()
        return self.exit_code

    def _close_files(self):
        for f in (getattr(self, "_err", None), getattr(self, "_out", None)):
            if f and not f.closed:
                f.close()

    def stop(self, sig=_signal_mod.SIGTERM, timeout=15.0, check=True):
        """Signal by PID, wait, SIGKILL after the timeout. With check, assert exit code 0."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=T(timeout))
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
                self._close_files()
                _PROCS.discard(self.proc)
                if check:
                    raise AssertionError("router did not exit within %.1fs of signal %d; stderr:\n%s"
                                         % (T(timeout), sig, self.log_tail()))
                return None
        self.exit_code = self.proc.returncode
        self._close_files()
        _PROCS.discard(self.proc)
        if check and self.exit_code != 0:
            raise AssertionError("router exit code %s after signal %d (expected 0); stderr:\n%s"
                                 % (self.exit_code, sig, self.log_tail(60)))
        return self.exit_code

    def kill(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._close_files()
        _PROCS.discard(self.proc)

    # requests
    def post(self, path, body, **kw):
        return post(self.port, path, body, **kw)

    def post_fixture(self, name, path=None, **kw):
        return post_fixture(self.port, name, path, **kw)

    def request(self, method, path, **kw):
        return request(self.port, method, path, **kw)

    def healthz(self):
        r = request(self.port, "GET", "/healthz", token=None)
        if r.status != 200:
            raise AssertionError("GET /healthz -> %s %r" % (r.status, r.body[:300]))
        return r.json()

    def raw(self, timeout=5.0):
        return RawConn(self.port, timeout)


def run_cli(args, cwd=None, timeout=20.0, env=None, input=None):
    """Run the binary (not under HR_WRAP) and return CompletedProcess with text output."""
    e = clean_env()
    e.update(env or {})
    return subprocess.run([BIN] + list(args), cwd=cwd, capture_output=True, timeout=T(timeout),
                          env=e, input=input, text=True, errors="replace")


# ---------------------------------------------------------------------------------------------
# Sink: an HTTP server standing in for a legacy target.

class SinkRequest:
    def __init__(self, method, path, headers, body, t, peer=None):
        self.peer = peer  # (host, port) of the router's connection
        self.method = method
        self.path = path
        self.headers = headers  # list of (name, value) as received
        self.body = body
        self.t = t

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self):
        return json.loads(self.body)

    def typed(self):
        return typed_json(self.body)

    def __repr__(self):
        return "<SinkRequest %s %s %r %r>" % (self.method, self.path, self.headers, self.body[:200])


class Sink:
    """Records every request; answers from a script.

    statuses: list of statuses for successive requests (then `status`, default 200).
    delays: list of delays in seconds for successive requests (then `delay`, default 0).
    down=True: a port is reserved but nothing listens (connections are refused) until start().
    """

    def __init__(self, statuses=None, status=200, delays=None, delay=0.0, down=False,
                 response_body=b'{"ok":true}', mode="normal", tls=None):
        # tls: an ssl.SSLContext (server side): the sink speaks HTTPS; failed handshakes are
        # recorded in tls_errors
        self.tls = tls
        self.tls_errors = []
        self.handshakes = 0
        self.resumed = 0  # handshakes that resumed a session
        # mode: "normal" (Content-Length, keep-alive), "close" (Content-Length + Connection: close),
        # "chunked" (chunked response body), "eof" (no length: body ends when the sink closes)
        self.mode = mode
        self.statuses = list(statuses or [])
        self.status = status
        self.delays = list(delays or [])
        self.delay = delay
        self.response_body = response_body
        self.requests = []
        self.completed = 0
        self.lock = threading.Lock()
        self.server = None
        self.thread = None
        self._conns = set()
        self.port = None
        _SINKS.add(self)
        if down:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
            s.close()
        else:
            self.start()

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.port)

    def start(self):
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30

            def setup(self):
                super().setup()
                with sink.lock:
                    sink._conns.add(self.connection)

            def finish(self):
                try:
                    super().finish()
                finally:
                    with sink.lock:
                        sink._conns.discard(self.connection)

            def log_message(self, *a):
                pass

            def _read_body(self):
                te = (self.headers.get("Transfer-Encoding") or "").lower()
                if "chunked" in te:
                    body = b""
                    while True:
                        line = self.rfile.readline()
                        size = int(line.split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return body
                        body += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _handle(self):
                body = self._read_body()
                rec = SinkRequest(self.command, self.path, list(self.headers.items()), body,
                                  time.monotonic(), self.client_address)
                with sink.lock:
                    sink.requests.append(rec)
                    status = sink.statuses.pop(0) if sink.statuses else sink.status
                    delay = sink.delays.pop(0) if sink.delays else sink.delay
                if delay:
                    time.sleep(delay)
                payload = sink.response_body
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    if sink.mode == "chunked":
                        self.send_header("Transfer-Encoding", "chunked")
                        self.end_headers()
                        half = len(payload) // 2
                        for part in (payload[:half], payload[half:]):
                            if part:
                                self.wfile.write(b"%x\r\n" % len(part) + part + b"\r\n")
                        self.wfile.write(b"0\r\n\r\n")
                    elif sink.mode == "eof":
                        self.send_header("Connection", "close")
                        self.close_connection = True
                        self.end_headers()
                        self.wfile.write(payload)
                    else:
                        self.send_header("Content-Length", str(len(payload)))
                        if sink.mode == "close":
                            self.send_header("Connection", "close")
                            self.close_connection = True
                        self.end_headers()
                        self.wfile.write(payload)
                    self.wfile.flush()
                except OSError:
                    return
                with sink.lock:
                    sink.completed += 1

            do_POST = do_PUT = do_PATCH = do_DELETE = do_GET = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 128

            def finish_request(self, request, client_address):
                if sink.tls is None:
                    return super().finish_request(request, client_address)
                # the handshake runs in the connection's thread, not the accept loop
                request.settimeout(10)
                try:
                    tls = sink.tls.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError) as e:
                    with sink.lock:
                        sink.tls_errors.append(str(e))
                    return
                with sink.lock:
                    sink.handshakes += 1
                    sink.resumed += 1 if tls.session_reused else 0
                try:
                    super().finish_request(tls, client_address)
                finally:
                    tls.close()

        self.server = Server(("127.0.0.1", self.port or 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        return self

    def stop(self):
        if self.server is None:
            return
        srv, self.server = self.server, None
        srv.shutdown()
        srv.server_close()
        with self.lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        _SINKS.discard(self)

    def count(self):
        with self.lock:
            return len(self.requests)

    def wait_for(self, n, timeout=5.0):
        """Wait until at least n requests arrived; returns the list (or fails)."""
        if not wait_until(lambda: self.count() >= n, timeout):
            raise AssertionError("sink got %d requests within %.1fs, expected %d: %r"
                                 % (self.count(), T(timeout), n, self.requests))
        with self.lock:
            return list(self.requests)


# ---------------------------------------------------------------------------------------------
# TLS: certificates made by the openssl CLI (tests/tls/gen-certs.sh)

def make_certs(folder):
    """Make the test CA, server (localhost, 127.0.0.1, ::1), client and other-CA certificates
    in folder (see tests/tls/gen-certs.sh for the file names); returns folder."""
    subprocess.run(["sh", os.path.join(SOURCE_DIR, "tests", "tls", "gen-certs.sh"), folder],
                   check=True, timeout=60)
    return folder


def server_tls(certs, client_ca=None, chain="server-chain.pem", key="server.key"):
    """A server-side SSLContext from the files in certs; client_ca: require client
    certificates signed by that file's CAs."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(certs, chain), os.path.join(certs, key))
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(os.path.join(certs, client_ca))
    return ctx


class Proxy:
    """A loopback HTTP proxy: CONNECT host:port opens a tunnel (or is refused with
    connect_status when that is not 200); a request in absolute form (POST http://h:p/path) is
    sent on to its origin in origin form, and the connection then piped as it is. lines holds
    every first request line a client sent."""

    def __init__(self, connect_status=200):
        self.connect_status = connect_status
        self.lines = []
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self._socks = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self._socks.add(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _serve(self, c):
        data = b""
        while b"\r\n\r\n" not in data:
            d = c.recv(65536)
            if not d:
                c.close()
                return
            data += d
        head, rest = data.split(b"\r\n\r\n", 1)
        first, _, headers = head.partition(b"\r\n")
        line = first.decode("latin-1")
        with self.lock:
            self.lines.append(line)
        method, target, version = line.split(" ", 2)
        try:
            if method == "CONNECT":
                if self.connect_status != 200:
                    c.sendall(b"HTTP/1.1 %d Refused\r\nContent-Length: 0\r\n\r\n" % self.connect_status)
                    c.close()
                    return
                host, port = target.rsplit(":", 1)
                up = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
                c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest:
                    up.sendall(rest)
            else:
                import urllib.parse
                u = urllib.parse.urlsplit(target)
                up = socket.create_connection((u.hostname, u.port or 80), timeout=5)
                path = (u.path or "/") + ("?" + u.query if u.query else "")
                up.sendall(("%s %s %s\r\n" % (method, path, version)).encode("latin-1")
                           + headers + b"\r\n\r\n" + rest)
        except OSError:
            c.close()
            return
        up.settimeout(None)
        with self.lock:
            self._socks.add(up)
        threading.Thread(target=self._pipe, args=(up, c), daemon=True).start()
        self._pipe(c, up)

    def stop(self):
        self.sock.close()
        with self.lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.close()
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------
# Test case base

class HRTestCase(unittest.TestCase):
    maxDiff = 4000

    def setUp(self):
        self.wd = Workdir()
        self._routers = []
        self._sinks = []
        self.addCleanup(self._cleanup)

    def _cleanup(self):
        failed = False
        outcome = getattr(self, "_outcome", None)
        res = getattr(outcome, "result", None)
        if res is not None:
            failed = any(t is self for t, _ in list(res.failures) + list(res.errors))
        for s in self._sinks:
            s.stop()
        errors = []
        for r in self._routers:
            if r.proc is None:
                continue
            was_alive = r.alive()
            try:
                r.stop(check=not getattr(r, "start_failed", False))
            except AssertionError as e:
                errors.append(str(e))
            if not was_alive and r.exit_code not in (0, None) and not getattr(r, "expect_exit", False):
                pass  # reported through stop() above
            if failed:
                print("\n---- router stderr (%s) ----\n%s\n----" % (self.id(), r.log_tail(40)),
                      file=sys.stderr)
        self.wd.cleanup()
        if errors:
            raise AssertionError("; ".join(errors))

    def sink(self, **kw):
        s = Sink(**kw)
        self._sinks.append(s)
        return s

    def router(self, cfg=None, **kw):
        """Write cfg (dict or Lua text) if given, start the router and wait until it listens."""
        if cfg is not None:
            self.wd.config(cfg)
        r = Router(self.wd, start=False, **{k: v for k, v in kw.items() if k not in ("wait",)})
        self._routers.append(r)
        r.start(wait=kw.get("wait", True))
        return r

    def assertOk(self, resp, msg=""):
        """A 200 reply with {"id": "..."}; returns the id."""
        self.assertEqual(resp.status, 200, "%s expected 200, got %s %r" % (msg, resp.status, resp.body[:500]))
        j = resp.json()
        self.assertIsInstance(j, dict, "reply body %r" % resp.body)
        self.assertIn("id", j, "reply body %r lacks id" % resp.body)
        self.assertIsInstance(j["id"], str)
        self.assertTrue(j["id"], "empty event id")
        return j["id"]


def main():
    if not (os.path.isfile(BIN) and os.access(BIN, os.X_OK)):
        print("hookrouter binary not found at %s (set HOOKROUTER_BIN)" % BIN, file=sys.stderr)
    print("binary: %s%s" % (BIN, " (wrapped: %s)" % " ".join(WRAP) if WRAP else ""), file=sys.stderr)
    prog = unittest.main(verbosity=2, exit=False)
    res = prog.result
    print("\nSUMMARY %s: ran %d, failures %d, errors %d, skipped %d"
          % (os.path.basename(sys.argv[0]), res.testsRun, len(res.failures), len(res.errors),
             len(res.skipped)), file=sys.stderr)
    _kill_all()
    sys.exit(0 if res.wasSuccessful() else 1)
