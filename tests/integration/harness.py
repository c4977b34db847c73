"""Integration-test harness for ringsocks: the real binary on loopback, driven by real clients.

Everything here is Python 3.11 standard library. Reusable pieces:

  Proxy / start_proxy(args)    start the daemon on a free 127.0.0.1 port (-w 2 -v), wait until it
                               accepts, capture stderr; .stop() sends SIGTERM and asserts exit 0
                               and a clean sanitizer log.
  Tunnel(dest_host, dest_port, via)
                               `ringsocks tunnel` on a free port, same lifecycle as Proxy;
                               socks5_url(proxy, auth) builds --via / --upstream URLs.
  ProxyTestCase                unittest base class: one proxy per test class (with its own
                               DnsServer as --resolver), and at the end a plain CONNECT must
                               still work before the proxy is stopped.
  EchoServer                   asyncio echo server in its own thread (scales to thousands of
                               connections); counts connections, records peers and (optionally)
                               the bytes received.
  ThreadedServer               TCP server running handler(sock, addr) in a thread per connection.
  HttpServer                   http.server serving a directory (IPv4 or IPv6).
  DnsServer                    UDP DNS responder: A/AAAA from a dict, NXDOMAIN otherwise,
                               per-name delays that never block other queries, query counters.
  greeting / auth_request / request / read_reply / socks_connect / read_to_close
                               raw SOCKS5 client pieces (RFC 1928 / 1929).
  curl(args)                   curl without config file or proxy environment variables.
  main()                       unittest runner: prints the proxies' stderr when a test fails,
                               and a watchdog so that no file can hang.

Environment:
  RINGSOCKS_BIN   path of the binary (default: <repo>/build/ringsocks)
  RINGSOCKS_PEER  "microsocks" or "dante": run the same tests against /usr/bin/microsocks or
                  /usr/sbin/danted (to validate the tests themselves; ringsocks-only tests are
                  skipped; --user only maps to microsocks)
"""

import asyncio
import collections
import ctypes
import faulthandler
import functools
import gc
import hashlib
import http.server
import ipaddress
import os
import random
import re
import resource
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = os.environ.get("RINGSOCKS_BIN") or str(REPO / "build" / "ringsocks")
PEER = os.environ.get("RINGSOCKS_PEER", "")  # "" = ringsocks, or "microsocks" / "dante"
# extra flags for every ringsocks started (ctest runs the relay tests once per --relay mode)
EXTRA_ARGS = os.environ.get("RINGSOCKS_ARGS", "").split()
# tests/integration/closetrap.c (a shared library), preloaded into every ringsocks started:
# whatever is sent to a descriptor after close(2) lands in a trap and fails the test at stop()
CLOSETRAP = "" if PEER else os.environ.get("RINGSOCKS_CLOSETRAP", "")
CLOSETRAP_SUMMARY = re.compile(r"closetrap: (\d+) descriptors trapped, (\d+) bytes sent to or"
                               r" read from them after close\(2\), (\d+) closed twice")


def _is_sanitized(path):
    try:
        with open(path, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


# Generous multiplier for waits that only guard against hangs (never for timing assertions that
# decide pass/fail of a feature, e.g. the handshake-timeout window).
SLOW = 3.0 if (not PEER and _is_sanitized(BIN)) else 1.0
SOCK_TIMEOUT = 20.0 * SLOW  # every socket gets a timeout: nothing may hang
socket.setdefaulttimeout(SOCK_TIMEOUT)
STOP_TIMEOUT = float(os.environ.get("RINGSOCKS_STOP_TIMEOUT", "5"))
FILE_TIMEOUT = float(os.environ.get("RINGSOCKS_FILE_TIMEOUT", "270"))  # ctest kills at 300

ringsocks_only = unittest.skipIf(PEER != "", "tests a ringsocks-specific behaviour")

# --------------------------------------------------------------------------------------------
# ports and limits


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def unused_port(host="127.0.0.1"):
    """A port with nothing bound to it, outside the ephemeral range (32768-60999), so that the
    thousands of outgoing connections of the load tests cannot take it before the proxy binds."""
    for _ in range(200):
        port = random.randint(10000, 32000)
        s = socket.socket(_family(host), socket.SOCK_STREAM)
        try:
            s.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port")


def run_clients(client, n, timeout):
    """Run client(i) for i in range(n), each in a thread of its own, and join each within
    timeout; returns the errors raised, as "i: error" strings (empty when all went well)."""
    errors = []

    def one(i):
        try:
            client(i)
        except BaseException as e:  # noqa: BLE001
            errors.append(f"{i}: {e!r}")
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return errors


def wait_for(pred, timeout, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def _unix_socket_inodes():
    """Inodes of the AF_UNIX sockets of this network namespace (ringsocks makes none; the
    closetrap's traps are such sockets)."""
    try:
        with open("/proc/net/unix") as f:
            next(f)
            return {line.split()[6] for line in f if len(line.split()) > 6}
    except OSError:
        return set()


def socket_count(pid):
    """Sockets held by a process (its pipes are pooled and kept on purpose, so not counted;
    nor are the closetrap's AF_UNIX traps)."""
    n = 0
    unix = _unix_socket_inodes() if CLOSETRAP else set()
    for f in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{f}")
        except OSError:
            continue
        n += link.startswith("socket:") and link[8:-1] not in unix
    return n


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def host_literal(host):
    return f"[{host}]" if ":" in host else host


# --------------------------------------------------------------------------------------------
# the proxy process

_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover
    _libc = None


def _die_with_parent():
    # The proxy is killed if the test process dies (even by SIGKILL). Start proxies from the main
    # thread only: PDEATHSIG fires when the *thread* that forked exits.
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "ERROR: ThreadSanitizer", "WARNING: ThreadSanitizer")


class Proxy:
    """A running ringsocks (or, with RINGSOCKS_PEER=microsocks, microsocks)."""

    started = []  # every proxy of this run (their stderr files are removed after a clean run)
    alive = []  # every proxy not yet stopped
    recent = []  # proxies started or alive during the current test (stderr printed on failure)

    def __init__(self, args=(), workers=2, verbose=True, host="127.0.0.1", auth=None,
                 start=True, nofile=None):
        self.args = [str(a) for a in args]
        # RLIMIT_NOFILE of the proxy, soft and hard (it raises its soft limit to the hard one);
        # such a proxy runs without the closetrap, whose traps hold descriptors of their own
        self.nofile = nofile
        self.workers = workers
        self.verbose = verbose
        self.host = host
        self.port = None
        self.proc = None
        self.stderr_path = None
        self.returncode = None
        # credentials for the end-of-class "still serving" check: taken from the first --user
        self.auth = auth
        if self.auth is None:
            for i, a in enumerate(self.args[:-1]):
                if a == "--user" and ":" in self.args[i + 1]:
                    u, p = self.args[i + 1].split(":", 1)
                    self.auth = (u, p)
                    break
        if start:
            self.start()

    @property
    def pid(self):
        return self.proc.pid

    @property
    def addr(self):
        return (self.host, self.port)

    def argv(self, port):
        if PEER == "microsocks":
            argv = ["/usr/bin/microsocks", "-i", self.host, "-p", str(port)]
            a = self.args
            for i, x in enumerate(a[:-1]):
                if x == "--user":  # microsocks has one user: the first
                    u, p = a[i + 1].split(":", 1)
                    return argv + ["-u", u, "-P", p]
            return argv
        if PEER == "dante":
            conf = os.path.join(tempfile.gettempdir(), f"ringsocks-dante-{os.getpid()}-{port}.conf")
            with open(conf, "w") as f:
                f.write(f"logoutput: stderr\ninternal: {self.host} port = {port}\nexternal: lo\n"
                        "socksmethod: none\nclientmethod: none\nuser.privileged: root\n"
                        "user.unprivileged: nobody\n"
                        "client pass { from: 0.0.0.0/0 to: 0.0.0.0/0 }\n"
                        "socks pass { from: 0.0.0.0/0 to: 0.0.0.0/0 command: connect }\n")
            Proxy.started.append(conf)
            return ["/usr/sbin/danted", "-f", conf, "-N", "1"]
        argv = [BIN, "-l", f"{host_literal(self.host)}:{port}", "-w", str(self.workers)]
        if self.verbose:
            argv.append("-v")
        return argv + EXTRA_ARGS + self.args

    def start(self, listen_timeout=5.0 * SLOW):
        last = None
        for _attempt in range(4):
            port = unused_port(self.host)
            fd, self.stderr_path = tempfile.mkstemp(prefix="ringsocks-stderr-", suffix=".log")
            Proxy.started.append(self.stderr_path)
            argv = self.argv(port)
            env = None
            self.trapped = bool(CLOSETRAP) and argv[0] == BIN and not self.nofile
            if self.trapped:
                env = dict(os.environ, LD_PRELOAD=CLOSETRAP)
                if SLOW > 1:  # ASan wants to come first; the trap only replaces close()
                    opts = env.get("ASAN_OPTIONS", "")
                    env["ASAN_OPTIONS"] = (opts + ":" if opts else "") + \
                        "verify_asan_link_order=0"
            preexec = _die_with_parent
            if self.nofile:
                def preexec(n=self.nofile):
                    _die_with_parent()
                    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                         preexec_fn=preexec, close_fds=True, env=env)
            os.close(fd)
            self.port = port
            Proxy.alive.append(self)
            Proxy.recent.append(self)
            deadline = time.monotonic() + listen_timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    with socket.create_connection(self.addr, timeout=1):
                        return self
                except OSError:
                    time.sleep(0.02)
            # did not come up: maybe the port was taken in the meantime; try another
            rc = self.proc.poll()
            if rc is None:
                self.proc.kill()
                self.proc.wait(5)
            Proxy.alive.remove(self)
            last = (f"{' '.join(argv)}: not accepting on port {port} after {listen_timeout:.0f}s"
                    f" (exit code {self.proc.returncode})\n--- stderr ---\n{self.stderr()}")
            if rc is not None and "in use" not in self.stderr().lower():
                break
        raise AssertionError(f"proxy did not start: {last}")

    def stderr(self):
        try:
            return Path(self.stderr_path).read_text(errors="replace")
        except (OSError, TypeError):
            return ""

    def stderr_lines(self):
        return self.stderr().splitlines()

    def threads(self):
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def sanitizer_report(self):
        text = self.stderr()
        for m in SANITIZER_MARKERS:
            i = text.find(m)
            if i >= 0:
                return text[max(0, i - 200):i + 4000]
        return None

    def stats(self, timeout=None):
        """SIGUSR1: every worker logs its counters in a "stats" line. Returns them as a list of
        dicts, one per worker, ordered by worker (values as ints)."""
        timeout = 5.0 * SLOW if timeout is None else timeout
        marker = " ringsocks stats: "

        def complete():  # a line being written is left for the next look
            return [x for x in self.stderr().split("\n")[:-1] if marker in x]
        seen = len(complete())
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while True:
            lines = complete()
            if len(lines) >= seen + self.workers:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(lines) - seen} of {self.workers} workers logged"
                                     f" their counters within {timeout}s of SIGUSR1\n"
                                     f"--- stderr (tail) ---\n{self.tail()}")
            time.sleep(0.02)
        out = []
        for line in lines[seen:seen + self.workers]:
            out.append({k: int(v) for k, v in
                        (f.split("=", 1) for f in line.split(marker, 1)[1].split())})
        return sorted(out, key=lambda d: d["worker"])

    def wait_live(self, n, timeout=None):
        """Wait until the workers count n live connections (SIGUSR1). The start-up probe's
        connection counts until a worker has seen it close: a test of --max-conns waits for
        0 before it opens its own."""
        timeout = 10.0 * SLOW if timeout is None else timeout
        wait_for(lambda: sum(w["live"] for w in self.stats()) == n, timeout, interval=0.05,
                 what=f"{n} live connections")

    def check_idle(self, timeout=None):
        """Once every client of the test has closed: no connection slot is live, and no chunk,
        pipe, ring buffer or datagram buffer is held (SIGUSR1's counters). Sockets the test dropped without
        closing are closed first (gc)."""
        timeout = 10.0 * SLOW if timeout is None else timeout
        gc.collect()
        keys = ("live", "chunks_kib", "ring_waiting", "pipes_lent", "udp_bufs_lent")
        last = []

        def idle():
            last[:] = self.stats()
            return all(w[k] == 0 for w in last for k in keys)
        try:
            wait_for(idle, timeout, interval=0.1, what="no live slot, chunk, pipe or buffer")
        except AssertionError as e:
            raise AssertionError(f"{e}: {[{k: w[k] for k in ('worker',) + keys} for w in last]}"
                                 f"\n--- stderr (tail) ---\n{self.tail()}") from None
        for w in last:  # every accepted connection was refused at once or ended as a session
            if w["accepted"] != w["refused"] + w["sessions_ok"] + w["sessions_failed"]:
                raise AssertionError(f"worker {w['worker']}: accepted {w['accepted']}, refused"
                                     f" {w['refused']}, sessions {w['sessions_ok']} ok +"
                                     f" {w['sessions_failed']} failed: {w}")

    def stop(self, sig=signal.SIGTERM, timeout=None, expect_code=0):
        """Send sig, wait for exit, assert exit code 0 (by default) and no sanitizer report."""
        timeout = STOP_TIMEOUT if timeout is None else timeout
        if self.proc is None:
            return None
        if self in Proxy.alive:
            Proxy.alive.remove(self)
        already = self.proc.poll()
        if already is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(
                    f"proxy (pid {self.pid}) did not exit within {timeout}s of signal {sig}"
                    f"\n--- stderr (tail) ---\n{self.tail()}")
        self.returncode = rc = self.proc.returncode
        rep = self.sanitizer_report()
        if rep:
            raise AssertionError(f"sanitizer report in proxy stderr:\n{rep}")
        self.check_closetrap()
        if already is not None:
            raise AssertionError(f"proxy (pid {self.pid}) had already exited with code {already}"
                                 f" before it was stopped\n--- stderr (tail) ---\n{self.tail()}")
        if expect_code is not None:
            ok = rc == expect_code or (PEER and rc == -sig)
            if not ok:
                raise AssertionError(f"proxy exited with code {rc} after signal {sig}, expected"
                                     f" {expect_code}\n--- stderr (tail) ---\n{self.tail()}")
        return rc

    def check_closetrap(self):
        """With RINGSOCKS_CLOSETRAP: no byte went to a closed descriptor, and the trap was
        loaded (it writes its summary at exit)."""
        if not getattr(self, "trapped", False):
            return
        lines = [x for x in self.stderr_lines() if x.startswith("closetrap: ")]
        summary = [m for m in map(CLOSETRAP_SUMMARY.match, lines) if m]
        if not summary:
            raise AssertionError(f"{CLOSETRAP} was preloaded but wrote no summary at exit"
                                 f"\n--- stderr (tail) ---\n{self.tail()}")
        m = summary[-1]
        if len(lines) > 1 or int(m.group(2)) or int(m.group(3)):
            raise AssertionError("a descriptor was used after close(2):\n"
                                 + "\n".join(lines[:20]))

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self in Proxy.alive:
            Proxy.alive.remove(self)

    def tail(self, n=80):
        lines = self.stderr_lines()
        out = "\n".join(lines[-n:])
        if len(lines) > n:
            out = f"[... {len(lines) - n} earlier lines in {self.stderr_path}]\n" + out
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            if not PEER and self.running():
                try:
                    self.check_idle()
                except BaseException:
                    self.kill()
                    raise
            self.stop()
        else:
            self.kill()


def start_proxy(extra_args=(), **kw):
    return Proxy(extra_args, **kw)


def socks5_url(proxy, auth=None):
    """socks5://[user:pass@]host:port of a Proxy or (host, port), for --upstream / --via."""
    host, port = proxy.addr if isinstance(proxy, Proxy) else proxy
    cred = f"{auth[0]}:{auth[1]}@" if auth else ""
    return f"socks5://{cred}{host_literal(host)}:{port}"


class Tunnel(Proxy):
    """`ringsocks tunnel`: a local port (.port) forwarding every connection through the SOCKS5
    proxy `via` (URL or Proxy) to dest_host:dest_port. Same lifecycle as Proxy (stop() asserts
    exit 0 and a clean stderr). Syntax as in `ringsocks --help`."""

    def __init__(self, dest_host, dest_port, via, args=(), **kw):
        self.dest = f"{host_literal(dest_host)}:{dest_port}"
        self.via = via if isinstance(via, str) else socks5_url(via, via.auth)
        super().__init__(args, **kw)

    def argv(self, port):
        if PEER:
            raise unittest.SkipTest("tunnel mode is ringsocks-only")
        argv = [BIN, "tunnel", "-L", f"{host_literal(self.host)}:{port}:{self.dest}",
                "--via", self.via, "-w", str(self.workers)]
        if self.verbose:
            argv.append("-v")
        return argv + self.args


def _kill_all_proxies():
    for p in list(Proxy.alive):
        p.kill()


# --------------------------------------------------------------------------------------------
# SOCKS5 client pieces

VER = 5
M_NOAUTH, M_GSSAPI, M_USERPASS, M_NONE = 0x00, 0x01, 0x02, 0xFF
CMD_CONNECT, CMD_BIND, CMD_UDP = 1, 2, 3
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 1, 3, 4
REP_OK, REP_FAIL, REP_NOT_ALLOWED, REP_NET_UNREACH, REP_HOST_UNREACH, REP_REFUSED, \
    REP_TTL, REP_CMD, REP_ATYP = range(9)


def greeting(methods=(M_NOAUTH,)):
    return bytes([VER, len(methods), *methods])


def auth_request(user, password, ver=1):
    u, p = user.encode(), password.encode()
    return bytes([ver, len(u)]) + u + bytes([len(p)]) + p


def encode_addr(host):
    """ATYP + address bytes for an IPv4/IPv6 literal or a domain name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("ascii") if isinstance(host, str) else host  # raw: no IDNA checks
        if len(name) > 255:
            raise ValueError("a SOCKS5 domain name has at most 255 bytes")
        return bytes([ATYP_DOMAIN, len(name)]) + name
    if ip.version == 4:
        return bytes([ATYP_IPV4]) + ip.packed
    return bytes([ATYP_IPV6]) + ip.packed


def request(host, port, cmd=CMD_CONNECT):
    return bytes([VER, cmd, 0]) + encode_addr(host) + struct.pack("!H", port)


def error_reply(code):
    """The exact failure reply the spec requires: REP code with an IPv4 0.0.0.0:0 BND."""
    return bytes([VER, code, 0, ATYP_IPV4]) + bytes(6)


class Reply:
    def __init__(self, rep, atyp, host, port, raw):
        self.rep, self.atyp, self.host, self.port, self.raw = rep, atyp, host, port, raw

    def __repr__(self):
        return f"Reply(rep={self.rep}, atyp={self.atyp}, bnd={self.host}:{self.port}, raw={self.raw.hex()})"


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes: {bytes(buf).hex()}")
        buf += chunk
    return bytes(buf)


def read_reply(sock):
    """Read one complete SOCKS5 reply (any ATYP) and return a Reply."""
    head = recv_exact(sock, 4)
    if head[0] != VER:
        raise AssertionError(f"reply with version {head[0]}: {head.hex()}")
    atyp = head[3]
    if atyp == ATYP_IPV4:
        a = recv_exact(sock, 4)
        host = str(ipaddress.IPv4Address(a))
    elif atyp == ATYP_IPV6:
        a = recv_exact(sock, 16)
        host = str(ipaddress.IPv6Address(a))
    elif atyp == ATYP_DOMAIN:
        ln = recv_exact(sock, 1)
        a = ln + recv_exact(sock, ln[0])
        host = a[1:].decode(errors="replace")
    else:
        raise AssertionError(f"reply with unknown ATYP {atyp}: {head.hex()}")
    p = recv_exact(sock, 2)
    return Reply(head[1], atyp, host, struct.unpack("!H", p)[0], head + a + p)


def run_bin(args, timeout=5.0):
    """Run the ringsocks binary with args to completion: (exit code, stdout, stderr). A daemon
    that does not exit within timeout is killed and reported as exit code None."""
    p = subprocess.Popen([BIN] + args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
    try:
        out, err = p.communicate(timeout=timeout * SLOW)
        return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate(timeout=5)
        return None, out.decode(errors="replace"), err.decode(errors="replace")


def read_to_close(sock, timeout=None, limit=1 << 26):
    """Read until the peer closes. Returns (data, how) with how = 'eof' or 'reset'.
    Raises AssertionError if the connection is still open after timeout."""
    if timeout is not None:
        sock.settimeout(timeout)
    buf = bytearray()
    try:
        while len(buf) <= limit:
            chunk = sock.recv(65536)
            if not chunk:
                return bytes(buf), "eof"
            buf += chunk
    except (ConnectionResetError, BrokenPipeError):
        return bytes(buf), "reset"
    except socket.timeout:
        raise AssertionError(f"connection still open after {sock.gettimeout()}s"
                             f" (received {len(buf)} bytes: {bytes(buf[:64]).hex()})")
    raise AssertionError(f"more than {limit} bytes before close")


def open_client(proxy, timeout=None, nodelay=False):
    addr = proxy.addr if isinstance(proxy, Proxy) else proxy
    s = socket.create_connection(addr, timeout=timeout or SOCK_TIMEOUT)
    if nodelay:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def handshake(sock, host, port, auth=None, cmd=CMD_CONNECT):
    """Greeting (+ RFC 1929 auth) + request on an open socket; returns the Reply (any REP)."""
    if auth:
        sock.sendall(greeting((M_USERPASS,)))
        got = recv_exact(sock, 2)
        if got != bytes([VER, M_USERPASS]):
            raise AssertionError(f"method selection {got.hex()}, expected 0502")
        sock.sendall(auth_request(*auth))
        got = recv_exact(sock, 2)
        if got != b"\x01\x00":
            raise AssertionError(f"auth status {got.hex()}, expected 0100")
    else:
        sock.sendall(greeting())
        got = recv_exact(sock, 2)
        if got != bytes([VER, M_NOAUTH]):
            raise AssertionError(f"method selection {got.hex()}, expected 0500")
    sock.sendall(request(host, port, cmd))
    return read_reply(sock)


def socks_connect(proxy, host, port, auth=None, timeout=None):
    """A connected relay through the proxy: returns (socket, Reply); asserts REP 0."""
    if auth is None and isinstance(proxy, Proxy):
        auth = proxy.auth
    s = open_client(proxy, timeout)
    try:
        r = handshake(s, host, port, auth)
        if r.rep != REP_OK:
            raise AssertionError(f"CONNECT {host}:{port} failed: {r}")
        return s, r
    except BaseException:
        s.close()
        raise


def echo_roundtrip(sock, payload):
    sock.sendall(payload)
    return recv_exact(sock, len(payload))


def send_all_chunks(sock, data, chunk=256 * 1024):
    mv = memoryview(data)
    for i in range(0, len(mv), chunk):
        sock.sendall(mv[i:i + chunk])


def drain_hash(sock):
    """Read to EOF; returns (byte count, sha256 hex)."""
    hsh, n = hashlib.sha256(), 0
    while True:
        b = sock.recv(1 << 20)
        if not b:
            return n, hsh.hexdigest()
        hsh.update(b)
        n += len(b)


def send_and_drain(sock, data, timeout):
    """Send data and then SHUT_WR from a thread while reading sock to EOF here (both directions at
    once). Returns (byte count read, its sha256 hex, the sender's errors: an exception's repr, or
    "did not finish" when it was still sending after timeout)."""
    errs = []

    def send():
        try:
            send_all_chunks(sock, data)
            sock.shutdown(socket.SHUT_WR)
        except Exception as e:  # noqa: BLE001
            errs.append(repr(e))

    th = threading.Thread(target=send)
    th.start()
    n, digest = drain_hash(sock)
    th.join(timeout)
    if th.is_alive():
        errs.append("did not finish")
    return n, digest, errs


def check_serving(proxy, auth=None):
    """A plain CONNECT to a fresh echo server through the proxy works: exact bytes back."""
    with EchoServer() as echo:
        s, r = socks_connect(proxy, "127.0.0.1", echo.port, auth=auth)
        with s:
            payload = os.urandom(4096)
            got = echo_roundtrip(s, payload)
            if got != payload:
                raise AssertionError("echo through the proxy returned different bytes")
            s.shutdown(socket.SHUT_WR)
            rest, _ = read_to_close(s, timeout=10 * SLOW)
            if rest:
                raise AssertionError(f"{len(rest)} unexpected bytes after the echo")


# --------------------------------------------------------------------------------------------
# servers


class _LoopThread:
    """An asyncio loop in a daemon thread."""

    def __init__(self, name):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


class EchoServer:
    """Echoes every byte back; on EOF from the client it half-closes and closes.

    hosts: one or more addresses, all on the same port (e.g. ("127.0.0.1", "::1")).
    record: keep up to record_limit received bytes per connection in .received[i].
    Counters: .accepted (connections), .peers (list of peer (host, port)), .active, .max_active.
    """

    def __init__(self, hosts=("127.0.0.1",), record=False, record_limit=1 << 20):
        if isinstance(hosts, str):
            hosts = (hosts,)
        self.hosts = tuple(hosts)
        self.record = record
        self.record_limit = record_limit
        self.lock = threading.Lock()
        self.accepted = 0
        self.active = 0
        self.max_active = 0
        self.peers = []
        self.received = {}
        self.errors = []
        self.socks = self._bind()
        self.port = self.socks[0].getsockname()[1]
        self._lt = _LoopThread("echo")
        self._servers = self._lt.call(self._start())

    def _bind(self):
        for _ in range(50):
            socks = []
            try:
                port = 0
                for h in self.hosts:
                    s = socket.socket(_family(h), socket.SOCK_STREAM)
                    socks.append(s)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if ":" in h:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    s.bind((h, port))
                    port = s.getsockname()[1]
                    s.listen(4096)
                return socks
            except OSError:
                for s in socks:
                    s.close()
        raise RuntimeError(f"cannot bind echo server on {self.hosts}")

    async def _start(self):
        return [await asyncio.start_server(self._handle, sock=s, backlog=4096) for s in self.socks]

    async def _handle(self, reader, writer):
        with self.lock:
            idx = self.accepted
            self.accepted += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.peers.append(writer.get_extra_info("peername")[:2])
            if self.record:
                self.received[idx] = bytearray()
        try:
            while True:
                data = await reader.read(262144)
                if not data:
                    break
                if self.record:
                    rec = self.received[idx]
                    if len(rec) < self.record_limit:
                        rec += data[: self.record_limit - len(rec)]
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass
        except Exception as e:  # pragma: no cover
            self.errors.append(repr(e))
        finally:
            writer.close()
            with self.lock:
                self.active -= 1

    def close(self):
        async def _close():
            for s in self._servers:
                s.close()
        try:
            self._lt.call(_close(), timeout=5)
        finally:
            self._lt.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ThreadedServer:
    """Accepts on host:0 and runs handler(sock, addr) in a new thread per connection.
    Exceptions raised by the handler are collected in .errors (assert it is empty);
    return values in .results. .peers lists accepted peer addresses."""

    def __init__(self, handler, host="127.0.0.1", backlog=128):
        self.handler = handler
        self.sock = socket.socket(_family(host), socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(backlog)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.host = host
        self.peers = []
        self.errors = []
        self.results = []
        self.done = threading.Semaphore(0)  # released once per finished handler
        self._stop = threading.Event()
        self._threads = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True, name="tsrv")
        self._acceptor.start()

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                c, addr = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            c.settimeout(SOCK_TIMEOUT)
            self.peers.append(addr[:2])
            t = threading.Thread(target=self._run, args=(c, addr), daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, c, addr):
        try:
            with c:
                self.results.append(self.handler(c, addr))
        except BaseException as e:
            self.errors.append(f"{type(e).__name__}: {e}")
        finally:
            self.done.release()

    def wait_done(self, n=1, timeout=None):
        timeout = timeout or SOCK_TIMEOUT
        for _ in range(n):
            if not self.done.acquire(timeout=timeout):
                raise AssertionError(f"server handler did not finish within {timeout}s")

    def close(self):
        self._stop.set()
        self._acceptor.join(5)
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    timeout = SOCK_TIMEOUT

    def log_message(self, *args):
        pass


class HttpServer:
    """http.server serving directory on host (127.0.0.1 or ::1), port chosen by the kernel."""

    def __init__(self, directory, host="127.0.0.1"):
        fam = _family(host)

        class Srv(http.server.ThreadingHTTPServer):
            address_family = fam
            daemon_threads = True
            request_queue_size = 128

            def server_bind(self):
                # plain bind: HTTPServer.server_bind calls getfqdn(), which may query DNS
                socketserver.TCPServer.server_bind(self)
                self.server_name, self.server_port = host, self.server_address[1]

        self.host = host
        self.server = Srv((host, 0), functools.partial(_QuietHandler, directory=str(directory)))
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True, name="http")
        self.thread.start()

    def url(self, path, host=None):
        return f"http://{host_literal(host or self.host)}:{self.port}/{path.lstrip('/')}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- DNS

QTYPE_A, QTYPE_AAAA = 1, 28
_QTYPE_NAMES = {QTYPE_A: "A", QTYPE_AAAA: "AAAA"}


def dns_parse_question(msg):
    """(id, flags, qname, qtype, qclass, end offset of the question) of a query."""
    if len(msg) < 12:
        raise ValueError("short header")
    qid, flags, qd, _an, _ns, _ar = struct.unpack("!6H", msg[:12])
    if qd != 1:
        raise ValueError(f"qdcount {qd}")
    labels, i = [], 12
    while True:
        ln = msg[i]
        i += 1
        if ln == 0:
            break
        if ln & 0xC0:
            raise ValueError("compressed question name")
        labels.append(msg[i:i + ln].decode("ascii", "replace"))
        i += ln
    qtype, qclass = struct.unpack("!HH", msg[i:i + 4])
    return qid, flags, ".".join(labels), qtype, qclass, i + 4


def dns_build_query(name, qtype=QTYPE_A, qid=None):
    qid = random.randint(0, 65535) if qid is None else qid
    q = struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack("!HH", qtype, 1)


def dns_parse_response(msg):
    """(id, rcode, [(type, rdata-as-text)]) of a response (tiny parser for self-checks)."""
    qid, flags, qd, an, _ns, _ar = struct.unpack("!6H", msg[:12])
    i = dns_parse_question(msg)[5] if qd == 1 else 12
    answers = []
    for _ in range(an):
        if msg[i] & 0xC0 == 0xC0:
            i += 2
        else:
            while msg[i]:
                i += msg[i] + 1
            i += 1
        t, _c, _ttl, rdl = struct.unpack("!HHIH", msg[i:i + 10])
        i += 10
        rd = msg[i:i + rdl]
        i += rdl
        if t == QTYPE_A:
            answers.append(("A", str(ipaddress.IPv4Address(rd))))
        elif t == QTYPE_AAAA:
            answers.append(("AAAA", str(ipaddress.IPv6Address(rd))))
        else:
            answers.append((t, rd))
    return qid, flags & 0xF, answers


class DnsServer:
    """A UDP DNS responder on 127.0.0.1 (or ::1) for the proxy's --resolver.

    add(name, a=[...], aaaa=[...], delay=seconds): A/AAAA records; a known name asked for
    another type gets an empty NOERROR answer; an unknown name gets NXDOMAIN. A delayed answer
    is scheduled on the server's own loop, so other queries are answered meanwhile.
    count(name, qtype=None) = queries received for the name (case-insensitive).
    """

    def __init__(self, host="127.0.0.1", ttl=60):
        self.host = host
        self.ttl = ttl
        self.records = {}
        self.delays = {}
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.log = []  # (monotonic time, name, qtype)
        self._lt = _LoopThread("dns")
        self.transport = self._lt.call(self._start())
        self.port = self.transport.get_extra_info("sockname")[1]

    @property
    def addr(self):
        return f"{host_literal(self.host)}:{self.port}"

    def add(self, name, a=(), aaaa=(), delay=0.0):
        key = name.lower().rstrip(".")
        with self.lock:
            self.records[key] = {QTYPE_A: list(a), QTYPE_AAAA: list(aaaa)}
            if delay:
                self.delays[key] = delay
            else:
                self.delays.pop(key, None)

    def count(self, name, qtype=None):
        key = name.lower().rstrip(".")
        with self.lock:
            if qtype is None:
                return sum(v for (n, _t), v in self.counts.items() if n == key)
            return self.counts[(key, qtype)]

    async def _start(self):
        server = self

        class Proto(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                try:
                    resp, delay = server._answer(data)
                except Exception:
                    return
                if delay:
                    asyncio.get_running_loop().call_later(delay, self.transport.sendto, resp, addr)
                else:
                    self.transport.sendto(resp, addr)

        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            Proto, local_addr=(self.host, 0), family=_family(self.host))
        return transport

    def _answer(self, msg):
        try:
            qid, flags, qname, qtype, qclass, end = dns_parse_question(msg)
        except (ValueError, IndexError, struct.error):
            if len(msg) < 12:
                raise
            qid = struct.unpack("!H", msg[:2])[0]
            return struct.pack("!6H", qid, 0x8001, 0, 0, 0, 0), 0  # FORMERR
        key = qname.lower().rstrip(".")
        with self.lock:
            self.counts[(key, qtype)] += 1
            self.log.append((time.monotonic(), key, qtype))
            rec = self.records.get(key)
            delay = self.delays.get(key, 0.0)
        opcode = flags & 0x7800
        rflags = 0x8000 | opcode | 0x0400 | (flags & 0x0100) | 0x0080  # QR AA RD(copied) RA
        answers = []
        if opcode != 0:
            rcode = 4  # NOTIMP
        elif rec is None:
            rcode = 3  # NXDOMAIN
        else:
            rcode = 0
            if qclass == 1:
                for ip in rec.get(qtype, []):
                    packed = ipaddress.ip_address(ip).packed
                    answers.append(struct.pack("!HHHIH", 0xC00C, qtype, 1, self.ttl, len(packed))
                                   + packed)
        header = struct.pack("!6H", qid, rflags | rcode, 1, len(answers), 0, 0)
        return header + msg[12:end] + b"".join(answers), delay

    def query(self, name, qtype=QTYPE_A, timeout=5.0):
        """Ask this server directly (for self-checks)."""
        with socket.socket(_family(self.host), socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            q = dns_build_query(name, qtype)
            s.sendto(q, (self.host, self.port))
            data, _ = s.recvfrom(4096)
            return dns_parse_response(data)

    def close(self):
        try:
            self._lt.loop.call_soon_threadsafe(self.transport.close)
        finally:
            self._lt.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------------
# curl

def curl(args, timeout=60.0):
    """Run curl (no config file, no proxy from the environment); returns CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.run(["curl", "-q", "-sS", "--fail", "--max-time", str(int(timeout * SLOW))]
                          + list(args), env=env, capture_output=True, timeout=timeout * SLOW + 10)


# --------------------------------------------------------------------------------------------
# unittest glue


class ProxyTestCase(unittest.TestCase):
    """One proxy per test class. Subclasses set proxy_args / workers, or override extra_args().

    Unless use_dns = False, the class also runs a DnsServer (cls.dns, which knows "localhost"
    -> 127.0.0.1 like /etc/hosts) and passes it to the proxy with --resolver, so the proxy never
    asks the machine's DNS; add records with cls.dns.add(...) at any time.
    At the end of the class a plain CONNECT must still work, then the proxy gets SIGTERM and
    must exit 0 with a clean stderr."""

    proxy_args = ()
    workers = 2
    use_dns = True
    proxy = None
    dns = None

    @classmethod
    def extra_args(cls):
        return list(cls.proxy_args)

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        args = []
        if cls.use_dns:
            cls.dns = DnsServer()
            cls.dns.add("localhost", a=["127.0.0.1"])
            args = ["--resolver", cls.dns.addr]
        try:
            cls.proxy = Proxy(args + cls.extra_args(), workers=cls.workers)
        except BaseException:
            if cls.dns:
                cls.dns.close()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.proxy is not None:
                try:
                    check_serving(cls.proxy)
                    if not PEER:
                        cls.proxy.check_idle()
                except BaseException as e:
                    raise AssertionError(f"the proxy no longer serves a plain CONNECT, or holds"
                                         f" what its closed clients had, at the end of"
                                         f" {cls.__name__}: {e}") from e
                finally:
                    cls.proxy.stop()
        finally:
            if cls.dns:
                cls.dns.close()
            super().tearDownClass()

    def setUp(self):
        if self.proxy is not None and not self.proxy.running():
            self.fail(f"proxy exited (code {self.proxy.proc.returncode}) before {self.id()}:\n"
                      f"{self.proxy.tail()}")


class EchoProxyTestCase(ProxyTestCase):
    """A ProxyTestCase with an echo server for the whole class (cls.echo: make_echo(), an
    EchoServer unless overridden), started before the proxy and closed after it.
    many_fds = True first raises the open-files limit (raise_nofile), for classes that hold
    many connections at once."""

    many_fds = False
    echo = None

    @classmethod
    def make_echo(cls):
        return EchoServer()

    @classmethod
    def setUpClass(cls):
        if cls.many_fds:
            raise_nofile()
        cls.echo = cls.make_echo()
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.echo.close()


class _Result(unittest.TextTestResult):
    def startTest(self, test):
        Proxy.recent = list(Proxy.alive)
        super().startTest(test)

    def _dump(self, test):
        for p in dict.fromkeys(Proxy.recent + Proxy.alive):
            state = "running" if p.running() else f"exit code {p.proc.returncode if p.proc else None}"
            self.stream.write(f"\n--- proxy pid {p.pid if p.proc else '-'} port {p.port} ({state})"
                              f" stderr tail [{test}] ---\n{p.tail(60)}\n--- end ---\n")
        self.stream.flush()

    def addError(self, test, err):
        super().addError(test, err)
        self._dump(test)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._dump(test)


def _watchdog(seconds):
    def fire():
        sys.stderr.write(f"\nWATCHDOG: test file still running after {seconds}s; tracebacks:\n")
        faulthandler.dump_traceback(all_threads=True)
        for p in list(Proxy.alive):
            sys.stderr.write(f"--- proxy pid {p.pid} stderr tail ---\n{p.tail(60)}\n")
        _kill_all_proxies()
        sys.stderr.flush()
        os._exit(3)

    t = threading.Timer(seconds, fire)
    t.daemon = True
    t.start()
    return t


def main():
    raise_nofile()
    wd = _watchdog(FILE_TIMEOUT)
    if PEER:
        print(f"NOTE: running against {PEER}, not ringsocks", file=sys.stderr)
    elif not os.access(BIN, os.X_OK):
        print(f"ringsocks binary not found: {BIN} (set RINGSOCKS_BIN)", file=sys.stderr)
        sys.exit(1)
    try:
        runner = unittest.TextTestRunner(verbosity=2, resultclass=_Result)
        prog = unittest.main(testRunner=runner, exit=False)
        ok = prog.result.wasSuccessful()
    finally:
        wd.cancel()
        _kill_all_proxies()
    if ok:
        for path in Proxy.started:
            try:
                os.unlink(path)
            except OSError:
                pass
    else:
        print("proxy stderr files: " + " ".join(Proxy.started), file=sys.stderr)
    sys.exit(0 if ok else 1)
