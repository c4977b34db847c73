"""Many connections at once: 1000 relays open together (all established before any finishes),
each with its own payload, no cross-talk; then a churn of short connections (slot reuse)."""

import asyncio
import os
import random
import struct
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

N_CONCURRENT = 1000


def payload_for(i, rnd):
    """1-4 KiB, starting with the connection's index, random bytes after it."""
    head = f"<conn {i:06d}>".encode()
    return head + rnd.randbytes(rnd.randint(1024, 4096) - len(head))


async def async_read_reply(reader):
    head = await reader.readexactly(4)
    atyp = head[3]
    if atyp == h.ATYP_IPV4:
        rest = await reader.readexactly(4 + 2)
    elif atyp == h.ATYP_IPV6:
        rest = await reader.readexactly(16 + 2)
    elif atyp == h.ATYP_DOMAIN:
        ln = await reader.readexactly(1)
        rest = ln + await reader.readexactly(ln[0] + 2)
    else:
        raise AssertionError(f"bad reply {head.hex()}")
    return head + rest


async def open_relay(proxy, port, host="127.0.0.1"):
    reader, writer = await asyncio.open_connection(*proxy.addr)
    writer.write(h.greeting())
    if await reader.readexactly(2) != b"\x05\x00":
        raise AssertionError("method selection")
    writer.write(h.request(host, port))
    rep = await async_read_reply(reader)
    if rep[1] != 0:
        raise AssertionError(f"CONNECT failed: {rep.hex()}")
    return reader, writer


class LoadTest(h.EchoProxyTestCase):
    many_fds = True

    def test_1000_at_once(self):
        n = N_CONCURRENT
        before = self.echo.accepted
        timeout = 60 * h.SLOW

        async def run():
            all_up = asyncio.Event()
            established = 0
            results = {}

            async def one(i):
                nonlocal established
                rnd = random.Random(i)
                payload = payload_for(i, rnd)
                reader, writer = await open_relay(self.proxy, self.echo.port)
                try:
                    established += 1
                    if established == n:
                        all_up.set()
                    await all_up.wait()  # nobody sends before all n relays are up
                    writer.write(payload)
                    writer.write_eof()
                    got = await reader.read()  # to EOF
                    results[i] = got == payload or (f"got {len(got)} bytes, head {got[:14]!r},"
                                                    f" want {len(payload)} {payload[:14]!r}")
                finally:
                    writer.close()

            t0 = time.monotonic()
            outcomes = await asyncio.wait_for(
                asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True), timeout)
            return outcomes, results, established, time.monotonic() - t0

        outcomes, results, established, elapsed = asyncio.run(run())
        errors = [f"{i}: {o!r}" for i, o in enumerate(outcomes) if isinstance(o, BaseException)]
        self.assertEqual(errors[:10], [], f"{len(errors)} connections failed")
        self.assertEqual(established, n)
        bad = {i: r for i, r in results.items() if r is not True}
        self.assertEqual(dict(list(bad.items())[:5]), {},
                         f"{len(bad)} connections got bytes that were not their own")
        self.assertEqual(len(results), n)
        h.wait_for(lambda: self.echo.accepted - before >= n, 10, what="echo accepts")
        self.assertEqual(self.echo.accepted - before, n, "one destination connection per relay")
        print(f"  {n} concurrent relays in {elapsed:.2f}s, echo max active {self.echo.max_active}",
              file=sys.stderr)

    def test_churn(self):
        """5000 short relays, at most 250 at a time: slots are freed and reused correctly."""
        total, width = 5000, 250
        timeout = 90 * h.SLOW

        async def run():
            sem = asyncio.Semaphore(width)
            bad = []

            async def one(i):
                async with sem:
                    msg = struct.pack("!I", i) * (1 + i % 50)
                    reader, writer = await open_relay(self.proxy, self.echo.port)
                    try:
                        writer.write(msg)
                        writer.write_eof()
                        got = await reader.read()
                        if got != msg:
                            bad.append(i)
                    finally:
                        writer.close()

            outcomes = await asyncio.wait_for(
                asyncio.gather(*(one(i) for i in range(total)), return_exceptions=True), timeout)
            return [o for o in outcomes if isinstance(o, BaseException)], bad

        t0 = time.monotonic()
        errors, bad = asyncio.run(run())
        elapsed = time.monotonic() - t0
        self.assertEqual([repr(e) for e in errors[:10]], [], f"{len(errors)} relays failed")
        self.assertEqual(bad[:20], [], f"{len(bad)} relays got wrong bytes back")
        print(f"  {total} short relays in {elapsed:.2f}s", file=sys.stderr)


if __name__ == "__main__":
    h.main()
