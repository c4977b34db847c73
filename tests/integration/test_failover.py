"""Forwarder failover (--upstream A --upstream B, --connect-timeout 2): a refused first upstream,
a first upstream that accepts and never answers, one whose accept queue is full (the connect
itself hangs), all of them down (reply 1 within the connect timeout), pipelined data that must
survive the failover, and a real second upstream (ringsocks) behind the failed one."""

import os
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chain as c  # noqa: E402
import harness as h  # noqa: E402

TIMEOUT = 2  # --connect-timeout
ALL_FAILED = h.error_reply(h.REP_FAIL)  # 05 01 00 01 00 00 00 00 00 00


@h.ringsocks_only
class FailoverTest(c.FreshProcsMixin, unittest.TestCase):
    kind = "forwarder"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # a real second hop for the end-to-end cases
        cls.direct = h.Proxy(["--resolver", cls.dns.addr])

    @classmethod
    def tearDownClass(cls):
        try:
            h.check_serving(cls.direct)
            cls.direct.stop()
        finally:
            cls.direct.kill()
            super().tearDownClass()

    def serving_checks(self):
        # a forwarder whose upstreams are all down cannot serve (serving_check = False)
        return [(p, None) for p in self.procs if getattr(p, "serving_check", True)]

    def fwd(self, upstreams, workers=1):
        p = c.forwarder(upstreams, ["--connect-timeout", str(TIMEOUT), "--resolver", self.dns.addr],
                        workers=workers)
        self.procs.append(p)
        return p

    def connect_through(self, fwd, host, port, payload=b""):
        """Greeting + request (+ pipelined payload) in one write; returns (socket, raw reply,
        seconds from the request to the complete reply)."""
        s = h.open_client(fwd)
        t0 = time.monotonic()
        s.sendall(h.greeting() + h.request(host, port) + payload)
        self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
        r = h.read_reply(s)
        return s, r.raw, time.monotonic() - t0

    def assert_all_failed(self, fwd, max_seconds, min_seconds=0.0):
        with h.open_client(fwd) as s:
            t0 = time.monotonic()
            s.sendall(h.greeting() + h.request("192.0.2.10", 80))
            self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
            data, how = h.read_to_close(s, timeout=3 * TIMEOUT + 5)
            elapsed = time.monotonic() - t0
        self.assertEqual(data.hex(), ALL_FAILED.hex(), "reply 1 with a 0.0.0.0:0 BND, then close")
        self.assertLess(elapsed, max_seconds, f"reply 1 after {elapsed:.2f}s")
        self.assertGreaterEqual(elapsed, min_seconds, f"reply 1 after {elapsed:.2f}s")
        return elapsed

    # ---- a refused first upstream

    def test_first_refused_second_used(self):
        down = self.keep(c.ClosedPort())
        good = self.keep(c.FakeUpstream())
        fwd = self.fwd([down.url(), good.url()])
        s, raw, elapsed = self.connect_through(fwd, "192.0.2.11", 8080)
        with s:
            self.assertEqual(raw.hex(), c.FakeUpstream.SUCCESS.hex())
            self.assertEqual(h.echo_roundtrip(s, b"via the second upstream"),
                             b"via the second upstream")
        self.assertLess(elapsed, TIMEOUT, "a refused upstream fails at once")
        self.assertEqual(good.requests(), [h.request("192.0.2.11", 8080)])
        c.wait_log(fwd, rf"upstream 127\.0\.0\.1:{down.port}: \S")

    def test_first_refused_second_real_ringsocks_end_to_end(self):
        down = self.keep(c.ClosedPort())
        fwd = self.fwd([down.url(), self.direct], workers=2)
        echo = self.keep(h.EchoServer())
        for _ in range(4):  # both workers, before and during the back-off
            s, raw, _ = self.connect_through(fwd, "127.0.0.1", echo.port)
            with s:
                self.assertEqual(raw[:2], b"\x05\x00")
                blob = os.urandom(200000)
                s.settimeout(20 * h.SLOW)
                self.assertEqual(h.echo_roundtrip(s, blob), blob)

    # ---- everything down

    def test_all_refused_reply_1_at_once(self):
        a, b = self.keep(c.ClosedPort()), self.keep(c.ClosedPort())
        fwd = self.fwd([a.url(), b.url()])
        fwd.serving_check = False
        self.assert_all_failed(fwd, max_seconds=TIMEOUT + 1)
        c.wait_log(fwd, rf"upstream 127\.0\.0\.1:{a.port}: \S")
        c.wait_log(fwd, rf"upstream 127\.0\.0\.1:{b.port}: \S")
        # and again while both are backed off: still tried, still reply 1 in time
        self.assert_all_failed(fwd, max_seconds=TIMEOUT + 1)

    def test_a_dead_upstream_is_logged_once_not_per_client(self):
        """Every client tries a dead upstream again (a back-off is a preference); each used
        to log two warnings, so a busy forwarder wrote two lines per client. Now one line per
        upstream and one per kind of failure, each 10 s, with the count of those left out."""
        a = self.keep(c.ClosedPort())
        fwd = self.fwd([a.url()])
        fwd.serving_check = False
        for _ in range(12):
            with h.open_client(fwd) as s:
                s.sendall(h.greeting() + h.request("192.0.2.10", 80))
                self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
                data, how = h.read_to_close(s, timeout=3 * TIMEOUT + 5)
                self.assertEqual(data.hex(), ALL_FAILED.hex())
        self.assertEqual(len(c.log_lines(fwd, rf"warn: upstream 127\.0\.0\.1:{a.port}: ")), 1)
        self.assertEqual(len(c.log_lines(fwd, r"warn: forwarding to 192\.0\.2\.10:80 failed")), 1)

    def test_refused_and_silent_reply_1_within_connect_timeout(self):
        a = self.keep(c.ClosedPort())
        b = self.keep(c.SilentServer())
        fwd = self.fwd([a.url(), b.fake.url()])
        fwd.serving_check = False
        self.assert_all_failed(fwd, max_seconds=TIMEOUT + 1, min_seconds=TIMEOUT - 0.5)
        self.assertEqual(b.connections, 1)

    # ---- a blackholed first upstream

    def test_first_silent_second_used_after_connect_timeout(self):
        silent = self.keep(c.SilentServer())
        good = self.keep(c.FakeUpstream())
        fwd = self.fwd([silent.fake.url(), good.url()])
        s, raw, elapsed = self.connect_through(fwd, "192.0.2.12", 443)
        with s:
            self.assertEqual(raw.hex(), c.FakeUpstream.SUCCESS.hex())
            self.assertEqual(h.echo_roundtrip(s, b"late but fine"), b"late but fine")
        self.assertEqual(silent.connections, 1)
        self.assertGreaterEqual(elapsed, TIMEOUT - 0.5, "the silent upstream was given its time")
        self.assertLess(elapsed, TIMEOUT + 1, "the second upstream was tried after the timeout")
        # the forwarder's greeting (no-auth only) reached the silent one: a handshake timeout
        h.wait_for(lambda: silent.fake.server.done.acquire(False), 5 * h.SLOW,
                   what="the forwarder to close its connection to the silent upstream")
        self.assertEqual(silent.fake.records[0]["greeting"].hex(), "050100")
        c.wait_log(fwd, rf"upstream 127\.0\.0\.1:{silent.port}: \S")

    def test_first_never_accepts_second_used_after_connect_timeout(self):
        hole = self.keep(c.NeverAccepts())
        good = self.keep(c.FakeUpstream())
        fwd = self.fwd([h.socks5_url(hole.addr), good.url()])
        s, raw, elapsed = self.connect_through(fwd, "192.0.2.13", 25)
        with s:
            self.assertEqual(raw.hex(), c.FakeUpstream.SUCCESS.hex())
        self.assertGreaterEqual(elapsed, TIMEOUT - 0.5)
        self.assertLess(elapsed, TIMEOUT + 1)
        c.wait_log(fwd, rf"upstream 127\.0\.0\.1:{hole.port}: \S")

    def test_failover_prefers_a_healthy_upstream_to_a_backed_off_one(self):
        """After the first upstream fails, the next one tried is a healthy one, not one in its
        back-off: a client failing over from a broken upstream used to step on to the next in
        the list even while it was backed off for not answering, and waited the whole
        --connect-timeout there before the healthy third was tried."""
        flaky = self.keep(c.FakeUpstream())  # serves at first, then sends garbage
        silent = self.keep(c.SilentServer())
        good = self.keep(c.FakeUpstream())
        fwd = self.fwd([flaky.url(), silent.fake.url(), good.url()])
        s, raw, _ = self.connect_through(fwd, "192.0.2.30", 80)  # to flaky, round-robin
        s.close()
        s, raw, elapsed = self.connect_through(fwd, "192.0.2.31", 80)  # silent, then good
        s.close()
        self.assertEqual(raw.hex(), c.FakeUpstream.SUCCESS.hex())
        self.assertGreaterEqual(elapsed, TIMEOUT - 0.5, "the silent upstream was not tried")
        flaky.garbage = b"\x04\x5a"
        # the silent one is backed off for 5 s now: whichever client meets the garbage fails
        # over to the good one at once
        for i in range(2):
            s, raw, elapsed = self.connect_through(fwd, "192.0.2.32", 80 + i)
            s.close()
            self.assertEqual(raw.hex(), c.FakeUpstream.SUCCESS.hex())
            self.assertLess(elapsed, TIMEOUT - 0.5,
                            f"client {i}: a backed-off upstream was tried before a healthy one")
        self.assertEqual(flaky.connections, 2)
        self.assertEqual(silent.connections, 1, "the backed-off upstream was tried again")
        c.wait_log(fwd, rf"upstream 127\.0\.0\.1:{flaky.port}: sent a malformed handshake")

    # ---- an upstream that has the request and is slow to reach the destination

    def test_slow_destination_behind_an_upstream_reply_6_no_failover(self):
        """The upstream took the request and is still resolving the destination when
        --connect-timeout runs out: reply 6 (as for a destination that does not answer in
        time), the request is not sent to the next upstream, and the healthy upstream is not
        backed off. It used to be counted as the upstream's failure: the same CONNECT went to
        every upstream in turn, each was backed off, and the client got reply 1 after
        upstreams x timeout."""
        self.dns.add("slow.failover.test", a=["127.0.0.1"], delay=TIMEOUT + 2)
        echo = self.keep(h.EchoServer())
        good = self.keep(c.FakeUpstream())
        fwd = self.fwd([self.direct, good.url()])
        with h.open_client(fwd) as s:
            t0 = time.monotonic()
            s.sendall(h.greeting() + h.request("slow.failover.test", echo.port))
            self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
            data, how = h.read_to_close(s, timeout=3 * TIMEOUT + 5)
            elapsed = time.monotonic() - t0
        self.assertEqual(data.hex(), h.error_reply(h.REP_TTL).hex())
        self.assertGreaterEqual(elapsed, TIMEOUT - 0.5)
        self.assertLess(elapsed, TIMEOUT + 1, "the request went on to the next upstream")
        self.assertEqual(good.connections, 0, "the request was sent again to the next upstream")
        self.assertGreaterEqual(self.dns.count("slow.failover.test"), 1)  # the upstream asked
        c.wait_log(fwd, r"forwarding to slow\.failover\.test:\d+ failed: no reply in time")
        self.assertFalse(c.log_lines(fwd, r"upstream 127\.0\.0\.1:\d+: timed out"),
                         "the healthy upstream was logged as failed")
        # not backed off: the next request goes to it again (round-robin: to both in turn)
        for _ in range(2):
            s, raw, elapsed = self.connect_through(fwd, "127.0.0.1", echo.port)
            with s:
                self.assertEqual(raw[:2], b"\x05\x00")
        self.assertEqual(good.connections, 1, "the first upstream was backed off")

    def test_pipelined_data_survives_failover(self):
        silent = self.keep(c.SilentServer())
        good = self.keep(c.FakeUpstream(hold=0.3))
        fwd = self.fwd([silent.fake.url(), good.url()])
        payload = os.urandom(3000)
        s, raw, elapsed = self.connect_through(fwd, "failover.upstream.test", 80, payload)
        with s:
            self.assertEqual(raw.hex(), c.FakeUpstream.SUCCESS.hex())
            self.assertEqual(h.recv_exact(s, len(payload)).hex(), payload.hex())
            s.shutdown(socket.SHUT_WR)
            rest, _ = h.read_to_close(s, timeout=10 * h.SLOW)
            self.assertEqual(rest, b"")
        good.server.wait_done()
        rec = good.records[0]
        self.assertEqual(rec["request"].hex(), h.request("failover.upstream.test", 80).hex())
        self.assertEqual(rec["early"], b"", "pipelined data arrived before the upstream's reply")
        self.assertEqual(rec["echoed"], len(payload))


if __name__ == "__main__":
    h.main()
