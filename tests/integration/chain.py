"""Shared pieces for the forwarder, tunnel and chain tests (built on harness.py, which they reuse
for process handling, servers and the raw SOCKS5 client).

  Dante / Microsocks      third-party SOCKS5 servers as upstreams, same lifecycle as h.Proxy
                          (Dante in its own process group, killed as a group; its log file is
                          part of .stderr() so that failures show it).
  Tunnel                  `ringsocks tunnel` with any number of -L and --via; started without a
                          probe connection (a probe would travel through the whole chain).
  FakeUpstream            a scripted SOCKS5 server that records the exact bytes it receives.
  SilentServer / NeverAccepts / ClosedPort
                          blackholes and refusals for the failover tests.
  WebRoot                 a directory of test files served by h.HttpServer; fetch() via curl.
  run_wrk / parse_wrk     wrk with a bounded run time and its summary parsed.
  check_then_stop         the end of a test: every process still serves, then stop_all.
  FreshProcsMixin         processes and servers per test, checked, stopped and closed.
"""

import functools
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

MiB = 1 << 20
DANTE_BIN = "/usr/sbin/danted"
MICROSOCKS_BIN = "/usr/bin/microsocks"


# --------------------------------------------------------------------------------------------
# readiness without a connection


def _listening_ports(host):
    """Ports in LISTEN state on host, from /proc/net/tcp{,6} (no connection is made)."""
    fam6 = ":" in host
    path = "/proc/net/tcp6" if fam6 else "/proc/net/tcp"
    ports = set()
    try:
        with open(path) as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[3] != "0A":
                    continue
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    except OSError:
        pass
    return ports


def is_listening(host, port):
    return port in _listening_ports(host)


# --------------------------------------------------------------------------------------------
# third-party upstreams


class ExternalProxy(h.Proxy):
    """A third-party SOCKS5 server run by the test (no -l / -w / -v of ours). stop() accepts
    exit code 0 or death by the signal it was sent (they do not all exit 0 on SIGTERM)."""

    def __init__(self, **kw):
        kw.setdefault("verbose", False)
        super().__init__((), **kw)

    def stop(self, sig=signal.SIGTERM, timeout=None, expect_code=None):
        rc = super().stop(sig, timeout, expect_code=None)
        if rc not in (0, -sig):
            raise AssertionError(f"{self.argv(self.port)[0]} exited with code {rc} after signal"
                                 f" {sig}\n--- stderr ---\n{self.tail()}")
        return rc


class Microsocks(ExternalProxy):
    def __init__(self, auth=None, **kw):
        self.creds = auth
        super().__init__(auth=auth, **kw)

    def argv(self, port):
        argv = [MICROSOCKS_BIN, "-i", self.host, "-p", str(port)]
        if self.creds:
            argv += ["-u", self.creds[0], "-P", self.creds[1]]
        return argv


class Dante(ExternalProxy):
    """danted in the foreground (-N 1: one mother process plus its children), no auth, CONNECT
    from 127.0.0.0/8 to anywhere, every session logged to .log_path. It runs in its own session
    (setsid execs in place: same pid, pgid = pid) so that teardown can kill every child."""

    def __init__(self, **kw):
        self.conf_path = self.log_path = self.pid_path = None
        super().__init__(**kw)

    def argv(self, port):
        base = tempfile.mktemp(prefix="ringsocks-dante-")
        self.conf_path, self.log_path, self.pid_path = base + ".conf", base + ".log", base + ".pid"
        h.Proxy.started.extend([self.conf_path, self.log_path, self.pid_path])
        with open(self.conf_path, "w") as f:
            f.write(f"logoutput: {self.log_path}\n"
                    f"internal: {self.host} port = {port}\n"
                    "external: 127.0.0.1\n"
                    "socksmethod: none\n"
                    "clientmethod: none\n"
                    "user.privileged: root\n"
                    "user.unprivileged: nobody\n"
                    + self.rules())
        return ["setsid", DANTE_BIN, "-f", self.conf_path, "-N", "1", "-p", self.pid_path]

    def rules(self):
        """The configuration's pass rules: CONNECT only, every session logged."""
        return ("client pass {\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n  log: error connect disconnect\n}\n"
                "socks pass {\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n  command: connect\n"
                "  log: error connect disconnect\n}\n")

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except (OSError, TypeError):
            return ""

    def stderr(self):
        return super().stderr() + self.log()

    def connects_to(self, port):
        """Dante's log lines of sessions it opened to 127.0.0.1:port (tcp/connect, start)."""
        pat = re.compile(rf"pass\(\d+\): tcp/connect \[: .* -> 127\.0\.0\.1\.\d+ 127\.0\.0\.1\.{port}$")
        return [ln for ln in self.log().splitlines() if pat.search(ln)]

    def _group_members(self):
        pids = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            fields = st[st.rfind(")") + 2:].split()
            if fields[0] != "Z" and int(fields[2]) == self.pid:  # state, ppid, pgrp
                pids.append(int(d))
        return pids

    def _kill_group(self):
        if self.proc is None:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, sig=signal.SIGTERM, timeout=None, expect_code=None):
        try:
            rc = super().stop(sig, timeout)
            # the mother's children notice that it is gone and exit; give them a moment
            try:
                h.wait_for(lambda: not self._group_members(), 5, what="danted children to exit")
            except AssertionError:
                left = self._group_members()
                self._kill_group()
                raise AssertionError(f"danted children {left} still running after the mother exited")
            bad = [ln for ln in self.log().splitlines()
                   if re.search(r"\]: (alert|error|warning): ", ln) and "shutting down" not in ln]
            if bad:
                raise AssertionError("danted logged problems:\n" + "\n".join(bad[:20]))
            return rc
        finally:
            self._kill_group()

    def kill(self):
        self._kill_group()
        super().kill()


# --------------------------------------------------------------------------------------------
# ringsocks



class DanteAll(Dante):
    """Dante allowing BIND (and its incoming connection, 'bindreply') and UDP ASSOCIATE (and its
    answers, 'udpreply') besides CONNECT."""

    def rules(self):
        return ("client pass {\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n  log: error\n}\n"
                "socks pass {\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n"
                "  command: bind connect udpassociate\n  log: error\n}\n"
                "socks pass {\n  from: 0.0.0.0/0 to: 127.0.0.0/8\n"
                "  command: bindreply udpreply\n  log: error\n}\n")


def forwarder(upstreams, args=(), **kw):
    """ringsocks in forwarder mode: one --upstream per entry (URL string, h.Proxy, or
    ((host, port), auth))."""
    argv = []
    for u in upstreams:
        if isinstance(u, tuple):
            u = h.socks5_url(u[0], u[1])
        elif not isinstance(u, str):
            u = h.socks5_url(u, getattr(u, "auth", None))
        argv += ["--upstream", u]
    return h.Proxy(argv + list(args), **kw)


class Tunnel(h.Tunnel):
    """`ringsocks tunnel -L 127.0.0.1:PORT:DEST ... --via URL ...`.

    dests: [(dest_host, dest_port), ...]; the first one listens on .port, the others on
    .ports[1:]. via: a URL, an h.Proxy, or a list of them (several --via). The start-up check
    reads the listening sockets from /proc/net instead of connecting: a probe connection would
    go through the whole chain to the destination and disturb the counts of the test servers."""

    def __init__(self, dests, via, args=(), **kw):
        if isinstance(dests, tuple):
            dests = [dests]
        self.dests = [f"{h.host_literal(d)}:{p}" for d, p in dests]
        vias = via if isinstance(via, list) else [via]
        self.vias = [v if isinstance(v, str) else h.socks5_url(v, v.auth) for v in vias]
        self.ports = []
        h.Proxy.__init__(self, args, **kw)

    def argv(self, port):
        if h.PEER:
            raise unittest.SkipTest("tunnel mode is ringsocks-only")
        argv = [h.BIN, "tunnel"]
        for p, d in zip(self.ports, self.dests):
            argv += ["-L", f"{h.host_literal(self.host)}:{p}:{d}"]
        for v in self.vias:
            argv += ["--via", v]
        argv += ["-w", str(self.workers)]
        if self.verbose:
            argv.append("-v")
        return argv + self.args

    def addr_of(self, i):
        return (self.host, self.ports[i])

    def start(self, listen_timeout=5.0 * h.SLOW):
        last = None
        for _attempt in range(4):
            self.ports = []
            while len(self.ports) < len(self.dests):
                p = h.unused_port(self.host)
                if p not in self.ports:
                    self.ports.append(p)
            fd, self.stderr_path = tempfile.mkstemp(prefix="ringsocks-stderr-", suffix=".log")
            h.Proxy.started.append(self.stderr_path)
            argv = self.argv(self.ports[0])
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                         preexec_fn=h._die_with_parent, close_fds=True)
            os.close(fd)
            self.port = self.ports[0]
            h.Proxy.alive.append(self)
            h.Proxy.recent.append(self)
            deadline = time.monotonic() + listen_timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                listening = _listening_ports(self.host)
                if all(p in listening for p in self.ports):
                    return self
                time.sleep(0.02)
            rc = self.proc.poll()
            if rc is None:
                self.proc.kill()
                self.proc.wait(5)
            h.Proxy.alive.remove(self)
            last = (f"{' '.join(argv)}: not listening on {self.ports} after {listen_timeout:.0f}s"
                    f" (exit code {self.proc.returncode})\n--- stderr ---\n{self.stderr()}")
            if rc is not None and "in use" not in self.stderr().lower():
                break
        raise AssertionError(f"tunnel did not start: {last}")


def stop_all(procs):
    """Stop every process (SIGTERM, exit 0, clean stderr); raise the first failure after all
    of them have been stopped."""
    errors = []
    for p in procs:
        if p is None:
            continue
        try:
            p.stop()
        except BaseException as e:  # noqa: BLE001 - collected and re-raised below
            errors.append(f"{p.argv(p.port)[0]} port {p.port}: {e}")
            p.kill()
    if errors:
        raise AssertionError("\n".join(errors))


def check_then_stop(procs, checks):
    """The end of a chain test: run every check ((what, fn) pairs: fn() raises if `what` no
    longer serves), then stop_all(procs); raise one AssertionError naming every failure."""
    errors = []
    for what, check in checks:
        try:
            check()
        except BaseException as e:  # noqa: BLE001 - collected and raised below
            errors.append(f"{what} no longer serves: {e!r}")
    try:
        stop_all(procs)
    except AssertionError as e:
        errors.append(str(e))
    if errors:
        raise AssertionError("\n".join(errors))


def plain_connect_check(proxy):
    """A check for check_then_stop: a plain CONNECT through proxy (with its credentials)."""
    return functools.partial(h.check_serving, proxy, auth=proxy.auth)


class FreshProcsMixin:
    """For a unittest.TestCase whose tests each start their own processes (appended to
    self.procs) in front of servers (keep() / fake(): closed at the end). At tearDown every
    (process, expectation) of serving_checks() must still pass check_still_serving(); then
    all processes are stopped (stop_all), the failures of both fail the test together, and
    the servers are closed last. Subclasses override serving_checks / check_still_serving.
    The class has a DnsServer (cls.dns, knows "localhost") for the processes' --resolver."""

    kind = "proxy"  # in the failure: "<kind> port N no longer serves"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.dns = h.DnsServer()
        cls.dns.add("localhost", a=["127.0.0.1"])

    @classmethod
    def tearDownClass(cls):
        try:
            cls.dns.close()
        finally:
            super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.procs, self.closers = [], []

    def keep(self, x):
        """Close x (a server) at tearDown, after the processes have stopped."""
        self.closers.append(x)
        return x

    def fake(self, **kw):
        return self.keep(FakeUpstream(**kw))

    def serving_checks(self):
        """(process, expectation) pairs for check_still_serving: by default every process."""
        return [(p, None) for p in self.procs]

    def check_still_serving(self, proc, expect):
        """Raise if proc no longer serves; by default a plain CONNECT through it must work."""
        h.check_serving(proc, auth=proc.auth)

    def tearDown(self):
        try:
            check_then_stop(self.procs,
                            [(f"{self.kind} port {p.port}",
                              functools.partial(self.check_still_serving, p, expect))
                             for p, expect in self.serving_checks()])
        finally:
            for x in self.closers:
                x.close()
            super().tearDown()


def log_lines(proxy, pattern):
    """stderr lines of proxy matching the regular expression."""
    rx = re.compile(pattern)
    return [ln for ln in proxy.stderr_lines() if rx.search(ln)]


def wait_log(proxy, pattern, timeout=5.0):
    return h.wait_for(lambda: log_lines(proxy, pattern), timeout * h.SLOW,
                      what=f"a stderr line matching {pattern!r}")


# --------------------------------------------------------------------------------------------
# SOCKS5 reading helpers


def read_request(sock):
    """Read exactly one SOCKS5 request (or reply: same layout); returns its raw bytes."""
    head = h.recv_exact(sock, 4)
    atyp = head[3]
    if atyp == h.ATYP_IPV4:
        rest = h.recv_exact(sock, 4 + 2)
    elif atyp == h.ATYP_IPV6:
        rest = h.recv_exact(sock, 16 + 2)
    elif atyp == h.ATYP_DOMAIN:
        ln = h.recv_exact(sock, 1)
        rest = ln + h.recv_exact(sock, ln[0] + 2)
    else:
        raise AssertionError(f"request with unknown ATYP: {head.hex()}")
    return head + rest


def reply_bytes(rep, host="0.0.0.0", port=0):
    """A reply with any BND address (IPv4/IPv6 literal or a domain name)."""
    return bytes([h.VER, rep, 0]) + h.encode_addr(host) + struct.pack("!H", port)


def pending_bytes(sock, wait):
    """Whatever arrives on sock within `wait` seconds, without blocking past it."""
    got = b""
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return got
        r, _, _ = select.select([sock], [], [], left)
        if not r:
            return got
        b = sock.recv(65536)
        if not b:
            return got
        got += b


# --------------------------------------------------------------------------------------------
# a scripted upstream


class FakeUpstream:
    """A SOCKS5 server played by the test, one thread per connection:

      greeting  -> (garbage: send it instead of a method selection, then wait for the close)
                -> 05 00, or with auth=(user, pass) 05 02 + read the RFC 1929 message ->
                   01 00 if it matches (01 01 and close if not, or always with reject_auth)
      request   -> read exactly one request; wait `hold` seconds and record whatever the peer
                   sent meanwhile (data pipelined after the request must not arrive before
                   the reply); send `replies` (a list of raw replies, sent `gap` seconds apart,
                   or in one write with gap=None; for a BIND request `bind_replies` if given);
                   after a failure reply, close
      relay     -> echo everything back until EOF, then close.

    silent=True: accept and read (all of it recorded as "greeting"), never answer. .records holds one dict per connection:
    greeting, auth, request, early, echoed (byte count), error."""

    SUCCESS = reply_bytes(0, "198.51.100.7", 4242)

    def __init__(self, auth=None, reject_auth=False, replies=None, bind_replies=None,
                 garbage=None, hold=0.0, gap=0.2, silent=False, host="127.0.0.1"):
        self.auth = auth
        self.reject_auth = reject_auth
        self.replies = [self.SUCCESS] if replies is None else list(replies)
        self.bind_replies = self.replies if bind_replies is None else list(bind_replies)
        self.garbage = garbage
        self.hold = hold
        self.gap = gap
        self.silent = silent
        self.records = []
        self.lock = threading.Lock()
        self.server = h.ThreadedServer(self._handle, host=host)
        self.host, self.port = host, self.server.port

    @property
    def addr(self):
        return (self.host, self.port)

    def url(self, auth=None):
        return h.socks5_url(self.addr, auth)

    @property
    def connections(self):
        return len(self.records)

    def requests(self):
        return [r["request"] for r in self.records if r["request"] is not None]

    def _handle(self, c, addr):
        rec = {"greeting": None, "auth": None, "request": None, "early": b"", "echoed": 0,
               "error": None}
        with self.lock:
            self.records.append(rec)
        try:
            if self.silent:  # record what arrives (in "greeting"), answer nothing
                rec["greeting"] = b""
                while True:
                    b = c.recv(65536)
                    if not b:
                        return rec
                    rec["greeting"] += b
            head = h.recv_exact(c, 2)
            rec["greeting"] = head + h.recv_exact(c, head[1])
            if self.garbage is not None:
                c.sendall(self.garbage)
                while c.recv(65536):
                    pass
                return rec
            if self.auth or self.reject_auth:
                if h.M_USERPASS not in rec["greeting"][2:]:
                    c.sendall(b"\x05\xff")
                    return rec
                c.sendall(b"\x05\x02")
                v_ul = h.recv_exact(c, 2)
                user = h.recv_exact(c, v_ul[1])
                plen = h.recv_exact(c, 1)
                pw = h.recv_exact(c, plen[0])
                rec["auth"] = v_ul + user + plen + pw
                if self.reject_auth or (user.decode(), pw.decode()) != tuple(self.auth):
                    c.sendall(b"\x01\x01")
                    return rec
                c.sendall(b"\x01\x00")
            else:
                if h.M_NOAUTH not in rec["greeting"][2:]:
                    c.sendall(b"\x05\xff")
                    return rec
                c.sendall(b"\x05\x00")
            rec["request"] = read_request(c)
            if self.hold:
                rec["early"] = pending_bytes(c, self.hold)
            replies = self.bind_replies if rec["request"][1] == h.CMD_BIND else self.replies
            if self.gap is None:
                c.sendall(b"".join(replies))
            else:
                for i, r in enumerate(replies):
                    if i:
                        time.sleep(self.gap)
                    c.sendall(r)
            if any(r[1] != 0 for r in replies):
                return rec
            if rec["early"]:
                c.sendall(rec["early"])
                rec["echoed"] += len(rec["early"])
            while True:
                b = c.recv(262144)
                if not b:
                    break
                c.sendall(b)
                rec["echoed"] += len(b)
            c.shutdown(socket.SHUT_WR)
            return rec
        except Exception as e:
            rec["error"] = f"{type(e).__name__}: {e}"
            raise

    def close(self):
        self.server.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SilentServer:
    """Accepts every connection and never sends a byte (holds the sockets until closed)."""

    def __init__(self, host="127.0.0.1"):
        self.fake = FakeUpstream(silent=True, host=host)
        self.addr = self.fake.addr
        self.port = self.fake.port

    @property
    def connections(self):
        return self.fake.connections

    def close(self):
        self.fake.close()


class NeverAccepts:
    """A listening socket whose accept queue is full (backlog 0, filled by the test's own
    connections): further SYNs are dropped, so a connect() to it neither succeeds nor fails."""

    def __init__(self, host="127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(0)
        self.addr = self.sock.getsockname()[:2]
        self.port = self.addr[1]
        self.fillers = []
        for _ in range(8):
            f = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            f.setblocking(False)
            self.fillers.append(f)
            try:
                f.connect(self.addr)
            except BlockingIOError:
                pass
            _, w, _ = select.select([], [f], [], 0.3)
            if not w:
                break  # this one hangs: the queue is full
        else:
            raise RuntimeError("could not fill the accept queue")

    def close(self):
        for f in self.fillers:
            f.close()
        self.sock.close()


class ClosedPort:
    """A port where connections are refused (a bound, non-listening socket keeps it ours)."""

    def __init__(self, host="127.0.0.1"):
        self.sock = socket.socket(h._family(host), socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.addr = self.sock.getsockname()[:2]
        self.port = self.addr[1]

    def url(self, auth=None):
        return h.socks5_url(self.addr, auth)

    def close(self):
        self.sock.close()


# --------------------------------------------------------------------------------------------
# HTTP content


class WebRoot:
    """A temporary directory with small/big files served over HTTP on 127.0.0.1 (and ::1 with
    ipv6=True); fetch(url, proxy args) runs curl and returns the body."""

    def __init__(self, big=8 * MiB + 321, ipv6=False):
        self.dir = tempfile.mkdtemp(prefix="ringsocks-www-")
        self.files = {
            "small": b"small file through the chain\n",
            "big.bin": os.urandom(big),
        }
        for name, data in self.files.items():
            with open(os.path.join(self.dir, name), "wb") as f:
                f.write(data)
        self.http = h.HttpServer(self.dir, "127.0.0.1")
        self.http6 = h.HttpServer(self.dir, "::1") if ipv6 else None
        self.port = self.http.port

    def url(self, name, host="127.0.0.1", port=None):
        return f"http://{h.host_literal(host)}:{port or self.port}/{name}"

    def fetch(self, url, curl_args=(), timeout=60.0):
        r = h.curl(list(curl_args) + [url], timeout=timeout)
        if r.returncode != 0:
            raise AssertionError(f"curl {' '.join(curl_args)} {url}: exit {r.returncode}:"
                                 f" {r.stderr.decode(errors='replace')}")
        return r.stdout

    def check(self, testcase, name, body, what=""):
        want = self.files[name]
        testcase.assertEqual(len(body), len(want), f"{what} {name}: length")
        testcase.assertEqual(h.sha256(body), h.sha256(want), f"{what} {name}: sha256")

    def close(self):
        self.http.close()
        if self.http6:
            self.http6.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# wrk


def parse_wrk(text):
    """Requests/sec, total requests, socket errors (dict, zeros if wrk printed no such line),
    non-2xx count (0 if no such line)."""
    m = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    rps = float(m.group(1)) if m else None
    m = re.search(r"^\s*(\d+) requests in ", text, re.M)
    total = int(m.group(1)) if m else None
    errs = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errs = dict(zip(errs, map(int, m.groups())))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    non2xx = int(m.group(1)) if m else 0
    return rps, total, errs, non2xx


def run_wrk(url, threads=1, conns=10, duration=3):
    r = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", url],
                       capture_output=True, timeout=duration + 30 * h.SLOW)
    return r.returncode, r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")


def settled_socket_count(proxy):
    """Sockets of a ringsocks once every worker is up (the start-up probe can connect before the
    workers have made their rings; "listening on" is logged after)."""
    wait_log(proxy, r"listening on")
    return h.socket_count(proxy.pid)
