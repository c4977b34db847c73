"""--keepalive: a client that vanishes without a FIN (powered off, forgotten by a NAT) is
probed and dropped, and its relay, slot and descriptors go with it; with --keepalive 0 it
stays. A vanished peer is made in a network namespace of the test's own (unshare -n, root):
its loopback is taken down under an established relay, so nothing answers the probes."""

import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def inner(keepalive, wait):
    """Runs inside the namespace: one relay, then the loopback goes down. Prints the
    session's log line if the proxy ended it within wait seconds, and its live count."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with h.EchoServer() as echo, h.Proxy(["--keepalive", keepalive], workers=1) as p:
        p.wait_live(0)
        s, r = h.socks_connect(p, "127.0.0.1", echo.port)
        assert h.echo_roundtrip(s, b"alive") == b"alive"
        p.wait_live(1)
        # the client's (delayed) ACK of the echo must be in: with data unacknowledged, TCP
        # retransmits (for many minutes) instead of probing
        time.sleep(0.5)
        subprocess.run(["ip", "link", "set", "lo", "down"], check=True)
        t0 = time.monotonic()
        ended = None
        while time.monotonic() - t0 < wait:
            lines = [x for x in p.stderr_lines() if " session client=" in x and "up=5" in x]
            if lines:
                ended = lines[0]
                break
            time.sleep(0.1)
        print(f"ENDED {time.monotonic() - t0:.1f} {ended}" if ended else "STILL-LIVE")
        print(f"LIVE {sum(st['live'] for st in p.stats())}")
        s.close()
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


@h.ringsocks_only
@unittest.skipUnless(os.geteuid() == 0, "needs root for a network namespace (unshare -n)")
class KeepaliveTest(unittest.TestCase):
    def run_inner(self, keepalive, wait):
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        out = subprocess.run(["unshare", "-n", sys.executable, os.path.abspath(__file__),
                              "--inner", str(keepalive), str(wait)],
                             capture_output=True, text=True, timeout=wait + 60 * h.SLOW,
                             env=env)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        return out.stdout

    def test_vanished_client_is_dropped(self):
        """--keepalive 1: probes after 1 s of silence, 1 s apart, 5 of them: the relay ends
        (reset: the read fails with ETIMEDOUT) about 6 s after the client went silent."""
        out = self.run_inner(1, 20 * h.SLOW)
        self.assertIn("ENDED", out)
        self.assertIn("read error", out)
        self.assertIn("LIVE 0", out)
        took = float(out.split("ENDED ", 1)[1].split()[0])
        self.assertGreaterEqual(took, 4, out)

    def test_without_keepalive_it_stays(self):
        out = self.run_inner(0, 9)
        self.assertIn("STILL-LIVE", out)
        self.assertIn("LIVE 1", out)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--inner":
        inner(sys.argv[2], float(sys.argv[3]))
    else:
        h.main()
