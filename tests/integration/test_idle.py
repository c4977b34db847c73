"""Idle connections cost no threads: 500 relays (and 200 half-done handshakes) sitting idle keep
the proxy at <= workers + 4 threads; data still flows on them afterwards. 64 busy relays keep it
there too."""

import os
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

N_IDLE = 500


@unittest.skipIf(h.PEER, "counts ringsocks' threads")
class IdleTest(h.EchoProxyTestCase):
    workers = 2
    many_fds = True

    def sample_threads(self, seconds):
        samples = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            samples.append(self.proxy.threads())
            time.sleep(0.05)
        return samples

    def test_idle_relays_cost_no_threads(self):
        limit = self.workers + 4
        base = self.proxy.threads()
        socks = []
        try:
            for i in range(N_IDLE):
                s, r = h.socks_connect(self.proxy, "127.0.0.1", self.echo.port)
                socks.append(s)
            h.wait_for(lambda: self.echo.accepted >= N_IDLE, 10 * h.SLOW, what="echo accepts")
            idle1 = self.sample_threads(1.0)
            # traffic on a sample of them, then idle again
            for i in range(0, N_IDLE, 10):
                msg = f"idle relay {i} ".encode() * 20
                self.assertEqual(h.echo_roundtrip(socks[i], msg), msg, f"relay {i}")
            idle2 = self.sample_threads(1.0)
            for i in range(5, N_IDLE, 50):
                msg = os.urandom(100_000)
                socks[i].sendall(msg)
                self.assertEqual(h.recv_exact(socks[i], len(msg)), msg, f"relay {i}")
        finally:
            for s in socks:
                s.close()
        print(f"  threads: start {base}, idle max {max(idle1)}, after traffic max {max(idle2)}"
              f" (limit {limit})", file=sys.stderr)
        self.assertLessEqual(max(idle1), limit, f"threads while {N_IDLE} relays idle: {idle1}")
        self.assertLessEqual(max(idle2), limit, f"threads while idle after traffic: {idle2}")

    def test_busy_relays_start_few_threads(self):
        """64 relays moving data at once: the proxy stays within workers + 4 threads while they
        run and afterwards. (io_uring runs --relay splice-sqe's splices in io-wq threads and,
        unless the proxy limits them, starts one per splice in flight: 19 for 64 downloads.)"""
        limit = self.workers + 4
        n, chunk, rounds = 64, 128 * 1024, 8
        peak, done = [self.proxy.threads()], threading.Event()
        errors = []

        def sample():
            while not done.is_set():
                peak.append(self.proxy.threads())
                time.sleep(0.005)

        def relay(s, i):
            try:
                for r in range(rounds):
                    msg = os.urandom(chunk)
                    if h.echo_roundtrip(s, msg) != msg:
                        errors.append(f"relay {i} round {r}: wrong bytes")
                        return
            except (OSError, EOFError) as e:
                errors.append(f"relay {i}: {e!r}")

        socks = []
        sampler = threading.Thread(target=sample)
        try:
            for i in range(n):
                socks.append(h.socks_connect(self.proxy, "127.0.0.1", self.echo.port)[0])
            sampler.start()
            threads = [threading.Thread(target=relay, args=(s, i)) for i, s in enumerate(socks)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30 * h.SLOW)
            after = self.sample_threads(0.5)
        finally:
            done.set()
            if sampler.is_alive():
                sampler.join()
            for s in socks:
                s.close()
        print(f"  threads: {len(peak)} samples under load, max {max(peak)}; after max"
              f" {max(after)} (limit {limit})", file=sys.stderr)
        self.assertEqual(errors, [])
        self.assertLessEqual(max(peak), limit, f"threads with {n} relays busy")
        self.assertLessEqual(max(after), limit, f"threads after {n} busy relays: {after}")

    def test_idle_handshakes_cost_no_threads(self):
        limit = self.workers + 4
        socks = []
        try:
            for i in range(200):
                s = h.open_client(self.proxy)
                # a third never send anything, a third a greeting, a third half a request
                if i % 3 == 1:
                    s.sendall(h.greeting())
                elif i % 3 == 2:
                    s.sendall(h.greeting() + h.request("127.0.0.1", self.echo.port)[:6])
                socks.append(s)
            samples = self.sample_threads(1.0)
            self.assertLessEqual(max(samples), limit, f"threads with 200 pending handshakes: {samples}")
            # the pending ones can still finish their handshake
            s = socks[2]
            self.assertEqual(h.recv_exact(s, 2).hex(), "0500")
            s.sendall(h.request("127.0.0.1", self.echo.port)[6:])
            self.assertEqual(h.read_reply(s).rep, h.REP_OK)
            self.assertEqual(h.echo_roundtrip(s, b"late"), b"late")
        finally:
            for s in socks:
                s.close()


if __name__ == "__main__":
    h.main()
