"""--handshake-timeout and --connect-timeout: silent and stalled clients are closed after the
handshake timeout (not before), established relays are not, and a destination that never
answers the SYN gets a failure reply after the connect timeout. A client that resets while its
connect is slow is let go within seconds, not at the connect timeout; one that only half-closed
is still served."""

import os
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chain as c  # noqa: E402
import harness as h  # noqa: E402

T = 1.0  # --handshake-timeout and --connect-timeout
LOW, HIGH = 0.8, 3.0  # a close must come in this window (seconds after connect)


@unittest.skipIf(h.PEER, "ringsocks timeouts")
class TimeoutTest(h.EchoProxyTestCase):
    proxy_args = ["--handshake-timeout", str(T), "--connect-timeout", str(T)]

    def assert_closed_in_window(self, s, t0, expect=b""):
        data, how = h.read_to_close(s, timeout=HIGH + 2)
        elapsed = time.monotonic() - t0
        self.assertEqual(data.hex(), expect.hex())
        self.assertGreaterEqual(elapsed, LOW, f"closed too early: {elapsed:.2f}s")
        self.assertLessEqual(elapsed, HIGH, f"closed too late: {elapsed:.2f}s")
        return elapsed

    def test_silent_client(self):
        t0 = time.monotonic()
        with h.open_client(self.proxy) as s:
            self.assert_closed_in_window(s, t0)

    def test_half_greeting(self):
        t0 = time.monotonic()
        with h.open_client(self.proxy) as s:
            s.sendall(b"\x05")
            self.assert_closed_in_window(s, t0)

    def test_greeting_missing_methods(self):
        t0 = time.monotonic()
        with h.open_client(self.proxy) as s:
            s.sendall(b"\x05\x03\x00")  # announces 3 methods, sends 1
            self.assert_closed_in_window(s, t0)

    def test_stall_mid_request(self):
        full = h.request("127.0.0.1", self.echo.port)
        dom = h.request("localhost", self.echo.port)
        for part in (full[:1], full[:4], full[:7], full[:-1], dom[:5], dom[:-2]):
            with self.subTest(part=part.hex()):
                t0 = time.monotonic()
                with h.open_client(self.proxy) as s:
                    s.sendall(h.greeting())
                    self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
                    s.sendall(part)
                    self.assert_closed_in_window(s, t0)

    def test_many_silent_clients(self):
        t0 = time.monotonic()
        socks = [h.open_client(self.proxy) for _ in range(100)]
        try:
            times = []
            for i, s in enumerate(socks):
                data, how = h.read_to_close(s, timeout=HIGH + 2)
                times.append(time.monotonic() - t0)
                self.assertEqual(data, b"")
            self.assertGreaterEqual(min(times), LOW, "closed too early")
            self.assertLessEqual(max(times), HIGH + 0.5, "closed too late")
        finally:
            for s in socks:
                s.close()

    def test_first_close_not_early(self):
        # many clients: none of them is closed before ~T
        socks = [h.open_client(self.proxy) for _ in range(20)]
        t0 = time.monotonic()
        try:
            time.sleep(LOW - 0.1)
            for s in socks:
                s.settimeout(0.0)
                try:
                    d = s.recv(1)
                    self.fail(f"a client was closed (recv -> {d!r}) after {time.monotonic() - t0:.2f}s")
                except BlockingIOError:
                    pass
        finally:
            for s in socks:
                s.close()

    def test_established_relay_is_not_timed_out(self):
        s, r = h.socks_connect(self.proxy, "127.0.0.1", self.echo.port)
        with s:
            time.sleep(T * 2.5)
            self.assertEqual(h.echo_roundtrip(s, b"still here"), b"still here")
            time.sleep(T * 1.5)
            self.assertEqual(h.echo_roundtrip(s, b"and here"), b"and here")

    def test_slow_but_complete_handshake_within_timeout(self):
        # a handshake that completes in ~0.5 s (< T) succeeds
        with h.open_client(self.proxy, nodelay=True) as s:
            for b in h.greeting() + h.request("127.0.0.1", self.echo.port):
                s.sendall(bytes([b]))
                time.sleep(0.04)
            self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
            self.assertEqual(h.read_reply(s).rep, h.REP_OK)
            self.assertEqual(h.echo_roundtrip(s, b"ok"), b"ok")

    def test_connect_timeout(self):
        # A listener whose accept queue is full: further SYNs are dropped, connect() hangs.
        bh = socket.socket()
        bh.bind(("127.0.0.1", 0))
        bh.listen(0)
        filler = socket.create_connection(bh.getsockname(), timeout=2)
        probe = socket.socket()
        probe.settimeout(0.3)
        try:
            with self.assertRaises(socket.timeout, msg="the black hole does not work here"):
                probe.connect(bh.getsockname())
        finally:
            probe.close()
        try:
            with h.open_client(self.proxy) as s:
                s.sendall(h.greeting())
                self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
                t0 = time.monotonic()
                s.sendall(h.request("127.0.0.1", bh.getsockname()[1]))
                data, how = h.read_to_close(s, timeout=HIGH + 5)
                elapsed = time.monotonic() - t0
                print(f"  connect timeout reply {data.hex()} after {elapsed:.2f}s", file=sys.stderr)
                # reply 6 (TTL expired / timeout), as `ringsocks --help` documents
                self.assertEqual(data.hex(), h.error_reply(h.REP_TTL).hex())
                self.assertGreaterEqual(elapsed, LOW)
                self.assertLessEqual(elapsed, HIGH)
            # -v's session line says what reply 6 stood for (RFC 1928 names it "TTL expired")
            c.wait_log(self.proxy, rf"dst=127\.0\.0\.1:{bh.getsockname()[1]} result=TTL expired"
                                   r" reason=connect timed out up=0 down=0 ")
        finally:
            filler.close()
            bh.close()


LONG = 30  # --connect-timeout of ConnectWatchTest: what a client's reset must not wait for
GONE_WITHIN = 4.0  # the watch starts after a second of connecting (CONNECT_WATCH_MS)


def reset_close(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


@unittest.skipIf(h.PEER, "ringsocks timeouts")
class ConnectWatchTest(h.EchoProxyTestCase):
    """Nothing reads a client while its name resolves, its connect is in flight or the
    upstream proxy has not answered: a client that reset kept its slot (and the connect, and
    the upstream's connection) until --connect-timeout. Once the connect phase has lasted a
    second the client is watched, and a reset ends it at once."""

    proxy_args = ["--connect-timeout", str(LONG)]

    def reset_while_connecting(self, proxy, host, port):
        s = h.open_client(proxy)
        s.sendall(h.greeting())
        self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
        s.sendall(h.request(host, port))
        time.sleep(0.3)  # the request is in, its connect (or name) is under way
        t0 = time.monotonic()
        reset_close(s)
        c.wait_log(proxy, rf"dst={h.host_literal(host)}:{port}( via=\S+)? result=no-reply"
                          r" reason=client reset while connecting ", timeout=GONE_WITHIN)
        proxy.check_idle(timeout=GONE_WITHIN * h.SLOW)
        return time.monotonic() - t0

    def test_reset_while_connect_in_flight(self):
        bh = c.NeverAccepts()
        try:
            elapsed = self.reset_while_connecting(self.proxy, "127.0.0.1", bh.port)
        finally:
            bh.close()
        print(f"  let go {elapsed:.2f}s after the reset", file=sys.stderr)

    def test_reset_while_name_resolves(self):
        self.dns.add("slow-to-resolve.test", a=["127.0.0.1"], delay=LONG)
        self.reset_while_connecting(self.proxy, "slow-to-resolve.test", self.echo.port)

    def test_reset_while_upstream_silent(self):
        # forwarder: the upstream takes the connection and never answers the greeting
        up = c.SilentServer()
        fwd = c.forwarder([h.socks5_url(up.addr)], ["--connect-timeout", str(LONG)], workers=1)
        try:
            self.reset_while_connecting(fwd, "127.0.0.1", self.echo.port)
            # the upstream's connection is closed too, not left until the timeout
            up.fake.server.wait_done(1, timeout=GONE_WITHIN * h.SLOW)
            fwd.stop()
        finally:
            fwd.kill()
            up.close()

    def test_half_closed_client_still_served(self):
        # A client that sends its request and data, then shuts its sending side (a request it
        # has nothing to add to) is not gone: the watch must not take its FIN for a reset.
        self.dns.add("resolves-late.test", a=["127.0.0.1"], delay=1.6)
        with h.open_client(self.proxy) as s:
            s.sendall(h.greeting())
            self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
            s.sendall(h.request("resolves-late.test", self.echo.port) + b"still here")
            s.shutdown(socket.SHUT_WR)
            self.assertEqual(h.read_reply(s).rep, h.REP_OK)
            data, how = h.read_to_close(s, timeout=10 * h.SLOW)
        self.assertEqual(data, b"still here")
        self.proxy.check_idle()


if __name__ == "__main__":
    h.main()
