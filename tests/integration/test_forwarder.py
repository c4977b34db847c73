"""Forwarder mode (--upstream): curl through ringsocks -> Dante / microsocks / ringsocks (with
upstream credentials) -> a local HTTP server, content hashed; and against a scripted upstream,
the exact bytes: the client's request reaches the upstream byte for byte (IPv4, IPv6, domain,
BIND), the upstream's replies reach the client byte for byte (success, BIND's two replies,
failures with any BND), upstream credentials, garbage and auth rejection fail over to the next
upstream, pipelined data waits for the upstream's reply, UDP ASSOCIATE goes to the upstream (as
0.0.0.0:0: datagrams come from our own socket) and its reply names our relay socket."""

import os
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chain as c  # noqa: E402
import harness as h  # noqa: E402

ALICE = ("alice", "secret")
BOB = ("bob", "hunter2")


def curl_socks(proxy, auth=None, hostname=False):
    flag = "--socks5-hostname" if hostname else "--socks5"
    args = [flag, f"127.0.0.1:{proxy.port}"]
    if auth:
        args += ["--proxy-user", f"{auth[0]}:{auth[1]}"]
    return args


def check_handshake(proxy):
    """The proxy still answers a complete handshake (an unknown command: 05 07, without asking
    the upstream)."""
    with h.open_client(proxy) as s:
        s.sendall(h.greeting() + h.request("0.0.0.0", 0, cmd=0x09))
        got = h.recv_exact(s, 2) + h.read_to_close(s, timeout=5 * h.SLOW)[0]
        if got != b"\x05\x00" + h.error_reply(h.REP_CMD):
            raise AssertionError(f"command 9 answered {got.hex()}")


@h.ringsocks_only
class ForwarderRealUpstreamsTest(unittest.TestCase):
    """ringsocks (forwarder) in front of real SOCKS5 servers."""

    @classmethod
    def setUpClass(cls):
        cls.procs = []
        cls.dns = h.DnsServer()
        cls.dns.add("localhost", a=["127.0.0.1"])
        cls.web = c.WebRoot()
        try:
            res = ["--resolver", cls.dns.addr]
            cls.dante = c.Dante()
            cls.procs.append(cls.dante)
            cls.micro = c.Microsocks()
            cls.procs.append(cls.micro)
            cls.up_auth = h.Proxy(["--user", "alice:secret"] + res)  # upstream with credentials
            cls.procs.append(cls.up_auth)
            cls.f_dante = c.forwarder([cls.dante], res)
            cls.f_micro = c.forwarder([cls.micro], res)
            cls.f_rs = c.forwarder([h.socks5_url(cls.up_auth, ALICE)], res)
            cls.f_rs_user = c.forwarder([h.socks5_url(cls.up_auth, ALICE)],
                                        ["--user", "bob:hunter2"] + res)
            cls.f_rs_wrong = c.forwarder([h.socks5_url(cls.up_auth, ("alice", "wrongpw"))],
                                         res)
            cls.procs += [cls.f_dante, cls.f_micro, cls.f_rs, cls.f_rs_user, cls.f_rs_wrong]
        except BaseException:
            for p in cls.procs:
                p.kill()
            cls.web.close()
            cls.dns.close()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            # every proxy still serves a plain CONNECT (the forwarder with wrong upstream
            # credentials cannot, by design)
            checks = [(f"port {p.port} ({p.argv(p.port)[0]})", c.plain_connect_check(p))
                      for p in (cls.f_dante, cls.f_micro, cls.f_rs, cls.f_rs_user, cls.up_auth,
                                cls.dante, cls.micro)]
            # forwarders first: their upstreams must still be there while they stop
            order = [cls.f_dante, cls.f_micro, cls.f_rs, cls.f_rs_user, cls.f_rs_wrong,
                     cls.up_auth, cls.dante, cls.micro]
            c.check_then_stop(order, checks)
        finally:
            cls.web.close()
            cls.dns.close()

    def fetch_both(self, proxy, auth=None, what=""):
        for name in ("small", "big.bin"):
            body = self.web.fetch(self.web.url(name), curl_socks(proxy, auth))
            self.web.check(self, name, body, f"{what} --socks5")
            body = self.web.fetch(self.web.url(name, host="localhost"),
                                  curl_socks(proxy, auth, hostname=True))
            self.web.check(self, name, body, f"{what} --socks5-hostname localhost")

    def test_curl_through_dante(self):
        before = len(self.dante.connects_to(self.web.port))
        self.fetch_both(self.f_dante, what="ringsocks -> dante")
        # the four sessions really went through Dante (its log names the HTTP server)
        h.wait_for(lambda: len(self.dante.connects_to(self.web.port)) - before >= 4, 5 * h.SLOW,
                   what="dante's log of the four sessions")

    def test_curl_through_microsocks(self):
        self.fetch_both(self.f_micro, what="ringsocks -> microsocks")

    def test_upstream_requires_credentials(self):
        # the upstream refuses a client without credentials: the forwarder's login matters
        with h.open_client(self.up_auth) as s:
            s.sendall(h.greeting((h.M_NOAUTH,)))
            data, _ = h.read_to_close(s, timeout=5 * h.SLOW)
            self.assertEqual(data.hex(), "05ff")

    def test_curl_through_ringsocks_with_upstream_credentials(self):
        # the client uses no authentication; the forwarder logs in to the upstream as alice
        self.fetch_both(self.f_rs, what="ringsocks -> ringsocks(alice)")

    def test_forwarder_own_user_and_different_upstream_credentials(self):
        # client -> forwarder as bob; forwarder -> upstream as alice
        self.fetch_both(self.f_rs_user, auth=BOB, what="bob@ringsocks -> alice@ringsocks")

    def test_forwarder_own_user_refuses_wrong_client_credentials(self):
        # the upstream's credentials are not the forwarder's: alice is refused by the forwarder
        with h.open_client(self.f_rs_user) as s:
            s.sendall(h.greeting((h.M_USERPASS,)))
            self.assertEqual(h.recv_exact(s, 2).hex(), "0502")
            s.sendall(h.auth_request(*ALICE))
            data, _ = h.read_to_close(s, timeout=5 * h.SLOW)
            self.assertEqual(data.hex(), "0101")
        with h.open_client(self.f_rs_user) as s:
            s.sendall(h.greeting((h.M_NOAUTH,)))
            data, _ = h.read_to_close(s, timeout=5 * h.SLOW)
            self.assertEqual(data.hex(), "05ff")

    def test_wrong_upstream_credentials_reply_1_and_logged(self):
        with h.EchoServer() as echo, h.open_client(self.f_rs_wrong) as s:
            t0 = time.monotonic()
            s.sendall(h.greeting() + h.request("127.0.0.1", echo.port))
            self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
            data, how = h.read_to_close(s, timeout=10 * h.SLOW)
            self.assertEqual(data.hex(), h.error_reply(h.REP_FAIL).hex(),
                             "all upstreams failed: reply 1 with a 0.0.0.0:0 BND")
            self.assertLess(time.monotonic() - t0, 10, "reply 1 within the connect timeout")
            self.assertEqual(echo.accepted, 0)
        c.wait_log(self.f_rs_wrong, rf"upstream 127\.0\.0\.1:{self.up_auth.port}: \S")
        # a password never appears in the log
        self.assertNotIn("wrongpw", self.f_rs_wrong.stderr())


@h.ringsocks_only
class FakeUpstreamTest(c.FreshProcsMixin, unittest.TestCase):
    """A fresh forwarder per test in front of scripted upstreams (FakeUpstream). Every
    forwarder gets the test's DNS server as --resolver: it must resolve nothing (the names in
    the requests are the upstream's business), and nothing may reach the machine's DNS."""

    kind = "forwarder"

    def setUp(self):
        super().setUp()
        # at the end every forwarder must still serve a plain CONNECT (through its upstream,
        # which echoes); tests whose upstream only ever fails clear this and the forwarder
        # must still answer a fresh handshake (unknown command -> 7) instead
        self.plain_ok = True

    def check_still_serving(self, proc, expect):
        if self.plain_ok:
            h.check_serving(proc, auth=proc.auth)
        else:
            check_handshake(proc)

    def fwd(self, upstreams, args=(), **kw):
        p = c.forwarder(upstreams, ["--resolver", self.dns.addr] + list(args), **kw)
        self.procs.append(p)
        return p

    def assert_no_fake_errors(self, *fakes):
        for f in fakes:
            self.assertEqual(f.server.errors, [], f"fake upstream {f.port} handler errors")

    # ---- the request, byte for byte

    def roundtrip_request(self, req, payload=b"payload after the reply", reply=None):
        reply = reply or c.FakeUpstream.SUCCESS
        fake = self.fake(replies=[reply])
        fwd = self.fwd([fake.url()])
        with h.open_client(fwd) as s:
            s.sendall(h.greeting())
            self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
            s.sendall(req)
            rep = h.recv_exact(s, len(reply))
            self.assertEqual(rep.hex(), reply.hex(),
                             "the upstream's reply reaches the client unchanged")
            self.assertEqual(h.echo_roundtrip(s, payload), payload)
            s.shutdown(socket.SHUT_WR)
            rest, how = h.read_to_close(s, timeout=10 * h.SLOW)
            self.assertEqual(rest, b"")
        fake.server.wait_done()
        self.assertEqual(fake.connections, 1)
        rec = fake.records[0]
        self.assertEqual(rec["greeting"].hex(), "050100",
                         "without upstream credentials the forwarder offers no-auth only")
        self.assertEqual(rec["request"].hex(), req.hex(), "request forwarded byte for byte")
        self.assertEqual(rec["echoed"], len(payload))
        self.assert_no_fake_errors(fake)

    def test_ipv4_connect_request_unchanged(self):
        self.roundtrip_request(h.request("192.0.2.7", 8080))

    def test_ipv6_connect_request_unchanged(self):
        self.roundtrip_request(h.request("2001:db8::1:2:3", 443))

    def test_domain_connect_request_unchanged(self):
        # mixed case and a trailing dot: not normalised on the way, and not resolved here
        self.roundtrip_request(h.request("Www.Example-Upstream.TEST.", 80))
        self.assertEqual(self.dns.count("Www.Example-Upstream.TEST."), 0,
                         "the forwarder resolved a name meant for the upstream")

    def test_success_reply_with_ipv6_bnd_unchanged(self):
        self.roundtrip_request(h.request("192.0.2.8", 8443),
                               reply=c.reply_bytes(0, "2001:db8:1:2:3:4:5:6", 65535))

    def test_success_reply_with_domain_bnd_unchanged(self):
        self.roundtrip_request(h.request("bnd.upstream.test", 21),
                               reply=c.reply_bytes(0, "bound.upstream.test", 1))

    def test_long_domain_connect_request_unchanged(self):
        name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 bytes
        self.roundtrip_request(h.request(name, 65535))

    def test_bind_request_and_both_replies_unchanged(self):
        first = c.reply_bytes(0, "203.0.113.9", 40001)
        second = c.reply_bytes(0, "2001:db8::77", 51234)
        for gap in (0.3, None):  # second reply later, and in the same write as the first
            with self.subTest(gap=gap):
                fake = self.fake(bind_replies=[first, second], gap=gap)
                fwd = self.fwd([fake.url()])
                req = h.request("192.0.2.99", 7000, cmd=h.CMD_BIND)
                with h.open_client(fwd) as s:
                    s.sendall(h.greeting())
                    self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
                    s.sendall(req)
                    self.assertEqual(h.recv_exact(s, len(first)).hex(), first.hex(), "1st reply")
                    self.assertEqual(h.recv_exact(s, len(second)).hex(), second.hex(),
                                     "2nd reply")
                    msg = os.urandom(70000)
                    self.assertEqual(h.echo_roundtrip(s, msg), msg)
                    s.shutdown(socket.SHUT_WR)
                    rest, _ = h.read_to_close(s, timeout=10 * h.SLOW)
                    self.assertEqual(rest, b"")
                fake.server.wait_done()
                self.assertEqual(fake.records[0]["request"].hex(), req.hex())
                self.assert_no_fake_errors(fake)

    def test_udp_associate_goes_to_the_upstream(self):
        fake = self.fake()  # replies 05 00 with BND 198.51.100.7:4242
        fwd = self.fwd([fake.url()])
        with h.open_client(fwd) as s:
            s.sendall(h.greeting() + h.request("127.0.0.1", 5555, cmd=h.CMD_UDP))
            self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
            r = h.read_reply(s)
            # the reply names the forwarder's own relay socket (where the client reached it)
            self.assertEqual(r.raw[:8].hex(), "050000017f000001")
            self.assertNotEqual(r.port, 4242)
            # the upstream was asked for 0.0.0.0:0: the datagrams come from our own socket,
            # not from the address the client announced
            h.wait_for(lambda: fake.requests(), 5 * h.SLOW, what="the upstream's request")
            self.assertEqual(fake.requests()[0].hex(), "05030001000000000000")
        h.wait_for(lambda: c.log_lines(fwd, r"dst=127\.0\.0\.1:5555 .*udp_in=0"), 5 * h.SLOW,
                   what="the association's session line")

    # ---- the upstream's failure replies, byte for byte

    def failure_passthrough(self, reply):
        self.plain_ok = False
        fake = self.fake(replies=[reply])
        fwd = self.fwd([fake.url()])
        req = h.request("198.18.0.1", 9)
        with h.open_client(fwd) as s:
            s.sendall(h.greeting() + req)
            self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
            data, how = h.read_to_close(s, timeout=10 * h.SLOW)
            self.assertEqual(data.hex(), reply.hex(), "the upstream's failure reply, unchanged")
        fake.server.wait_done()
        self.assertEqual(fake.records[0]["request"].hex(), req.hex())
        self.assertEqual(fake.connections, 1, "a failure reply is the answer: no failover")
        self.assert_no_fake_errors(fake)
        c.wait_log(fwd, rf"upstream 127\.0\.0\.1:{fake.port} replied {reply[1]}\b")

    def test_failure_reply_with_ipv6_bnd(self):
        self.failure_passthrough(c.reply_bytes(h.REP_HOST_UNREACH, "2001:db8::dead:beef", 1234))

    def test_failure_reply_with_domain_bnd(self):
        self.failure_passthrough(c.reply_bytes(h.REP_REFUSED, "refused.upstream.test", 4321))

    def test_failure_reply_5_with_zero_bnd(self):
        self.failure_passthrough(h.error_reply(h.REP_REFUSED))

    # ---- upstream credentials

    def test_upstream_credentials_sent(self):
        fake = self.fake(auth=("alice", "s3cret"))
        fwd = self.fwd([fake.url(("alice", "s3cret"))])
        s, r = h.socks_connect(fwd, "192.0.2.1", 22)
        with s:
            self.assertEqual(r.raw.hex(), c.FakeUpstream.SUCCESS.hex())
            self.assertEqual(h.echo_roundtrip(s, b"x" * 1000), b"x" * 1000)
        fake.server.wait_done()
        rec = fake.records[0]
        self.assertIn(h.M_USERPASS, rec["greeting"][2:], f"greeting {rec['greeting'].hex()}")
        self.assertEqual(rec["auth"].hex(), h.auth_request("alice", "s3cret").hex())
        self.assertEqual(rec["request"].hex(), h.request("192.0.2.1", 22).hex())
        self.assertNotIn("s3cret", fwd.stderr())
        self.assert_no_fake_errors(fake)

    def test_upstream_credentials_percent_decoded(self):
        # socks5://al%69ce:p%40ss%3Aw%2Frd@host:port -> user "alice", password "p@ss:w/rd"
        fake = self.fake(auth=("alice", "p@ss:w/rd"))
        fwd = self.fwd([f"socks5://al%69ce:p%40ss%3Aw%2Frd@127.0.0.1:{fake.port}"])
        s, r = h.socks_connect(fwd, "192.0.2.1", 22)
        s.close()
        fake.server.wait_done()
        self.assertEqual(fake.records[0]["auth"].hex(), h.auth_request("alice", "p@ss:w/rd").hex())

    def test_client_and_upstream_credentials_independent(self):
        fake = self.fake(auth=("up-user", "up-pass"))
        fwd = self.fwd([fake.url(("up-user", "up-pass"))], ["--user", "bob:hunter2"])
        s, r = h.socks_connect(fwd, "192.0.2.2", 2222, auth=BOB)
        with s:
            self.assertEqual(r.raw.hex(), c.FakeUpstream.SUCCESS.hex())
        fake.server.wait_done()
        self.assertEqual(fake.records[0]["auth"].hex(), h.auth_request("up-user", "up-pass").hex())

    # ---- failover on a bad upstream

    def test_garbage_upstream_logged_next_used(self):
        bad = self.fake(garbage=b"HTTP/1.1 400 Bad Request\r\n\r\n")
        good = self.fake()
        fwd = self.fwd([bad.url(), good.url()], workers=1)
        req = h.request("192.0.2.3", 3333)
        with h.open_client(fwd) as s:
            s.sendall(h.greeting() + req)
            self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
            self.assertEqual(h.read_reply(s).raw.hex(), c.FakeUpstream.SUCCESS.hex())
            self.assertEqual(h.echo_roundtrip(s, b"after failover"), b"after failover")
        good.server.wait_done()
        self.assertEqual(bad.connections, 1, "the first upstream was tried first")
        self.assertEqual(good.requests(), [req])
        c.wait_log(fwd, rf"upstream 127\.0\.0\.1:{bad.port}: \S")

    def test_auth_rejecting_upstream_logged_next_used(self):
        creds = ("alice", "s3cret")
        bad = self.fake(auth=creds, reject_auth=True)
        good = self.fake(auth=creds)
        fwd = self.fwd([bad.url(creds), good.url(creds)], workers=1)
        req = h.request("next.upstream.test", 443)
        with h.open_client(fwd) as s:
            s.sendall(h.greeting() + req)
            self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
            self.assertEqual(h.read_reply(s).raw.hex(), c.FakeUpstream.SUCCESS.hex())
        good.server.wait_done()
        self.assertEqual(bad.connections, 1)
        self.assertEqual(bad.records[0]["auth"].hex(), h.auth_request(*creds).hex())
        self.assertEqual(good.requests(), [req])
        c.wait_log(fwd, rf"upstream 127\.0\.0\.1:{bad.port}: \S")

    def test_failed_upstream_backed_off(self):
        # one worker: after the garbage upstream failed once, the next clients (within the
        # 5 s back-off) go straight to the good one
        bad = self.fake(garbage=b"\x04\x5a")
        good = self.fake()
        fwd = self.fwd([bad.url(), good.url()], workers=1)
        for i in range(6):
            s, r = h.socks_connect(fwd, "192.0.2.4", 1000 + i)
            with s:
                self.assertEqual(r.raw.hex(), c.FakeUpstream.SUCCESS.hex())
        self.assertEqual(bad.connections, 1, "a failed upstream is backed off")
        h.wait_for(lambda: len(good.requests()) == 6, 5 * h.SLOW, what="6 requests at the good one")
        self.assertEqual(sorted(good.requests()),
                         sorted(h.request("192.0.2.4", 1000 + i) for i in range(6)))

    def test_round_robin_over_healthy_upstreams(self):
        a, b = self.fake(), self.fake()
        fwd = self.fwd([a.url(), b.url()], workers=1)
        for i in range(6):
            s, r = h.socks_connect(fwd, "192.0.2.5", 2000 + i)
            s.close()
        h.wait_for(lambda: a.connections + b.connections == 6, 5 * h.SLOW, what="6 connections")
        self.assertEqual((a.connections, b.connections), (3, 3), "alternating with one worker")

    # ---- pipelined data

    def test_pipelined_data_sent_after_upstream_reply(self):
        payload = b"GET / HTTP/1.0\r\n\r\n" + os.urandom(5000)
        for together in (False, True):
            with self.subTest(greeting_and_request_in_one_write=together):
                fake = self.fake(hold=0.5)  # records what arrives before its reply
                fwd = self.fwd([fake.url()])
                req = h.request("pipelined.upstream.test", 8080)
                with h.open_client(fwd) as s:
                    if together:
                        s.sendall(h.greeting() + req + payload)
                        self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
                    else:
                        s.sendall(h.greeting())
                        self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
                        s.sendall(req + payload)
                    self.assertEqual(h.read_reply(s).raw.hex(), c.FakeUpstream.SUCCESS.hex())
                    self.assertEqual(h.recv_exact(s, len(payload)).hex(), payload.hex(),
                                     "the pipelined payload, echoed")
                    s.shutdown(socket.SHUT_WR)
                    rest, _ = h.read_to_close(s, timeout=10 * h.SLOW)
                    self.assertEqual(rest, b"")
                fake.server.wait_done()
                rec = fake.records[0]
                self.assertEqual(rec["request"].hex(), req.hex())
                self.assertEqual(rec["early"], b"",
                                 "pipelined data reached the upstream before its reply")
                self.assertEqual(rec["echoed"], len(payload))
                self.assert_no_fake_errors(fake)


if __name__ == "__main__":
    h.main()
