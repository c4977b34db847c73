"""The command line: --help / --version, bad flags and values (exit 2, one line on stderr),
several listeners including IPv6, CPU pinning, -v logging, SIGTERM / SIGINT -> exit 0."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

FLAGS = ["-l", "--listen", "-w", "--workers", "--cpus", "--user", "--resolver",
         "--handshake-timeout", "--connect-timeout", "--max-conns", "--congestion", "-v", "--verbose",
         "-h", "--help", "--version"]


run = h.run_bin  # the binary to completion: (exit code or None, stdout, stderr)


def task_affinities(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("Cpus_allowed_list:"):
                        out[int(tid)] = line.split(":", 1)[1].strip()
        except FileNotFoundError:
            pass
    return out


def read_sysctl(name):
    with open(f"/proc/sys/{name}") as f:
        return f.read().strip()


def tcp_congestion_by_ports():
    """{(local port, peer port): congestion algorithm} of the established loopback TCP sockets,
    as the kernel reports them (ss -ti)."""
    out = subprocess.run(["ss", "-tinH", "state", "established"], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    res, key = {}, None
    for line in out:
        if not line[:1].isspace():
            f = line.split()
            try:
                key = (int(f[-2].rsplit(":", 1)[1]), int(f[-1].rsplit(":", 1)[1]))
            except (IndexError, ValueError):
                key = None
        elif key is not None:
            f = line.split()
            if f:
                res[key] = f[0]
            key = None
    return res


@unittest.skipIf(h.PEER, "ringsocks command line")
class CliTest(unittest.TestCase):
    def test_help(self):
        for flag in ("--help", "-h"):
            with self.subTest(flag=flag):
                rc, out, err = run([flag])
                self.assertEqual(rc, 0, err)
                text = out + err
                missing = [f for f in FLAGS if not re.search(rf"(^|[\s,\[]){re.escape(f)}\b", text)]
                self.assertEqual(missing, [], f"--help does not mention these flags:\n{text}")

    def test_version(self):
        rc, out, err = run(["--version"])
        self.assertEqual(rc, 0, err)
        self.assertRegex(out + err, r"\d+\.\d+")

    def test_bad_arguments(self):
        port = h.unused_port()
        listen = ["-l", f"127.0.0.1:{port}"]  # if a bad argument were accepted: not port 1080
        cases = [
            ["--bogus"],
            ["-w", "0"],
            ["-w", "abc"],
            ["-w", "-3"],
            ["-w"],
            ["--listen", "nonsense"],
            ["--listen", "127.0.0.1"],
            ["--listen", "127.0.0.1:99999"],
            ["--listen", "::1:1080"],  # IPv6 must be bracketed
            ["--listen", "[::1:1080"],
            ["--user", "nopass"],
            ["--user", ":secret"],
            ["--handshake-timeout", "abc"],
            ["--handshake-timeout", "-1"],
            ["--connect-timeout", "soon"],
            ["--resolver", "nonsense"],
            ["--resolver", "127.0.0.1:70000"],
            ["--cpus", "x"],
            ["--cpus", "1-"],
            ["--max-conns", "many"],
            ["stray-positional"],
        ]
        for args in cases:
            with self.subTest(args=args):
                rc, out, err = run(listen + args)
                self.assertEqual(rc, 2, f"exit code for {args} (stderr: {err!r})")
                lines = [l for l in err.splitlines() if l.strip()]
                self.assertEqual(len(lines), 1, f"stderr for {args} should be one line: {err!r}")

    def test_sigterm_exits_0(self):
        p = h.Proxy()
        h.check_serving(p)
        self.assertEqual(p.stop(signal.SIGTERM), 0)

    def test_sigint_exits_0(self):
        p = h.Proxy()
        h.check_serving(p)
        self.assertEqual(p.stop(signal.SIGINT), 0)

    def test_sighup_is_logged_and_ignored(self):
        """There is no configuration to reload: SIGHUP (a `systemctl reload`, a closed
        terminal) used to kill the daemon with status 129 and no word."""
        with h.EchoServer() as echo:
            p = h.Proxy()
            s, r = h.socks_connect(p, "127.0.0.1", echo.port)
            with s:
                os.kill(p.pid, signal.SIGHUP)
                deadline = time.monotonic() + 5 * h.SLOW
                while "SIGHUP ignored" not in p.stderr() and time.monotonic() < deadline:
                    time.sleep(0.02)
                self.assertIn("SIGHUP ignored", p.stderr())
                self.assertEqual(h.echo_roundtrip(s, b"still"), b"still")
            h.check_serving(p)
            self.assertEqual(p.stop(signal.SIGTERM), 0)

    def test_sigterm_with_open_connections(self):
        with h.EchoServer() as echo:
            p = h.Proxy()
            relay, _ = h.socks_connect(p, "127.0.0.1", echo.port)
            busy, _ = h.socks_connect(p, "127.0.0.1", echo.port)
            silent = h.open_client(p)
            half = h.open_client(p)
            half.sendall(h.greeting() + b"\x05\x01")
            busy.sendall(os.urandom(1 << 20))  # data in flight
            time.sleep(0.2)
            try:
                self.assertEqual(p.stop(signal.SIGTERM), 0)
                for s in (relay, busy, silent, half):
                    h.read_to_close(s, timeout=5)  # closed by the exit, not left hanging
            finally:
                for s in (relay, busy, silent, half):
                    s.close()

    def test_several_listeners_ipv4_and_ipv6(self):
        port6 = h.unused_port("::1")
        with h.EchoServer() as echo, h.Proxy(["-l", f"[::1]:{port6}"]) as p:
            for addr in (("127.0.0.1", p.port), ("::1", port6)):
                with self.subTest(listen=addr):
                    s, r = h.socks_connect(addr, "127.0.0.1", echo.port)
                    with s:
                        self.assertEqual(h.echo_roundtrip(s, b"hi"), b"hi")

    def test_ipv6_only_listener(self):
        with h.EchoServer(hosts=("::1",)) as echo, h.Proxy(host="::1") as p:
            s, r = h.socks_connect(p, "::1", echo.port)
            with s:
                self.assertEqual(h.echo_roundtrip(s, b"v6"), b"v6")

    @unittest.skipIf((os.cpu_count() or 1) < 2, "needs 2 CPUs")
    def test_cpus_pins_workers(self):
        for cpus, workers, want in (("1", 1, ["1"]), ("0,1", 2, ["0", "1"]), ("0-1", 2, ["0", "1"])):
            with self.subTest(cpus=cpus), h.Proxy(["--cpus", cpus], workers=workers) as p:
                h.check_serving(p)
                # the listener may accept before the worker threads have pinned themselves
                deadline = time.monotonic() + 3 * h.SLOW
                while True:
                    aff = task_affinities(p.pid)
                    pinned = sorted(v for v in aff.values() if v in want)
                    if pinned == sorted(want) or time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
                self.assertEqual(pinned, sorted(want), f"--cpus {cpus} -w {workers}: affinities {aff}")

    def test_congestion_sets_the_algorithm_of_both_sockets(self):
        """--congestion ALG: the kernel reports ALG on the proxy's accepted socket (inherited from
        the listener) and on its outbound one, while the test's own socket keeps the system's."""
        system = read_sysctl("net/ipv4/tcp_congestion_control")
        alg = "reno" if system != "reno" else "cubic"
        if alg not in read_sysctl("net/ipv4/tcp_available_congestion_control").split():
            self.skipTest(f"{alg} is not available here")
        self.check_congestion(["--congestion", alg], alg, system)

    def check_congestion(self, args, expect, system, listen="127.0.0.1", client="127.0.0.1"):
        """Through a proxy started with args on listen, the kernel reports expect on the
        proxy's socket accepted from client and on its outbound one, and the system's algorithm
        on the test's own socket."""
        with h.EchoServer() as echo, h.Proxy(args, host=listen) as p:
            s, r = h.socks_connect((client, p.port), "127.0.0.1", echo.port)
            with s:
                self.assertEqual(h.echo_roundtrip(s, b"cc"), b"cc")
                me = s.getsockname()[1]
                socks = tcp_congestion_by_ports()
                self.assertEqual(socks.get((p.port, me)), expect, f"{args} client side: {socks}")
                self.assertEqual(socks.get((r.port, echo.port)), expect, f"{args} outbound: {socks}")
                self.assertEqual(socks.get((me, p.port)), system, "the test's own socket")

    def test_congestion_default_does_not_pace_loopback(self):
        """No --congestion: with bbr as the system's algorithm (it paces every socket, loopback
        included), the proxy's sockets to peers on loopback get cubic (or reno where cubic is
        not allowed); with another system algorithm they keep it. --congestion system keeps
        the system's everywhere. The test's own socket always has the system's."""
        system = read_sysctl("net/ipv4/tcp_congestion_control")
        allowed = read_sysctl("net/ipv4/tcp_allowed_congestion_control").split()
        if not system.startswith("bbr"):
            want = system
        elif "cubic" in allowed or os.geteuid() == 0:
            want = "cubic" if "cubic" in read_sysctl(
                "net/ipv4/tcp_available_congestion_control").split() else "reno"
        else:
            want = "reno"
        self.check_congestion([], want, system)
        self.check_congestion(["--congestion", "system"], system, system)
        # a wildcard listener: the client's address tells (both families)
        self.check_congestion([], want, system, listen="0.0.0.0")
        self.check_congestion([], want, system, listen="::", client="::1")
        self.check_congestion(["--congestion", "system"], system, system, listen="0.0.0.0")

    def test_congestion_unknown_algorithm_stops_the_start(self):
        rc, _, err = run(["--congestion", "nosuchalg", "-l", f"127.0.0.1:{h.unused_port()}"])
        self.assertEqual(rc, 2, err)
        self.assertIn("--congestion nosuchalg: no such algorithm", err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)

    def test_workers_threads(self):
        for w in (1, 3):
            with self.subTest(workers=w), h.Proxy(workers=w) as p:
                # the listeners accept (in the kernel) before the worker threads have started
                h.wait_for(lambda: p.threads() >= w, 3 * h.SLOW, what=f"{w} worker threads")
                n = p.threads()
                self.assertGreaterEqual(n, w, f"-w {w} but {n} threads")
                self.assertLessEqual(n, w + 4)
                h.check_serving(p)

    def test_verbose_logs_one_line_per_session(self):
        with h.EchoServer() as echo, h.Proxy() as p:
            time.sleep(0.2)
            before = len(p.stderr_lines())
            for i in range(3):
                s, r = h.socks_connect(p, "127.0.0.1", echo.port)
                with s:
                    self.assertEqual(h.echo_roundtrip(s, b"log me"), b"log me")
                    s.shutdown(socket.SHUT_WR)
                    h.read_to_close(s)
            h.wait_for(lambda: len(p.stderr_lines()) - before >= 3, 3, what="3 session log lines")
            time.sleep(0.3)
            new = p.stderr_lines()[before:]
            self.assertLessEqual(len(new), 6, "more than a line or two per session:\n" + "\n".join(new))

    def test_sigusr1_logs_each_workers_counters(self):
        """SIGUSR1: every worker logs one "stats" line of counters, without -v too, and goes on
        serving. Their sums match what the clients did: three relays through an echo server
        (bytes each way as sent), one CONNECT refused. With -v the workers log the same line
        as they exit."""
        with h.EchoServer() as echo:
            p = h.Proxy(verbose=False)
            h.wait_for(lambda: sum(w["live"] for w in p.stats()) == 0, 5 * h.SLOW, interval=0.1,
                       what="the start-up probe's connection to end")
            base = {k: sum(w[k] for w in p.stats()) for k in ("accepted", "sessions_ok",
                                                               "sessions_failed")}
            sizes = [1, 1000, 300000]
            for n in sizes:
                s, r = h.socks_connect(p, "127.0.0.1", echo.port)
                with s:
                    data = os.urandom(n)
                    s.sendall(data)
                    s.shutdown(socket.SHUT_WR)
                    self.assertEqual(h.read_to_close(s, timeout=5), (data, "eof"))
            with h.open_client(p) as s:
                self.assertEqual(h.handshake(s, "127.0.0.1", h.unused_port()).rep, 5)
            sums = {}

            def ended():
                st = p.stats()
                self.assertEqual([w["worker"] for w in st], [0, 1])
                sums.clear()
                sums.update({k: sum(w[k] for w in st) for k in st[0] if k != "worker"})
                return sums["live"] == 0
            h.wait_for(ended, 5 * h.SLOW, interval=0.1, what="no live connection in the stats")
            want = {"accepted": base["accepted"] + 4, "refused": 0, "accept_errors": 0,
                    "sessions_ok": base["sessions_ok"] + 3,
                    "sessions_failed": base["sessions_failed"] + 1, "bytes_up": sum(sizes),
                    "bytes_down": sum(sizes), "chunks_kib": 0, "pipes_lent": 0}
            self.assertEqual({k: sums[k] for k in want}, want)
            h.check_serving(p)
            logged = sum(1 for x in p.stderr_lines() if " stats: " in x)
            self.assertEqual(p.stop(), 0)
            self.assertEqual(sum(1 for x in p.stderr_lines() if " stats: " in x), logged,
                             "stats logged at exit without -v")
        p = h.Proxy(verbose=True)
        h.check_serving(p)
        self.assertEqual(p.stop(), 0)
        lines = p.stderr_lines()
        stop = next(i for i, x in enumerate(lines) if "stopping" in x)
        self.assertEqual(sorted(int(x.split("worker=")[1].split()[0]) for x in lines[stop:]
                                if " stats: " in x), [0, 1])

    def test_a_burst_of_refusals_is_counted_once_it_stops(self):
        """A warning clients can cause is said once per 10 s per place, the next line counting
        those left out. A burst that stops has no next line: its count used to be lost. Now
        the worker writes it once the 10 s are over (-w 1: one place), or as it stops."""
        with h.Proxy(["--max-conns", "1", "--handshake-timeout", "60"], workers=1,
                     verbose=False) as p:
            p.wait_live(0)  # the start-up probe's connection is gone
            with h.open_client(p) as held:
                p.wait_live(1)
                t0 = time.monotonic()
                for _ in range(4):  # the first is said, three are left out
                    with h.open_client(p) as s:
                        h.read_to_close(s, timeout=3)
                want = "warn: refusing clients: --max-conns 1 reached"
                first = [x for x in p.stderr_lines() if want in x]
                self.assertEqual(len(first), 1, p.stderr())
                self.assertNotIn("more like it", first[0])
                time.sleep(8)
                self.assertEqual([x for x in p.stderr_lines() if want in x], first,
                                 "counted before its 10 s were over")
                counted = h.wait_for(lambda: [x for x in p.stderr_lines() if
                                              want + " (and 3 more like it since)" in x],
                                     5 * h.SLOW, what="the count of the refusals left out")
                self.assertGreater(time.monotonic() - t0, 9.5)
                self.assertEqual(len(counted), 1)
                # the count line began a period: two more refusals are left out, and
                # counted as the worker stops
                for _ in range(2):
                    with h.open_client(p) as s:
                        h.read_to_close(s, timeout=3)
        lines = [x for x in p.stderr_lines() if want in x]
        self.assertEqual(len(lines), 3, p.stderr())
        self.assertIn(want + " (and 2 more like it since)", lines[2])

    def test_max_conns(self):
        """--max-conns 4: a 5th client is closed at once (no bytes), and once one of the
        four goes away a new client is served again."""
        with h.EchoServer() as echo, h.Proxy(["--max-conns", "4"]) as p:
            p.wait_live(0)  # the start-up probe's connection is gone
            held = [h.socks_connect(p, "127.0.0.1", echo.port)[0] for _ in range(2)]
            held += [h.open_client(p) for _ in range(2)]  # still in the handshake: they count
            p.wait_live(4)  # all four accepted, whichever worker's queue holds them
            try:
                with h.open_client(p) as s:
                    t0 = time.monotonic()
                    try:
                        s.sendall(h.greeting())
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    data, how = h.read_to_close(s, timeout=3)  # handshake timeout is 10 s
                    self.assertEqual(data, b"", "a client over --max-conns got an answer")
                    self.assertLess(time.monotonic() - t0, 2)
                self.assertEqual(h.echo_roundtrip(held[0], b"kept"), b"kept")
                # said once, at warn level (it used to show only in SIGUSR1's refused=)
                for _ in range(5):
                    with h.open_client(p) as s:
                        h.read_to_close(s, timeout=3)
                refusals = [x for x in p.stderr_lines()
                            if "warn: refusing clients: --max-conns 4 reached" in x]
                self.assertTrue(refusals, p.stderr())
                self.assertLessEqual(len(refusals), 2, "one line per worker in 10 s")
            finally:
                for s in held[1:]:
                    s.close()
            time.sleep(0.3)
            # now 1 live connection: new ones are accepted again
            h.check_serving(p)
            held[0].close()

    def test_port_0_gives_every_worker_the_same_port(self):
        """-l ADDR:0 (and tunnel -U ADDR:0:DEST): the kernel picks a port, every worker's
        socket shares it, and the log says which. Each worker used to bind a port of its own
        and the log said 0."""
        def sockets(pid, proto):
            """ports of pid's sockets of proto (tcp: listening), from ss"""
            flags = "-tlnpH" if proto == "tcp" else "-ulnpH"
            out = subprocess.run(["ss", flags], capture_output=True, text=True, check=True).stdout
            return [int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines()
                    if f"pid={pid}," in line]

        def started(argv, want):
            p = subprocess.Popen([h.BIN] + argv, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                 preexec_fn=h._die_with_parent)
            lines = []
            while len(lines) < want:
                line = p.stderr.readline()
                self.assertTrue(line, f"{argv}: exited early: {lines}")
                if "listening on" in line:
                    lines.append(line)
            return p, [int(re.search(r":(\d+)(/udp)? \(", x).group(1)) for x in lines]

        with h.EchoServer() as echo:
            p, ports = started(["-l", "127.0.0.1:0", "-l", "[::1]:0", "-w", "2", "-v"], 2)
            try:
                self.assertNotIn(0, ports)
                self.assertEqual(sorted(sockets(p.pid, "tcp")), sorted(ports * 2))
                for host, port in zip(("127.0.0.1", "::1"), ports):
                    s, r = h.socks_connect((host, port), "127.0.0.1", echo.port)
                    with s:
                        self.assertEqual(h.echo_roundtrip(s, b"zero"), b"zero")
            finally:
                p.terminate()
                self.assertEqual(p.wait(10 * h.SLOW), 0)
        p, ports = started(["tunnel", "-U", "127.0.0.1:0:127.0.0.1:9", "-L", "127.0.0.1:0:127.0.0.1:9",
                            "--via", "socks5://127.0.0.1:1", "-w", "2"], 2)
        try:
            self.assertNotIn(0, ports)
            self.assertEqual(sockets(p.pid, "tcp"), [ports[0]] * 2)
            self.assertEqual(sockets(p.pid, "udp"), [ports[1]] * 2)
        finally:
            p.terminate()
            self.assertEqual(p.wait(10 * h.SLOW), 0)

    def test_second_instance_on_the_same_port_does_not_start(self):
        """The workers' listeners share a port through SO_REUSEPORT, which the kernel also
        grants to any other process of the same user: a second ringsocks on the port used to
        start and take a share of the first one's clients. It must fail as on any port in use,
        TCP and tunnel -U alike, and the first keeps every client."""
        with h.Proxy() as p:
            rc, out, err = run(["-l", f"127.0.0.1:{p.port}", "-w", "2", "--user", "bob:pw"])
            self.assertIsNotNone(rc, "a second instance kept running on the same port")
            self.assertEqual(rc, 1, err)
            self.assertIn("in use", err)
            for _ in range(8):  # all of them answered by the first: no auth asked
                h.check_serving(p)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        udp.close()
        first = subprocess.Popen([h.BIN, "tunnel", "-U", f"127.0.0.1:{port}:127.0.0.1:9",
                                  "--via", "socks5://127.0.0.1:1", "-w", "2", "-v"],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True, preexec_fn=h._die_with_parent)
        try:
            while "listening on" not in first.stderr.readline():
                self.assertIsNone(first.poll(), "the first tunnel did not start")
            rc, out, err = run(["tunnel", "-U", f"127.0.0.1:{port}:127.0.0.1:9",
                                "--via", "socks5://127.0.0.1:1"])
            self.assertEqual(rc, 1, err)
            self.assertIn("in use", err)
        finally:
            first.terminate()
            self.assertEqual(first.wait(10 * h.SLOW), 0)

    def test_upstream_that_is_this_proxy_is_refused(self):
        """An --upstream (or tunnel --via) that is our own listen address sends every request
        back to us: one client made connections to ourselves until descriptors ran out."""
        for argv in (["-l", "127.0.0.1:7", "--upstream", "socks5://127.0.0.1:7"],
                     ["-l", "0.0.0.0:7", "--upstream", "socks5://127.0.0.2:7"],
                     ["-l", "[::]:7", "--upstream", "socks5://[::1]:7"],
                     ["tunnel", "-L", "127.0.0.1:7:example.test:80", "--via",
                      "socks5://127.0.0.1:7"]):
            with self.subTest(argv=argv):
                rc, out, err = run(argv)
                self.assertEqual(rc, 2, err)
                self.assertIn("is this proxy's own listen address", err)
        rc, out, err = run(["-l", "127.0.0.1:0", "--upstream", "socks5://127.0.0.1:9", "-w", "1"],
                           timeout=0.5)
        self.assertIsNone(rc, f"another port is fine: {err}")

    def test_listen_port_in_use(self):
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        try:
            rc, out, err = run(["-l", f"127.0.0.1:{blocker.getsockname()[1]}", "-w", "1"])
            self.assertIsNotNone(rc, "the daemon kept running although it could not listen")
            self.assertNotEqual(rc, 0)
            self.assertTrue(err.strip(), "no error message")
        finally:
            blocker.close()

    @classmethod
    def tearDownClass(cls):
        # the file ends with a plain CONNECT through a fresh proxy
        with h.Proxy() as p:
            h.check_serving(p)


if __name__ == "__main__":
    h.main()
