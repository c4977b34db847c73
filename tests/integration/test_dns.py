"""Name resolution through the test's own DNS server (--resolver): A only, AAAA only, both,
NXDOMAIN -> 05 04, case-insensitivity, an IPv6 resolver address, and a slow answer that must not
block the loop for anybody else."""

import os
import select
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

SLOW_DELAY = 3.0


@unittest.skipIf(h.PEER, "needs --resolver")
class DnsTest(h.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.echo4 = h.EchoServer(hosts=("127.0.0.1",))
        cls.echo6 = h.EchoServer(hosts=("::1",))
        cls.echo46 = h.EchoServer(hosts=("127.0.0.1", "::1"))
        super().setUpClass()
        d = cls.dns
        d.add("v4.ringsocks.test", a=["127.0.0.1"])
        d.add("v6.ringsocks.test", aaaa=["::1"])
        d.add("both.ringsocks.test", a=["127.0.0.1"], aaaa=["::1"])
        d.add("mixedcase.ringsocks.test", a=["127.0.0.1"])
        d.add("bnd.ringsocks.test", aaaa=["::1"])

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            for e in (cls.echo4, cls.echo6, cls.echo46):
                e.close()

    def connect_name(self, proxy, name, port, payload=None):
        s, r = h.socks_connect(proxy, name, port)
        with s:
            payload = payload or f"hello {name}".encode()
            self.assertEqual(h.echo_roundtrip(s, payload), payload)
        return r

    def test_a_only(self):
        r = self.connect_name(self.proxy, "v4.ringsocks.test", self.echo4.port)
        self.assertEqual((r.atyp, r.host), (h.ATYP_IPV4, "127.0.0.1"), r)
        self.assertGreaterEqual(self.dns.count("v4.ringsocks.test"), 1)

    def test_aaaa_only(self):
        # echo6 listens on ::1 only: success means the proxy used the AAAA record
        r = self.connect_name(self.proxy, "v6.ringsocks.test", self.echo6.port)
        self.assertEqual(r.atyp, h.ATYP_IPV6, r)
        self.assertGreaterEqual(self.dns.count("v6.ringsocks.test", h.QTYPE_AAAA), 1)

    def test_aaaa_only_bnd_matches_peer(self):
        before = len(self.echo6.peers)
        r = self.connect_name(self.proxy, "bnd.ringsocks.test", self.echo6.port)
        self.assertEqual((r.atyp, r.host), (h.ATYP_IPV6, "::1"), r)
        self.assertIn(("::1", r.port), self.echo6.peers[before:])

    def test_both_records(self):
        before = len(self.echo46.peers)
        for i in range(3):
            self.connect_name(self.proxy, "both.ringsocks.test", self.echo46.port,
                              payload=f"both {i}".encode())
        families = {p[0] for p in self.echo46.peers[before:]}
        self.assertTrue(families <= {"127.0.0.1", "::1"}, families)
        print(f"  both.ringsocks.test connected via {sorted(families)}", file=sys.stderr)

    def test_case_insensitive(self):
        self.connect_name(self.proxy, "MixedCase.RingSocks.TEST", self.echo4.port)

    def test_unknown_name(self):
        for name in ("missing.ringsocks.test", "nothing-here.invalid"):
            with self.subTest(name=name), h.open_client(self.proxy) as s:
                s.sendall(h.greeting())
                self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
                s.sendall(h.request(name, self.echo4.port))
                data, how = h.read_to_close(s, timeout=10 * h.SLOW)
                self.assertEqual(data.hex(), h.error_reply(h.REP_HOST_UNREACH).hex())
        self.assertGreaterEqual(self.dns.count("missing.ringsocks.test"), 1)

    def test_control_bytes_of_names_are_escaped_in_the_log(self):
        """A domain name may hold any byte, and the log carries it (-v's session line, the
        resolver's answer): a newline in one forged a whole log line, an escape sequence
        reached the terminal. They are written as \\xNN."""
        forged = b"2001-01-01T00:00:00.000Z ringsocks error: FORGED"
        name = b"x\n" + forged + b"\x1b[31m.test"
        with h.open_client(self.proxy) as s:
            s.sendall(h.greeting())
            self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
            s.sendall(bytes([h.VER, h.CMD_CONNECT, 0, 3, len(name)]) + name +
                      struct.pack("!H", self.echo4.port))
            data, how = h.read_to_close(s, timeout=10 * h.SLOW)
            self.assertEqual(data.hex(), h.error_reply(h.REP_HOST_UNREACH).hex())
        deadline = time.monotonic() + 5 * h.SLOW
        while "FORGED" not in self.proxy.stderr() and time.monotonic() < deadline:
            time.sleep(0.02)
        log = self.proxy.stderr()
        self.assertIn("x\\x0a" + forged.decode() + "\\x1b[31m.test", log)
        self.assertNotIn("\x1b", log)
        self.assertFalse([x for x in log.splitlines() if x.startswith(forged.decode())], log)

    def test_a_long_name_of_control_bytes_leaves_the_session_line_whole(self):
        """A name of 253 bytes that all need escaping (\\xNN, four characters each) that
        resolves: the session line must still end with the result, the bytes each way and
        the duration. It was cut at 1100 characters, so a client could keep what it moved
        out of the log with the name it asked for."""
        labels = [b"\x01" * 63, b"\x02" * 63, b"\x03" * 63, b"\x04" * 61]
        name = b".".join(labels)
        self.assertEqual(len(name), 253)
        self.dns.add(name.decode("ascii"), a=["127.0.0.1"])
        with h.open_client(self.proxy) as s:
            s.sendall(h.greeting())
            self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
            s.sendall(bytes([h.VER, h.CMD_CONNECT, 0, 3, len(name)]) + name +
                      struct.pack("!H", self.echo4.port))
            self.assertEqual(h.read_reply(s).rep, h.REP_OK)
            port = s.getsockname()[1]
            self.assertEqual(h.echo_roundtrip(s, b"x" * 1000), b"x" * 1000)
        escaped = ".".join("".join(f"\\x{b:02x}" for b in label) for label in labels)
        want = f"session client=127.0.0.1:{port} dst={escaped}:{self.echo4.port} "
        line = h.wait_for(lambda: [x for x in self.proxy.stderr_lines() if want in x],
                          5 * h.SLOW, what="the session line")[0]
        self.assertRegex(line, r" result=succeeded up=1000 down=1000 ms=\d+$")

    def hung_listener(self, host, port):
        """host:port listens with a full accept queue: SYNs to it are dropped, a connect
        neither succeeds nor fails."""
        lsn = socket.socket()
        lsn.bind((host, port))
        lsn.listen(0)
        fillers = []
        for _ in range(8):
            f = socket.socket()
            f.setblocking(False)
            fillers.append(f)
            f.connect_ex((host, port))
            if not select.select([], [f], [], 0.3)[1]:
                break
        self.addCleanup(lambda: [x.close() for x in fillers + [lsn]])

    def test_unanswered_first_address_leaves_time_for_the_next(self):
        """A name with two addresses whose first drops every SYN (IPv6 without a route
        out, typically): the first gets a share of --connect-timeout (half, at most 2 s),
        then the second is tried. The first used to take the whole timeout, and the
        client got reply 6 although the second address answered."""
        self.hung_listener("127.0.0.3", self.echo4.port)
        self.dns.add("hung-then-ok.ringsocks.test", a=["127.0.0.3", "127.0.0.1"])
        t0 = time.monotonic()
        s, r = h.socks_connect(self.proxy, "hung-then-ok.ringsocks.test", self.echo4.port)
        elapsed = time.monotonic() - t0
        with s:
            self.assertEqual(h.echo_roundtrip(s, b"second"), b"second")
        self.assertGreaterEqual(elapsed, 1.5, "the first address was not given its share")
        self.assertLess(elapsed, 4 * h.SLOW, "the first address took the whole timeout")

    def test_unanswered_addresses_share_one_timeout(self):
        """Every address drops SYNs: reply 6 once --connect-timeout (3 s) has passed in
        all, not a timeout per address."""
        self.hung_listener("127.0.0.3", self.echo4.port)
        self.hung_listener("127.0.0.4", self.echo4.port)
        self.dns.add("all-hung.ringsocks.test", a=["127.0.0.3", "127.0.0.4"])
        with h.Proxy(["--resolver", self.dns.addr, "--connect-timeout", "3"]) as p:
            with h.open_client(p) as s:
                s.sendall(h.greeting())
                self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
                t0 = time.monotonic()
                s.sendall(h.request("all-hung.ringsocks.test", self.echo4.port))
                data, how = h.read_to_close(s, timeout=10 * h.SLOW)
                elapsed = time.monotonic() - t0
            self.assertEqual(data.hex(), h.error_reply(h.REP_TTL).hex())
            self.assertGreaterEqual(elapsed, 2.5)
            self.assertLess(elapsed, 4.5)
            h.check_serving(p)

    def test_a_resolver_that_does_not_answer_is_a_warning(self):
        """A --resolver with nothing behind it fails every name. It used to be logged only
        with -v, like a name that does not exist; it is now a warning, once per 10 s and
        worker however many names fail."""
        dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dead.bind(("127.0.0.1", 0))
        port = dead.getsockname()[1]
        dead.close()  # nothing listens: queries are refused (ICMP port unreachable)
        with h.Proxy(["--resolver", f"127.0.0.1:{port}"], workers=1, verbose=False) as p:
            for i in range(3):
                with h.open_client(p) as s:
                    s.sendall(h.greeting())
                    self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
                    s.sendall(h.request(f"name{i}.ringsocks.test", self.echo4.port))
                    data, how = h.read_to_close(s, timeout=20 * h.SLOW)
                    self.assertEqual(data.hex(), h.error_reply(h.REP_HOST_UNREACH).hex())
            lines = [x for x in p.stderr_lines() if "warn: resolver: no answer for" in x]
            self.assertEqual(len(lines), 1, p.stderr())
            self.assertIn("name0.ringsocks.test", lines[0])

    def test_pipelined_payload_waits_for_resolution(self):
        """greeting + request(name) + payload in one segment, the answer delayed 0.5 s: the
        payload is kept while the name resolves and then delivered."""
        self.dns.add("pipelined.ringsocks.test", a=["127.0.0.1"], delay=0.5)
        payload = os.urandom(20_000)
        with h.open_client(self.proxy) as s:
            s.sendall(h.greeting() + h.request("pipelined.ringsocks.test", self.echo4.port) + payload)
            self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
            r = h.read_reply(s)
            self.assertEqual(r.rep, h.REP_OK, r)
            self.assertEqual(h.sha256(h.recv_exact(s, len(payload))), h.sha256(payload))

    def test_overlong_names(self):
        # a 255-byte name (valid in SOCKS, too long for DNS) and a 64-byte label: a failure
        # reply (general failure or host unreachable) and a close, never a crash
        for name in ("a" * 255, "x" * 64 + ".ringsocks.test", "a." * 127 + "b"):
            with self.subTest(name=name[:20] + "..."), h.open_client(self.proxy) as s:
                s.sendall(h.greeting() + h.request(name, self.echo4.port))
                self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
                data, how = h.read_to_close(s, timeout=10 * h.SLOW)
                self.assertIn(data.hex(), (h.error_reply(h.REP_HOST_UNREACH).hex(),
                                           h.error_reply(h.REP_FAIL).hex()))

    def test_name_with_refused_port(self):
        port = h.unused_port()
        with h.open_client(self.proxy) as s:
            s.sendall(h.greeting() + h.request("v4.ringsocks.test", port))
            self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
            data, how = h.read_to_close(s, timeout=10 * h.SLOW)
            self.assertEqual(data.hex(), h.error_reply(h.REP_REFUSED).hex())

    def test_resolver_on_ipv6(self):
        with h.DnsServer(host="::1") as dns6:
            dns6.add("six.ringsocks.test", a=["127.0.0.1"])
            with h.Proxy(["--resolver", dns6.addr]) as p:
                self.connect_name(p, "six.ringsocks.test", self.echo4.port)
                self.assertGreaterEqual(dns6.count("six.ringsocks.test"), 1)

    def test_slow_answer_does_not_block_the_loop(self):
        """While the DNS server sits on the answers for some names for 3 s, other clients are
        served at once: IP-literal CONNECTs and names that resolve quickly. One worker, so
        nobody can be served by another thread while the first one is blocked."""
        dns = self.dns
        slow_names = [f"slow{i}.ringsocks.test" for i in range(4)]
        for n in slow_names:
            dns.add(n, a=["127.0.0.1"], delay=SLOW_DELAY)
        with h.Proxy(["--resolver", dns.addr], workers=1) as p:
            results, errors = {}, []

            def slow_client(name):
                t0 = time.monotonic()
                try:
                    self.connect_name(p, name, self.echo4.port)
                    results[name] = time.monotonic() - t0
                except BaseException as e:
                    errors.append(f"{name}: {e!r}")

            threads = [threading.Thread(target=slow_client, args=(n,)) for n in slow_names]
            for t in threads:
                t.start()
            h.wait_for(lambda: all(dns.count(n) >= 1 for n in slow_names), 5 * h.SLOW,
                       what="the slow queries to reach the DNS server")
            t_wait = time.monotonic()

            probes = []
            for i in range(3):
                t0 = time.monotonic()
                self.connect_name(p, "127.0.0.1", self.echo4.port)
                probes.append(("ip-literal", time.monotonic() - t0))
                name = f"fast{i}.ringsocks.test"  # a fresh name: not in any cache
                dns.add(name, a=["127.0.0.1"])
                t0 = time.monotonic()
                self.connect_name(p, name, self.echo4.port)
                probes.append((name, time.monotonic() - t0))
            probes_done = time.monotonic() - t_wait
            for t in threads:
                t.join(20 * h.SLOW)
            self.assertEqual(errors, [])
            print("  probes: " + ", ".join(f"{n} {d * 1000:.1f} ms" for n, d in probes)
                  + "; slow: " + ", ".join(f"{d:.2f} s" for d in results.values()), file=sys.stderr)
            for name, d in probes:
                self.assertLess(d, 0.5, f"{name} took {d:.2f}s while other names were resolving")
            self.assertLess(probes_done, SLOW_DELAY - 1.0,
                            "probes were not done before the slow answers came back")
            for name, d in results.items():
                self.assertGreaterEqual(d, SLOW_DELAY - 0.5, f"{name}: the delay was not applied?")
            self.assertEqual(sorted(results), sorted(slow_names))


if __name__ == "__main__":
    h.main()
