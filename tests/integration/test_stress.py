"""Randomised relay stress: rounds of concurrent connections, each with its own seeded scenario
(sizes each way from nothing to 12 MiB, readers that pause, clients or destinations that reset in
the middle). Every clean connection must deliver exactly its bytes both ways, every connection
must end (no hang), and afterwards the proxy must hold no socket but its listeners."""

import os
import random
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
CONNS = 32  # a round's concurrent connections


def scenario(seed):
    """The connection's plan, derived from its seed on both ends."""
    rnd = random.Random(seed)

    def size():
        return rnd.choice([0, rnd.randint(1, 4 * KiB), rnd.randint(4 * KiB, 256 * KiB),
                           rnd.randint(256 * KiB, 3 * MiB), rnd.randint(3 * MiB, 12 * MiB)])

    kind = rnd.choices(["clean", "client-reset", "dst-reset"], weights=[8, 1, 1])[0]
    up, down = size(), size()
    return {
        "kind": kind,
        "up": rnd.randbytes(up),
        "down": rnd.randbytes(down),
        "client_pause": rnd.choice([0, 0, 0, 0.2]),  # seconds before the client reads
        "dst_pause": rnd.choice([0, 0, 0, 0.2]),
        "reset_after": rnd.randint(0, max(up, down, 1)),  # bytes before the reset
    }


def reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def recv_some(sock, n):
    """Read up to n bytes (fewer at EOF); a reset ends it too."""
    got = 0
    try:
        while got < n:
            b = sock.recv(min(1 << 20, n - got))
            if not b:
                break
            got += len(b)
    except ConnectionResetError:
        pass
    return got


def drain_to_end(sock):
    """Read to EOF or reset: the connection must end, whichever way."""
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        pass


def sender(sock, data, errs):
    def run():
        try:
            h.send_all_chunks(sock, data)
            sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            errs.append(repr(e))
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


class StressTest(h.ProxyTestCase):
    def destination(self, c, addr):
        """Reads the connection's seed, then plays the destination's part of its scenario."""
        c.settimeout(self.stall)
        seed = struct.unpack("!I", h.recv_exact(c, 4))[0]
        sc = scenario(seed)
        if sc["kind"] == "dst-reset":
            c.sendall(sc["down"][:sc["reset_after"]])
            recv_some(c, sc["reset_after"])
            reset(c)
            return seed, "reset"
        if sc["kind"] == "client-reset":
            # plays along until the client's reset ends the connection
            t = sender(c, sc["down"], [])
            drain_to_end(c)
            t.join(self.stall)
            return seed, "ended"
        errs = []
        t = sender(c, sc["down"], errs)
        time.sleep(sc["dst_pause"])
        n, digest = h.drain_hash(c)
        t.join(self.stall)
        return seed, ((n, digest) == (len(sc["up"]), h.sha256(sc["up"])), errs)

    def client(self, seed, port, out):
        sc = scenario(seed)
        try:
            s, _ = h.socks_connect(self.proxy, "127.0.0.1", port)
        except Exception as e:  # noqa: BLE001
            out[seed] = f"connect: {e!r}"
            return
        s.settimeout(self.stall)
        s.sendall(struct.pack("!I", seed))
        if sc["kind"] == "client-reset":
            s.sendall(sc["up"][:sc["reset_after"]])
            recv_some(s, sc["reset_after"])
            reset(s)
            out[seed] = True
            return
        if sc["kind"] == "dst-reset":
            t = sender(s, sc["up"], [])
            try:
                drain_to_end(s)  # EOF or reset, but it must end
                out[seed] = True
            except socket.timeout:
                out[seed] = "the destination's reset never ended the connection"
            t.join(self.stall)
            s.close()
            return
        errs = []
        t = sender(s, sc["up"], errs)
        time.sleep(sc["client_pause"])
        try:
            n, digest = h.drain_hash(s)
            want = (len(sc["down"]), h.sha256(sc["down"]))
            out[seed] = True if (n, digest) == want else f"got {n} bytes, want {want[0]}"
        except socket.timeout:
            out[seed] = "stalled"
        t.join(self.stall)
        if errs:
            out[seed] = f"sending: {errs}"
        s.close()

    def proxy_sockets(self):
        return h.socket_count(self.proxy.pid)

    def idle_sockets(self):
        """The proxy's sockets at rest (its listeners): the start-up probe's connection may
        still be closing, so two equal readings 0.1 s apart."""
        last = self.proxy_sockets()
        for _ in range(50):
            time.sleep(0.1)
            now = self.proxy_sockets()
            if now == last:
                return now
            last = now
        return last

    def test_random_scenarios(self):
        self.stall = 10 * h.SLOW
        idle = None if h.PEER else self.idle_sockets()
        deadline = time.monotonic() + 6 * h.SLOW
        rounds = kinds = 0
        for rnd in range(20):
            if rnd >= 2 and time.monotonic() > deadline:
                break
            seeds = [rnd * 1000 + i for i in range(CONNS)]
            out = {}
            with h.ThreadedServer(self.destination) as dst:
                threads = [threading.Thread(target=self.client, args=(sd, dst.port, out))
                           for sd in seeds]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(4 * self.stall)
                dst.wait_done(CONNS, timeout=4 * self.stall)
            bad = {sd: r for sd, r in out.items() if r is not True}
            self.assertEqual(bad, {}, f"round {rnd}: client side")
            self.assertEqual(len(out), CONNS, f"round {rnd}: clients that did not finish")
            self.assertEqual(dst.errors, [], f"round {rnd}: destination side")
            clean = [r for r in dst.results if r[1] not in ("reset", "ended")]
            self.assertEqual([r for r in clean if r[1] != (True, [])], [],
                             f"round {rnd}: destinations that got the wrong bytes")
            kinds += len(clean)
            rounds += 1
        if idle is not None:
            # every relay has ended: the proxy holds its listeners' sockets and nothing else
            h.wait_for(lambda: self.proxy_sockets() == idle, 10 * h.SLOW,
                       what=f"the proxy back to its {idle} idle sockets")
        print(f"  {rounds} rounds of {CONNS} connections, {kinds} clean ones checked; idle"
              f" sockets {idle}", file=sys.stderr)


if __name__ == "__main__":
    h.main()
