"""Chaos: clients and destinations that go away (a close, or a reset by SO_LINGER 0) at every
stage of a session, against each --relay mode (one or two workers; CHAOS_ALL=1: both), in an order
shuffled by a seed that is printed (CHAOS_SEED=N replays it). Stages: mid-greeting, after the
greeting, mid-auth, mid-request, while the destination's connect is in flight (a listener whose
backlog is full) or its name resolves (with data pipelined), just after the reply, mid-relay in
each direction, during a half-close; destinations that refuse or reset at the same points; BIND
(the client leaving while it waits, a peer from the wrong address, a peer that resets, two
peers; a --bind-ports range smaller than the round's BINDs, so a listener left open fails the
next); and UDP ASSOCIATE's control connection (also while a datagram's name resolves). Each
scenario asserts what the other end sees; after each round (one proxy) no
slot, chunk, pipe or buffer is held, the proxy holds the sockets it held before, and it still
serves a plain CONNECT; at the end it exits cleanly on SIGTERM."""

import errno
import fcntl
import itertools
import os
import random
import re
import select
import socket
import struct
import sys
import termios
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

USER = ("chaos", "s3cret")
CONNECT_TIMEOUT = 0.5  # the connect that never completes ends after this
SEED = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1 << 30))
# CHAOS_EACH=1: the idle check after every scenario, to name the one that left something behind
EACH = os.environ.get("CHAOS_EACH") == "1"
END = 10 * h.SLOW  # how long an end that must come may take
NAMES = itertools.count()
BIND_PORTS = 3  # --bind-ports: fewer than the BINDs of a round
SLOW_NAME, SLOW_DNS = "slow.chaos.test", 0.3  # a name the test's DNS server answers late


def abort(s, how):
    """Go away: "close" (a FIN, or a reset if unread data waits) or "rst" (SO_LINGER 0)."""
    if how == "rst":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def ended(s, timeout=END):
    """Read s until the other end is gone: returns "eof" or "reset" (anything read is dropped);
    fails if it is still open after timeout."""
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not s.recv(1 << 20):
                return "eof"
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    except socket.timeout:
        pass
    raise AssertionError(f"connection still open after {timeout:.0f}s")


def fill(s, limit=8 << 20):
    """Send without blocking until the kernel takes no more (or limit bytes): returns the count."""
    s.setblocking(False)
    sent, chunk = 0, b"x" * 65536
    try:
        while sent < limit:
            sent += s.send(chunk)
    except BlockingIOError:
        pass
    finally:
        s.settimeout(h.SOCK_TIMEOUT)
    return sent


def unread(s):
    return struct.unpack("i", fcntl.ioctl(s.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def wait_unread(s):
    """Wait until bytes wait unread in s: closing it then sends a reset, whatever the way."""
    h.wait_for(lambda: unread(s) > 0, END, what="bytes to arrive")


def tcp_state(s):
    return struct.unpack("B", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1))[0]


TCP_CLOSE = 7


def auth_greeting(s):
    s.sendall(h.greeting((h.M_USERPASS,)))
    assert h.recv_exact(s, 2) == b"\x05\x02"


def authed(s):
    auth_greeting(s)
    s.sendall(h.auth_request(*USER))
    assert h.recv_exact(s, 2) == b"\x01\x00"


class Dest:
    """A listener the scenarios accept from themselves, after the proxy connected."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def accept(self):
        self.sock.settimeout(END)
        d, _ = self.sock.accept()
        d.settimeout(h.SOCK_TIMEOUT)
        return d

    def close(self):
        self.sock.close()


class Blackhole:
    """A listener whose backlog is full: SYNs to it are dropped, so a connect to it hangs."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(2):  # a backlog of 0 still queues one
            f = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            f.setblocking(False)
            try:
                f.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fillers.append(f)

    def close(self):
        for f in self.fillers:
            f.close()
        self.sock.close()


class Chaos:
    """The scenarios of one round, against one proxy. Each is a method s_<name>(how)."""

    def __init__(self, tc, proxy, dest, hole, dns, bind_lo):
        self.tc, self.proxy, self.dest, self.hole, self.dns = tc, proxy, dest, hole, dns
        self.bind_ports = range(bind_lo, bind_lo + BIND_PORTS)

    def client(self):
        return h.open_client(self.proxy)

    def connected(self):
        """A relay to self.dest: (client socket, destination socket)."""
        s = self.client()
        authed(s)
        s.sendall(h.request("127.0.0.1", self.dest.port))
        r = h.read_reply(s)
        self.tc.assertEqual(r.rep, h.REP_OK, r)
        return s, self.dest.accept()

    # ---- the client goes away

    def s_mid_greeting(self, how):
        s = self.client()
        s.sendall(b"\x05\x02")  # one method announced, none sent
        abort(s, how)

    def s_after_greeting(self, how):
        s = self.client()
        auth_greeting(s)
        abort(s, how)

    def s_mid_auth(self, how):
        s = self.client()
        auth_greeting(s)
        s.sendall(h.auth_request(*USER)[:4])
        abort(s, how)

    def s_after_auth(self, how):
        s = self.client()
        authed(s)
        abort(s, how)

    def s_mid_request(self, how):
        s = self.client()
        authed(s)
        s.sendall(h.request("127.0.0.1", self.dest.port)[:6])
        abort(s, how)

    def s_connect_in_flight(self, how):
        s = self.client()
        authed(s)
        before = syn_sent(self.hole.port)
        s.sendall(h.request("127.0.0.1", self.hole.port))
        # the connect is out (no reply can come: its SYNs are dropped)
        h.wait_for(lambda: syn_sent(self.hole.port) - before, END, what="the proxy's SYN")
        abort(s, how)

    def s_connect_times_out(self, how):
        s = self.client()
        authed(s)
        s.sendall(h.request("127.0.0.1", self.hole.port))
        s.settimeout(END)
        self.tc.assertEqual(h.read_reply(s).raw, h.error_reply(h.REP_TTL))
        abort(s, how)

    def s_early_data_then_gone_while_resolving(self, how):
        # data pipelined after the request, then the client goes before the name resolves:
        # a destination that gets the data must not see it end as a whole stream would
        name = f"e{next(NAMES)}.{SLOW_NAME}"  # a name no cache holds: it answers late
        self.dns.add(name, a=["127.0.0.1"], delay=SLOW_DNS)
        s = self.client()
        authed(s)
        s.sendall(h.request(name, self.dest.port) + b"early")
        abort(s, how)
        r, _, _ = select.select([self.dest.sock], [], [], SLOW_DNS + CONNECT_TIMEOUT + 1 * h.SLOW)
        if not r:
            return  # the proxy saw the client go and connected nowhere
        with self.dest.accept() as d:
            got, data = ended_keep(d)
            self.tc.assertEqual(data, b"early")
            # after a close the client's FIN says its stream was whole (a reset may follow:
            # the closed socket refuses the reply)
            if how == "rst":
                self.tc.assertEqual(got, "reset", "the client's reset reaches the destination")
                # -v: the success reply never reached the client, and the line says so
                line = rf"dst={re.escape(name)}:{self.dest.port} result=succeeded " \
                       r"\(not delivered\) reason=client error during handshake"
                try:
                    h.wait_for(lambda: re.search(line, self.proxy.stderr()), 5 * h.SLOW,
                               what=f"a session line matching {line!r}")
                except AssertionError as e:
                    seen = [x for x in self.proxy.stderr_lines() if name in x]
                    raise AssertionError(f"{e}; lines naming it: {seen}") from None

    def s_just_after_reply(self, how):
        s, d = self.connected()
        abort(s, how)
        with d:
            self.tc.assertIn(ended(d), ("eof", "reset"))

    def s_mid_relay_up(self, how):
        s, d = self.connected()
        fill(s)  # the destination reads nothing: everything stalls
        abort(s, how)
        with d:
            self.tc.assertIn(ended(d), ("eof", "reset"))

    def s_mid_relay_down(self, how):
        s, d = self.connected()
        fill(d)  # the client reads nothing
        wait_unread(s)
        abort(s, how)  # unread bytes: a reset whatever how says
        with d:
            self.tc.assertEqual(ended(d), "reset")

    def s_half_close_then_gone(self, how):
        # the client is done sending; the destination answers for a while, then the client
        # leaves before the answer is over
        s, d = self.connected()
        s.sendall(b"question")
        s.shutdown(socket.SHUT_WR)
        self.tc.assertEqual(h.recv_exact(d, 8), b"question")
        self.tc.assertEqual(d.recv(1), b"")
        d.sendall(b"a" * 1000)
        self.tc.assertEqual(h.recv_exact(s, 1000), b"a" * 1000)
        abort(s, how)
        # the destination may still be sending: it must learn the client is gone
        with d:
            self.tc.assertEqual(ended_while_sending(d, eof_seen=True), "reset")

    def s_half_close_then_idle(self, how):
        # as above, but the destination is silent when the client goes: a reset must end the
        # relay at once; after a close (its FIN went with the half-close) the proxy learns it
        # from the reset its next bytes draw
        s, d = self.connected()
        s.shutdown(socket.SHUT_WR)
        self.tc.assertEqual(d.recv(1), b"")  # the EOF: recv says nothing more from here on
        abort(s, how)
        with d:
            if how == "rst":
                h.wait_for(lambda: tcp_state(d) == TCP_CLOSE, END,
                           what="the destination to be reset")
            else:
                self.tc.assertEqual(ended_while_sending(d, eof_seen=True), "reset")

    def s_dest_half_close_then_idle(self, how):
        # the mirror image: the destination is done sending, then goes while the client is
        # silent
        s, d = self.connected()
        d.shutdown(socket.SHUT_WR)
        self.tc.assertEqual(s.recv(1), b"")
        abort(d, how)
        with s:
            if how == "rst":
                h.wait_for(lambda: tcp_state(s) == TCP_CLOSE, END,
                           what="the client to be reset")
            else:
                self.tc.assertEqual(ended_while_sending(s, eof_seen=True), "reset")

    # ---- the destination goes away

    def s_dest_refuses(self, how):
        port = h.unused_port()
        s = self.client()
        with s:
            authed(s)
            s.sendall(h.request("127.0.0.1", port))
            self.tc.assertEqual(h.read_reply(s).raw, h.error_reply(h.REP_REFUSED))
            self.tc.assertEqual(ended(s), "eof")

    def s_dest_gone_at_once(self, how):
        s, d = self.connected()
        abort(d, how)
        with s:
            got = ended(s)
            if how == "rst":
                self.tc.assertEqual(got, "reset", "a reset reaches the client as one")

    def s_dest_gone_mid_up(self, how):
        s, d = self.connected()
        fill(s)
        wait_unread(d)
        abort(d, how)  # unread bytes: a reset
        with s:
            self.tc.assertEqual(ended_while_sending(s), "reset")

    def s_dest_gone_mid_down(self, how):
        s, d = self.connected()
        fill(d)
        wait_unread(s)  # bytes on their way
        abort(d, how)
        with s:
            got = ended(s)
            if how == "rst":
                self.tc.assertEqual(got, "reset", "a reset reaches the client as one")

    def s_dest_gone_after_half_close(self, how):
        s, d = self.connected()
        s.shutdown(socket.SHUT_WR)
        self.tc.assertEqual(d.recv(1), b"")
        abort(d, how)
        with s:
            got = ended(s)
            self.tc.assertEqual(got, "reset" if how == "rst" else "eof")

    # ---- BIND

    def bind(self, dst="127.0.0.1"):
        s = self.client()
        authed(s)
        s.sendall(h.request(dst, 0, cmd=h.CMD_BIND))
        r = h.read_reply(s)
        self.tc.assertEqual(r.rep, h.REP_OK, r)
        self.tc.assertIn(r.port, self.bind_ports)
        return s, r

    def s_bind_client_leaves_waiting(self, how):
        s, r = self.bind()
        abort(s, how)
        h.wait_for(lambda: not listening(r.port), END, what="the BIND listener to close")

    def s_bind_wrong_peer_then_client_leaves(self, how):
        s, r = self.bind()
        with peer_from("127.0.0.2", r) as wrong:
            self.tc.assertEqual(ended(wrong), "eof")  # refused: closed, no byte
        abort(s, how)
        h.wait_for(lambda: not listening(r.port), END, what="the BIND listener to close")

    def s_bind_peer_resets(self, how):
        s, r = self.bind()
        with s:
            p = peer_from("127.0.0.1", r)
            r2 = h.read_reply(s)
            self.tc.assertEqual((r2.rep, r2.port), (h.REP_OK, p.getsockname()[1]))
            abort(p, how)
            got = ended(s)
            if how == "rst":
                self.tc.assertEqual(got, "reset")

    def s_bind_two_peers(self, how):
        s, r = self.bind()
        p1 = peer_from("127.0.0.1", r)
        try:  # queued behind the first, then closed with the listener; or refused
            p2 = peer_from("127.0.0.1", r)
        except (ConnectionRefusedError, ConnectionResetError):
            p2 = None
        with s, p1:
            r2 = h.read_reply(s)
            self.tc.assertEqual(r2.port, p1.getsockname()[1])
            if p2:
                with p2:
                    self.tc.assertIn(ended(p2), ("eof", "reset"))
            p1.sendall(b"peer")
            self.tc.assertEqual(h.recv_exact(s, 4), b"peer")
            s.sendall(b"client")
            self.tc.assertEqual(h.recv_exact(p1, 6), b"client")
            abort(s, how)
            self.tc.assertIn(ended(p1), ("eof", "reset"))

    def s_bind_peer_then_client_leaves_mid_relay(self, how):
        s, r = self.bind()
        p = peer_from("127.0.0.1", r)
        with p:
            h.read_reply(s)
            fill(p)
            wait_unread(s)
            abort(s, how)
            self.tc.assertEqual(ended(p), "reset")

    # ---- UDP ASSOCIATE

    def udp_associated(self):
        """A client whose UDP ASSOCIATE succeeded: (control connection, reply)."""
        s = self.client()
        authed(s)
        s.sendall(h.request("0.0.0.0", 0, cmd=h.CMD_UDP))
        r = h.read_reply(s)
        self.tc.assertEqual(r.rep, h.REP_OK, r)
        return s, r

    def s_udp_mid_request(self, how):
        s = self.client()
        authed(s)
        s.sendall(h.request("0.0.0.0", 0, cmd=h.CMD_UDP)[:5])
        abort(s, how)

    def s_udp_after_reply(self, how):
        s, r = self.udp_associated()
        abort(s, how)

    def s_udp_with_datagram_waiting(self, how):
        # a datagram to a destination that never answers, then the control connection goes
        s, r = self.udp_associated()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.sendto(b"\x00\x00\x00" + h.encode_addr("127.0.0.1")
                     + struct.pack("!H", self.hole.port) + b"ping", (r.host, r.port))
            s.sendall(b"ignored")  # bytes on the control connection mean nothing
            abort(s, how)

    def s_udp_gone_while_a_datagram_name_resolves(self, how):
        # a datagram waits in a buffer for its name when the control connection goes
        s, r = self.udp_associated()
        name = f"u{next(NAMES)}.{SLOW_NAME}"  # a name no cache holds, asked for once
        self.dns.add(name, a=["127.0.0.1"], delay=SLOW_DNS)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.sendto(b"\x00\x00\x00" + h.encode_addr(name)
                     + struct.pack("!H", self.hole.port) + b"ping", (r.host, r.port))
            h.wait_for(lambda: self.dns.count(name), END, what="the datagram's name asked")
            abort(s, how)

    def s_bind_early_data_then_peer_resets(self, how):
        # data the client sent while it waited reaches the peer, which then goes
        s, r = self.bind()
        with s:
            s.sendall(b"early")
            p = peer_from("127.0.0.1", r)
            h.read_reply(s)
            self.tc.assertEqual(h.recv_exact(p, 5), b"early")
            abort(p, how)
            got = ended(s)
            if how == "rst":
                self.tc.assertEqual(got, "reset")


def ended_keep(s, timeout=END):
    """Like ended, but the data read so far is returned too: (how, data)."""
    s.settimeout(timeout)
    buf = b""
    try:
        while True:
            b = s.recv(1 << 20)
            if not b:
                return "eof", buf
            buf += b
    except (ConnectionResetError, BrokenPipeError):
        return "reset", buf


def ended_while_sending(s, timeout=END, eof_seen=False):
    """Keep sending on s while reading it, until the other end is gone ("eof" or "reset").
    After an EOF (eof_seen) recv says nothing more: only a failed send tells."""
    s.setblocking(False)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, w, _ = select.select([] if eof_seen else [s], [s], [], 0.05)
            if r:
                try:
                    if not s.recv(1 << 20):
                        return "eof"
                except BlockingIOError:
                    pass
            if w:
                try:
                    s.send(b"y" * 4096)
                except BlockingIOError:
                    pass
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    except OSError as e:
        if e.errno in (errno.ECONNRESET, errno.EPIPE):
            return "reset"
        raise
    finally:
        s.settimeout(h.SOCK_TIMEOUT)
    raise AssertionError(f"connection still open after {timeout:.0f}s")


def peer_from(source, r):
    p = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    p.settimeout(h.SOCK_TIMEOUT)
    p.bind((source, 0))
    p.connect((r.host, r.port))
    return p


def syn_sent(port):
    """The local addresses of the connections to 127.0.0.1:port still waiting for their SYN's
    answer."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return {x[1] for x in map(str.split, f) if x[2] == want and x[3] == "02"}


def listening(port):
    """Is anything listening on 127.0.0.1:port? (from /proc/net/tcp: no connection is made)"""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return any(line.split()[1] == want and line.split()[3] == "0A" for line in f)


def free_ports(n):
    """The first of n consecutive ports that nothing has bound."""
    for _ in range(100):
        lo = h.unused_port()
        if lo + n <= 32000 and not any(listening(lo + i) for i in range(n)):
            try:
                for i in range(n):
                    with socket.socket() as x:
                        x.bind(("127.0.0.1", lo + i))
                return lo
            except OSError:
                continue
    raise RuntimeError("no free port range")


SCENARIOS = sorted(n[2:] for n in dir(Chaos) if n.startswith("s_"))
MODES = ("hybrid", "splice", "splice-sqe", "copy")


@h.ringsocks_only
class ChaosTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        print(f"chaos seed {SEED} (replay: CHAOS_SEED={SEED})", file=sys.stderr, flush=True)
        cls.dest = Dest()
        cls.hole = Blackhole()
        cls.dns = h.DnsServer()  # the machine's resolver is never asked
        cls.dns.add(SLOW_NAME, a=["127.0.0.1"], delay=SLOW_DNS)

    @classmethod
    def tearDownClass(cls):
        cls.dest.close()
        cls.hole.close()
        cls.dns.close()

    def round(self, mode, workers):
        rng = random.Random(f"{SEED}-{mode}-{workers}")
        plan = [(n, how) for n in SCENARIOS for how in ("close", "rst")]
        rng.shuffle(plan)
        lo = free_ports(BIND_PORTS)
        # a BIND left listening would take one of the few ports for good: the next fail
        p = h.Proxy(["--resolver", self.dns.addr, "--relay", mode,
                     "--user", f"{USER[0]}:{USER[1]}", "--connect-timeout", str(CONNECT_TIMEOUT),
                     "--bind-timeout", "30", "--bind-ports", f"{lo}-{lo + BIND_PORTS - 1}"],
                    workers=workers)
        try:
            p.check_idle()
            base = h.socket_count(p.pid)
            chaos = Chaos(self, p, self.dest, self.hole, self.dns, lo)
            for i, (name, how) in enumerate(plan):
                with self.subTest(scenario=name, how=how, step=i):
                    getattr(chaos, "s_" + name)(how)
                    if EACH:
                        self.settle(p, base, f"after {name} {how}")
            self.settle(p, base, f"after the round (order: {plan})")
            h.check_serving(p)
        except BaseException:
            p.kill()
            raise
        p.stop()

    def settle(self, p, base, what):
        try:
            p.check_idle(timeout=(CONNECT_TIMEOUT + 10) * h.SLOW)
            h.wait_for(lambda: h.socket_count(p.pid) == base, END, what="the sockets")
        except AssertionError as e:
            raise AssertionError(f"{what}: {e} (sockets {h.socket_count(p.pid)}, before {base};"
                                 f" seed {SEED})") from None


# Every mode once, one and two workers in turn (the suite's time is bounded); CHAOS_ALL=1 runs
# every mode with both.
ROUNDS = [(m, w) for m in MODES for w in (1, 2)] if os.environ.get("CHAOS_ALL") else \
    [(m, 2 - i % 2) for i, m in enumerate(MODES)]
for _mode, _workers in ROUNDS:
    def _test(self, mode=_mode, workers=_workers):
        self.round(mode, workers)
    setattr(ChaosTest, f"test_{_mode.replace('-', '_')}_w{_workers}", _test)


if __name__ == "__main__":
    h.main()
