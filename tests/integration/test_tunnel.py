"""Tunnel mode (`ringsocks tunnel -L PORT:DEST --via URL`): plain HTTP through the tunnel ->
Dante / ringsocks (with and without credentials) -> a local HTTP server, fetched with curl and
hashed; DEST_HOST 'localhost' sent as a domain name; the exact CONNECT request the tunnel sends
(domain, IPv4, IPv6, credentials); pipelined client data; a refusing proxy or an unreachable
destination resets the client with no data and logs the reply code; --via failover; several -L;
wrk through the tunnel with zero socket errors."""

import functools
import os
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chain as c  # noqa: E402
import harness as h  # noqa: E402

ALICE = ("alice", "secret")


def fetch_via_tunnel(web, tunnel, name, i=0):
    host, port = tunnel.addr_of(i)
    return web.fetch(f"http://{host}:{port}/{name}")


def assert_reset_no_data(tc, tunnel, i=0):
    s = socket.socket(socket.AF_INET6 if ":" in tunnel.host else socket.AF_INET)
    with s:
        s.settimeout(10 * h.SLOW)
        try:
            s.connect(tunnel.addr_of(i))
        except ConnectionResetError:
            # the reset came before connect() returned (a connect with a timeout is
            # non-blocking + poll + SO_ERROR, which then reports the reset): no data either
            return
        data, how = h.read_to_close(s, timeout=10 * h.SLOW)
    tc.assertEqual(data, b"", "the tunnel sent data to a client whose proxy failed")
    tc.assertEqual(how, "reset", "the tunnel closes a failed client with a reset")


@h.ringsocks_only
class TunnelRealProxiesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.procs = []
        cls.dns = h.DnsServer()
        cls.dns.add("localhost", a=["127.0.0.1"])
        cls.web = c.WebRoot()
        cls.echo = h.EchoServer()
        res = ["--resolver", cls.dns.addr]
        try:
            cls.dante = c.Dante()
            cls.procs.append(cls.dante)
            cls.rs = h.Proxy(res)
            cls.procs.append(cls.rs)
            cls.rs_auth = h.Proxy(["--user", "alice:secret"] + res)
            cls.procs.append(cls.rs_auth)
            web = ("127.0.0.1", cls.web.port)
            cls.t_dante = c.Tunnel(web, cls.dante, res)
            cls.t_rs = c.Tunnel(web, cls.rs, res)
            cls.t_rs_auth = c.Tunnel(web, h.socks5_url(cls.rs_auth, ALICE), res)
            cls.t_local_rs = c.Tunnel(("localhost", cls.web.port), cls.rs, res)
            cls.t_local_dante = c.Tunnel(("localhost", cls.web.port), cls.dante, res)
            cls.t_multi = c.Tunnel([web, ("127.0.0.1", cls.echo.port)], cls.rs, res)
            cls.closed = c.ClosedPort()
            cls.t_refused = c.Tunnel(("127.0.0.1", cls.closed.port), cls.rs, res)
            cls.tunnels = [cls.t_dante, cls.t_rs, cls.t_rs_auth, cls.t_local_rs,
                           cls.t_local_dante, cls.t_multi]
            cls.procs[:0] = cls.tunnels + [cls.t_refused]
        except BaseException:
            for p in cls.procs:
                p.kill()
            cls.web.close()
            cls.echo.close()
            cls.dns.close()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            def fetches_small(t):  # every tunnel still serves a plain request
                body = fetch_via_tunnel(cls.web, t, "small")
                if body != cls.web.files["small"]:
                    raise AssertionError(f"got {body[:100]!r}")

            checks = [(f"tunnel port {t.port}", functools.partial(fetches_small, t))
                      for t in cls.tunnels]
            checks += [(f"proxy port {p.port}", c.plain_connect_check(p))
                       for p in (cls.rs, cls.rs_auth, cls.dante)]
            c.check_then_stop(cls.procs, checks)  # tunnels first, then their proxies
        finally:
            cls.closed.close()
            cls.web.close()
            cls.echo.close()
            cls.dns.close()

    def fetch_both(self, tunnel, what):
        for name in ("small", "big.bin"):
            self.web.check(self, name, fetch_via_tunnel(self.web, tunnel, name), what)

    def test_tunnel_through_dante(self):
        before = len(self.dante.connects_to(self.web.port))
        self.fetch_both(self.t_dante, "tunnel -> dante")
        h.wait_for(lambda: len(self.dante.connects_to(self.web.port)) - before >= 2, 5 * h.SLOW,
                   what="dante's log of the two sessions")

    def test_tunnel_through_ringsocks(self):
        self.fetch_both(self.t_rs, "tunnel -> ringsocks")

    def test_tunnel_through_ringsocks_with_credentials(self):
        self.fetch_both(self.t_rs_auth, "tunnel -> alice@ringsocks")

    def test_tunnel_to_localhost_resolved_by_ringsocks(self):
        self.fetch_both(self.t_local_rs, "tunnel(localhost) -> ringsocks")
        # the name travelled as a name: the proxy's session log shows the domain
        c.wait_log(self.rs, rf"dst=localhost:{self.web.port} .*result=succeeded")

    def test_tunnel_to_localhost_resolved_by_dante(self):
        self.fetch_both(self.t_local_dante, "tunnel(localhost) -> dante")

    def test_several_listeners(self):
        self.fetch_both(self.t_multi, "tunnel -L #1")
        with socket.create_connection(self.t_multi.addr_of(1), timeout=10 * h.SLOW) as s:
            blob = os.urandom(300000)
            self.assertEqual(h.echo_roundtrip(s, blob), blob, "tunnel -L #2 (echo)")
            s.shutdown(socket.SHUT_WR)
            rest, how = h.read_to_close(s, timeout=10 * h.SLOW)
            self.assertEqual((rest, how), (b"", "eof"))

    def test_destination_refused_resets_client(self):
        assert_reset_no_data(self, self.t_refused)
        c.wait_log(self.t_refused, r"the proxy replied 5\b")

    def test_wrk_through_tunnel(self):
        rc, out = c.run_wrk(f"http://127.0.0.1:{self.t_rs.port}/small", threads=1, conns=10,
                            duration=3)
        rps, total, errs, non2xx = c.parse_wrk(out)
        print(f"  wrk: {rps} requests/s, {total} requests, socket errors {errs}", file=sys.stderr)
        self.assertEqual(rc, 0, out)
        self.assertIsNotNone(rps, out)
        self.assertGreater(rps, 0, out)
        self.assertEqual(errs, {"connect": 0, "read": 0, "write": 0, "timeout": 0}, out)
        self.assertEqual(non2xx, 0, out)


@h.ringsocks_only
class TunnelFakeProxyTest(c.FreshProcsMixin, unittest.TestCase):
    """The exact bytes a tunnel sends to its proxy, and its reaction to the proxy's answers.
    Tunnels get the test's DNS server as --resolver (they must not resolve DEST_HOST)."""

    kind = "tunnel"

    def setUp(self):
        super().setUp()
        self.serving = []  # (tunnel, True if its proxy accepts, False if it must reset)

    def serving_checks(self):
        return self.serving  # each tunnel still behaves as before

    def check_still_serving(self, t, ok):
        if ok:
            with socket.create_connection(t.addr, timeout=10 * h.SLOW) as s:
                if h.echo_roundtrip(s, b"still serving") != b"still serving":
                    raise AssertionError("wrong echo")
        else:
            assert_reset_no_data(self, t)

    def tunnel(self, dests, via, args=(), **kw):
        t = c.Tunnel(dests, via, ["--resolver", self.dns.addr] + list(args), **kw)
        self.procs.append(t)
        return t

    def echo_through(self, t, fake, want_request, payload=None):
        self.serving.append((t, True))
        payload = payload or os.urandom(50000)
        with socket.create_connection(t.addr, timeout=10 * h.SLOW) as s:
            s.sendall(payload)  # at once: the tunnel holds it until the proxy's reply
            got = h.recv_exact(s, len(payload))
            self.assertEqual(got.hex()[:40], payload.hex()[:40],
                             "the client got something else than its echo (a SOCKS reply?)")
            self.assertEqual(h.sha256(got), h.sha256(payload))
            s.shutdown(socket.SHUT_WR)
            rest, how = h.read_to_close(s, timeout=10 * h.SLOW)
            self.assertEqual((rest, how), (b"", "eof"))
        fake.server.wait_done()
        self.assertEqual(fake.server.errors, [])
        self.assertEqual(fake.connections, 1)
        rec = fake.records[0]
        self.assertEqual(rec["request"].hex(), want_request.hex(), "the tunnel's CONNECT request")
        self.assertEqual(rec["early"], b"", "client data reached the proxy before its reply")
        self.assertEqual(rec["echoed"], len(payload))
        return rec

    def test_dest_localhost_sent_as_domain(self):
        fake = self.fake(hold=0.3)
        t = self.tunnel(("localhost", 8080), fake.url())
        rec = self.echo_through(t, fake, bytes.fromhex("05010003") + bytes([9]) + b"localhost"
                                + (8080).to_bytes(2, "big"))
        self.assertEqual(rec["greeting"].hex(), "050100")
        self.assertEqual(self.dns.count("localhost"), 0, "the tunnel resolved DEST_HOST itself")

    def test_dest_ipv4_literal(self):
        fake = self.fake(hold=0.3)
        t = self.tunnel(("192.0.2.200", 80), fake.url())
        self.echo_through(t, fake, bytes.fromhex("05010001c00002c80050"))

    def test_dest_ipv6_literal(self):
        fake = self.fake(hold=0.3)
        t = self.tunnel(("2001:db8::5", 443), fake.url())
        self.echo_through(t, fake, bytes.fromhex("05010004" + "20010db8" + "00" * 10 + "0005"
                                                 + "01bb"))

    def test_listen_on_ipv6_bind_addr(self):
        fake = self.fake(hold=0.3)
        t = self.tunnel(("192.0.2.205", 80), fake.url(), host="::1")
        self.echo_through(t, fake, h.request("192.0.2.205", 80))

    def test_via_credentials(self):
        fake = self.fake(auth=("tunnel-user", "tunnel-pass"), hold=0.3)
        t = self.tunnel(("192.0.2.201", 22), fake.url(("tunnel-user", "tunnel-pass")))
        rec = self.echo_through(t, fake, h.request("192.0.2.201", 22))
        self.assertIn(h.M_USERPASS, rec["greeting"][2:])
        self.assertEqual(rec["auth"].hex(), h.auth_request("tunnel-user", "tunnel-pass").hex())
        self.assertNotIn("tunnel-pass", t.stderr())

    def test_proxy_refuses_resets_client_and_logs_code(self):
        fake = self.fake(replies=[c.reply_bytes(h.REP_NOT_ALLOWED, "2001:db8::9", 9)])
        t = self.tunnel(("192.0.2.202", 80), fake.url())
        self.serving.append((t, False))
        assert_reset_no_data(self, t)
        c.wait_log(t, r"the proxy replied 2\b")
        fake.server.wait_done()
        self.assertEqual(fake.connections, 1, "a refusal is an answer: no retry")

    def test_via_failover(self):
        down = c.ClosedPort()
        self.addCleanup(down.close)
        fake = self.fake(hold=0.3)
        t = self.tunnel(("192.0.2.203", 80), [down.url(), fake.url()], ["-w", "1"])
        self.echo_through(t, fake, h.request("192.0.2.203", 80))
        c.wait_log(t, rf"upstream 127\.0\.0\.1:{down.port}: \S")

    def test_all_vias_down_resets_client(self):
        a, b = c.ClosedPort(), c.ClosedPort()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        t = self.tunnel(("192.0.2.204", 80), [a.url(), b.url()])
        self.serving.append((t, False))
        t0 = time.monotonic()
        assert_reset_no_data(self, t)
        self.assertLess(time.monotonic() - t0, 5)
        c.wait_log(t, r"tunnel to 192\.0\.2\.204:80 failed")


if __name__ == "__main__":
    h.main()
