"""The resolver against a DNS server that misbehaves (a scripted one on 127.0.0.1 as --resolver):
answers with a wrong id, for a wrong question, from a wrong source port or address (all
ignored: the right answer after them is used), truncated (TC: asked again over TCP), cut short,
with a compression loop, of the wrong type or class, CNAME chains, TTL 0 (asked again) and
huge TTLs (kept), and many names in flight at once. Every case: the reply code, no hang, no
slot left (check_idle)."""

import os
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

A, CNAME, AAAA = 1, 5, 28


def name_bytes(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def rr(name, rtype, rdata, ttl=60, rclass=1):
    n = name if isinstance(name, bytes) else name_bytes(name)
    return n + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def a_rr(name, ip, ttl=60):
    return rr(name, A, socket.inet_aton(ip), ttl)


class ScriptedDns:
    """UDP (and TCP) DNS on 127.0.0.1. script(name, qtype, query) returns a list of
    (datagram bytes, how) to send back, how being "udp" (from the server's socket), "port"
    (from another port), "addr" (from 127.0.0.2, same port) or "tcp-only" (not sent over
    UDP; a TCP query gets it). A None datagram is a response built from (flags, answers)."""

    def __init__(self, script):
        self.script = script
        for _ in range(20):  # one port free for UDP on 127.0.0.1 and .2, and for TCP
            socks = [socket.socket(socket.AF_INET, t) for t in
                     (socket.SOCK_DGRAM, socket.SOCK_STREAM, socket.SOCK_DGRAM)]
            self.port = h.unused_port()
            try:
                for s, host in zip(socks, ("127.0.0.1", "127.0.0.1", "127.0.0.2")):
                    s.bind((host, self.port))
                break
            except OSError:
                for s in socks:
                    s.close()
        else:
            raise RuntimeError("no free port for the DNS server")
        self.udp, self.tcp, self.other_addr = socks
        self.tcp.listen(16)
        self.other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.other.bind(("127.0.0.1", 0))
        self.queries = []  # (transport, name, qtype)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors = []
        self.late_sent = threading.Event()
        for target in (self._udp_loop, self._tcp_loop):
            threading.Thread(target=target, daemon=True).start()

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def count(self, name, transport=None, qtype=A):
        with self.lock:
            return sum(1 for t, n, qt in self.queries
                       if n == name and qt == qtype and (transport is None or t == transport))

    def _answers(self, msg, transport):
        qid, flags, qname, qtype, _qclass, end = h.dns_parse_question(msg)
        with self.lock:
            self.queries.append((transport, qname.lower(), qtype))
        return self.script(qname.lower(), qtype, msg[:end]), qid

    def _udp_loop(self):
        self.udp.settimeout(0.2)
        while not self.stop.is_set():
            try:
                msg, peer = self.udp.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                out, _ = self._answers(msg, "udp")
                for data, how in out:
                    if how == "late":  # 1.5 s later, from the server's socket
                        threading.Timer(1.5, self._send_late, (data, peer)).start()
                        continue
                    sock = {"udp": self.udp, "port": self.other,
                            "addr": self.other_addr}.get(how)
                    if sock is not None:
                        sock.sendto(data, peer)
            except Exception as e:  # noqa: BLE001
                self.errors.append(repr(e))

    def _send_late(self, data, peer):
        try:
            self.udp.sendto(data, peer)
        except OSError:
            pass
        self.late_sent.set()

    def _tcp_loop(self):
        self.tcp.settimeout(0.2)
        while not self.stop.is_set():
            try:
                c, _ = self.tcp.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with c:
                try:
                    c.settimeout(5)
                    ln = struct.unpack("!H", h.recv_exact(c, 2))[0]
                    out, _ = self._answers(h.recv_exact(c, ln), "tcp")
                    data = ([d for d, how in out if how == "tcp-only"] +
                            [d for d, how in out if how == "udp"])[0]
                    c.sendall(struct.pack("!H", len(data)) + data)
                except Exception as e:  # noqa: BLE001
                    self.errors.append(repr(e))

    def close(self):
        self.stop.set()
        for s in (self.udp, self.tcp, self.other, self.other_addr):
            s.close()


def response(question, flags=0x8180, answers=(), qid=None):
    """A response to question (the query up to the end of its question section)."""
    qid = struct.unpack("!H", question[:2])[0] if qid is None else qid
    qd = struct.unpack("!H", question[4:6])[0]
    head = struct.pack("!6H", qid, flags, qd, len(answers), 0, 0)
    return head + question[12:] + b"".join(answers)


@unittest.skipIf(h.PEER, "needs --resolver")
class MisbehavingResolverTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.echo = h.EchoServer()
        cls.dns = ScriptedDns(cls.answer)
        cls.proxy = h.Proxy(["--resolver", cls.dns.addr], workers=1)

    @classmethod
    def tearDownClass(cls):
        try:
            h.check_serving(cls.proxy)
            cls.proxy.check_idle()
            cls.proxy.stop()
        finally:
            cls.proxy.kill()
            cls.dns.close()
            cls.echo.close()

    def tearDown(self):
        errors, self.dns.errors[:] = list(self.dns.errors), []
        self.assertEqual(errors, [], "the DNS server's errors")
        self.proxy.check_idle()

    @staticmethod
    def answer(name, qtype, q):
        """The script: what each test name gets (an AAAA question gets an empty NOERROR
        unless said otherwise)."""
        good = a_rr(0xC00C.to_bytes(2, "big"), "127.0.0.1")
        bad = a_rr(0xC00C.to_bytes(2, "big"), "127.0.0.2")  # nothing listens there
        empty = [(response(q), "udp")]
        if name == "fallback.test":  # ::1 first (RFC 6724), where nothing listens
            rd = [rr(0xC00C.to_bytes(2, "big"), AAAA, socket.inet_pton(socket.AF_INET6, "::1"))]
            return [(response(q, answers=rd if qtype == AAAA else [good]), "udp")]
        if qtype != A:
            return empty
        if name == "wrong-id.test":
            qid = struct.unpack("!H", q[:2])[0]
            return [(response(q, answers=[bad], qid=qid ^ 0x5555), "udp"),
                    (response(q, answers=[good]), "udp")]
        if name == "wrong-question.test":
            other = q[:12] + name_bytes("wrong-questioN.tesx") + q[-4:]
            return [(response(other, answers=[bad]), "udp"), (response(q, answers=[good]), "udp")]
        if name in ("wrong-port.test", "wrong-addr.test"):
            how = "port" if name == "wrong-port.test" else "addr"
            return [(response(q, answers=[bad]), how), (response(q, answers=[good]), "udp")]
        if name == "truncated.test":
            return [(response(q, flags=0x8380), "udp"), (response(q, answers=[good]), "tcp-only")]
        if name == "cut-short.test":
            return [(response(q, answers=[good])[:-3], "udp")]
        if name == "loop.test":  # the answer's name points at itself
            end = len(q)
            loop = struct.pack("!H", 0xC000 | end)
            return [(response(q, answers=[rr(loop, A, socket.inet_aton("127.0.0.1"))]), "udp")]
        if name == "wrong-type.test":
            return [(response(q, answers=[rr(0xC00C.to_bytes(2, "big"), 16, b"\x03txt")]),
                     "udp")]
        if name == "wrong-class.test":
            return [(response(q, answers=[rr(0xC00C.to_bytes(2, "big"), A,
                                             socket.inet_aton("127.0.0.1"), rclass=3)]), "udp")]
        if name == "cname.test":
            return [(response(q, answers=[
                rr(0xC00C.to_bytes(2, "big"), CNAME, name_bytes("step1.cname.test")),
                rr(name_bytes("step1.cname.test"), CNAME, name_bytes("step2.cname.test")),
                a_rr(name_bytes("step2.cname.test"), "127.0.0.1")]), "udp")]
        if name == "cname-ttl0.test":  # an alias of TTL 0 for a name of TTL 60
            return [(response(q, answers=[
                rr(0xC00C.to_bytes(2, "big"), CNAME, name_bytes("target.cname-ttl0.test"), 0),
                a_rr(name_bytes("target.cname-ttl0.test"), "127.0.0.1", 60)]), "udp")]
        if name == "cname-loop.test":  # cname-loop -> other -> cname-loop, no address
            other = name_bytes("other.cname-loop.test")
            return [(response(q, answers=[
                rr(0xC00C.to_bytes(2, "big"), CNAME, other),
                rr(other, CNAME, name_bytes("cname-loop.test"))]), "udp")]
        if name == "nxdomain.test":
            return [(response(q, flags=0x8183), "udp")]
        if name == "servfail.test":
            return [(response(q, flags=0x8182), "udp")]
        if name.startswith("ttl0."):
            return [(response(q, answers=[a_rr(0xC00C.to_bytes(2, "big"), "127.0.0.1", 0)]),
                     "udp")]
        if name.startswith("ttlhuge."):
            return [(response(q, answers=[a_rr(0xC00C.to_bytes(2, "big"), "127.0.0.1",
                                               0x7FFFFFFF)]), "udp")]
        if name.startswith("ttlmsb."):  # RFC 2181 8: a TTL with its top bit set means 0
            return [(response(q, answers=[a_rr(0xC00C.to_bytes(2, "big"), "127.0.0.1",
                                               0xFFFFFFFF)]), "udp")]
        if name == "late.test":
            return [(response(q, answers=[good]), "late")]
        if name.startswith("many"):
            time.sleep(0.002)
            return [(response(q, answers=[good]), "udp")]
        return [(response(q, flags=0x8183), "udp")]

    def reply_for(self, name, port=None, proxy=None):
        with h.open_client(proxy or self.proxy) as s:
            s.sendall(h.greeting() + h.request(name, port or self.echo.port))
            self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
            r = h.read_reply(s)
            if r.rep == h.REP_OK:
                self.assertEqual(h.echo_roundtrip(s, name.encode()), name.encode())
            return r

    def assert_ok(self, name):
        t0 = time.monotonic()
        r = self.reply_for(name)
        self.assertEqual((r.rep, r.host), (h.REP_OK, "127.0.0.1"), f"{name}: {r}")
        return time.monotonic() - t0

    def assert_unreachable(self, name):
        t0 = time.monotonic()
        r = self.reply_for(name)
        self.assertEqual(r.raw.hex(), h.error_reply(h.REP_HOST_UNREACH).hex(), f"{name}: {r}")
        return time.monotonic() - t0

    def test_ignored_answers_then_the_right_one(self):
        for name in ("wrong-id.test", "wrong-question.test", "wrong-port.test",
                     "wrong-addr.test"):
            with self.subTest(name=name):
                self.assertLess(self.assert_ok(name), 1.5, "the right answer was not used")

    def test_truncated_asked_again_over_tcp(self):
        """An answer with TC set (one too big for 512 bytes, as a rule) is asked again over
        TCP. Its query was never written: the TCP socket's poll waited for POLLIN alone
        when c-ares wanted POLLOUT too, and the name failed with reply 4 at the timeout."""
        self.assertLess(self.assert_ok("truncated.test"), 1.5)
        self.assertGreaterEqual(self.dns.count("truncated.test", "tcp"), 1)

    def test_cname_chain(self):
        self.assert_ok("cname.test")

    def test_malformed_and_negative_answers_host_unreachable(self):
        for name in ("cut-short.test", "loop.test", "wrong-type.test", "wrong-class.test",
                     "cname-loop.test", "nxdomain.test", "servfail.test"):
            with self.subTest(name=name):
                elapsed = self.assert_unreachable(name)
                print(f"  {name}: reply 4 after {elapsed:.2f}s", file=sys.stderr)

    def test_servfail_is_not_called_unreachable(self):
        """c-ares reports a name every server answered with SERVFAIL as it reports servers it
        could not reach ("Could not contact DNS servers"): the warning says both. A proxy of
        its own, so that no earlier warning of the class holds this one back (one per 10 s)."""
        with h.Proxy(["--resolver", self.dns.addr], workers=1) as p:
            self.assertEqual(self.reply_for("servfail.test", proxy=p).rep, h.REP_HOST_UNREACH)
            want = ("warn: resolver: no answer for servfail.test: no usable answer from the DNS"
                    " servers (none reached, or each answered SERVFAIL or REFUSED)")
            h.wait_for(lambda: any(want in x for x in p.stderr_lines()), 5 * h.SLOW,
                       what=f"a stderr line with {want!r}")

    def test_ttl_0_not_cached_huge_ttl_cached(self):
        for i in range(2):
            self.assert_ok("ttl0.test")
            self.assert_ok("ttlhuge.test")
            self.assert_ok("ttlmsb.test")
        self.assertEqual(self.dns.count("ttl0.test"), 2, "a TTL of 0 is not cached")
        self.assertEqual(self.dns.count("ttlhuge.test"), 1, "a TTL of 2^31-1 is (for 300 s)")
        self.assertEqual(self.dns.count("ttlmsb.test"), 2, "a TTL of 2^32-1 is not cached")

    def test_cname_of_ttl_0_not_cached(self):
        """The answer is good as long as every record of the chain: a CNAME of TTL 0 in front
        of an A of TTL 60 is not cached. The cache took the addresses' TTL alone, and kept
        the alias's old target for 60 s."""
        for i in range(2):
            self.assert_ok("cname-ttl0.test")
        self.assertEqual(self.dns.count("cname-ttl0.test"), 2, "asked once, then cached")

    def test_refused_address_falls_back_to_the_next(self):
        """AAAA ::1 and A 127.0.0.1, the echo server on 127.0.0.1 only: whichever comes
        first, the relay reaches it (ms, not a timeout)."""
        self.assertLess(self.assert_ok("fallback.test"), 1.0)

    def test_answer_after_the_connect_timeout(self):
        """--connect-timeout 1, the answer 1.5 s late: reply 6 at 1 s, the late answer is
        dropped (the slot may have a new tenant by then) but cached: the next client for
        the name is served at once."""
        with h.Proxy(["--resolver", self.dns.addr, "--connect-timeout", "1"], workers=1) as p:
            with h.open_client(p) as s:
                t0 = time.monotonic()
                s.sendall(h.greeting() + h.request("late.test", self.echo.port))
                self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
                data, _ = h.read_to_close(s, timeout=5 * h.SLOW)
                self.assertEqual(data.hex(), h.error_reply(h.REP_TTL).hex())
                self.assertLess(time.monotonic() - t0, 1.4)
            s2 = h.open_client(p)  # takes the slot while the answer is on its way
            self.assertTrue(self.dns.late_sent.wait(5), "the late answer was not sent")
            time.sleep(0.2)  # the proxy reads it (a loopback datagram: well within this)
            s2.close()
            t0 = time.monotonic()
            s, r = h.socks_connect(p, "late.test", self.echo.port)
            s.close()
            self.assertLess(time.monotonic() - t0, 0.5)
            self.assertEqual(self.dns.count("late.test"), 1, "the late answer was not cached")

    def test_many_names_in_flight(self):
        errors = h.run_clients(lambda i: self.assert_ok(f"many{i}.test"), 100, 30 * h.SLOW)
        self.assertEqual(errors, [])


if __name__ == "__main__":
    h.main()
