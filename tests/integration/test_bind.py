"""BIND (RFC 1928 section 4): the test plays both the client and the remote peer. Both replies
byte for byte, data both ways hashed, half-close, early data, a peer from the wrong address
refused while the right one then succeeds, DST.ADDR as IPv6 / a name / all zeros, --bind-ports,
--bind-timeout (reply 6), the client leaving first, no descriptor left behind, and BIND through
ringsocks as a forwarder in front of Dante."""

import os
import re
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chain as c  # noqa: E402
import harness as h  # noqa: E402

MiB = 1 << 20


def reply_bytes(host, port, rep=h.REP_OK):
    """The exact reply for rep with BND host:port."""
    return bytes([h.VER, rep, 0]) + h.encode_addr(host) + struct.pack("!H", port)


def listening(host, port):
    """Is a socket listening on host:port? (from /proc/net: no connection is made)"""
    return c.is_listening(host, port)


def bind_request(proxy, host, port=0, early=b""):
    """Greeting + BIND (+ early data) in one write; returns (socket, first Reply)."""
    s = h.open_client(proxy)
    try:
        s.sendall(h.greeting() + h.request(host, port, cmd=h.CMD_BIND) + early)
        got = h.recv_exact(s, 2)
        if got != b"\x05\x00":
            raise AssertionError(f"method selection {got.hex()}")
        return s, h.read_reply(s)
    except BaseException:
        s.close()
        raise


def connect_from(source, addr, timeout=None):
    fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    p = socket.socket(fam, socket.SOCK_STREAM)
    p.settimeout(timeout or h.SOCK_TIMEOUT)
    try:
        if source:
            p.bind((source, 0))
        p.connect(addr)
        return p
    except BaseException:
        p.close()
        raise


def send_hash_thread(sock, blob, errs, shut=True):
    def run():
        try:
            view = memoryview(blob)
            for i in range(0, len(blob), 256 * 1024):
                sock.sendall(view[i:i + 256 * 1024])
            if shut:
                sock.shutdown(socket.SHUT_WR)
        except Exception as e:  # noqa: BLE001
            errs.append(repr(e))
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@h.ringsocks_only
class BindTest(h.ProxyTestCase):
    def test_both_replies_and_data_both_ways(self):
        s, r1 = bind_request(self.proxy, "127.0.0.1", 0)
        with s:
            # first reply: where the proxy listens (the address it uses toward 127.0.0.1)
            self.assertEqual(r1.rep, h.REP_OK, r1)
            self.assertEqual(r1.raw.hex(), reply_bytes("127.0.0.1", r1.port).hex())
            self.assertNotEqual(r1.port, 0)
            with connect_from("127.0.0.1", (r1.host, r1.port)) as peer:
                r2 = h.read_reply(s)
                # second reply: the peer's address and port, exactly
                self.assertEqual(r2.raw.hex(), reply_bytes(*peer.getsockname()).hex())
                up, down, errs = os.urandom(8 * MiB + 7), os.urandom(6 * MiB + 3), []
                t1 = send_hash_thread(s, up, errs)
                t2 = send_hash_thread(peer, down, errs, shut=False)
                got_up = h.drain_hash(peer)  # the client's half-close arrives as EOF
                t2.join(30 * h.SLOW)
                self.assertEqual(got_up, (len(up), h.sha256(up)))
                # half-closed: the other direction still flows
                peer.sendall(b"after the client's EOF")
                peer.shutdown(socket.SHUT_WR)
                got_down = h.drain_hash(s)
                t1.join(30 * h.SLOW)
                self.assertEqual(errs, [])
                self.assertEqual(got_down, (len(down) + 22,
                                            h.sha256(down + b"after the client's EOF")))
        c.wait_log(self.proxy, rf"dst=127\.0\.0\.1:0 result=succeeded up={len(up)} "
                               rf"down={len(down) + 22}")

    def test_ipv4_mapped_dst(self):
        """DST.ADDR ::ffff:127.0.0.1 is 127.0.0.1: the listener could not be bound to the
        mapped address on an IPv6-only socket (reply 1, 'cannot listen')."""
        s, r1 = bind_request(self.proxy, "::ffff:127.0.0.1", 0)
        with s:
            self.assertEqual(r1.rep, h.REP_OK, r1)
            self.assertEqual(r1.raw.hex(), reply_bytes("127.0.0.1", r1.port).hex())
            with connect_from("127.0.0.1", (r1.host, r1.port)) as peer:
                r2 = h.read_reply(s)
                self.assertEqual(r2.raw.hex(), reply_bytes(*peer.getsockname()).hex())
                peer.sendall(b"mapped")
                self.assertEqual(h.recv_exact(s, 6), b"mapped")

    def test_early_data_reaches_the_peer(self):
        early = b"pipelined with the request"
        s, r1 = bind_request(self.proxy, "127.0.0.1", 0, early=early)
        with s:
            s.sendall(b" + sent while waiting")
            time.sleep(0.2)  # the proxy must not read it: it stays in the socket
            with connect_from("127.0.0.1", (r1.host, r1.port)) as peer:
                h.read_reply(s)
                want = early + b" + sent while waiting"
                self.assertEqual(h.recv_exact(peer, len(want)), want)
                peer.sendall(b"ok")
                self.assertEqual(h.recv_exact(s, 2), b"ok")

    def test_peer_from_wrong_address_is_refused(self):
        s, r1 = bind_request(self.proxy, "127.0.0.1", 0)
        with s:
            # a peer from 127.0.0.2 while DST.ADDR says 127.0.0.1: closed, no bytes, no reply
            with connect_from("127.0.0.2", (r1.host, r1.port)) as wrong:
                data, how = h.read_to_close(wrong, timeout=5 * h.SLOW)
                self.assertEqual(data, b"")
            s.settimeout(0.3)
            with self.assertRaises(socket.timeout, msg="no second reply for a refused peer"):
                s.recv(1)
            s.settimeout(h.SOCK_TIMEOUT)
            c.wait_log(self.proxy, r"BIND: refused a connection from 127\.0\.0\.2:\d+ "
                                   r"\(expecting 127\.0\.0\.1:0\)")
            # the proxy is still waiting: the right peer succeeds
            with connect_from("127.0.0.1", (r1.host, r1.port)) as peer:
                r2 = h.read_reply(s)
                self.assertEqual(r2.raw.hex(), reply_bytes(*peer.getsockname()).hex())
                peer.sendall(b"right peer")
                self.assertEqual(h.recv_exact(s, 10), b"right peer")

    def test_zero_dst_accepts_any_peer(self):
        s, r1 = bind_request(self.proxy, "0.0.0.0", 0)
        with s:
            # 0.0.0.0: listen where the client reached the proxy, take a peer from anywhere
            self.assertEqual(r1.raw.hex(), reply_bytes("127.0.0.1", r1.port).hex())
            with connect_from("127.0.0.3", (r1.host, r1.port)) as peer:
                r2 = h.read_reply(s)
                self.assertEqual(r2.raw.hex(), reply_bytes(*peer.getsockname()).hex())
                self.assertEqual(r2.host, "127.0.0.3")

    def test_dst_by_name(self):
        self.dns.add("peer.bind.test", a=["127.0.0.1"])
        s, r1 = bind_request(self.proxy, "peer.bind.test", 0)
        with s:
            self.assertEqual(r1.raw.hex(), reply_bytes("127.0.0.1", r1.port).hex())
            with connect_from("127.0.0.1", (r1.host, r1.port)) as peer:
                r2 = h.read_reply(s)
                self.assertEqual(r2.raw.hex(), reply_bytes(*peer.getsockname()).hex())
        self.assertGreaterEqual(self.dns.count("peer.bind.test"), 1)

    def test_dst_name_that_does_not_resolve(self):
        with h.open_client(self.proxy) as s:
            s.sendall(h.greeting() + h.request("nxdomain.bind.test", 0, cmd=h.CMD_BIND))
            data, _ = h.read_to_close(s, timeout=10 * h.SLOW)
            self.assertEqual(data.hex(), ("0500" + h.error_reply(h.REP_HOST_UNREACH).hex()))

    def test_client_leaving_first_closes_the_listener(self):
        before = c.settled_socket_count(self.proxy)
        s, r1 = bind_request(self.proxy, "127.0.0.1", 0)
        self.assertTrue(listening(r1.host, r1.port))
        s.close()  # plain close: nothing more to say to a client that is gone
        h.wait_for(lambda: not listening(r1.host, r1.port), 5 * h.SLOW,
                   what="the BIND port to close after the client left")
        h.wait_for(lambda: h.socket_count(self.proxy.pid) <= before, 5 * h.SLOW,
                   what=f"sockets back to {before}")

    def test_many_binds_leave_nothing_behind(self):
        before = c.settled_socket_count(self.proxy)
        for _ in range(3):
            pairs = []
            for i in range(50):
                s, r1 = bind_request(self.proxy, "127.0.0.1", 0)
                pairs.append((s, connect_from("127.0.0.1", (r1.host, r1.port))))
            for i, (s, peer) in enumerate(pairs):
                h.read_reply(s)
                msg = f"pair {i}".encode()
                s.sendall(msg)
                self.assertEqual(h.recv_exact(peer, len(msg)), msg)
                peer.sendall(msg[::-1])
                self.assertEqual(h.recv_exact(s, len(msg)), msg[::-1])
            for s, peer in pairs:
                s.close()
                peer.close()
        h.wait_for(lambda: h.socket_count(self.proxy.pid) <= before, 10 * h.SLOW,
                   what=f"sockets back to {before}")


@h.ringsocks_only
class BindIPv6Test(h.ProxyTestCase):
    def test_ipv6_dst(self):
        s, r1 = bind_request(self.proxy, "::1", 0)
        with s:
            self.assertEqual(r1.raw.hex(), reply_bytes("::1", r1.port).hex())
            with connect_from("::1", (r1.host, r1.port)) as peer:
                r2 = h.read_reply(s)
                self.assertEqual(r2.raw.hex(), reply_bytes(*peer.getsockname()[:2]).hex())
                peer.sendall(b"over IPv6")
                self.assertEqual(h.recv_exact(s, 9), b"over IPv6")


@h.ringsocks_only
class BindTimeoutTest(h.ProxyTestCase):
    proxy_args = ("--bind-timeout", "1")

    def test_no_peer_gives_reply_6(self):
        before = c.settled_socket_count(self.proxy)
        s, r1 = bind_request(self.proxy, "127.0.0.1", 0)
        with s:
            t0 = time.monotonic()
            data, how = h.read_to_close(s, timeout=10 * h.SLOW)
            elapsed = time.monotonic() - t0
            self.assertEqual(data.hex(), h.error_reply(h.REP_TTL).hex())
            self.assertEqual(how, "eof")
            self.assertGreater(elapsed, 0.8)
            self.assertLess(elapsed, 4 * h.SLOW)
        h.wait_for(lambda: not listening(r1.host, r1.port), 2 * h.SLOW,
                   what="the BIND port to close")
        h.wait_for(lambda: h.socket_count(self.proxy.pid) <= before, 5 * h.SLOW,
                   what=f"sockets back to {before}")
        c.wait_log(self.proxy, r"dst=127\.0\.0\.1:0 result=TTL expired reason=no peer connected")


@h.ringsocks_only
class BindPortsTest(h.ProxyTestCase):
    LOW = h.unused_port()

    @classmethod
    def extra_args(cls):
        return ["--bind-ports", f"{cls.LOW}-{cls.LOW + 1}"]

    workers = 1

    def test_ports_come_from_the_range(self):
        s1, r1 = bind_request(self.proxy, "127.0.0.1", 0)
        s2, r2 = bind_request(self.proxy, "127.0.0.1", 0)
        with s1, s2:
            self.assertEqual({r1.port, r2.port}, {self.LOW, self.LOW + 1})
            # the range is used up: general failure
            with h.open_client(self.proxy) as s3:
                s3.sendall(h.greeting() + h.request("127.0.0.1", 0, cmd=h.CMD_BIND))
                data, _ = h.read_to_close(s3, timeout=5 * h.SLOW)
                self.assertEqual(data.hex(), "0500" + h.error_reply(h.REP_FAIL).hex())
        # freed ports are used again
        h.wait_for(lambda: not listening("127.0.0.1", self.LOW), 5 * h.SLOW, what="port free")
        s4, r4 = bind_request(self.proxy, "127.0.0.1", 0)
        with s4:
            self.assertIn(r4.port, (self.LOW, self.LOW + 1))
            self.assertEqual(r4.rep, h.REP_OK)


def occupy_range(n_taken, n_free):
    """A port range of n_taken + n_free ports outside the ephemeral range whose first n_taken
    ports we listen on ourselves and whose last n_free are free: (low, listening sockets)."""
    for _ in range(50):
        low = h.unused_port()
        if low + n_taken + n_free > 32000:
            continue
        held = []
        try:
            for p in range(low, low + n_taken + n_free):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(s)
                s.bind(("127.0.0.1", p))
                if p < low + n_taken:
                    s.listen(1)  # a listener: the proxy's bind fails even with SO_REUSEADDR
        except OSError:
            for s in held:
                s.close()
            continue
        for s in held[n_taken:]:  # only checked to be free
            s.close()
        return low, held[:n_taken]
    raise RuntimeError(f"no {n_taken + n_free} free ports in a row")


@h.ringsocks_only
class BindPortTriesTest(h.ProxyTestCase):
    """A BIND tries at most 64 ports of --bind-ports (BIND_PORT_TRIES), continuing from where
    the last one stopped: with a wide range mostly in use, trying all of it (a socket, bind and
    close a port) held the worker for each BIND a client asked for."""
    TAKEN, FREE = 128, 2
    LOW, HELD = 0, []
    workers = 1  # one worker: one place the search continues from

    @classmethod
    def setUpClass(cls):
        cls.LOW, cls.HELD = occupy_range(cls.TAKEN, cls.FREE)
        try:
            super().setUpClass()
        except BaseException:
            for s in cls.HELD:
                s.close()
            raise

    @classmethod
    def extra_args(cls):
        return ["--bind-ports", f"{cls.LOW}-{cls.LOW + cls.TAKEN + cls.FREE - 1}"]

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            for s in cls.HELD:
                s.close()

    def failed_bind(self):
        with h.open_client(self.proxy) as s:
            t0 = time.monotonic()
            s.sendall(h.greeting() + h.request("127.0.0.1", 0, cmd=h.CMD_BIND))
            data, _ = h.read_to_close(s, timeout=5 * h.SLOW)
            elapsed = time.monotonic() - t0
        self.assertEqual(data.hex(), "0500" + h.error_reply(h.REP_FAIL).hex())
        return elapsed

    def test_a_bind_tries_64_ports_and_the_next_goes_on_from_there(self):
        # ports LOW..LOW+63 are taken: the first BIND fails at once, although the range has
        # free ports further on (trying the whole range would have found LOW+128)
        self.assertLess(self.failed_bind(), 1.0 * h.SLOW, "a failure reply, quickly")
        # the next BIND starts at LOW+64, not at LOW again: LOW+64..LOW+127 are taken too
        self.assertLess(self.failed_bind(), 1.0 * h.SLOW)
        c.wait_log(self.proxy, r"BIND: cannot listen: Address already in use")
        # the third reaches the free ports, and the fourth takes the next one
        s3, r3 = bind_request(self.proxy, "127.0.0.1", 0)
        s4, r4 = bind_request(self.proxy, "127.0.0.1", 0)
        with s3, s4:
            self.assertEqual(r3.raw.hex(), reply_bytes("127.0.0.1", self.LOW + 128).hex())
            self.assertEqual(r4.raw.hex(), reply_bytes("127.0.0.1", self.LOW + 129).hex())
            with connect_from("127.0.0.1", (r3.host, r3.port)) as peer:
                self.assertEqual(h.read_reply(s3).raw.hex(),
                                 reply_bytes(*peer.getsockname()).hex())
                peer.sendall(b"through a port of the range")
                self.assertEqual(h.recv_exact(s3, 27), b"through a port of the range")
        # the range wraps: with LOW+128 and LOW+129 free again the next search, from LOW
        # (after LOW+129), fails on LOW..LOW+63 and the one after it on LOW+64..LOW+127
        h.wait_for(lambda: not listening("127.0.0.1", self.LOW + 128), 5 * h.SLOW,
                   what="the BIND port to close")
        self.failed_bind()
        self.failed_bind()
        s5, r5 = bind_request(self.proxy, "127.0.0.1", 0)
        with s5:
            self.assertEqual(r5.port, self.LOW + 128)


@h.ringsocks_only
class BindThroughDanteTest(unittest.TestCase):
    """ringsocks as a forwarder in front of Dante: BIND is forwarded, both of Dante's replies
    reach the client as they came (the second one through the relay), then data flows."""

    @classmethod
    def setUpClass(cls):
        cls.dante = c.DanteAll()
        try:
            cls.fwd = c.forwarder([cls.dante])
        except BaseException:
            cls.dante.kill()
            raise

    @classmethod
    def tearDownClass(cls):
        c.stop_all([cls.fwd, cls.dante])

    def test_bind_via_dante(self):
        s, r1 = bind_request(self.fwd, "127.0.0.1", 0)
        with s:
            self.assertEqual(r1.rep, h.REP_OK, r1)
            self.assertEqual(r1.host, "127.0.0.1")
            with connect_from("127.0.0.1", (r1.host, r1.port)) as peer:
                r2 = h.read_reply(s)
                self.assertEqual(r2.raw.hex(), reply_bytes(*peer.getsockname()).hex())
                up, down, errs = os.urandom(1 * MiB), os.urandom(1 * MiB + 1), []
                t1 = send_hash_thread(s, up, errs)
                t2 = send_hash_thread(peer, down, errs)
                self.assertEqual(h.drain_hash(peer), (len(up), h.sha256(up)))
                self.assertEqual(h.drain_hash(s), (len(down), h.sha256(down)))
                t1.join(30 * h.SLOW)
                t2.join(30 * h.SLOW)
                self.assertEqual(errs, [])


if __name__ == "__main__":
    h.main()
