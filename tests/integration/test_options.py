"""Option values the parser refuses (exit 2, one line on stderr naming the option) where they
used to be accepted, or to fail only at start-up with another exit code."""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


run = h.run_bin  # the binary to completion: (exit code or None, stdout, stderr)


@unittest.skipIf(h.PEER, "ringsocks command line")
class OptionsTest(unittest.TestCase):
    def refused(self, args, want):
        """args (with a listen address of its own, so an accepted value does not take port
        1080) exit 2 with one line on stderr that contains want."""
        rc, _, err = run(["-l", f"127.0.0.1:{h.unused_port()}"] + args)
        self.assertEqual(rc, 2, f"exit code for {args} (stderr: {err!r})")
        lines = [x for x in err.splitlines() if x.strip()]
        self.assertEqual(len(lines), 1, f"stderr for {args} should be one line: {err!r}")
        self.assertIn(want, lines[0], args)

    def test_cpus_outside_the_allowed_set_exit_2(self):
        """A CPU the process may not run on used to start the daemon, whose worker then failed
        to pin itself (exit 1)."""
        allowed = os.sched_getaffinity(0)
        outside = next(c for c in range(1024) if c not in allowed)
        self.refused(["--cpus", str(outside), "-w", "1"],
                     f"--cpus: CPU {outside} is not one this process may run on")


    def test_timeouts_below_a_millisecond_exit_2(self):
        """--handshake-timeout 1e-9 was accepted and closed every client at once."""
        for opt in ("--handshake-timeout", "--connect-timeout", "--bind-timeout",
                    "--udp-idle-timeout"):
            for value in ("1e-9", "0.0004", "nan", "inf", "-1"):
                with self.subTest(opt=opt, value=value):
                    self.refused([opt, value],
                                 f"{opt}: '{value}' is not a number of seconds from 0.001 to")

    def test_ipv4_mapped_listen_address_exit_2(self):
        """Listeners are IPv6-only: [::ffff:127.0.0.1]:P failed at start-up with only
        "Invalid argument" (exit 1)."""
        port = h.unused_port()
        self.refused(["-l", f"[::ffff:127.0.0.1]:{port}"],
                     f"is an IPv4-mapped address; use 127.0.0.1:{port}")

    def test_duplicate_listen_address_exit_2(self):
        """The same -l twice was accepted silently (SO_REUSEPORT binds it twice)."""
        listen = f"127.0.0.1:{h.unused_port()}"
        rc, _, err = run(["-l", listen, "-l", listen])
        self.assertEqual(rc, 2, err)
        self.assertEqual(err.strip(), f"ringsocks: --listen: '{listen}' is given twice")

    def test_help_names_every_command_and_socks5h(self):
        """--help's summary named only CONNECT though BIND and UDP ASSOCIATE are served, and
        socks5h://, which --upstream and --via accept, was not mentioned."""
        rc, out, err = run(["--help"])
        self.assertEqual(rc, 0, err)
        summary = out.split("\n\n")[0].split("\n", 1)[1]  # after the usage line
        for what in ("RFC 1928", "CONNECT", "BIND", "UDP ASSOCIATE", "RFC 1929"):
            self.assertIn(what, summary)
        for opt in ("--upstream URL", "--via URL"):
            # the option's own lines: up to the next line that starts with an option
            block = re.split(r"\n {2,6}-", re.split(rf"\n +{opt} ", out, 1)[1])[0]
            self.assertIn("socks5h://", block, f"{opt}:\n{block}")

    def test_help_names_the_credentials_files_and_why(self):
        """The options that keep passwords out of the command line say so in --help (server
        and tunnel)."""
        for args in (["--help"], ["tunnel", "--help"]):
            rc, out, err = run(args)
            self.assertEqual(rc, 0, err)
            for opt in ("--users-file PATH", "--upstream-file PATH", "--via-file PATH"):
                block = re.split(r"\n {2,6}-", re.split(rf"\n +{opt} ", out, 1)[1])[0]
                self.assertIn("command line", block, f"{opt}:\n{block}")
                self.assertIn("(ps)", block, f"{opt}:\n{block}")
                self.assertIn("chmod 600", block, f"{opt}:\n{block}")


def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


class ViaFileTunnel(h.Tunnel):
    """`ringsocks tunnel -L ... --via-file PATH`: h.Tunnel with the proxy's URL in a file."""

    def __init__(self, dest_host, dest_port, via_file, **kw):
        self.via_file = via_file
        super().__init__(dest_host, dest_port, "unused", **kw)

    def argv(self, port):
        argv = super().argv(port)
        i = argv.index("--via")
        return argv[:i] + ["--via-file", self.via_file] + argv[i + 2:]


@unittest.skipIf(h.PEER, "ringsocks command line")
class CredentialsFileTest(unittest.TestCase):
    """--users-file, --upstream-file, --via-file: the credentials that every local user could
    read in ps when given as --user, --upstream or --via come from a file the others may not
    read."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ringsocks-creds-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

    def write(self, name, text, mode=0o600):
        path = os.path.join(self.dir, name)
        with open(path, "w", newline="") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def login(self, proxy, user, password):
        """The RFC 1929 status byte pair the proxy answers these credentials with."""
        with h.open_client(proxy) as s:
            s.sendall(h.greeting((h.M_USERPASS,)))
            self.assertEqual(h.recv_exact(s, 2).hex(), "0502")
            s.sendall(h.auth_request(user, password))
            return h.recv_exact(s, 2).hex()

    def test_users_file_users_authenticate_and_are_not_in_the_command_line(self):
        path = self.write("users", "# who may use the proxy\r\n\r\nalice:s3cr3t:x\r\n"
                                   "bob:hunter2\n")
        with h.EchoServer() as echo, \
                h.Proxy(["--users-file", path], auth=("alice", "s3cr3t:x")) as proxy:
            for user, password in (("alice", "s3cr3t:x"), ("bob", "hunter2")):
                s, _ = h.socks_connect(proxy, "127.0.0.1", echo.port, auth=(user, password))
                with s:
                    msg = f"through the proxy as {user}".encode()
                    self.assertEqual(h.echo_roundtrip(s, msg), msg)
            self.assertEqual(self.login(proxy, "alice", "s3cr3t"), "0101")
            self.assertEqual(self.login(proxy, "carol", "x"), "0101", "a comment is no user")
            with h.open_client(proxy) as s:
                s.sendall(h.greeting((h.M_NOAUTH,)))
                self.assertEqual(h.read_to_close(s, timeout=5 * h.SLOW)[0].hex(), "05ff")
            args = cmdline(proxy.pid)
            self.assertIn(path.encode(), args)
            for secret in (b"s3cr3t", b"hunter2"):
                self.assertNotIn(secret, args)

    def test_users_file_others_may_read_exit_2(self):
        """A world-readable file is refused, with what to do about it."""
        path = self.write("users", "alice:s3cr3t\n", 0o644)
        rc, _, err = run(["-l", f"127.0.0.1:{h.unused_port()}", "--users-file", path])
        self.assertEqual(rc, 2, err)
        self.assertEqual(err, f"ringsocks: --users-file: {path}: other users may read or change"
                              " it (mode 0644); chmod 600 it\n")

    def test_users_file_bad_line_exit_2_without_quoting_it(self):
        path = self.write("users", "alice:s3cr3t\n# a comment\nbob-hunter2\n")
        rc, _, err = run(["-l", f"127.0.0.1:{h.unused_port()}", "--user", "zed:z",
                          "--users-file", path])
        self.assertEqual(rc, 2, err)
        self.assertEqual(err, f"ringsocks: --users-file: {path}:3: not NAME:PASS (name 1-255"
                              " bytes, password at most 255)\n")


    def test_forwarder_upstream_file_to_a_users_file_upstream(self):
        """A chain whose passwords are all in files: client -> ringsocks --upstream-file ->
        ringsocks --users-file -> echo server."""
        users = self.write("users", "alice:s3cr3t\n")
        with h.EchoServer() as echo, \
                h.Proxy(["--users-file", users], auth=("alice", "s3cr3t")) as upstream:
            url = self.write("upstream", "# the upstream\r\n"
                                         f"{h.socks5_url(upstream, ('alice', 's3cr3t'))}\r\n")
            with h.Proxy(["--upstream-file", url]) as fwd:
                s, _ = h.socks_connect(fwd, "127.0.0.1", echo.port, auth=None)
                with s:
                    msg = b"through two proxies, credentials from files"
                    self.assertEqual(h.echo_roundtrip(s, msg), msg)
                for p in (fwd, upstream):
                    self.assertNotIn(b"s3cr3t", cmdline(p.pid))
                self.assertIn(url.encode(), cmdline(fwd.pid))

    def test_tunnel_via_file(self):
        users = self.write("users", "alice:s3cr3t\n")
        with h.EchoServer() as echo, \
                h.Proxy(["--users-file", users], auth=("alice", "s3cr3t")) as proxy:
            via = self.write("via", f"{h.socks5_url(proxy, ('alice', 's3cr3t'))}\n")
            with ViaFileTunnel("127.0.0.1", echo.port, via) as tunnel:
                with socket.create_connection(tunnel.addr, timeout=10 * h.SLOW) as s:
                    msg = b"through the tunnel"
                    self.assertEqual(h.echo_roundtrip(s, msg), msg)
                self.assertNotIn(b"s3cr3t", cmdline(tunnel.pid))

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts",
                      "tune.sh")


class TuneScriptTest(unittest.TestCase):
    def test_help_prints_exactly_the_header_comment(self):
        """scripts/tune.sh --help printed a fixed range of its own lines, which had come to
        include its 'set -uo pipefail'."""
        script = SCRIPT
        with open(script) as f:
            lines = f.read().splitlines()[1:]  # after the #! line
        header = []
        for line in lines:
            if not line.startswith("#"):
                break
            header.append(re.sub(r"^# ?", "", line))
        r = subprocess.run(["bash", script, "--help"], capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.splitlines(), header)
        self.assertTrue(header[0].startswith("Shows the kernel settings"), header)

    @unittest.skipIf(h.PEER, "ringsocks command line")
    def test_running_ringsocks_command_lines_show_no_passwords(self):
        """tune.sh (print only: without --apply it changes nothing) printed each running
        ringsocks's command line as it was, --user and upstream passwords included."""
        args = ["--user", "alice:secret", "--user=bob:se:cret2",
                "--upstream", "socks5://carol:hunter2@127.0.0.1:1",
                "--upstream=socks5h://dave:p@ss@[::1]:2"]
        with h.Proxy(args, auth=("alice", "secret")) as proxy:
            r = subprocess.run(["bash", SCRIPT], capture_output=True, text=True,
                               timeout=30, stdin=subprocess.DEVNULL)
            self.assertEqual(r.returncode, 0, r.stderr)
            line = next((x for x in r.stdout.splitlines()
                         if x.startswith(f"ringsocks pid {proxy.pid}: ")), None)
            self.assertIsNotNone(line, r.stdout)
            for secret in ("secret", "cret2", "hunter2", "p@ss"):
                self.assertNotIn(secret, r.stdout)
            self.assertTrue(line.endswith(
                " --user alice:*** --user=bob:*** --upstream socks5://carol:***@127.0.0.1:1"
                " --upstream=socks5h://dave:***@[::1]:2"), line)

if __name__ == "__main__":
    h.main()
