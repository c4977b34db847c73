"""A three-hop chain: client -> ringsocks tunnel -> ringsocks forwarder -> ringsocks (with
username/password, credentials from the forwarder's --upstream URL) -> destination. Half-close in
both directions and 64 MiB each way at once, sha256 at both ends; curl through the chain."""

import os
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chain as c  # noqa: E402
import harness as h  # noqa: E402

MiB = 1 << 20
ALICE = ("alice", "secret")
TOKEN_LEN = 16


def read_token(c_sock, token):
    """Every test connection starts with the test's token: a connection without it is not ours
    (there should be none) and is ignored instead of disturbing the test's results."""
    try:
        got = h.recv_exact(c_sock, TOKEN_LEN)
    except EOFError:
        return False
    if got != token:
        raise AssertionError(f"destination got {got.hex()} instead of the token {token.hex()}")
    return True


@h.ringsocks_only
class ChainTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dns = h.DnsServer()
        cls.dns.add("localhost", a=["127.0.0.1"])
        res = ["--resolver", cls.dns.addr]
        cls.last = h.Proxy(["--user", "alice:secret"] + res)
        try:
            cls.fwd = c.forwarder([h.socks5_url(cls.last, ALICE)], res)
        except BaseException:
            cls.last.kill()
            cls.dns.close()
            raise
        cls.web = c.WebRoot()

    @classmethod
    def tearDownClass(cls):
        try:
            # a plain request still works through the chain and through each hop
            def chain_fetches_small():
                with c.Tunnel(("127.0.0.1", cls.web.port), cls.fwd) as t:
                    body = cls.web.fetch(f"http://127.0.0.1:{t.port}/small")
                    if body != cls.web.files["small"]:
                        raise AssertionError(f"got {body[:100]!r}")

            checks = [("the chain", chain_fetches_small)]
            checks += [(f"port {p.port}", c.plain_connect_check(p)) for p in (cls.fwd, cls.last)]
            c.check_then_stop([cls.fwd, cls.last], checks)
        finally:
            cls.web.close()
            cls.dns.close()

    def tunnel_to(self, port):
        t = c.Tunnel(("127.0.0.1", port), self.fwd)
        self.addCleanup(t.kill)  # if the test fails before stopping it

        def stop():
            if t.running():
                t.stop()
        self.addCleanup(stop)
        return t

    def connect(self, t, token):
        s = socket.create_connection(t.addr, timeout=60 * h.SLOW)
        s.sendall(token)
        return s

    def test_curl_through_chain(self):
        t = self.tunnel_to(self.web.port)
        for name in ("small", "big.bin"):
            self.web.check(self, name, self.web.fetch(f"http://127.0.0.1:{t.port}/{name}"),
                           "tunnel -> forwarder -> ringsocks")

    def test_half_close_client_first(self):
        """client sends and shuts down its write side; the destination reads to EOF, waits,
        then answers; the client gets the whole answer, then EOF."""
        token = os.urandom(TOKEN_LEN)
        request = os.urandom(1 * MiB + 17)
        bulk = os.urandom(2 * MiB + 3)

        def handler(cs, addr):
            if not read_token(cs, token):
                return None
            n, digest = h.drain_hash(cs)  # EOF must come through all three hops
            time.sleep(0.5)  # meanwhile nobody may close the other direction
            cs.sendall(f"ANSWER {n} {digest}\n".encode())
            h.send_all_chunks(cs, bulk)
            cs.shutdown(socket.SHUT_WR)
            return n, digest

        with h.ThreadedServer(handler) as srv:
            t = self.tunnel_to(srv.port)
            with self.connect(t, token) as s:
                h.send_all_chunks(s, request)
                s.shutdown(socket.SHUT_WR)
                data, how = h.read_to_close(s, timeout=30 * h.SLOW)
            srv.wait_done()
            self.assertEqual(srv.errors, [])
            self.assertEqual(srv.results, [(len(request), h.sha256(request))])
            head = f"ANSWER {len(request)} {h.sha256(request)}\n".encode()
            self.assertEqual(data[:len(head)], head)
            self.assertEqual(len(data), len(head) + len(bulk))
            self.assertEqual(h.sha256(data[len(head):]), h.sha256(bulk))
            self.assertEqual(how, "eof")

    def test_half_close_destination_first(self):
        """the destination sends and shuts down its write side first; the client reads to EOF,
        then still sends, and the destination receives everything."""
        token = os.urandom(TOKEN_LEN)
        hello = os.urandom(512 * 1024 + 1)
        upload = os.urandom(768 * 1024 + 5)

        def handler(cs, addr):
            if not read_token(cs, token):
                return None
            h.send_all_chunks(cs, hello)
            cs.shutdown(socket.SHUT_WR)
            return h.drain_hash(cs)

        with h.ThreadedServer(handler) as srv:
            t = self.tunnel_to(srv.port)
            with self.connect(t, token) as s:
                got = bytearray()
                while True:
                    b = s.recv(65536)
                    if not b:
                        break
                    got += b
                self.assertEqual((len(got), h.sha256(got)), (len(hello), h.sha256(hello)))
                time.sleep(0.3)
                h.send_all_chunks(s, upload)  # only one direction is closed
                s.shutdown(socket.SHUT_WR)
                srv.wait_done(timeout=30 * h.SLOW)
                rest, how = h.read_to_close(s, timeout=10 * h.SLOW)
            self.assertEqual(srv.errors, [])
            self.assertEqual(srv.results, [(len(upload), h.sha256(upload))])
            self.assertEqual(rest, b"")

    def test_64mib_each_way_at_once(self):
        token = os.urandom(TOKEN_LEN)
        up = os.urandom(64 * MiB)
        down = os.urandom(64 * MiB)

        def handler(cs, addr):
            if not read_token(cs, token):
                return None
            n, digest, errs = h.send_and_drain(cs, down, 120 * h.SLOW)
            if errs:
                raise AssertionError(f"destination send: {errs}")
            return n, digest

        with h.ThreadedServer(handler) as srv:
            t = self.tunnel_to(srv.port)
            with self.connect(t, token) as s:
                s.settimeout(120 * h.SLOW)
                t0 = time.monotonic()
                n, digest, errs = h.send_and_drain(s, up, 120 * h.SLOW)
                srv.wait_done(timeout=120 * h.SLOW)
                elapsed = time.monotonic() - t0
            self.assertEqual(errs, [])
            self.assertEqual(srv.errors, [])
            self.assertEqual((n, digest), (len(down), h.sha256(down)), "client side")
            self.assertEqual(srv.results, [(len(up), h.sha256(up))], "destination side")
            print(f"  64 MiB each way through 3 hops in {elapsed:.2f}s", file=sys.stderr)


if __name__ == "__main__":
    h.main()
