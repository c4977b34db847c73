"""Raw SOCKS5 protocol through ringsocks: exact failure replies, malformed greetings, a handshake
fed one byte at a time, pipelined data, BND address, clients that abort at every stage."""

import os
import socket
import struct
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chain as c  # noqa: E402
import harness as h  # noqa: E402

OK_GREETING = bytes([5, 0])


class ProtocolTest(h.EchoProxyTestCase):
    @classmethod
    def make_echo(cls):
        return h.EchoServer(hosts=("127.0.0.1", "::1"), record=True)

    def client(self, **kw):
        return h.open_client(self.proxy, **kw)

    def assert_exchange_then_close(self, send, expect, close_within=5.0):
        """Send bytes (greeting first, reading the method reply), then expect exactly `expect`
        (the whole rest of the stream) followed by a close."""
        with self.client() as s:
            s.sendall(h.greeting())
            self.assertEqual(h.recv_exact(s, 2), OK_GREETING)
            s.sendall(send)
            data, how = h.read_to_close(s, timeout=close_within * h.SLOW)
            self.assertEqual(data.hex(), expect.hex(), f"sent {send.hex()}")
            return how

    # ---- failure replies

    def test_connection_refused(self):
        port = h.unused_port()  # nothing listens there
        how = self.assert_exchange_then_close(h.request("127.0.0.1", port),
                                              h.error_reply(h.REP_REFUSED))
        self.assertEqual(how, "eof", "the proxy reset the connection instead of closing it")
        c.wait_log(self.proxy, rf"dst=127\.0\.0\.1:{port} result=connection refused"
                               r" reason=connect failed: Connection refused up=0 ")

    def test_connection_refused_ipv6(self):
        port = h.unused_port("::1")
        self.assert_exchange_then_close(h.request("::1", port), h.error_reply(h.REP_REFUSED))

    def test_unknown_command(self):
        self.assert_exchange_then_close(h.request("127.0.0.1", self.echo.port, cmd=0x09),
                                        h.error_reply(h.REP_CMD))

    def test_unknown_address_type(self):
        # only the 4 fixed bytes: the proxy cannot know the length of an unknown address type,
        # so it must answer as soon as it sees ATYP
        self.assert_exchange_then_close(bytes([5, 1, 0, 0x05]), h.error_reply(h.REP_ATYP))

    # BIND and UDP ASSOCIATE succeed (test_bind.py and test_udp.py test them in depth)
    @h.ringsocks_only
    def test_bind_first_reply(self):
        with self.client() as s:
            s.sendall(h.greeting() + h.request("127.0.0.1", 0, cmd=h.CMD_BIND))
            self.assertEqual(h.recv_exact(s, 2), OK_GREETING)
            r = h.read_reply(s)
            # listening on the address the proxy uses toward 127.0.0.1, on some port
            self.assertEqual(r.raw.hex(), "050000017f000001" + struct.pack("!H", r.port).hex())
            self.assertNotEqual(r.port, 0)

    @h.ringsocks_only
    def test_udp_associate_reply(self):
        with self.client() as s:
            s.sendall(h.greeting() + h.request("0.0.0.0", 0, cmd=h.CMD_UDP))
            self.assertEqual(h.recv_exact(s, 2), OK_GREETING)
            r = h.read_reply(s)
            # the relay sits on the address the client reached the proxy at
            self.assertEqual(r.raw.hex(), "050000017f000001" + struct.pack("!H", r.port).hex())
            self.assertNotEqual(r.port, 0)

    def test_no_acceptable_method(self):
        with self.client() as s:
            s.sendall(h.greeting((h.M_GSSAPI,)))
            data, how = h.read_to_close(s, timeout=5 * h.SLOW)
            self.assertEqual(data.hex(), "05ff")

    def test_no_acceptable_method_many(self):
        with self.client() as s:
            s.sendall(h.greeting(tuple(range(0x03, 0x30))))  # no 00, no 02
            data, how = h.read_to_close(s, timeout=5 * h.SLOW)
            self.assertEqual(data.hex(), "05ff")

    def test_http_request_to_socks_port(self):
        with self.client() as s:
            t0 = time.monotonic()
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data, how = h.read_to_close(s, timeout=5 * h.SLOW)  # default handshake timeout is 10 s
            self.assertEqual(data, b"", f"the proxy answered an HTTP request with {data!r}")
            self.assertLess(time.monotonic() - t0, 5 * h.SLOW)

    def test_socks4_request(self):
        with self.client() as s:
            s.sendall(b"\x04\x01" + struct.pack("!H", self.echo.port) + bytes([127, 0, 0, 1]) + b"u\x00")
            data, how = h.read_to_close(s, timeout=5 * h.SLOW)
            self.assertEqual(data, b"")

    def test_zero_methods(self):
        # NMETHODS = 0: nothing acceptable was offered
        with self.client() as s:
            s.sendall(b"\x05\x00")
            data, how = h.read_to_close(s, timeout=5 * h.SLOW)
            self.assertIn(data.hex(), ("05ff", ""))

    def test_bad_request_version(self):
        with self.client() as s:
            s.sendall(h.greeting())
            self.assertEqual(h.recv_exact(s, 2), OK_GREETING)
            s.sendall(b"\x04" + h.request("127.0.0.1", self.echo.port)[1:])
            data, how = h.read_to_close(s, timeout=5 * h.SLOW)
            # a malformed request gets a clean close (optionally after a general-failure reply)
            self.assertIn(data.hex(), ("", h.error_reply(h.REP_FAIL).hex()))

    # ---- successful CONNECTs

    def test_bnd_is_the_outbound_address(self):
        peers = []

        def handler(conn, addr):
            peers.append(addr[:2])
            conn.sendall(b"x")
            h.read_to_close(conn)

        with h.ThreadedServer(handler) as srv:
            s, r = h.socks_connect(self.proxy, "127.0.0.1", srv.port)
            with s:
                self.assertEqual(h.recv_exact(s, 1), b"x")
                self.assertEqual(r.atyp, h.ATYP_IPV4, r)
                self.assertEqual(r.host, "127.0.0.1", r)
                self.assertNotEqual(r.port, 0, r)
                self.assertEqual(len(r.raw), 10)
                self.assertEqual(peers, [(r.host, r.port)],
                                 "BND.ADDR:BND.PORT differs from the source the destination saw")

    def test_ipv6_destination_bnd(self):
        before = len(self.echo.peers)
        s, r = h.socks_connect(self.proxy, "::1", self.echo.port)
        with s:
            self.assertEqual(h.echo_roundtrip(s, b"v6 payload"), b"v6 payload")
            self.assertEqual(r.atyp, h.ATYP_IPV6, r)
            self.assertEqual(r.host, "::1", r)
            self.assertEqual(len(r.raw), 22)
            self.assertIn(("::1", r.port), self.echo.peers[before:])

    def test_domain_destination_localhost(self):
        s, r = h.socks_connect(self.proxy, "localhost", self.echo.port)
        with s:
            self.assertEqual(h.echo_roundtrip(s, b"via name"), b"via name")
            self.assertIn(r.atyp, (h.ATYP_IPV4, h.ATYP_IPV6), r)
            self.assertNotEqual(r.port, 0)

    def test_one_byte_at_a_time(self):
        for dest in ("127.0.0.1", "localhost"):
            with self.subTest(dest=dest), self.client(nodelay=True) as s:
                wire = h.greeting() + h.request(dest, self.echo.port)
                for i, b in enumerate(wire):
                    s.sendall(bytes([b]))
                    time.sleep(0.01)
                    if i == 2:  # complete greeting: the method reply comes now
                        self.assertEqual(h.recv_exact(s, 2), OK_GREETING)
                r = h.read_reply(s)
                self.assertEqual(r.rep, h.REP_OK, r)
                payload = bytes(range(256)) * 8
                for i in range(0, len(payload), 512):
                    s.sendall(payload[i:i + 512])
                self.assertEqual(h.recv_exact(s, len(payload)), payload)

    def test_one_byte_at_a_time_without_waiting(self):
        # greeting and request dribbled without waiting for the method reply in between
        with self.client(nodelay=True) as s:
            for b in h.greeting() + h.request("127.0.0.1", self.echo.port):
                s.sendall(bytes([b]))
                time.sleep(0.01)
            self.assertEqual(h.recv_exact(s, 2), OK_GREETING)
            r = h.read_reply(s)
            self.assertEqual(r.rep, h.REP_OK, r)
            self.assertEqual(h.echo_roundtrip(s, b"ping"), b"ping")

    def test_pipelined_payload(self):
        before = self.echo.accepted
        payload = b"pipelined:" + os.urandom(3000)
        with self.client() as s:
            s.sendall(h.greeting() + h.request("127.0.0.1", self.echo.port) + payload)
            self.assertEqual(h.recv_exact(s, 2), OK_GREETING)
            r = h.read_reply(s)
            self.assertEqual(r.rep, h.REP_OK, r)
            self.assertEqual(h.recv_exact(s, len(payload)), payload)
            s.shutdown(socket.SHUT_WR)
            rest, how = h.read_to_close(s)
            self.assertEqual(rest, b"")
        h.wait_for(lambda: self.echo.accepted > before, 5, what="echo connection")
        got = [bytes(v) for k, v in self.echo.received.items() if k >= before]
        self.assertIn(payload, got, "the echo server did not receive exactly the pipelined payload")

    def test_pipelined_payload_large(self):
        # more pipelined data than any handshake buffer holds
        payload = os.urandom(200_000)
        with self.client() as s:
            s.sendall(h.greeting() + h.request("127.0.0.1", self.echo.port) + payload)
            self.assertEqual(h.recv_exact(s, 2), OK_GREETING)
            self.assertEqual(h.read_reply(s).rep, h.REP_OK)
            got = h.recv_exact(s, len(payload))
            self.assertEqual(h.sha256(got), h.sha256(payload))

    def test_greeting_with_many_methods(self):
        with self.client() as s:
            s.sendall(h.greeting(tuple(range(254, 0, -1)) + (0,)))  # 255 methods, 00 last
            self.assertEqual(h.recv_exact(s, 2), OK_GREETING)
            s.sendall(h.request("127.0.0.1", self.echo.port))
            self.assertEqual(h.read_reply(s).rep, h.REP_OK)
            self.assertEqual(h.echo_roundtrip(s, b"m"), b"m")

    # ---- abrupt clients: the proxy must survive them all

    def test_clients_abort_at_every_stage(self):
        def rst_close(s):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()

        stages = [
            b"",
            b"\x05",
            h.greeting(),
            h.greeting() + h.request("127.0.0.1", self.echo.port)[:5],
            h.greeting() + h.request("127.0.0.1", self.echo.port),
            h.greeting() + h.request("127.0.0.1", self.echo.port) + os.urandom(100_000),
            h.greeting() + h.request("localhost", self.echo.port),
            h.greeting() + h.request("127.0.0.1", h.unused_port()),
        ]
        for rnd in range(5):
            for i, wire in enumerate(stages):
                for graceful in (False, True):
                    s = self.client()
                    if wire:
                        s.sendall(wire)
                    if rnd % 2:
                        time.sleep(0.005)
                    if graceful:
                        s.close()
                    else:
                        rst_close(s)
        # a relay in full flow, then reset
        for _ in range(10):
            s, _r = h.socks_connect(self.proxy, "127.0.0.1", self.echo.port)
            s.sendall(os.urandom(256 * 1024))
            rst_close(s)
        time.sleep(0.3)
        self.assertTrue(self.proxy.running())
        h.check_serving(self.proxy)


if __name__ == "__main__":
    h.main()
