"""socksbench (perf/socksbench.c) counts what it claims: exact byte counts through ringsocks and
direct (download and upload), every failed handshake as an error (fake SOCKS servers), a short
session-rate run with JSON output, UDP mode through ringsocks' UDP ASSOCIATE and direct against
`socksbench --udp-echo` (datagrams counted, none lost on loopback, payload bytes exact), and exit
code 2 for bad arguments."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

SB = os.environ.get("SOCKSBENCH_BIN") or os.path.join(os.path.dirname(h.BIN), "perf",
                                                      "socksbench")
FILE_SIZE = 300_007  # odd on purpose: no accidental multiple of a buffer size
REQUEST = "GET /big.bin HTTP/1.0\r\nHost: x\r\n\r\n"

JSON_KEYS = {"mode", "direct", "pipeline", "proxy", "target", "threads", "clients", "duration_s",
             "sessions_limit", "elapsed_s", "sessions", "sessions_started", "sessions_aborted",
             "sessions_per_s", "bytes_read", "bytes_written", "mb_per_s", "cpu_s", "errors",
             "latency_us"}
ERROR_KEYS = {"total", "connect", "handshake", "io", "timeout", "handshake_detail",
              "timeout_detail", "reply_codes"}
HANDSHAKE_KEYS = {"method_rejected", "auth_failed", "reply_nonzero", "eof", "reset", "malformed"}
LATENCY_KEYS = {"count", "min", "mean", "p50", "p90", "p99", "p999", "max"}
UDP_KEYS = {"size", "window", "rate_limit", "loss_timeout_s", "drain_s", "sent", "received", "lost",
            "late", "bad", "send_errors", "datagrams_per_s", "sent_per_s", "loss_pct"}


def escaped(s):
    """--request takes C escapes: pass CR/LF as \\r \\n."""
    return s.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


def socksbench(args, expect_rc=0, timeout=60):
    """Run socksbench with --json - and return the parsed JSON (text report on stderr)."""
    p = subprocess.run([SB, "--json", "-"] + [str(a) for a in args], capture_output=True,
                       timeout=timeout * h.SLOW)
    if p.returncode != expect_rc:
        raise AssertionError(f"socksbench {args} exited {p.returncode}, expected {expect_rc}"
                             f"\n--- stdout ---\n{p.stdout.decode(errors='replace')}"
                             f"\n--- stderr ---\n{p.stderr.decode(errors='replace')}")
    return json.loads(p.stdout)


def fetch_direct(port, request):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(request.encode())
        data, how = h.read_to_close(s, timeout=10)
        assert how == "eof", how
        return data


class ByteCounts(h.ProxyTestCase):
    """Download and upload byte counts are exact, through the proxy and direct."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="socksbench-www-")
        with open(os.path.join(cls.tmp.name, "big.bin"), "wb") as f:
            f.write(os.urandom(FILE_SIZE))
        cls.http = h.HttpServer(cls.tmp.name)
        # --bytes closes downloads early: no BrokenPipe tracebacks from http.server, please
        cls.http.server.handle_error = lambda request, client_address: None
        super().setUpClass()
        reply = fetch_direct(cls.http.port, REQUEST)
        cls.header_len = len(reply) - FILE_SIZE
        assert reply[:9] == b"HTTP/1.0 " and cls.header_len > 0, reply[:200]

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.http.close()
            cls.tmp.cleanup()

    def via(self):
        return ["--proxy", f"127.0.0.1:{self.proxy.port}"]

    def bulk(self, sessions, extra=(), via_proxy=True):
        args = ["--mode", "bulk", "--target", f"127.0.0.1:{self.http.port}", "-n", sessions,
                "-c", 3, "-t", 2, "--request", escaped(REQUEST), *extra]
        args += self.via() if via_proxy else ["--direct"]
        return socksbench(args)

    def assert_clean(self, r, sessions):
        self.assertEqual(r["sessions"], sessions, r)
        self.assertEqual(r["sessions_started"], sessions, r)
        self.assertEqual(r["sessions_aborted"], 0, r)
        self.assertEqual(r["errors"]["total"], 0, r)
        self.assertEqual(r["latency_us"]["session"]["count"], sessions, r)
        self.assertEqual(r["latency_us"]["handshake"]["count"], sessions, r)

    def test_bulk_counts_every_response_byte_through_proxy_and_direct(self):
        k = 12
        expect = k * (FILE_SIZE + self.header_len)
        for via_proxy in (True, False):
            with self.subTest(via_proxy=via_proxy):
                r = self.bulk(k, via_proxy=via_proxy)
                self.assert_clean(r, k)
                self.assertEqual(r["bytes_read"], expect)
                self.assertEqual(r["bytes_written"], k * len(REQUEST))
                self.assertEqual(r["direct"], not via_proxy)

    def test_bulk_pipelined_handshake_counts_the_same(self):
        k = 6
        r = self.bulk(k, extra=["--pipeline"])
        self.assert_clean(r, k)
        self.assertEqual(r["bytes_read"], k * (FILE_SIZE + self.header_len))

    def test_bulk_bytes_limit_ends_each_session_after_exactly_n_bytes(self):
        k = 5
        r = self.bulk(k, extra=["--bytes", "100K"])
        self.assert_clean(r, k)
        self.assertEqual(r["bytes_read"], k * 100 * 1024)

    def test_bulk_eof_before_bytes_limit_is_a_short_read_error(self):
        k = 4
        total = FILE_SIZE + self.header_len
        r = self.bulk(k, extra=["--bytes", total + 1])
        self.assertEqual(r["sessions"], 0, r)
        self.assertEqual(r["errors"]["io"], k, r)
        self.assertEqual(r["errors"]["total"], k, r)
        self.assertEqual(r["bytes_read"], k * total)

    def test_upload_writes_exactly_what_the_sink_receives(self):
        k, n = 8, 100 * 1024 + 7
        for via_proxy in (True, False):
            with self.subTest(via_proxy=via_proxy), h.ThreadedServer(sink) as srv:
                args = ["--mode", "upload", "--target", f"127.0.0.1:{srv.port}", "-n", k,
                        "-c", 3, "-t", 2, "--bytes", n]
                args += self.via() if via_proxy else ["--direct"]
                r = socksbench(args)
                srv.wait_done(k)
                self.assertEqual(srv.errors, [])
                self.assert_clean(r, k)
                self.assertEqual(r["bytes_written"], k * n)
                self.assertEqual(sum(srv.results), r["bytes_written"])
                self.assertEqual(r["bytes_read"], 0)


def sink(sock, _addr):
    """Counts bytes until EOF, then closes."""
    total = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return total
        total += len(chunk)


def recv_some(sock, n):
    try:
        return h.recv_exact(sock, n)
    except (EOFError, OSError):
        return b""


def drain(sock):
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass


def method_none(sock, _addr):
    recv_some(sock, 3)
    sock.sendall(b"\x05\xff")
    drain(sock)


def reply_refused(sock, _addr):
    recv_some(sock, 3)
    sock.sendall(b"\x05\x00")
    recv_some(sock, 10)  # CONNECT 127.0.0.1:PORT
    sock.sendall(h.error_reply(h.REP_REFUSED))
    drain(sock)


def reply_short_then_close(sock, _addr):
    recv_some(sock, 3)
    sock.sendall(b"\x05\x00")
    recv_some(sock, 10)
    sock.sendall(b"\x05\x04")  # host unreachable, then EOF without the rest of the reply


def close_after_greeting(sock, _addr):
    recv_some(sock, 3)


def close_mid_reply(sock, _addr):
    recv_some(sock, 3)
    sock.sendall(b"\x05\x00")
    recv_some(sock, 10)
    sock.sendall(b"\x05\x00\x00\x01\x7f")  # success, but EOF inside BND.ADDR


def auth_rejected(sock, _addr):
    recv_some(sock, 3)
    sock.sendall(b"\x05\x02")
    head = recv_some(sock, 2)
    user = recv_some(sock, head[1] if len(head) == 2 else 0)
    plen = recv_some(sock, 1)
    recv_some(sock, plen[0] if plen else 0)
    sock.sendall(b"\x01\x01")
    drain(sock)
    return user


def wrong_version(sock, _addr):
    recv_some(sock, 3)
    sock.sendall(b"\x04\x00")
    drain(sock)


def silent(sock, _addr):
    recv_some(sock, 3)
    drain(sock)  # answers nothing; returns when the client gives up


def success_reply_domain(sock, _addr):
    """A full handshake whose reply carries a domain BND.ADDR, then a 5-byte response."""
    recv_some(sock, 3)
    sock.sendall(b"\x05\x00")
    recv_some(sock, 10)
    name = b"bound.example"
    sock.sendall(b"\x05\x00\x00\x03" + bytes([len(name)]) + name + b"\x1f\x90" + b"hello")


class FailedHandshakes(unittest.TestCase):
    """Fake SOCKS servers: every failed handshake is an error and never a successful session."""

    SESSIONS = 6

    def run_fake(self, handler, extra=(), expect_rc=0):
        with h.ThreadedServer(handler) as srv:
            r = socksbench(["--proxy", f"127.0.0.1:{srv.port}", "--target", "127.0.0.1:9",
                            "-n", self.SESSIONS, "-c", 2, "-t", 1, "--timeout", 5, *extra],
                           expect_rc=expect_rc)
            srv.wait_done(self.SESSIONS)
            self.assertEqual(srv.errors, [])
        return r

    def assert_all_failed(self, r, kind="handshake", detail=None):
        n = self.SESSIONS
        self.assertEqual(r["sessions"], 0, r)
        self.assertEqual(r["sessions_started"], n, r)
        self.assertEqual(r["errors"]["total"], n, r)
        self.assertEqual(r["errors"][kind], n, r)
        if detail:
            self.assertEqual(r["errors"]["handshake_detail"][detail], n, r)
        self.assertEqual(r["latency_us"]["session"]["count"], 0, r)
        self.assertEqual(r["latency_us"]["handshake"]["count"], 0, r)

    def test_method_ff_is_a_handshake_error(self):
        self.assert_all_failed(self.run_fake(method_none), detail="method_rejected")

    def test_failure_reply_is_a_handshake_error_with_its_code(self):
        r = self.run_fake(reply_refused)
        self.assert_all_failed(r, detail="reply_nonzero")
        self.assertEqual(r["errors"]["reply_codes"], {"5": self.SESSIONS})

    def test_short_failure_reply_then_eof_counts_its_code(self):
        r = self.run_fake(reply_short_then_close)
        self.assert_all_failed(r, detail="reply_nonzero")
        self.assertEqual(r["errors"]["reply_codes"], {"4": self.SESSIONS})

    def test_close_after_greeting_is_a_handshake_error(self):
        r = self.run_fake(close_after_greeting)
        self.assert_all_failed(r)
        d = r["errors"]["handshake_detail"]
        self.assertEqual(d["eof"] + d["reset"], self.SESSIONS, r)

    def test_eof_inside_the_success_reply_is_a_handshake_error(self):
        self.assert_all_failed(self.run_fake(close_mid_reply), detail="eof")

    def test_pipelined_handshake_fails_the_same(self):
        r = self.run_fake(reply_refused, extra=["--pipeline"])
        self.assert_all_failed(r, detail="reply_nonzero")

    def test_auth_failure_is_a_handshake_error(self):
        with h.ThreadedServer(auth_rejected) as srv:
            r = socksbench(["--proxy", f"127.0.0.1:{srv.port}", "--target", "127.0.0.1:9",
                            "--auth", "alice:wrong", "-n", self.SESSIONS, "-c", 2, "-t", 1])
            srv.wait_done(self.SESSIONS)
            self.assertEqual(srv.errors, [])
            self.assertEqual(set(srv.results), {b"alice"})
        self.assert_all_failed(r, detail="auth_failed")

    def test_wrong_version_is_malformed(self):
        self.assert_all_failed(self.run_fake(wrong_version), detail="malformed")

    def test_silent_proxy_is_a_handshake_timeout(self):
        r = self.run_fake(silent, extra=["--timeout", "0.3"])
        self.assert_all_failed(r, kind="timeout")
        self.assertEqual(r["errors"]["timeout_detail"]["handshake"], self.SESSIONS, r)

    def test_fail_on_error_exits_1_and_plain_run_exits_0(self):
        self.run_fake(method_none, expect_rc=0)
        r = self.run_fake(method_none, extra=["--fail-on-error"], expect_rc=1)
        self.assertEqual(r["errors"]["total"], self.SESSIONS)

    def test_refused_proxy_connection_is_a_connect_error(self):
        port = h.unused_port()
        r = socksbench(["--proxy", f"127.0.0.1:{port}", "--target", "127.0.0.1:9",
                        "-n", self.SESSIONS, "-c", 2, "-t", 1, "--fail-on-error"], expect_rc=1)
        self.assert_all_failed(r, kind="connect")

    def test_reply_with_domain_address_is_parsed_to_its_end(self):
        """The reply is read exactly by its ATYP: the 5 bytes after it are the response."""
        with h.ThreadedServer(success_reply_domain) as srv:
            r = socksbench(["--proxy", f"127.0.0.1:{srv.port}", "--target", "127.0.0.1:9",
                            "-n", 3, "-c", 1, "-t", 1, "--request", "", "--fail-on-error"])
            srv.wait_done(3)
        self.assertEqual(r["sessions"], 3, r)
        self.assertEqual(r["bytes_read"], 3 * 5, r)
        self.assertEqual(r["bytes_written"], 0, r)


class SessionRate(h.ProxyTestCase):
    """About a second of session mode through ringsocks: sessions, no errors, JSON and text."""

    proxy_args = ["--user", "alice:secret"]

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="socksbench-www-")
        with open(os.path.join(cls.tmp.name, "small"), "wb") as f:
            f.write(b"hello socksbench\n")
        cls.http = h.HttpServer(cls.tmp.name)
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.http.close()
            cls.tmp.cleanup()

    def base(self):
        return ["--proxy", f"127.0.0.1:{self.proxy.port}", "--target",
                f"127.0.0.1:{self.http.port}", "--auth", "alice:secret"]

    def test_one_second_of_sessions_has_no_errors_and_documented_json(self):
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            p = subprocess.run([SB, *self.base(), "-d", "1", "-c", "4", "-t", "2",
                                "--json", out.name, "--fail-on-error"],
                               capture_output=True, timeout=30 * h.SLOW)
            self.assertEqual(p.returncode, 0, p.stderr)
            r = json.load(open(out.name))
        text = p.stdout.decode()
        for word in ("sessions", "bytes", "errors", "latency", "p99.9", "handshake"):
            self.assertIn(word, text)
        self.assertEqual(set(r), JSON_KEYS)
        self.assertEqual(set(r["errors"]), ERROR_KEYS)
        self.assertEqual(set(r["errors"]["handshake_detail"]), HANDSHAKE_KEYS)
        self.assertEqual(set(r["latency_us"]), {"session", "handshake"})
        for lat in r["latency_us"].values():
            self.assertEqual(set(lat), LATENCY_KEYS)
            self.assertTrue(lat["min"] <= lat["p50"] <= lat["p99"] <= lat["p999"] <= lat["max"],
                            lat)
        self.assertEqual(r["mode"], "session")
        self.assertGreater(r["sessions"], 0)
        self.assertEqual(r["errors"]["total"], 0)
        self.assertEqual(r["sessions_started"], r["sessions"] + r["sessions_aborted"])
        self.assertTrue(0.9 <= r["elapsed_s"] < 3, r["elapsed_s"])
        self.assertGreater(r["sessions_per_s"], 0)
        self.assertEqual(r["latency_us"]["session"]["count"], r["sessions"])
        # the default request fetches /small: counted in both directions
        self.assertGreater(r["bytes_read"], 0)
        self.assertGreater(r["bytes_written"], 0)

    def test_pipelined_sessions_with_auth_succeed(self):
        r = socksbench([*self.base(), "-n", 20, "-c", 4, "--pipeline", "--fail-on-error"])
        self.assertEqual(r["sessions"], 20)

    def test_wrong_password_fails_every_session(self):
        args = [a if a != "alice:secret" else "alice:nope" for a in self.base()]
        r = socksbench([*args, "-n", 5, "-c", 1])
        self.assertEqual(r["sessions"], 0)
        self.assertEqual(r["errors"]["handshake_detail"]["auth_failed"], 5, r)


class UdpEcho:
    """`socksbench --udp-echo 127.0.0.1:0 ...` in the background; .port from its first line."""

    def __init__(self, *extra):
        self.proc = subprocess.Popen([SB, "--udp-echo", "127.0.0.1:0", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.proc.stdout.readline().decode()
        m = re.fullmatch(r"socksbench: udp echo on 127\.0\.0\.1:(\d+)\n", line)
        if not m:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"--udp-echo said {line!r}: {self.proc.stderr.read()!r}")
        self.port = int(m.group(1))

    def stop(self):
        """SIGTERM; returns (exit status, the rest of stdout)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=5 * h.SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return self.proc.returncode, out.decode()


class UdpCounts:
    """Checks shared by the UDP runs through the proxy and direct."""

    SIZE = 100
    CLIENTS = 4

    def assert_udp_run(self, r, direct):
        u = r["udp"]
        self.assertEqual(set(r), JSON_KEYS | {"udp"})
        self.assertEqual(set(u), UDP_KEYS)
        self.assertEqual(set(r["latency_us"]), {"session", "handshake", "rtt"})
        self.assertEqual(r["mode"], "udp")
        self.assertEqual(r["direct"], direct)
        self.assertEqual(r["sessions"], self.CLIENTS, r)  # one association per client
        self.assertEqual(r["sessions_started"], self.CLIENTS, r)
        self.assertEqual(r["errors"]["total"], 0, r)
        self.assertGreater(u["received"], 0, r)
        self.assertEqual(u["sent"], u["received"] + u["lost"], u)
        self.assertLessEqual(u["lost"], u["sent"] // 100, u)  # loopback: (almost) none
        self.assertEqual(u["bad"], 0, u)
        self.assertEqual(u["send_errors"], 0, u)
        self.assertEqual(u["size"], self.SIZE)
        self.assertEqual(r["bytes_read"], u["received"] * self.SIZE)  # payload, no header
        self.assertEqual(r["bytes_written"], u["sent"] * self.SIZE)
        rtt = r["latency_us"]["rtt"]
        self.assertEqual(rtt["count"], u["received"])
        self.assertTrue(0 < rtt["min"] <= rtt["p50"] <= rtt["p99"] <= rtt["p999"] <= rtt["max"],
                        rtt)
        self.assertAlmostEqual(u["datagrams_per_s"], u["received"] / r["elapsed_s"],
                               delta=u["datagrams_per_s"] * 0.01 + 1)


@h.ringsocks_only
class UdpThroughProxy(UdpCounts, h.ProxyTestCase):
    """About a second of --mode udp through ringsocks' UDP ASSOCIATE to --udp-echo."""

    @classmethod
    def setUpClass(cls):
        cls.echo = UdpEcho()
        try:
            super().setUpClass()
        except BaseException:
            cls.echo.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.echo.stop()

    def test_one_second_of_datagrams_through_ringsocks(self):
        r = socksbench(["--mode", "udp", "--proxy", f"127.0.0.1:{self.proxy.port}",
                        "--target", f"127.0.0.1:{self.echo.port}", "-d", 1, "-c", self.CLIENTS,
                        "-t", 2, "--size", self.SIZE, "--window", 8], timeout=30)
        self.assert_udp_run(r, direct=False)
        self.assertEqual(r["latency_us"]["handshake"]["count"], self.CLIENTS)
        self.assertTrue(0.9 <= r["elapsed_s"] < 2, r["elapsed_s"])

    def test_n_datagrams_with_a_rate_limit_and_a_name_target(self):
        """-n counts datagrams; --rate paces them (200/s: 100 take about half a second); the
        target is sent as a name for the proxy to resolve."""
        r = socksbench(["--mode", "udp", "--proxy", f"127.0.0.1:{self.proxy.port}",
                        "--target", f"localhost:{self.echo.port}", "-n", 100, "--rate", 200,
                        "-c", self.CLIENTS, "-t", 1, "--size", self.SIZE, "--pipeline",
                        "--fail-on-error"], timeout=30)
        self.assert_udp_run(r, direct=False)
        self.assertEqual(r["udp"]["sent"], 100)
        self.assertEqual(r["udp"]["received"], 100)
        self.assertEqual(r["udp"]["rate_limit"], 200)
        self.assertTrue(0.3 <= r["elapsed_s"] < 1.5, r["elapsed_s"])


class UdpDirect(UdpCounts, unittest.TestCase):
    """--mode udp --direct (plain datagrams, no SOCKS) and the echo server itself."""

    def test_direct_datagrams_to_the_echo_server(self):
        echo = UdpEcho()
        try:
            r = socksbench(["--mode", "udp", "--direct", "--target", f"127.0.0.1:{echo.port}",
                            "-d", 0.5, "-c", self.CLIENTS, "-t", 2, "--size", self.SIZE],
                           timeout=30)
        finally:
            rc, out = echo.stop()
        self.assert_udp_run(r, direct=True)
        self.assertEqual(r["latency_us"]["handshake"]["count"], 0)  # no handshake
        self.assertEqual(rc, 0, out)
        m = re.search(r"udp echo: (\d+) datagrams \((\d+) bytes\) echoed", out)
        self.assertTrue(m, out)
        self.assertGreaterEqual(int(m.group(1)), r["udp"]["received"])
        self.assertEqual(int(m.group(2)), int(m.group(1)) * self.SIZE)

    def test_echo_server_answers_each_sender_and_stops_after_d(self):
        p = subprocess.Popen([SB, "--udp-echo", "127.0.0.1:0", "-d", "0.5", "-t", "2", "--json",
                              "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            port = int(p.stdout.readline().decode().rsplit(":", 1)[1])
            socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
            for i, s in enumerate(socks):
                s.settimeout(5)
                s.sendto(b"ping %d" % i, ("127.0.0.1", port))
            for i, s in enumerate(socks):
                data, src = s.recvfrom(100)
                self.assertEqual((data, src), (b"ping %d" % i, ("127.0.0.1", port)))
                s.close()
            out, err = p.communicate(timeout=5 * h.SLOW)  # -d 0.5: it stops by itself
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        self.assertEqual(p.returncode, 0, err)
        j = json.loads(out)
        self.assertEqual((j["echoed"], j["bytes"], j["dropped"]), (3, 3 * 6, 0), j)

    def test_lost_datagrams_end_the_run_and_count_as_lost(self):
        """Nobody answers: each window slot is given up after --loss-timeout, the run ends on
        time, sent = lost, and --fail-on-error says so."""
        port = h.unused_port()
        r = socksbench(["--mode", "udp", "--direct", "--target", f"127.0.0.1:{port}", "-d", 0.5,
                        "-c", 2, "-t", 1, "--window", 4, "--loss-timeout", 0.2, "--drain", 0.1,
                        "--fail-on-error"], expect_rc=1, timeout=30)
        u = r["udp"]
        self.assertEqual(u["received"], 0, u)
        self.assertGreater(u["sent"], 8, u)  # the windows were refilled after each timeout
        self.assertEqual(u["lost"], u["sent"], u)
        self.assertLess(r["elapsed_s"], 1.5)


class Arguments(unittest.TestCase):
    BAD = [
        [],
        ["--target", "127.0.0.1"],
        ["--target", "127.0.0.1:0"],
        ["--target", "::1:80"],
        ["--target", "x:1", "-c", "0"],
        ["--target", "x:1", "-d", "-1"],
        ["--target", "x:1", "--timeout", "abc"],
        ["--target", "x:1", "--mode", "nope"],
        ["--target", "x:1", "--mode", "bulk", "--bytes", "12Q"],
        ["--target", "x:1", "--bytes", "1K"],
        ["--target", "x:1", "--bogus"],
        ["--target", "x:1", "-c"],
        ["--target", "x:1", "--auth", "nocolon"],
        ["--target", "x:1", "--request", "\\q"],
        ["--target", "x:1", "extra"],
        ["--target", "127.0.0.1:1", "--direct", "--pipeline"],
        ["--target", "x:1", "--proxy", "[::1:1080"],
        ["--target", "x:1", "--size", "100"],
        ["--target", "x:1", "--mode", "udp", "--size", "8"],
        ["--target", "x:1", "--mode", "udp", "--window", "0"],
        ["--target", "x:1", "--mode", "udp", "--rate", "-5"],
        ["--target", "x:1", "--mode", "udp", "--request", "x"],
        ["--target", "x:1", "--mode", "udp", "--bytes", "1K"],
        ["--udp-echo", "127.0.0.1:0", "--target", "x:1"],
        ["--udp-echo", "127.0.0.1"],
    ]

    def test_bad_arguments_exit_2_with_one_line(self):
        for args in self.BAD:
            with self.subTest(args=args):
                p = subprocess.run([SB, *args], capture_output=True, timeout=10)
                self.assertEqual(p.returncode, 2, p)
                self.assertEqual(p.stdout, b"")
                lines = p.stderr.decode().splitlines()
                self.assertEqual(len(lines), 1, lines)
                self.assertTrue(lines[0].startswith("socksbench: "), lines)

    def test_help_documents_every_flag(self):
        p = subprocess.run([SB, "--help"], capture_output=True, timeout=10)
        self.assertEqual(p.returncode, 0)
        text = p.stdout.decode()
        for flag in ("--mode", "--proxy", "--target", "--auth", "--direct", "--pipeline",
                     "--request", "--bytes", "--clients", "--threads", "--duration",
                     "--sessions", "--timeout", "--json", "--quiet", "--fail-on-error",
                     "--help", "-c,", "-t,", "-d,", "-n,", "--size", "--window", "--rate",
                     "--loss-timeout", "--drain", "--udp-echo"):
            self.assertIn(flag, text)
        for key in JSON_KEYS | ERROR_KEYS | HANDSHAKE_KEYS | LATENCY_KEYS | UDP_KEYS | {"rtt"}:
            self.assertIn(key, text)


if __name__ == "__main__":
    if not os.access(SB, os.X_OK):
        print(f"socksbench binary not found: {SB} (set SOCKSBENCH_BIN)", file=sys.stderr)
        sys.exit(1)
    h.main()
