#!/usr/bin/env python3
"""Write the fuzz targets' seed corpora into <out>/<target>/ from the repository's fixtures and
examples (nothing is committed but this script): scripts/fuzz.sh calls it."""
import glob
import os
import re
import sys

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
out = sys.argv[1]


def put(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


fixtures = sorted(glob.glob(os.path.join(root, "tests/fixtures/**/*.json"), recursive=True))
for path in fixtures:
    name = os.path.relpath(path, os.path.join(root, "tests/fixtures")).replace("/", "_")
    body = open(path, "rb").read()
    put("fuzz_json", name, body)
    head = ("POST /hook?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer t\r\n"
            "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)).encode()
    put("fuzz_http", name, b"\0" + head + body)
for name, req in [
    ("pipelined", b"\x07GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /hook HTTP/1.1\r\nX-Defer: 1\r\n"
                  b"Content-Length: 2\r\n\r\n{}GET /early HTTP/1.0\r\n\r\n"),
    ("chunked", b"\x05POST /hook HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Echo: e\r\n\r\n"
                b"5;a=b\r\nhello\r\n0\r\nTrailer: t\r\n\r\n"),
    ("continue", b"\0POST /auth HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"),
    ("close", b"\x01POST /hook HTTP/1.1\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx"),
]:
    put("fuzz_http", name, req)

for path in sorted(glob.glob(os.path.join(root, "examples/*.lua"))):
    put("fuzz_config", os.path.basename(path), open(path, "rb").read())
put("fuzz_config", "minimal.lua",
    "return { insecure_no_auth = true, endpoints = { ['/h'] = 'e' }, rules = 'rules' }\n")
put("fuzz_config", "loop.lua", "local t = {}\nfor i = 1, 100 do t[i] = i end\n"
    "return { tokens = { 't' }, endpoints = { ['/h'] = { event = 'e', fallback = "
    "{ status = 200, body = { ok = true } } } }, rules = 'r', targets = { a = { url = "
    "'http://127.0.0.1:1/', retry_ms = t } } }\n")

for path in sorted(glob.glob(os.path.join(root, "examples/rules/**/*.lua"), recursive=True)):
    text = open(path).read()
    m = re.search(r"return function\s*\(\s*\w*\s*\)(.*)\bend\s*$", text, re.S)
    body = m.group(1) if m else text
    name = os.path.relpath(path, os.path.join(root, "examples/rules")).replace("/", "_")
    put("fuzz_rule", name, body)
for name, body in [
    ("forward", 'forward("pos", { a = event.body.storeId }, { path = "/x" })\n'
                'write("audit", event.body)'),
    ("request", 'local r, e = request("pos", { q = 1 })\nrespond(200, { got = r and r.body })'),
    ("close", 'local x <close> = setmetatable({}, { __close = function() error("c") end })\n'
              'return json.encode(json.decode(json.encode(event.body)))'),
    ("module", 'local m = require("lib.m")\nif m.inc() > 1 then drop("again") end'),
    ("gc", 'setmetatable({}, { __gc = function() json.decode("[1]") end })\n'
           'collectgarbage()'),
]:
    put("fuzz_rule", name, body)

# fuzz_spool: byte 0 odd: records (u8 type, u16 length, payload) framed with good checksums;
# even: the rest is the segment as is.
def rec(t, payload):
    return bytes([t, len(payload) & 255, len(payload) >> 8]) + payload
put("fuzz_spool", "framed", b"\1" + rec(1, b"x" * 40) + rec(2, b"\0" * 44) + rec(3, b"\1" * 8)
    + rec(4, b"\0" * 36))
put("fuzz_spool", "raw", b"\0" + b"HRS1" + b"\x04\0\0\0\1\0\0\0" + b"\0\0\0\0" + b"abcd" * 3)
