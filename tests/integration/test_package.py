"""cmake --install into a temporary prefix lays down the binary, man page, examples, service
config, systemd unit and logrotate snippet."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hrtest import *  # noqa: E402,F401,F403

BUILD_DIR = os.path.dirname(os.path.abspath(BIN))  # the build ctest runs in: no second build
TOKEN_ENV = {"AIFI_TOKEN": "test-token"}


def run(cmd, env=None, **kw):
    e = clean_env()
    e.pop("AIFI_TOKEN", None)
    e.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=T(120), **kw)


def read(path):
    with open(path) as f:
        return f.read()


def unit_settings(path):
    """{key: [values]} of a systemd unit file (comments and section headers dropped)."""
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;[":
                continue
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def commands_in_usage():
    """The commands `hookrouter --help` lists."""
    usage = run([BIN, "--help"]).stdout
    return sorted(set(re.findall(r"^  hookrouter (\w+)", usage, re.M)) | {"run"})


class PackageTest(unittest.TestCase):
    def tmp(self):
        d = tempfile.mkdtemp(prefix="hrpkg-")
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def assert_unit(self, path, bindir, config):
        u = unit_settings(path)
        one = {k: v[-1] for k, v in u.items()}
        self.assertEqual(one["Type"], "notify")
        self.assertEqual(one["ExecStart"], "%s/hookrouter run -c %s" % (bindir, config))
        self.assertEqual(one["ExecReload"], "/bin/kill -HUP $MAINPID")
        self.assertEqual(one["StateDirectory"], "hookrouter")
        self.assertTrue(one.get("DynamicUser") == "yes" or one.get("User") == "hookrouter", u)
        for k, v in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                     ("PrivateTmp", "yes"), ("UMask", "0077")):
            self.assertEqual(one[k], v, k)
        self.assertGreaterEqual(int(one["LimitNOFILE"].split(":")[-1]), 65536)
        # AF_UNIX must stay allowed: READY=1 goes out on the notify socket
        self.assertIn("AF_UNIX", one["RestrictAddressFamilies"].split())

    def assert_service_config(self, path, root=None):
        """The service config keeps spool and dead letters in the StateDirectory, refuses to load
        without a token, and passes `check` with one (rules under the config's folder)."""
        text = read(path)
        self.assertRegex(text, r'spool_dir = "/var/lib/hookrouter/spool"')
        self.assertRegex(text, r'dead_letters = "/var/lib/hookrouter/dead-letters\.jsonl"')
        self.assertNotRegex(text, r'"var/', "a path relative to /etc is left")
        self.assertNotIn("dev-token", text)
        binary = BIN if root is None else os.path.join(root, "usr", "bin", "hookrouter")
        r = run([binary, "check", "-c", path])
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("set AIFI_TOKEN", r.stderr)
        r = run([binary, "check", "-c", path], env=TOKEN_ENV)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"^ok: .*: 16 endpoints, 3 targets, 2 files, 3 store rules")

    def test_install_into_prefix(self):
        prefix = self.tmp()
        r = run(["cmake", "--install", BUILD_DIR, "--prefix", prefix])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        p = lambda *rel: os.path.join(prefix, *rel)  # noqa: E731
        self.assertTrue(os.access(p("bin", "hookrouter"), os.X_OK))
        v = run([p("bin", "hookrouter"), "--version"]).stdout
        self.assertEqual(v, run([BIN, "--version"]).stdout)
        for rel in ("share/man/man1/hookrouter.1", "share/doc/hookrouter/README.md",
                    "share/doc/hookrouter/examples/hookrouter.lua",
                    "share/doc/hookrouter/examples/rules/default.lua",
                    "share/doc/hookrouter/examples/rules/stores/42.lua",
                    "share/doc/hookrouter/examples/payloads/customer-created.json",
                    "etc/hookrouter/rules/lib/aifi.lua", "etc/logrotate.d/hookrouter"):
            self.assertTrue(os.path.isfile(p(rel)), rel)
        # The example as shipped is the repository's, and still checks from its new place.
        self.assertEqual(read(p("share/doc/hookrouter/examples/hookrouter.lua")),
                         read(os.path.join(SOURCE_DIR, "examples", "hookrouter.lua")))
        r = run([BIN, "check", "-c", p("share/doc/hookrouter/examples/hookrouter.lua")])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assert_service_config(p("etc", "hookrouter", "hookrouter.lua"))
        # The unit names the configured prefix's paths (the build's, not --prefix's: as DESTDIR).
        cache = read(os.path.join(BUILD_DIR, "CMakeCache.txt"))
        conf_prefix = re.search(r"^CMAKE_INSTALL_PREFIX:PATH=(.*)$", cache, re.M).group(1)
        etc = "/etc" if conf_prefix == "/usr" else conf_prefix + "/etc"
        self.assert_unit(p("lib", "systemd", "system", "hookrouter.service"),
                         conf_prefix + "/bin", etc + "/hookrouter/hookrouter.lua")
        rot = read(p("etc/logrotate.d/hookrouter"))
        self.assertIn("/var/lib/hookrouter/*.jsonl {", rot)
        self.assertIn("nocreate", rot)  # the router creates the new files itself, as its user
        self.assertRegex(rot, r"postrotate\s+systemctl reload hookrouter\.service")

    def test_man_page(self):
        page = os.path.join(SOURCE_DIR, "docs", "hookrouter.1")
        r = run(["groff", "-man", "-ww", "-z", page])
        self.assertEqual((r.returncode, r.stderr), (0, ""), "groff warnings")
        text = run(["groff", "-man", "-Tutf8", "-P", "-cbou", page]).stdout
        for section in ("NAME", "SYNOPSIS", "COMMANDS", "CONFIGURATION", "SIGNALS", "FILES",
                        "EXIT STATUS"):
            self.assertRegex(text, r"(?m)^%s$" % section)
        cmds = commands_in_usage()
        self.assertGreaterEqual(len(cmds), 6, cmds)
        for cmd in cmds:
            self.assertRegex(text, r"(?m)^ +hookrouter \[?%s\b" % cmd, "the man page lacks the %s command" % cmd)
        for sig in ("SIGHUP", "SIGTERM"):
            self.assertIn(sig, text)
        for f in ("/etc/hookrouter/hookrouter.lua", "/var/lib/hookrouter/"):
            self.assertIn(f, text)
        if shutil.which("man"):
            r = run(["man", "-l", page], env={"MANWIDTH": "80", "MAN_KEEP_STDERR": "1"})
            self.assertEqual((r.returncode, r.stderr), (0, ""))

    def test_unit_verifies(self):
        if not shutil.which("systemd-analyze"):
            self.skipTest("systemd-analyze not installed (Debian package systemd)")
        work = self.tmp()
        prefix = os.path.join(work, "usr")
        r = run(["cmake", "--install", BUILD_DIR, "--prefix", prefix])
        self.assertEqual(r.returncode, 0, r.stderr)
        # The host has no hookrouter where the unit says: point ExecStart at the one installed
        # here, and man at the installed page (Documentation=man:hookrouter(1)).
        text = read(os.path.join(prefix, "lib", "systemd", "system", "hookrouter.service"))
        text, n = re.subn(r"^ExecStart=\S+/hookrouter ", "ExecStart=%s/bin/hookrouter " % prefix,
                          text, flags=re.M)
        self.assertEqual(n, 1)
        unit = os.path.join(work, "hookrouter.service")
        with open(unit, "w") as f:
            f.write(text)
        r = run(["systemd-analyze", "verify", unit],
                env={"MANPATH": os.path.join(prefix, "share", "man")})
        self.assertEqual((r.returncode, r.stdout + r.stderr), (0, ""))


if __name__ == "__main__":
    main()
