"""cmake --install into a temporary prefix lays down the binary, man page, examples, service
config, systemd unit and logrotate snippet; scripts/package.sh builds a .deb with the right
Depends, files and conffiles, whose binary checks its own packaged config."""
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
        self.assertRegex(r.stdout, r"^ok: .*: 16 endpoints, 4 targets, 2 files, 3 store rules")

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

    def test_deb(self):
        work = self.tmp()
        r = run(["sh", os.path.join(SOURCE_DIR, "scripts", "package.sh")],
                env={"HR_BIN": BIN, "PKG_DIR": os.path.join(work, "pkg")})
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        deb = r.stdout.strip().splitlines()[-1]
        self.assertTrue(deb.endswith(".deb") and os.path.isfile(deb), r.stdout)

        info = run(["dpkg-deb", "-I", deb]).stdout
        depends = re.search(r"^ Depends: (.*)$", info, re.M).group(1)
        names = {d.split()[0] for d in depends.split(",")}
        self.assertLessEqual({"libuv1", "liblua5.4-0", "libcjson1", "libssl3"}, names, depends)
        # ... and every package owning a library the binary links (NEEDED, not ldd's closure)
        needed = set(re.findall(r"NEEDED\s+(\S+)", run(["objdump", "-p", BIN]).stdout))
        self.assertIn("libuv.so.1", needed)
        libs = [path for name, path in re.findall(r"^\s*(\S+) => (/\S+)", run(["ldd", BIN]).stdout,
                                                  re.M) if name in needed]
        self.assertEqual(len(libs), len(needed), needed)
        owners = set()
        for lib in libs:
            out = run(["dpkg", "-S", os.path.realpath(lib)]).stdout or run(["dpkg", "-S", lib]).stdout
            owners.add(out.split(":")[0])
        self.assertLessEqual(owners, names, depends)
        self.assertRegex(info, r"(?m)^ Package: hookrouter$")

        listing = run(["dpkg-deb", "-c", deb]).stdout
        files = {line.split()[-1].lstrip(".") for line in listing.splitlines()}
        for f in ("/usr/bin/hookrouter", "/usr/lib/systemd/system/hookrouter.service",
                  "/usr/share/man/man1/hookrouter.1", "/etc/hookrouter/hookrouter.lua",
                  "/etc/hookrouter/rules/default.lua", "/etc/logrotate.d/hookrouter",
                  "/usr/share/doc/hookrouter/examples/hookrouter.lua"):
            self.assertIn(f, files)
        ctl = os.path.join(work, "control")
        self.assertEqual(run(["dpkg-deb", "-e", deb, ctl]).returncode, 0)
        conffiles = read(os.path.join(ctl, "conffiles")).split()
        self.assertIn("/etc/hookrouter/hookrouter.lua", conffiles)
        self.assertEqual(sorted(conffiles), sorted(f for f in files if f.startswith("/etc/")
                                                   and not f.endswith("/")))

        root = os.path.join(work, "root")
        self.assertEqual(run(["dpkg-deb", "-x", deb, root]).returncode, 0)
        self.assert_service_config(os.path.join(root, "etc", "hookrouter", "hookrouter.lua"), root)
        unit = os.path.join(root, "usr", "lib", "systemd", "system", "hookrouter.service")
        self.assert_unit(unit, "/usr/bin", "/etc/hookrouter/hookrouter.lua")

    def verify_unit(self, unit, binary, mandir):
        """systemd-analyze verify on a copy of unit whose ExecStart runs binary (the host has no
        hookrouter where the unit says), with man looking in mandir for Documentation=."""
        if not shutil.which("systemd-analyze"):
            self.skipTest("systemd-analyze not installed (Debian package systemd)")
        text, n = re.subn(r"^ExecStart=\S+/hookrouter ", "ExecStart=%s " % binary, read(unit),
                          flags=re.M)
        self.assertEqual(n, 1)
        copy = os.path.join(self.tmp(), "hookrouter.service")
        with open(copy, "w") as f:
            f.write(text)
        r = run(["systemd-analyze", "verify", copy], env={"MANPATH": mandir})
        self.assertEqual((r.returncode, r.stdout + r.stderr), (0, ""))

    def test_unit_verifies(self):
        prefix = os.path.join(self.tmp(), "usr")
        r = run(["cmake", "--install", BUILD_DIR, "--prefix", prefix])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.verify_unit(os.path.join(prefix, "lib", "systemd", "system", "hookrouter.service"),
                         os.path.join(prefix, "bin", "hookrouter"),
                         os.path.join(prefix, "share", "man"))

    def test_deb_unit_verifies(self):
        work = self.tmp()
        r = run(["sh", os.path.join(SOURCE_DIR, "scripts", "package.sh")],
                env={"HR_BIN": BIN, "PKG_DIR": os.path.join(work, "pkg")})
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        root = os.path.join(work, "root")
        self.assertEqual(run(["dpkg-deb", "-x", r.stdout.split()[-1], root]).returncode, 0)
        self.verify_unit(os.path.join(root, "usr", "lib", "systemd", "system", "hookrouter.service"),
                         os.path.join(root, "usr", "bin", "hookrouter"),
                         os.path.join(root, "usr", "share", "man"))


if __name__ == "__main__":
    main()
