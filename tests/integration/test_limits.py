"""Resource limits: --max-conns closes new clients at once while live ones keep working, a
storm of failed handshakes leaves no descriptor or slot behind, and running out of descriptors
is said once, not once per client."""

import os
import resource
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


@h.ringsocks_only
class MaxConnsTest(h.EchoProxyTestCase):
    proxy_args = ("--max-conns", "5")

    def test_sixth_client_is_closed_and_live_ones_are_unaffected(self):
        self.proxy.wait_live(0)  # the start-up probe's connection is gone
        live = [h.socks_connect(self.proxy, "127.0.0.1", self.echo.port)[0] for _ in range(5)]
        try:
            extra = socket.create_connection(self.proxy.addr, timeout=5 * h.SLOW)
            with extra:
                t0 = time.monotonic()
                try:
                    extra.sendall(h.greeting())
                except OSError:
                    pass  # already closed: fine
                data, how = h.read_to_close(extra, timeout=3 * h.SLOW)
                self.assertEqual(data, b"", "a refused client gets no bytes")
                self.assertLess(time.monotonic() - t0, 2 * h.SLOW, "closed at once")
            for i, s in enumerate(live):
                payload = f"still alive {i}".encode() * 50
                self.assertEqual(h.echo_roundtrip(s, payload), payload)
        finally:
            for s in live:
                s.close()
        # once they are gone the proxy takes new clients again
        deadline = time.monotonic() + 5 * h.SLOW
        while True:
            try:
                with h.socks_connect(self.proxy, "127.0.0.1", self.echo.port)[0] as s:
                    self.assertEqual(h.echo_roundtrip(s, b"again"), b"again")
                break
            except (AssertionError, OSError, EOFError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


@h.ringsocks_only
class MaxConnsBurstTest(unittest.TestCase):
    def test_a_burst_is_served_up_to_the_limit_and_no_further(self):
        """--max-conns 8 with two workers, 64 clients connecting at once, each sending its
        greeting and then holding on: exactly 8 get the method reply, the others are closed
        at once with no bytes. Both workers accept at the same moment here, so a limit that
        each checks before taking the slot lets one too many through."""
        n, limit = 64, 8
        for rnd in range(5):
            with h.Proxy(["--max-conns", limit], workers=2) as p:
                p.wait_live(0)  # the start-up probe's connection is gone
                socks = [None] * n
                go = threading.Barrier(n)

                def connect(i):
                    go.wait()
                    try:
                        s = socket.create_connection(p.addr, timeout=5 * h.SLOW)
                        s.sendall(h.greeting())
                        socks[i] = s
                    except OSError:
                        pass  # refused at once: fine

                threads = [threading.Thread(target=connect, args=(i,)) for i in range(n)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                served = 0
                try:
                    for s in socks:
                        if s is None:
                            continue
                        s.settimeout(5 * h.SLOW)  # a reply or a close comes at once
                        try:
                            data = s.recv(16)
                        except (ConnectionResetError, BrokenPipeError):
                            data = b""
                        if data:
                            self.assertEqual(data, b"\x05\x00")
                            served += 1
                finally:
                    for s in socks:
                        if s is not None:
                            s.close()
                self.assertEqual(served, limit, f"round {rnd}: {served} of {n} served")


class NoLeakTest(h.ProxyTestCase):
    def test_failed_handshakes_leave_no_socket_behind(self):
        pid = self.proxy.pid
        # warm up: the resolver and pipe pool may open descriptors once
        with h.EchoServer() as echo:
            with h.socks_connect(self.proxy, "127.0.0.1", echo.port)[0] as s:
                self.assertEqual(h.echo_roundtrip(s, b"x" * 100000), b"x" * 100000)
            time.sleep(0.2)
            base = h.socket_count(pid)
            closed_port = h.unused_port()
            for i in range(300):
                s = socket.create_connection(self.proxy.addr, timeout=5 * h.SLOW)
                kind = i % 5
                if kind == 0:
                    s.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not SOCKS
                elif kind == 1:
                    s.sendall(h.greeting() + h.request("127.0.0.1", closed_port))
                elif kind == 2:
                    s.sendall(bytes([5, 1, 0, 5, 1, 0, 9]))  # unknown address type
                elif kind == 3:
                    s.sendall(bytes([5, 2, 0]))  # half a greeting, then vanish
                else:
                    s.sendall(h.greeting() + h.request("127.0.0.1", echo.port) + b"hi")
                    h.recv_exact(s, 2 + 10)
                s.close()
            h.wait_for(lambda: h.socket_count(pid) <= base, 10 * h.SLOW,
                       what=f"sockets back to {base}")
            with h.socks_connect(self.proxy, "127.0.0.1", echo.port)[0] as s:
                self.assertEqual(h.echo_roundtrip(s, b"after"), b"after")


@h.ringsocks_only
class DescriptorLimitTest(unittest.TestCase):
    def fill_to_the_limit(self, p, port, n=40):
        """Lower the descriptor limit of the running proxy p to what its own descriptors and
        about 4 relays take, then open n clients to 127.0.0.1:port one after the other: each
        is accepted, and those past the limit get reply 1, as no socket toward their
        destination can be opened. Returns the relays that got theirs (open) and the limit
        as it was."""
        p.wait_live(0)
        fds = len(os.listdir(f"/proc/{p.pid}/fd"))
        hard = resource.prlimit(p.pid, resource.RLIMIT_NOFILE)[1]
        was = resource.prlimit(p.pid, resource.RLIMIT_NOFILE, (fds + 9, hard))
        held, failed = [], 0
        try:
            for _ in range(n):
                s = h.open_client(p, timeout=2 * h.SLOW)
                s.sendall(h.greeting() + h.request("127.0.0.1", port))
                self.assertEqual(h.recv_exact(s, 2), b"\x05\x00")
                r = h.read_reply(s)
                if r.rep == h.REP_OK:
                    held.append(s)
                    continue
                self.assertEqual(r.raw, h.error_reply(h.REP_FAIL))
                failed += 1
                s.close()
            # about 4 fit (a descriptor closing as the limit was set can make it 5)
            self.assertIn(len(held), range(1, 8), "relays that fit under the limit")
            self.assertEqual(failed, n - len(held))
            for i, s in enumerate(held):  # the relays that got their sockets still work
                self.assertEqual(h.echo_roundtrip(s, b"relay %d" % i), b"relay %d" % i)
        except BaseException:
            for s in held:
                s.close()
            raise
        return held, was

    def test_out_of_descriptors_is_logged_once_and_clients_get_reply_1(self):
        """Clients past the descriptor limit get reply 1 (general failure), the proxy says so
        once per 10 s (clients cause it at any rate: it logged a line per client), and once
        the relays are gone it serves again with nothing held."""
        with h.EchoServer() as echo, h.Proxy([], workers=1) as p:
            held, _ = self.fill_to_the_limit(p, echo.port)
            for s in held:
                s.close()
            p.wait_live(0)  # their descriptors are free again
            lines = [x for x in p.stderr_lines()  # the error, not -v's session lines
                     if "Too many open files" in x and " error: " in x]
            self.assertEqual(len(lines), 1, "\n".join(lines[:5]))
            with h.socks_connect(p, "127.0.0.1", echo.port)[0] as s:
                self.assertEqual(h.echo_roundtrip(s, b"again"), b"again")

    def test_a_forwarder_out_of_descriptors_blames_no_upstream(self):
        """A forwarder whose own descriptors ran out is no fault of its upstreams: it logged
        each as 'unreachable: Too many open files' and backed every one off, so that once
        descriptors were free again the next clients all went to one upstream instead of
        round-robin. Clients past the limit get reply 1 at once."""
        with h.EchoServer() as echo, h.Proxy([]) as up1, h.Proxy([]) as up2:
            ups = (up1, up2)
            with h.Proxy(["--upstream", h.socks5_url(up1), "--upstream", h.socks5_url(up2)],
                         workers=1) as fwd:
                held, was = self.fill_to_the_limit(fwd, echo.port)
                for s in held:
                    s.close()
                resource.prlimit(fwd.pid, resource.RLIMIT_NOFILE, was)
                fwd.wait_live(0)
                blamed = [x for x in fwd.stderr_lines() if " upstream 127.0.0.1:" in x]
                self.assertEqual(blamed, [])
                lines = [x for x in fwd.stderr_lines()
                         if "Too many open files" in x and " error: " in x]
                self.assertEqual(len(lines), 1, "\n".join(lines[:5]))
                before = [sum(w["accepted"] for w in u.stats()) for u in ups]
                for i in range(4):
                    with h.socks_connect(fwd, "127.0.0.1", echo.port)[0] as s:
                        self.assertEqual(h.echo_roundtrip(s, b"rr %d" % i), b"rr %d" % i)
                after = [sum(w["accepted"] for w in u.stats()) for u in ups]
                self.assertEqual([a - b for a, b in zip(after, before)], [2, 2],
                                 "round-robin over both upstreams once descriptors are free")


@h.ringsocks_only
class PipeDescriptorTest(unittest.TestCase):
    """A pipe holds two descriptors, as a connection does, and they come from the same room:
    RLIMIT_NOFILE 128 leaves room for 48 pairs. 30 relays whose destinations send more than
    their clients read each keep a pipe full (--relay splice), which would take 60 pairs in
    all; pipes were made until pipe2 met EMFILE, and the next client then met it at accept
    (accepts paused, the client waited in the listener's queue, 'Too many open files').
    Now a pipe is made only while there is room for its pair (past that a direction copies),
    and a client there is no room for is closed at once, with a warning."""

    NOFILE = 128
    RELAYS = 30
    EACH = 8 << 20

    def test_pipes_count_against_the_descriptor_limit(self):
        with socket.create_server(("127.0.0.1", 0), backlog=64) as lst, \
                h.Proxy(["--relay", "splice", "--pipes", "64"], workers=1,
                        nofile=self.NOFILE) as p:
            p.wait_live(0)
            port = lst.getsockname()[1]
            clients, targets = [], []
            try:
                for _ in range(self.RELAYS):
                    s = h.open_client(p, timeout=5 * h.SLOW)
                    self.assertEqual(h.handshake(s, "127.0.0.1", port).rep, h.REP_OK)
                    t, _ = lst.accept()
                    clients.append(s)
                    targets.append(t)
                # every destination sends until the proxy takes no more: the clients do
                # not read, so each relay's pipe stays full
                sent = [0] * self.RELAYS
                deadline = time.monotonic() + 20 * h.SLOW
                for i, t in enumerate(targets):
                    t.setblocking(False)
                    chunk = bytes([i]) * (256 << 10)
                    while sent[i] < self.EACH and time.monotonic() < deadline:
                        try:
                            sent[i] += t.send(chunk[: self.EACH - sent[i]])
                        except BlockingIOError:
                            time.sleep(0.01)
                            try:
                                sent[i] += t.send(chunk[: self.EACH - sent[i]])
                            except BlockingIOError:
                                break
                time.sleep(0.3)
                lent = sum(w["pipes_lent"] for w in p.stats())
                self.assertGreater(lent, 0, "no relay splices")
                self.assertLessEqual(lent + self.RELAYS, 48, "pairs past the limit")
                # the room is all taken: the next client is closed at once, not left waiting
                # in the listener's queue
                with socket.create_connection(p.addr, timeout=5 * h.SLOW) as x:
                    data, _ = h.read_to_close(x, timeout=5 * h.SLOW)
                    self.assertEqual(data, b"")
                # every relay, splicing or copying, delivers every byte
                for i, (s, t) in enumerate(zip(clients, targets)):
                    # the rest may not fit in the buffers between them (the first phase can
                    # stop early on a busy machine): send it while the client reads
                    def finish(t=t, rest=bytes([i]) * (self.EACH - sent[i])):
                        t.settimeout(20 * h.SLOW)
                        try:
                            t.sendall(rest)
                        finally:
                            t.close()
                    sender = threading.Thread(target=finish, daemon=True)
                    sender.start()
                    got, _ = h.read_to_close(s, timeout=20 * h.SLOW, limit=2 * self.EACH)
                    sender.join(20 * h.SLOW)
                    self.assertEqual((len(got), got.count(bytes([i]))),
                                     (self.EACH, self.EACH), f"relay {i}")
                self.assertNotIn("Too many open files", p.stderr())
                self.assertIn("in use: the descriptor limit has no room for another)",
                              p.stderr())
            finally:
                for s in clients + targets:
                    s.close()
            p.check_idle()


if __name__ == "__main__":
    unittest.main(verbosity=2)
