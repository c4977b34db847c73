"""UDP ASSOCIATE (RFC 1928 section 7): the reply and every datagram byte for byte; destinations
on 127.0.0.1 and ::1 addressed by IPv4, IPv6 and name; a DNS query through the association;
FRAG != 0 dropped; datagrams from addresses the client never contacted (or not from the client)
not delivered; the announced client port enforced; the association ends with its TCP connection
and after --udp-idle-timeout; 1000 associations at once leave no descriptor behind; and UDP
through ringsocks as a forwarder (in front of ringsocks and of Dante) and through
`ringsocks tunnel -U`."""

import os
import re
import select
import signal
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chain as c  # noqa: E402
import harness as h  # noqa: E402

SHORT = 0.5  # how long "nothing arrives" is watched for


def udp_header(host, port, frag=0):
    return bytes([0, 0, frag]) + h.encode_addr(host) + struct.pack("!H", port)


def reply_bytes(host, port, rep=h.REP_OK):
    return bytes([h.VER, rep, 0]) + h.encode_addr(host) + struct.pack("!H", port)


def all_fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def udp_sender():
    """A UDP socket of a local sender (tunnel -U's client): bound on 127.0.0.1, 5 s timeout."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5 * h.SLOW)
    return s


class UdpEcho:
    """Echoes every datagram to its sender, on 127.0.0.1 and ::1 (same port number). .got lists
    (sender, data) of everything received."""

    def __init__(self, hosts=("127.0.0.1", "::1")):
        self.socks = []
        for _ in range(50):
            try:
                port = 0
                for host in hosts:
                    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                      socket.SOCK_DGRAM)
                    self.socks.append(s)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                    s.bind((host, port))
                    port = s.getsockname()[1]
                break
            except OSError:
                for s in self.socks:
                    s.close()
                self.socks = []
        self.port = self.socks[0].getsockname()[1]
        self.got = []
        self.lock = threading.Lock()
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True, name="udp-echo")
        self.thread.start()

    def _run(self):
        while not self._stop:
            r, _, _ = select.select(self.socks, [], [], 0.1)
            for s in r:
                try:
                    data, addr = s.recvfrom(65535)
                except OSError:
                    continue
                with self.lock:
                    self.got.append((addr[:2], data))
                try:
                    s.sendto(data, addr)
                except OSError:
                    pass

    def received(self, data):
        with self.lock:
            return [a for a, d in self.got if d == data]

    def close(self):
        self._stop = True
        self.thread.join(5)
        for s in self.socks:
            s.close()


class Assoc:
    """A UDP association through proxy: the TCP control connection (.tcp), the reply (.reply),
    the relay address (.relay) and our UDP socket (.udp, bound to udp_host)."""

    def __init__(self, proxy, dst=("0.0.0.0", 0), udp_host="127.0.0.1", udp_sock=None):
        self.tcp = h.open_client(proxy)
        self.cport = self.tcp.getsockname()[1]  # names the session in the proxy's log
        self.udp = None
        try:
            self.tcp.sendall(h.greeting() + h.request(dst[0], dst[1], cmd=h.CMD_UDP))
            got = h.recv_exact(self.tcp, 2)
            if got != b"\x05\x00":
                raise AssertionError(f"method selection {got.hex()}")
            self.reply = h.read_reply(self.tcp)
            if self.reply.rep != h.REP_OK:
                raise AssertionError(f"UDP ASSOCIATE failed: {self.reply}")
            self.relay = (self.reply.host, self.reply.port)
            if udp_sock is None:
                udp_sock = socket.socket(socket.AF_INET6 if ":" in udp_host else socket.AF_INET,
                                         socket.SOCK_DGRAM)
                udp_sock.bind((udp_host, 0))
            self.udp = udp_sock
            self.udp.settimeout(5 * h.SLOW)
        except BaseException:
            self.close()
            raise

    def send(self, host, port, payload, frag=0):
        self.udp.sendto(udp_header(host, port, frag) + payload, self.relay)

    def recv(self, timeout=None):
        """The next datagram from the relay (raw, header included)."""
        self.udp.settimeout(timeout or 5 * h.SLOW)
        while True:
            data, src = self.udp.recvfrom(65535)
            if src[:2] == self.relay:
                return data

    def nothing(self, timeout=SHORT):
        """Assert that no datagram arrives within timeout."""
        self.udp.settimeout(timeout)
        try:
            data, src = self.udp.recvfrom(65535)
        except socket.timeout:
            return
        raise AssertionError(f"unexpected datagram from {src}: {data[:64].hex()}")

    def close(self):
        if self.udp is not None:
            self.udp.close()
        self.tcp.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@h.ringsocks_only
class UdpTest(h.EchoProxyTestCase):
    @classmethod
    def make_echo(cls):
        return UdpEcho()

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.dns.add("echo4.udp.test", a=["127.0.0.1"])
        cls.dns.add("echo6.udp.test", aaaa=["::1"])
        cls.dns.add("answer.udp.test", a=["10.1.2.3"], aaaa=["2001:db8::7"])

    def session_line(self, a, pattern):
        """The -v session line of association a (logged once its TCP connection closed)."""
        port = a.cport
        a.close()
        return c.wait_log(self.proxy, rf"client=127\.0\.0\.1:{port} .*{pattern}")

    def test_reply_and_ipv4_datagram_byte_for_byte(self):
        with Assoc(self.proxy) as a:
            # the relay sits where the client reached the proxy
            self.assertEqual(a.reply.raw.hex(), reply_bytes("127.0.0.1", a.reply.port).hex())
            self.assertNotEqual(a.reply.port, 0)
            a.send("127.0.0.1", self.echo.port, b"hello over udp")
            got = a.recv()
            self.assertEqual(got.hex(), (udp_header("127.0.0.1", self.echo.port)
                                         + b"hello over udp").hex())
            # the destination saw the payload alone, from the proxy's own socket
            (src,) = self.echo.received(b"hello over udp")
            self.assertEqual(src[0], "127.0.0.1")
            self.assertNotEqual(src[1], a.reply.port)
        self.session_line(a, r"dst=0\.0\.0\.0:0 result=succeeded .*udp_in=1 udp_out=1 "
                             r"udp_dropped=0")

    def test_ipv6_destination(self):
        with Assoc(self.proxy) as a:
            a.send("::1", self.echo.port, b"to ::1")
            self.assertEqual(a.recv().hex(), (udp_header("::1", self.echo.port)
                                              + b"to ::1").hex())
            # both families from one association
            a.send("127.0.0.1", self.echo.port, b"and to 127.0.0.1")
            self.assertEqual(a.recv().hex(), (udp_header("127.0.0.1", self.echo.port)
                                              + b"and to 127.0.0.1").hex())

    def test_ipv4_mapped_destination(self):
        """::ffff:127.0.0.1 is 127.0.0.1: the relay's IPv6 socket is IPv6-only and could
        not send to it, so such datagrams were dropped. The answer comes from 127.0.0.1."""
        with Assoc(self.proxy) as a:
            a.send("::ffff:127.0.0.1", self.echo.port, b"mapped")
            self.assertEqual(a.recv().hex(), (udp_header("127.0.0.1", self.echo.port)
                                              + b"mapped").hex())

    def test_the_first_datagram_fixes_the_clients_port(self):
        """The request named no port: the first datagram from the client's address fixes
        it. Every port of that address used to be the client, the association's own outgoing
        socket included (it has the client's address when the client is on this host): a
        datagram addressed to the relay, whose payload was addressed to that socket, went
        round 6550 times (each round 10 bytes longer) and held the worker meanwhile."""
        with Assoc(self.proxy) as a:
            peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            peer.bind(("127.0.0.1", 0))
            peer.settimeout(5 * h.SLOW)
            with peer:
                a.send("127.0.0.1", peer.getsockname()[1], b"hi")
                data, out = peer.recvfrom(100)  # out: the association's outgoing socket
                self.assertEqual(data, b"hi")
                a.send("127.0.0.1", a.relay[1], udp_header("127.0.0.1", out[1]) + b"x")
                # another port of the client's address is not the client any more
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
                    other.bind(("127.0.0.1", 0))
                    other.sendto(udp_header("127.0.0.1", peer.getsockname()[1]) + b"stranger",
                                 a.relay)
                    with self.assertRaises(socket.timeout):
                        peer.settimeout(SHORT)
                        peer.recvfrom(100)
                a.send("127.0.0.1", self.echo.port, b"still works")
                self.assertEqual(a.recv()[-11:], b"still works")
        line = self.session_line(a, r"udp_in=")[0]
        out_count = int(re.search(r"udp_out=(\d+)", line).group(1))
        self.assertLessEqual(out_count, 2, line)

    def test_destination_by_name(self):
        with Assoc(self.proxy) as a:
            for name, ip in (("echo4.udp.test", "127.0.0.1"), ("echo6.udp.test", "::1"),
                             ("localhost", "127.0.0.1")):
                payload = f"by name {name}".encode()
                a.send(name, self.echo.port, payload)
                # the answer carries the address it came from
                self.assertEqual(a.recv().hex(),
                                 (udp_header(ip, self.echo.port) + payload).hex(), name)

    def test_name_with_an_ipv4_mapped_address(self):
        """A name whose only address is an AAAA ::ffff:127.0.0.1 is 127.0.0.1: the IPv6
        socket toward destinations is IPv6-only, and such datagrams were dropped."""
        self.dns.add("mapped.udp.test", aaaa=["::ffff:127.0.0.1"])
        with Assoc(self.proxy) as a:
            a.send("mapped.udp.test", self.echo.port, b"mapped name")
            self.assertEqual(a.recv().hex(), (udp_header("127.0.0.1", self.echo.port)
                                              + b"mapped name").hex())

    def test_unresolvable_name_is_dropped(self):
        with Assoc(self.proxy) as a:
            a.send("nxdomain.udp.test", self.echo.port, b"lost")
            a.nothing()
            a.send("127.0.0.1", self.echo.port, b"still works")
            self.assertTrue(a.recv().endswith(b"still works"))
        self.session_line(a, r"udp_in=1 udp_out=1 udp_dropped=1")

    def test_few_datagrams_wait_for_a_slow_name(self):
        self.dns.add("slow.udp.test", a=["127.0.0.1"], delay=1.0)
        with Assoc(self.proxy) as a:
            for i in range(10):
                a.send("slow.udp.test", self.echo.port, b"slow %d" % i)
            answers = sorted(a.recv(timeout=10 * h.SLOW) for _ in range(4))
            a.nothing(timeout=1.0)
            # the first four waited for the answer; the rest were dropped
            self.assertEqual(answers, sorted(udp_header("127.0.0.1", self.echo.port)
                                             + b"slow %d" % i for i in range(4)))
            self.assertEqual(self.dns.count("slow.udp.test", h.QTYPE_A), 1)
        self.session_line(a, r"udp_in=4 udp_out=4 udp_dropped=6")

    def test_dns_query_through_the_association(self):
        with Assoc(self.proxy) as a:
            before = self.dns.count("answer.udp.test")
            q = h.dns_build_query("answer.udp.test", h.QTYPE_A, qid=0x1234)
            a.send(self.dns.host, self.dns.port, q)
            got = a.recv()
            head = udp_header(self.dns.host, self.dns.port)
            self.assertEqual(got[:len(head)].hex(), head.hex())
            qid, rcode, answers = h.dns_parse_response(got[len(head):])
            self.assertEqual((qid, rcode, answers), (0x1234, 0, [("A", "10.1.2.3")]))
            self.assertEqual(self.dns.count("answer.udp.test"), before + 1)

    def test_fragments_are_dropped(self):
        with Assoc(self.proxy) as a:
            a.send("127.0.0.1", self.echo.port, b"fragment 1", frag=1)
            a.send("127.0.0.1", self.echo.port, b"last fragment", frag=0x81)
            a.nothing()
            self.assertEqual(self.echo.received(b"fragment 1"), [])
            self.assertEqual(self.echo.received(b"last fragment"), [])
            a.send("127.0.0.1", self.echo.port, b"whole")
            self.assertTrue(a.recv().endswith(b"whole"))
        self.session_line(a, r"udp_in=1 udp_out=1 udp_dropped=2")

    def test_malformed_headers_are_dropped(self):
        with Assoc(self.proxy) as a:
            for bad in (b"\x00\x00", b"\x01\x00\x00\x01\x7f\x00\x00\x01\x00\x07x",
                        b"\x00\x00\x00\x09abc", b"\x00\x00\x00\x03\x00\x00\x07x",
                        b"\x00\x00\x00\x01\x7f\x00\x00\x01\x00\x00port zero"):
                a.udp.sendto(bad, a.relay)
            a.nothing()
            a.send("127.0.0.1", self.echo.port, b"fine")
            self.assertTrue(a.recv().endswith(b"fine"))
        self.session_line(a, r"udp_in=1 udp_out=1 udp_dropped=5")

    def test_large_datagrams(self):
        with Assoc(self.proxy) as a:
            for n in (0, 1, 1472, 9000, 65000):
                payload = os.urandom(n)
                a.send("127.0.0.1", self.echo.port, payload)
                self.assertEqual(a.recv(), udp_header("127.0.0.1", self.echo.port) + payload,
                                 f"{n} bytes")

    def test_no_reflection_from_uncontacted_sources(self):
        with Assoc(self.proxy) as a, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            stranger.bind(("127.0.0.2", 0))
            other.bind(("127.0.0.1", 0))
            a.send("127.0.0.1", self.echo.port, b"contact")
            self.assertTrue(a.recv().endswith(b"contact"))
            (out_addr,) = self.echo.received(b"contact")  # the proxy's socket toward it
            # someone the client never sent to, at the proxy's outgoing socket: not delivered
            stranger.sendto(b"unsolicited", out_addr)
            # the contacted host, but from another port: not delivered either
            other.sendto(b"other port", out_addr)
            # a datagram to the relay port, but not from the client: not relayed anywhere
            stranger.sendto(udp_header("127.0.0.1", self.echo.port) + b"not the client",
                            a.relay)
            a.nothing()
            time.sleep(0.1)
            self.assertEqual(self.echo.received(b"not the client"), [])
            a.send("127.0.0.1", self.echo.port, b"contact again")
            self.assertTrue(a.recv().endswith(b"contact again"))
        self.session_line(a, r"udp_in=2 udp_out=2 udp_dropped=3")

    def test_announced_client_port_is_enforced(self):
        mine = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        mine.bind(("127.0.0.1", 0))
        with Assoc(self.proxy, dst=("127.0.0.1", mine.getsockname()[1]), udp_sock=mine) as a, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.bind(("127.0.0.1", 0))
            other.sendto(udp_header("127.0.0.1", self.echo.port) + b"wrong port", a.relay)
            time.sleep(SHORT)
            self.assertEqual(self.echo.received(b"wrong port"), [])
            a.send("127.0.0.1", self.echo.port, b"announced port")
            self.assertTrue(a.recv().endswith(b"announced port"))

    def test_closing_tcp_ends_the_association(self):
        before = c.settled_socket_count(self.proxy)
        a = Assoc(self.proxy)
        a.send("127.0.0.1", self.echo.port, b"alive")
        self.assertTrue(a.recv().endswith(b"alive"))
        a.tcp.close()
        # the relay port goes away: a datagram to it now draws an ICMP port unreachable
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.connect(a.relay)

        def refused():
            try:
                probe.send(udp_header("127.0.0.1", self.echo.port) + b"after close")
                probe.settimeout(0.2)
                probe.recv(100)
            except ConnectionRefusedError:
                return True
            except socket.timeout:
                pass
            return False

        h.wait_for(refused, 5 * h.SLOW, what="the relay port to close")
        probe.close()
        a.udp.close()
        self.assertEqual(self.echo.received(b"after close"), [])
        h.wait_for(lambda: h.socket_count(self.proxy.pid) <= before, 5 * h.SLOW,
                   what=f"sockets back to {before}")

    def test_client_data_on_the_tcp_connection_is_ignored(self):
        with Assoc(self.proxy) as a:
            a.tcp.sendall(b"junk on the control connection")
            a.send("127.0.0.1", self.echo.port, b"still relayed")
            self.assertTrue(a.recv().endswith(b"still relayed"))

    def test_datagrams_waiting_for_names_cannot_hold_every_buffer(self):
        """Datagrams waiting for a slow name keep their buffers, at most 4 an association and
        64 a worker (a quarter of its 256); past that they are dropped. 160 associations
        sending 4 datagrams each for a name that takes 1.5 s used to hold every buffer of
        both workers: all UDP of the proxy stopped until the name resolved, and a resolver
        that never answers kept it stopped for as long as the queries took to fail, again
        and again. Now a datagram to an address goes through at once meanwhile, and the
        held ones are delivered once the name resolves."""
        self.dns.add("slow-many.udp.test", a=["127.0.0.1"], delay=1.5)
        assocs = []
        try:
            for i in range(160):
                assocs.append(Assoc(self.proxy))
            t0 = time.monotonic()
            for i, a in enumerate(assocs):
                for k in range(4):  # 640 datagrams, more than 2 workers x 64 may hold
                    a.send("slow-many.udp.test", self.echo.port, b"slow %d.%d" % (i, k))
            time.sleep(0.2)
            for probe in (assocs[0], assocs[-1]):  # whichever worker has them
                probe.send("127.0.0.1", self.echo.port, b"probe")
                while True:
                    d = probe.recv(timeout=1.0 * h.SLOW)
                    if d.endswith(b"probe"):
                        break
                self.assertLess(time.monotonic() - t0, 1.4, "the probe waited for the name")
            held, socks = 0, {a.udp: a for a in assocs}
            deadline = time.monotonic() + 10 * h.SLOW
            while time.monotonic() < deadline:  # until quiet for 1 s after the first
                ready, _, _ = select.select(list(socks), [], [], 1.0 if held else 5 * h.SLOW)
                if not ready:
                    break
                for u in ready:
                    d, src = u.recvfrom(65535)
                    if src[:2] == socks[u].relay and b"slow" in d:
                        held += 1
            self.assertGreater(time.monotonic() - t0, 1.0, "the name was slow")
            self.assertGreaterEqual(held, 64, "the held datagrams were delivered")
            self.assertLessEqual(held, 2 * 64, "more datagrams waited than a worker may hold")
        finally:
            for a in assocs:
                a.close()

    def test_many_associations_at_once(self):
        c.settled_socket_count(self.proxy)
        before = all_fd_count(self.proxy.pid)  # every descriptor: sockets, pipes, anything
        n = 1000
        tcps, udps, relays = [], [], []
        try:
            for i in range(n):
                s = h.open_client(self.proxy)
                tcps.append(s)
                s.sendall(h.greeting() + h.request("0.0.0.0", 0, cmd=h.CMD_UDP))
            for s in tcps:
                self.assertEqual(h.recv_exact(s, 2), b"\x05\x00")
                r = h.read_reply(s)
                self.assertEqual(r.rep, h.REP_OK)
                relays.append((r.host, r.port))
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.bind(("127.0.0.1", 0))
                u.setblocking(False)
                udps.append(u)
            self.assertEqual(len(set(relays)), n, "one relay port per association")
            pending = {}
            for i, (u, relay) in enumerate(zip(udps, relays)):
                pending[u] = udp_header("127.0.0.1", self.echo.port) + b"association %d" % i
                u.sendto(pending[u], relay)
            poller = select.poll()
            by_fd = {u.fileno(): u for u in udps}
            for u in udps:
                poller.register(u, select.POLLIN)
            deadline = time.monotonic() + 30 * h.SLOW
            resent = time.monotonic()
            while pending and time.monotonic() < deadline:
                for fd, _ev in poller.poll(500):
                    u = by_fd[fd]
                    data = u.recv(65535)
                    if data == pending.get(u):
                        del pending[u]
                        poller.unregister(u)
                if pending and time.monotonic() - resent > 2:
                    # datagrams may be lost under load: ask again
                    for u, d in pending.items():
                        u.sendto(d, relays[udps.index(u)])
                    resent = time.monotonic()
            self.assertEqual(len(pending), 0, f"{len(pending)} associations got no answer")
            # the TCP connection, the relay socket and the socket toward 127.0.0.1 (less a few:
            # the resolver may have closed the sockets of an earlier test's queries meanwhile)
            self.assertGreaterEqual(all_fd_count(self.proxy.pid), before + 3 * n - 8)
        finally:
            for s in tcps:
                s.close()
            for u in udps:
                u.close()
        h.wait_for(lambda: all_fd_count(self.proxy.pid) <= before, 20 * h.SLOW,
                   what=f"descriptors back to {before}")


@h.ringsocks_only
class UdpIPv6ClientTest(h.EchoProxyTestCase):
    """A client that reached the proxy over IPv6 gets an IPv6 relay."""

    @classmethod
    def make_echo(cls):
        return UdpEcho()

    def test_ipv6_relay(self):
        p = h.Proxy(["--resolver", self.dns.addr], host="::1")
        try:
            with Assoc(p, udp_host="::1") as a:
                self.assertEqual(a.reply.raw.hex(), reply_bytes("::1", a.reply.port).hex())
                a.send("::1", self.echo.port, b"v6 to v6")
                self.assertEqual(a.recv(), udp_header("::1", self.echo.port) + b"v6 to v6")
                a.send("127.0.0.1", self.echo.port, b"v6 to v4")
                self.assertEqual(a.recv(), udp_header("127.0.0.1", self.echo.port) + b"v6 to v4")
        finally:
            p.stop()


@h.ringsocks_only
class UdpStarvedTest(h.EchoProxyTestCase):
    """The worker's datagram ring running dry (-ENOBUFS): the sockets whose multishot recv ended
    for want of a buffer stop reading, their datagrams wait in the socket, and they read again
    once a few buffers (an eighth of the ring) are back. Nothing else reaches this path since
    datagrams waiting for names hold at most a quarter of the ring: here the proxy is stopped
    (SIGSTOP) while 16 associations queue about 2000 datagrams in its sockets, so that once it
    runs again its recvs take all 256 buffers before the first send has given one back."""

    workers = 1  # one ring of 256 buffers
    ASSOCS, BURST = 16, 128

    @classmethod
    def make_echo(cls):
        return UdpEcho(hosts=("127.0.0.1",))

    def bufs_lent(self):
        return self.proxy.stats()[0]["udp_bufs_lent"]

    def test_a_dry_ring_stops_reading_and_every_socket_reads_again(self):
        assocs = []
        try:
            for i in range(self.ASSOCS):
                a = Assoc(self.proxy)
                assocs.append(a)
                a.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                a.send("127.0.0.1", self.echo.port, b"first %d" % i)  # fixes the client port
                self.assertTrue(a.recv().endswith(b"first %d" % i))
            self.assertEqual(self.bufs_lent(), 0)
            self.assertFalse(c.log_lines(self.proxy, r"ran out of datagram buffers"))
            os.kill(self.proxy.pid, signal.SIGSTOP)
            try:
                for k in range(self.BURST):
                    for i, a in enumerate(assocs):
                        a.send("127.0.0.1", self.echo.port, b"burst %d.%d" % (i, k))
                time.sleep(0.1)
            finally:
                os.kill(self.proxy.pid, signal.SIGCONT)
            c.wait_log(self.proxy, r"UDP: worker 0 ran out of datagram buffers; reading "
                                   r"resumes as they return")
            answered = {a.udp: 0 for a in assocs}
            socks = {a.udp: a for a in assocs}
            while True:  # until quiet for 1 s
                ready, _, _ = select.select(list(socks), [], [], 1.0 * h.SLOW)
                if not ready:
                    break
                for u in ready:
                    d, src = u.recvfrom(65535)
                    if src[:2] == socks[u].relay and b"burst" in d:
                        answered[u] += 1
            # more datagrams went through than the ring holds: reading went on after it ran dry
            total = sum(answered.values())
            self.assertGreater(total, 2 * 256, f"answers per association: "
                                               f"{list(answered.values())}")
            # every association reads again, the starved ones included
            for i, a in enumerate(assocs):
                a.send("127.0.0.1", self.echo.port, b"after %d" % i)
                while not a.recv().endswith(b"after %d" % i):
                    pass
            # every buffer is back in the ring while the associations are still open
            h.wait_for(lambda: self.bufs_lent() == 0, 5 * h.SLOW, what="every buffer back")
        finally:
            for a in assocs:
                a.close()


@h.ringsocks_only
class UdpDescriptorLimitTest(unittest.TestCase):
    """Under a low RLIMIT_NOFILE a UDP association takes room for two connections: it holds up
    to four descriptors (its TCP connection, the client's UDP socket, one toward IPv4 and one
    toward IPv6 destinations), where the connection slots were sized for two each. A proxy full
    of associations used to say yes to twice as many as it had descriptors for, and then drop
    their datagrams when the socket toward a destination could not be opened (EMFILE); now the
    association the descriptors are not there for is refused at once with reply 1, and TCP
    clients count the associations' second pair too."""

    NOFILE = 128  # room for (128 - 32) / 2 = 48 connections: 24 associations

    @classmethod
    def setUpClass(cls):
        cls.echo = UdpEcho()
        cls.dns = h.DnsServer()
        try:
            cls.proxy = h.Proxy(["--resolver", cls.dns.addr, "--pipes", "0"], workers=1,
                                nofile=cls.NOFILE)
        except BaseException:
            cls.dns.close()
            cls.echo.close()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            cls.proxy.check_idle()
            cls.proxy.stop()
        finally:
            cls.dns.close()
            cls.echo.close()

    def relays_both_families(self, a, tag):
        for host in ("127.0.0.1", "::1"):
            a.send(host, self.echo.port, tag)
            self.assertEqual(a.recv(), udp_header(host, self.echo.port) + tag)

    def test_an_association_without_its_descriptors_is_refused(self):
        p = self.proxy
        c.wait_log(p, r"descriptor limit 128: room for 48 connections, a UDP association "
                      r"counting as two")
        p.wait_live(0)  # the start-up probe's connection is gone
        assocs, conns = [], []
        with h.EchoServer() as tcp_echo:
            try:
                for i in range(23):  # 46 of the 48
                    assocs.append(Assoc(p))
                    self.relays_both_families(assocs[-1], b"assoc %d" % i)
                conns.append(h.socks_connect(p, "127.0.0.1", tcp_echo.port)[0])  # 47
                self.assertLessEqual(all_fd_count(p.pid), self.NOFILE)
                # a client is let in (48), but its association would need a 49th: reply 1 at
                # once, no relay port
                with h.open_client(p) as s:
                    s.sendall(h.greeting() + h.request("0.0.0.0", 0, cmd=h.CMD_UDP))
                    data, _ = h.read_to_close(s, timeout=5 * h.SLOW)
                    self.assertEqual(data.hex(), "0500" + h.error_reply(h.REP_FAIL).hex())
                c.wait_log(p, r"warn: UDP ASSOCIATE refused: the descriptor limit leaves room"
                              r" for 48 connections")
                p.wait_live(24)
                # a TCP client takes the 48th; the next one is closed at once, no bytes
                conns.append(h.socks_connect(p, "127.0.0.1", tcp_echo.port)[0])
                with socket.create_connection(p.addr, timeout=5 * h.SLOW) as s:
                    data, _ = h.read_to_close(s, timeout=5 * h.SLOW)
                    self.assertEqual(data, b"")
                c.wait_log(p, r"warn: refusing clients: the descriptor limit leaves room for "
                              r"48 connections")
                # what was let in has every socket it needs
                for i, a in enumerate(assocs):
                    self.relays_both_families(a, b"still %d" % i)
                for k, s in enumerate(conns):
                    self.assertEqual(h.echo_roundtrip(s, b"tcp %d" % k), b"tcp %d" % k)
                # the TCP clients leave: their room goes to an association
                for s in conns:
                    s.close()
                conns = []
                p.wait_live(23)
                assocs.append(Assoc(p))
                self.relays_both_families(assocs[-1], b"the 24th")
                self.assertFalse(c.log_lines(p, r"cannot open a socket|Too many open files"))
            finally:
                for a in assocs:
                    a.close()
                for s in conns:
                    s.close()
        p.wait_live(0)
        h.check_serving(p)


@h.ringsocks_only
class UdpIdleTest(h.EchoProxyTestCase):
    proxy_args = ("--udp-idle-timeout", "1")

    @classmethod
    def make_echo(cls):
        return UdpEcho()

    def test_idle_association_ends(self):
        with Assoc(self.proxy) as a:
            t0 = time.monotonic()
            data, how = h.read_to_close(a.tcp, timeout=10 * h.SLOW)
            elapsed = time.monotonic() - t0
            self.assertEqual(data, b"")
            self.assertGreater(elapsed, 0.8)
            self.assertLess(elapsed, 4 * h.SLOW)
        c.wait_log(self.proxy, r"result=succeeded reason=idle .*udp_in=0 udp_out=0")

    def test_traffic_keeps_it_alive(self):
        with Assoc(self.proxy) as a:
            t_end = time.monotonic() + 2.5
            while time.monotonic() < t_end:
                a.send("127.0.0.1", self.echo.port, b"keepalive")
                self.assertTrue(a.recv().endswith(b"keepalive"))
                time.sleep(0.3)
            data, how = h.read_to_close(a.tcp, timeout=10 * h.SLOW)
            self.assertEqual(data, b"")


@h.ringsocks_only
class UdpThroughUpstreamsTest(unittest.TestCase):
    """ringsocks as a forwarder in front of ringsocks and of Dante, and `ringsocks tunnel -U`
    through both: datagrams reach the echo server and the answers come back."""

    @classmethod
    def setUpClass(cls):
        cls.procs = []
        cls.echo = UdpEcho()
        try:
            cls.direct = h.Proxy()
            cls.procs.append(cls.direct)
            cls.dante = c.DanteAll()
            cls.procs.append(cls.dante)
            cls.f_rs = c.forwarder([cls.direct])
            cls.procs.append(cls.f_rs)
            cls.f_dante = c.forwarder([cls.dante])
            cls.procs.append(cls.f_dante)
            cls.t_rs = UdpTunnel(("127.0.0.1", cls.echo.port), cls.direct)
            cls.procs.append(cls.t_rs)
            cls.t_dante = UdpTunnel(("127.0.0.1", cls.echo.port), cls.dante)
            cls.procs.append(cls.t_dante)
            cls.t_idle = UdpTunnel(("127.0.0.1", cls.echo.port), cls.direct,
                                   args=["--udp-idle-timeout", "1"])
            cls.procs.append(cls.t_idle)
            cls.t_max = UdpTunnel(("127.0.0.1", cls.echo.port), cls.direct,
                                  args=["--udp-idle-timeout", "1", "--max-conns", "1"])
            cls.procs.append(cls.t_max)
        except BaseException:
            for p in cls.procs:
                p.kill()
            cls.echo.close()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            c.stop_all(reversed(cls.procs))
        finally:
            cls.echo.close()

    def check_forwarder(self, fwd, upstream_relay_host="127.0.0.1"):
        with Assoc(fwd) as a:
            # the reply names the forwarder's own relay socket
            self.assertEqual(a.reply.raw.hex(), reply_bytes("127.0.0.1", a.reply.port).hex())
            for host in ("127.0.0.1",):
                payload = b"through the forwarder to " + host.encode()
                a.send(host, self.echo.port, payload)
                self.assertEqual(a.recv(), udp_header(host, self.echo.port) + payload)
            big = os.urandom(30000)
            a.send("127.0.0.1", self.echo.port, big)
            self.assertEqual(a.recv(), udp_header("127.0.0.1", self.echo.port) + big)
        port = a.cport
        c.wait_log(fwd, rf"client=127\.0\.0\.1:{port} .*udp_in=2 udp_out=2 udp_dropped=0")

    def test_forwarder_to_ringsocks(self):
        self.check_forwarder(self.f_rs)
        with Assoc(self.f_rs) as a:
            a.send("::1", self.echo.port, b"v6 behind the upstream")
            self.assertEqual(a.recv(), udp_header("::1", self.echo.port) + b"v6 behind the upstream")

    def test_forwarder_to_dante(self):
        self.check_forwarder(self.f_dante)

    def test_forwarder_association_ends_with_the_client(self):
        before = c.settled_socket_count(self.f_rs)
        a = Assoc(self.f_rs)
        a.send("127.0.0.1", self.echo.port, b"x")
        self.assertTrue(a.recv().endswith(b"x"))
        a.close()
        h.wait_for(lambda: h.socket_count(self.f_rs.pid) <= before, 5 * h.SLOW,
                   what=f"sockets back to {before}")

    def check_tunnel(self, t):
        with udp_sender() as s1, udp_sender() as s2:
            # the first datagrams wait while the association is set up
            s1.sendto(b"first from s1", t.addr)
            s2.sendto(b"first from s2", t.addr)
            self.assertEqual(s1.recvfrom(65535), (b"first from s1", t.addr))
            self.assertEqual(s2.recvfrom(65535), (b"first from s2", t.addr))
            for i in range(20):
                s1.sendto(b"s1 %d" % i, t.addr)
                self.assertEqual(s1.recv(65535), b"s1 %d" % i)
            big = os.urandom(20000)
            s2.sendto(big, t.addr)
            self.assertEqual(s2.recv(65535), big)

    def test_tunnel_u_through_ringsocks(self):
        self.check_tunnel(self.t_rs)

    def test_tunnel_u_through_dante(self):
        self.check_tunnel(self.t_dante)

    def test_tunnel_u_session_ends_when_idle_and_comes_back(self):
        with udp_sender() as s:
            s.sendto(b"one", self.t_idle.addr)
            self.assertEqual(s.recv(100), b"one")
            sender = rf"client=127\.0\.0\.1:{s.getsockname()[1]} "
            c.wait_log(self.t_idle, sender + r".*reason=idle .*udp_in=1 udp_out=1", timeout=5)
            # a new association for the same sender
            s.sendto(b"two", self.t_idle.addr)
            self.assertEqual(s.recv(100), b"two")
            h.wait_for(lambda: len(c.log_lines(self.t_idle, sender)) == 2, 5 * h.SLOW,
                       what="the second session's line")
        # every session counted (as accepted), every slot and buffer back
        self.t_idle.check_idle()

    def test_tunnel_u_senders_past_max_conns_are_warned_of(self):
        """A sender past --max-conns gets no session and its datagrams are dropped: that
        used to go unsaid (a TCP client refused so is warned of), so tunnel -U looked
        broken. Once the first sender's session ends, the second one gets its own."""
        t = self.t_max
        with udp_sender() as s1, udp_sender() as s2:
            s1.sendto(b"first", t.addr)
            self.assertEqual(s1.recv(100), b"first")
            s2.sendto(b"second", t.addr)
            c.wait_log(t, r"warn: tunnel -U: dropping datagrams of new senders: --max-conns 1 "
                          r"reached")
            self.assertEqual(self.echo.received(b"second"), [])
            c.wait_log(t, rf"client=127\.0\.0\.1:{s1.getsockname()[1]} .*reason=idle",
                       timeout=5 * h.SLOW)
            s2.sendto(b"third", t.addr)
            self.assertEqual(s2.recv(100), b"third")
        t.check_idle()  # the refused sender counted as a refused TCP client is

    def test_tunnel_u_on_a_wildcard_address_answers_from_where_it_was_reached(self):
        """On 0.0.0.0 (or ::) the answers left from the address the routing chose, not the
        one the sender sent to: one sent to 127.0.0.2 was answered from 127.0.0.1, and a
        connected socket (as resolvers use) never saw an answer."""
        for bind, dests in (("0.0.0.0", ("127.0.0.2", "127.0.0.1")), ("::", ("::1",))):
            t = UdpTunnel(("127.0.0.1", self.echo.port), self.direct, bind=bind)
            try:
                for dst in dests:
                    with socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET,
                                       socket.SOCK_DGRAM) as s:
                        s.settimeout(5 * h.SLOW)
                        s.connect((dst, t.port))
                        s.send(b"to " + dst.encode())
                        self.assertEqual(s.recv(100), b"to " + dst.encode())
            finally:
                t.stop()


@h.ringsocks_only
class UdpMappedRelayTest(unittest.TestCase):
    """An upstream on a dual-stack socket names its relay as an IPv4-mapped address
    (::ffff:127.0.0.1). The forwarder and tunnel -U sent to it from their IPv6-only socket,
    which cannot reach it: every datagram was dropped. Here the test plays the upstream (a
    FakeUpstream naming the test's own UDP socket as its relay) and answers each datagram."""

    def setUp(self):
        self.relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.relay.bind(("127.0.0.1", 0))
        self.relay.settimeout(5 * h.SLOW)
        self.fake = c.FakeUpstream(replies=[c.reply_bytes(0, "::ffff:127.0.0.1",
                                                          self.relay.getsockname()[1])])
        self.procs = []

    def tearDown(self):
        try:
            c.stop_all(self.procs)
        finally:
            self.fake.close()
            self.relay.close()

    def answer(self, expect, reply):
        """Receive expect at the relay (from 127.0.0.1), send reply back to its sender."""
        data, src = self.relay.recvfrom(65535)
        self.assertEqual((data.hex(), src[0]), (expect.hex(), "127.0.0.1"))
        self.relay.sendto(reply, src)

    def test_forwarder(self):
        fwd = h.Proxy(["--upstream", self.fake.url()])
        self.procs.append(fwd)
        with Assoc(fwd) as a:
            a.send("192.0.2.1", 7, b"to the relay")
            self.answer(udp_header("192.0.2.1", 7) + b"to the relay",
                        udp_header("192.0.2.1", 7) + b"answer")
            self.assertEqual(a.recv(), udp_header("192.0.2.1", 7) + b"answer")
        c.wait_log(fwd, r"udp_in=1 udp_out=1 udp_dropped=0")
        fwd.check_idle()

    def test_tunnel_u(self):
        t = UdpTunnel(("192.0.2.1", 7), self.fake.url())
        self.procs.append(t)
        with udp_sender() as s:
            s.sendto(b"ping", t.addr)
            self.answer(udp_header("192.0.2.1", 7) + b"ping",
                        udp_header("192.0.2.1", 7) + b"pong")
            self.assertEqual(s.recvfrom(100), (b"pong", t.addr))


@h.ringsocks_only
class UdpUpstreamRelayTest(unittest.TestCase):
    """The relay an upstream names in its UDP ASSOCIATE reply. RFC 1928 lets a reply name
    BND.ADDR by a domain: the forwarder and tunnel -U gave reply 1 (the name was never
    resolved); now the name is resolved like a request's (here by the test's DNS server) and
    datagrams flow. A name that does not resolve gets reply 1, with the reason in the log; so
    does port 0, which was taken as the relay, and every datagram lost."""

    def setUp(self):
        self.relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.relay.bind(("127.0.0.1", 0))
        self.relay.settimeout(5 * h.SLOW)
        self.dns = h.DnsServer()
        self.dns.add("udp-relay.test", a=["127.0.0.1"])
        self.procs, self.fakes = [], []

    def tearDown(self):
        try:
            c.stop_all(self.procs)
        finally:
            for f in self.fakes:
                f.close()
            self.dns.close()
            self.relay.close()

    def forwarder(self, relay_host, port=None):
        port = self.relay.getsockname()[1] if port is None else port
        fake = c.FakeUpstream(replies=[c.reply_bytes(0, relay_host, port)])
        self.fakes.append(fake)
        fwd = h.Proxy(["--upstream", fake.url(), "--resolver", self.dns.addr])
        self.procs.append(fwd)
        return fwd

    def test_forwarder_resolves_the_relay_name(self):
        fwd = self.forwarder("udp-relay.test")
        with Assoc(fwd) as a:
            a.send("192.0.2.1", 7, b"to the named relay")
            data, src = self.relay.recvfrom(65535)
            self.assertEqual(data, udp_header("192.0.2.1", 7) + b"to the named relay")
            self.relay.sendto(udp_header("192.0.2.1", 7) + b"answer", src)
            self.assertEqual(a.recv(), udp_header("192.0.2.1", 7) + b"answer")
        self.assertEqual(self.dns.count("udp-relay.test", h.QTYPE_A), 1)
        fwd.check_idle()

    def test_tunnel_u_resolves_the_relay_name(self):
        fake = c.FakeUpstream(replies=[c.reply_bytes(0, "udp-relay.test",
                                                     self.relay.getsockname()[1])])
        self.fakes.append(fake)
        t = UdpTunnel(("192.0.2.1", 7), fake.url(), args=["--resolver", self.dns.addr])
        self.procs.append(t)
        with udp_sender() as s:
            s.sendto(b"ping", t.addr)
            data, src = self.relay.recvfrom(65535)
            self.assertEqual(data, udp_header("192.0.2.1", 7) + b"ping")
            self.relay.sendto(udp_header("192.0.2.1", 7) + b"pong", src)
            self.assertEqual(s.recvfrom(100), (b"pong", t.addr))

    def assert_refused(self, fwd, why):
        with h.open_client(fwd) as s:
            s.sendall(h.greeting() + h.request("0.0.0.0", 0, cmd=h.CMD_UDP))
            self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
            self.assertEqual(h.read_reply(s).rep, h.REP_FAIL)
        c.wait_log(fwd, why)
        fwd.check_idle()

    def test_unresolvable_relay_name_refused(self):
        self.assert_refused(self.forwarder("no-such-relay.test"),
                            r"the upstream's UDP relay name does not resolve")

    def test_relay_port_zero_refused(self):
        self.assert_refused(self.forwarder("127.0.0.1", port=0),
                            r"the upstream's UDP relay address is not usable")


class UdpTunnel(c.Tunnel):
    """`ringsocks tunnel -U BIND:PORT:DEST --via URL` (BIND: 127.0.0.1 unless given); started
    once the UDP port is bound."""

    def __init__(self, dest, via, args=(), bind="127.0.0.1", **kw):
        self.udp_dest = f"{h.host_literal(dest[0])}:{dest[1]}"
        self.bind = bind
        super().__init__([dest], via, args, **kw)

    def argv(self, port):
        argv = [h.BIN, "tunnel", "-U", f"{h.host_literal(self.bind)}:{port}:{self.udp_dest}"]
        for v in self.vias:
            argv += ["--via", v]
        return argv + ["-w", str(self.workers), "-v"] + list(self.args)

    def start(self, listen_timeout=5.0 * h.SLOW):
        import subprocess
        import tempfile
        self.ports = [h.unused_port()]
        fd, self.stderr_path = tempfile.mkstemp(prefix="ringsocks-stderr-", suffix=".log")
        h.Proxy.started.append(self.stderr_path)
        self.proc = subprocess.Popen(self.argv(self.ports[0]), stdin=subprocess.DEVNULL,
                                     stdout=fd, stderr=fd, preexec_fn=h._die_with_parent,
                                     close_fds=True)
        os.close(fd)
        self.port = self.ports[0]
        h.Proxy.alive.append(self)
        h.Proxy.recent.append(self)
        h.wait_for(lambda: "listening" in self.stderr() or self.proc.poll() is not None,
                   listen_timeout, what="the tunnel to start")
        if self.proc.poll() is not None:
            raise AssertionError(f"tunnel did not start:\n{self.stderr()}")
        return self


if __name__ == "__main__":
    h.main()
