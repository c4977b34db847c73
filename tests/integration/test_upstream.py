"""An upstream that misbehaves, against ringsocks in forwarder mode (--upstream, --connect-timeout
2): it speaks before it reads (method reply, CONNECT reply and first data in one segment), answers
in 1-byte pieces (with and without credentials), names a domain BND.ADDR of 255 bytes (passed on)
or of 0 bytes (malformed: reply 1), closes or resets at every step of the handshake (reply 1, or
the next upstream), and a client that gives up while the upstream handshake is in flight. Every
case: the client's reply code, every byte after success, no slot left (check_idle)."""

import os
import socket
import struct
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chain as c  # noqa: E402
import harness as h  # noqa: E402

TIMEOUT = 2  # --connect-timeout
ALL_FAILED = h.error_reply(h.REP_FAIL)
SUCCESS = c.FakeUpstream.SUCCESS


def echo_rest(s):
    """The relay part of a scripted upstream: echo until EOF."""
    while True:
        b = s.recv(65536)
        if not b:
            return
        s.sendall(b)


def read_greeting(s):
    head = h.recv_exact(s, 2)
    return head + h.recv_exact(s, head[1])


def take_request(s):
    """Play an upstream that needs no authentication, up to its reading of the request."""
    read_greeting(s)
    s.sendall(b"\x05\x00")
    c.read_request(s)


def dribble(s, data):
    """data one byte per segment."""
    for i in range(len(data)):
        s.sendall(data[i:i + 1])
        time.sleep(0.005)


def reset(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@h.ringsocks_only
class MisbehavingUpstreamTest(c.FreshProcsMixin, unittest.TestCase):
    kind = "forwarder"

    def serving_checks(self):
        return []  # the scripted upstreams serve one script, not a plain CONNECT: finish()

    def scripted(self, handler):
        srv = self.keep(h.ThreadedServer(handler))
        srv.url = h.socks5_url(("127.0.0.1", srv.port))
        return srv

    def fwd(self, upstreams, workers=1):
        p = c.forwarder(upstreams, ["--connect-timeout", str(TIMEOUT), "--resolver", self.dns.addr],
                        workers=workers)
        self.procs.append(p)
        return p

    def expect_all_failed(self, fwd, host, in_time=True):
        """A client asking for host:80 gets the method reply, then reply 1 and a close (with
        in_time, before --connect-timeout)."""
        with h.open_client(fwd) as s:
            t0 = time.monotonic()
            s.sendall(h.greeting() + h.request(host, 80))
            self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
            data, _ = h.read_to_close(s, timeout=5 * h.SLOW)
            self.assertEqual(data.hex(), ALL_FAILED.hex())
            elapsed = time.monotonic() - t0
        if in_time:
            self.assertLess(elapsed, TIMEOUT, "the failure was not noticed before the timeout")

    def finish(self, fwd, *servers):
        for srv in servers:
            self.assertEqual(srv.errors, [], "scripted upstream")
        fwd.check_idle()

    # ---- replies that arrive early or in pieces

    def test_upstream_speaks_first_all_in_one_segment(self):
        """Method reply (and auth status), CONNECT reply and its first data in one write,
        before it reads a byte: the reply and the data reach the client, and the relay goes
        on."""
        banner = b"220 hello from the destination\r\n"
        req = h.request("192.0.2.20", 21)
        creds = ("alice", "s3cret")
        for auth in (False, True):
            with self.subTest(credentials=auth):
                def handler(s, addr, auth=auth):
                    s.sendall((b"\x05\x02\x01\x00" if auth else b"\x05\x00") + SUCCESS + banner)
                    got = read_greeting(s)
                    if auth:
                        got += h.recv_exact(s, len(h.auth_request(*creds)))
                    got += c.read_request(s)
                    echo_rest(s)
                    return got
                srv = self.scripted(handler)
                fwd = self.fwd([h.socks5_url(("127.0.0.1", srv.port), creds if auth else None)])
                with h.open_client(fwd) as s:
                    s.sendall(h.greeting() + req)
                    self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
                    self.assertEqual(h.read_reply(s).raw.hex(), SUCCESS.hex())
                    self.assertEqual(h.recv_exact(s, len(banner)), banner)
                    msg = os.urandom(20000)
                    self.assertEqual(h.echo_roundtrip(s, msg), msg)
                srv.wait_done()
                sent = (b"\x05\x02\x00\x02" + h.auth_request(*creds)) if auth else b"\x05\x01\x00"
                self.assertEqual(srv.results, [sent + req])
                self.finish(fwd, srv)

    def test_tunnel_upstream_speaks_first(self):
        """The same through `ringsocks tunnel -L`: the client sees the data, not the reply."""
        banner = b"SSH-2.0-destination\r\n"

        def handler(s, addr):
            s.sendall(b"\x05\x00" + SUCCESS + banner)
            got = read_greeting(s) + c.read_request(s)
            echo_rest(s)
            return got
        srv = self.scripted(handler)
        tun = c.Tunnel(("192.0.2.29", 22), srv.url, ["--connect-timeout", str(TIMEOUT)],
                       workers=1)
        self.procs.append(tun)
        with socket.create_connection(tun.addr) as s:
            self.assertEqual(h.recv_exact(s, len(banner)), banner)
            self.assertEqual(h.echo_roundtrip(s, b"y" * 5000), b"y" * 5000)
        srv.wait_done()
        self.assertEqual(srv.results, [b"\x05\x01\x00" + h.request("192.0.2.29", 22)])
        self.finish(tun, srv)

    def test_one_byte_pieces(self):
        bnd = c.reply_bytes(0, "piecewise.upstream.test", 4321)
        for creds in (None, ("alice", "s3cret")):
            with self.subTest(credentials=creds):
                def handler(s, addr, creds=creds):
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    read_greeting(s)
                    if creds:
                        dribble(s, b"\x05\x02")
                        head = h.recv_exact(s, 2)
                        h.recv_exact(s, head[1])
                        h.recv_exact(s, h.recv_exact(s, 1)[0])
                        dribble(s, b"\x01\x00")
                    else:
                        dribble(s, b"\x05\x00")
                    c.read_request(s)
                    dribble(s, bnd + b"first")
                    echo_rest(s)
                srv = self.scripted(handler)
                fwd = self.fwd([srv.url if not creds else
                                h.socks5_url(("127.0.0.1", srv.port), creds)])
                with h.open_client(fwd) as s:
                    s.sendall(h.greeting() + h.request("192.0.2.21", 80))
                    self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
                    self.assertEqual(h.read_reply(s).raw.hex(), bnd.hex())
                    self.assertEqual(h.recv_exact(s, 5), b"first")
                    self.assertEqual(h.echo_roundtrip(s, b"x" * 3000), b"x" * 3000)
                srv.wait_done()
                self.finish(fwd, srv)

    # ---- a reply's BND.ADDR at the limits

    def test_domain_bnd_of_255_bytes_passed_on(self):
        bnd = bytes([h.VER, 0, 0, h.ATYP_DOMAIN, 255]) + b"b" * 255 + b"\x10\x01"

        def handler(s, addr):
            take_request(s)
            s.sendall(bnd + b"after")
            echo_rest(s)
        srv = self.scripted(handler)
        fwd = self.fwd([srv.url])
        with h.open_client(fwd) as s:
            s.sendall(h.greeting() + h.request("192.0.2.22", 80))
            self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
            self.assertEqual(h.read_reply(s).raw.hex(), bnd.hex())
            self.assertEqual(h.recv_exact(s, 5), b"after")
        srv.wait_done()
        self.finish(fwd, srv)

    def test_domain_bnd_of_0_bytes_is_malformed(self):
        def handler(s, addr):
            take_request(s)
            s.sendall(bytes([h.VER, 0, 0, h.ATYP_DOMAIN, 0]) + b"\x00\x50" + b"data")
            while s.recv(65536):
                pass
        srv = self.scripted(handler)
        fwd = self.fwd([srv.url])
        self.expect_all_failed(fwd, "192.0.2.23", in_time=False)
        srv.wait_done()
        c.wait_log(fwd, rf"upstream 127\.0\.0\.1:{srv.port}: sent a malformed handshake")
        self.finish(fwd, srv)

    # ---- an upstream that closes or resets at every step

    def test_close_or_reset_at_every_step(self):
        def upto(step, how):
            def handler(s, addr):
                if step >= 1:
                    read_greeting(s)
                if step >= 2:
                    s.sendall(b"\x05")
                if step >= 3:
                    s.sendall(b"\x00")
                    c.read_request(s)
                if step >= 4:
                    s.sendall(SUCCESS[:5])
                    time.sleep(0.05)
                if how == "reset":
                    reset(s)
            return handler
        for step in range(5):
            for how in ("close", "reset"):
                with self.subTest(step=step, how=how):
                    bad = self.scripted(upto(step, how))
                    fwd = self.fwd([bad.url])
                    self.expect_all_failed(fwd, "192.0.2.24")
                    bad.wait_done()
                    self.finish(fwd, bad)

    def test_close_mid_handshake_next_upstream_used(self):
        def handler(s, addr):
            take_request(s)
            reset(s)
        bad = self.scripted(handler)
        good = self.keep(c.FakeUpstream())
        fwd = self.fwd([bad.url, good.url()])
        with h.open_client(fwd) as s:
            s.sendall(h.greeting() + h.request("192.0.2.25", 80) + b"early")
            self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
            self.assertEqual(h.read_reply(s).raw.hex(), SUCCESS.hex())
            self.assertEqual(h.recv_exact(s, 5), b"early")
        good.server.wait_done()
        self.assertEqual(good.requests(), [h.request("192.0.2.25", 80)])
        self.finish(fwd, bad)

    # ---- authentication

    def test_upstream_wants_credentials_we_do_not_have(self):
        """05 FF to our no-auth greeting, or a pick of username/password that we did not
        offer: the upstream is logged and failed over, the client gets reply 1 at once."""
        wants = self.keep(c.FakeUpstream(auth=("alice", "s3cret")))  # answers 05 FF

        def handler(s, addr):  # picks 02 although only 00 was offered
            read_greeting(s)
            s.sendall(b"\x05\x02")
            while s.recv(65536):
                pass
        picks = self.scripted(handler)
        fwd = self.fwd([wants.url(), picks.url])
        self.expect_all_failed(fwd, "192.0.2.27")
        c.wait_log(fwd, rf"upstream 127\.0\.0\.1:{wants.port}: accepts none of our auth")
        c.wait_log(fwd, rf"upstream 127\.0\.0\.1:{picks.port}: sent a malformed handshake")
        picks.wait_done()
        self.finish(fwd, picks)

    # ---- many clients while upstreams fail

    def test_many_clients_while_upstreams_fail(self):
        """60 clients at once over a refused upstream, one that sends garbage and a good one:
        every client gets through with its bytes, and nothing is left behind."""
        closed = self.keep(c.ClosedPort())
        garbage = self.keep(c.FakeUpstream(garbage=b"\x05\x00\x05\x01\x00\x09"))
        good = self.keep(c.FakeUpstream())
        fwd = self.fwd([closed.url(), garbage.url(), good.url()], workers=2)
        def client(i):
            s, r = h.socks_connect(fwd, "192.0.2.28", 1000 + i)
            with s:
                msg = os.urandom(1000 + i)
                if r.raw != SUCCESS or h.echo_roundtrip(s, msg) != msg:
                    raise AssertionError(f"{r}")
        self.assertEqual(h.run_clients(client, 60, 30 * h.SLOW), [])
        h.wait_for(lambda: len(good.requests()) == 60, 5 * h.SLOW, what="60 requests")
        self.finish(fwd)

    # ---- the client gives up while the upstream handshake is in flight

    def test_client_gone_during_upstream_handshake(self):
        for how in ("close", "reset"):
            with self.subTest(how=how):
                slow = self.keep(c.FakeUpstream(hold=0.5))
                fwd = self.fwd([slow.url()])
                s = h.open_client(fwd)
                s.sendall(h.greeting() + h.request("192.0.2.26", 80))
                self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
                h.wait_for(lambda: slow.requests(), 5 * h.SLOW, what="the upstream's request")
                if how == "reset":
                    reset(s)
                s.close()
                slow.server.wait_done()  # its reply met the closed client: the relay ended
                self.finish(fwd)


if __name__ == "__main__":
    h.main()
