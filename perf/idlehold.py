#!/usr/bin/env python3
"""Holds many idle TCP connections, for measuring what a proxy spends per idle relay.

  idlehold.py serve --listen 127.0.0.1:PORT [--ready FILE]
      Accepts connections and holds them, discarding whatever they send, until SIGTERM/SIGINT.
      Writes FILE (or prints "ready") once listening.

  idlehold.py hold --target 127.0.0.1:PORT (--proxy 127.0.0.1:PORT | --direct) -n N
                   [--parallel P] [--timeout S] [--hold S] [--status FILE]
      Opens N connections to the target, through the SOCKS5 proxy (no auth, CONNECT to the
      target's IPv4 address, reply read) or directly, at most P handshakes at a time; writes a
      JSON status to FILE (or stdout) once every attempt has finished; holds the connections
      until SIGTERM/SIGINT or S seconds, then counts how many the far side closed meanwhile,
      rewrites the status and closes them all.

One process, one thread, epoll via selectors/asyncio: 8000 sockets cost a few MB here. Both roles
raise their soft RLIMIT_NOFILE to the hard limit. Loopback use only.
"""
import argparse
import asyncio
import json
import os
import resource
import select
import selectors
import signal
import socket
import struct
import sys
import time


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def hostport(s):
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def write_json(path, obj):
    data = json.dumps(obj, sort_keys=True)
    if not path or path == "-":
        print(data, flush=True)
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(data + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- serve
def serve(args):
    raise_nofile()
    host, port = hostport(args.listen)
    lsock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, port))
    lsock.listen(4096)
    lsock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    if args.ready:
        write_json(args.ready, {"listening": "%s:%d" % (host, port), "pid": os.getpid()})
    else:
        print("ready", flush=True)
    held = 0
    peak = 0
    while not stop:
        try:
            events = sel.select(timeout=0.5)
        except InterruptedError:
            continue
        for key, _ in events:
            if key.data is None:
                for _ in range(256):
                    try:
                        c, _ = lsock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:  # EMFILE and the like: stop accepting this round
                        break
                    c.setblocking(False)
                    sel.register(c, selectors.EVENT_READ, 1)
                    held += 1
                    peak = max(peak, held)
            else:
                c = key.fileobj
                try:
                    data = c.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(c)
                    c.close()
                    held -= 1
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    print("serve: peak %d connections held" % peak, file=sys.stderr)


# ---------------------------------------------------------------- hold
async def one(target, proxy, timeout, sem, socks, errors):
    async with sem:
        loop = asyncio.get_running_loop()
        dest = proxy or target
        s = socket.socket(socket.AF_INET6 if ":" in dest[0] else socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)

        async def exact(n):
            buf = b""
            while len(buf) < n:
                chunk = await loop.sock_recv(s, n - len(buf))
                if not chunk:
                    raise ConnectionError("eof")
                buf += chunk
            return buf

        async def handshake():
            await loop.sock_connect(s, dest)
            if not proxy:
                return
            await loop.sock_sendall(s, b"\x05\x01\x00")
            if await exact(2) != b"\x05\x00":
                raise ConnectionError("method")
            fam = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
            atyp = b"\x04" if fam == socket.AF_INET6 else b"\x01"
            req = b"\x05\x01\x00" + atyp + socket.inet_pton(fam, target[0]) + struct.pack(">H", target[1])
            await loop.sock_sendall(s, req)
            head = await exact(4)
            if head[1] != 0:
                raise ConnectionError("rep%d" % head[1])
            alen = {1: 4, 4: 16}.get(head[3])
            if alen is None:
                alen = (await exact(1))[0]
            await exact(alen + 2)

        try:
            await asyncio.wait_for(handshake(), timeout)
            socks.append(s)
        except Exception as e:  # noqa: BLE001 -- every failure is counted by kind
            kind = type(e).__name__ if not isinstance(e, ConnectionError) or not e.args else e.args[0]
            if isinstance(e, OSError) and e.errno:
                kind = os.strerror(e.errno)
            if isinstance(e, asyncio.TimeoutError):
                kind = "timeout"
            errors[kind] = errors.get(kind, 0) + 1
            s.close()


async def hold_main(args):
    nofile = raise_nofile()
    target = hostport(args.target)
    proxy = None if args.direct else hostport(args.proxy)
    n = args.n
    if n + 64 > nofile:
        print("hold: %d connections need more descriptors than RLIMIT_NOFILE %d" % (n, nofile),
              file=sys.stderr)
        n = nofile - 64
    socks, errors = [], {}
    sem = asyncio.Semaphore(args.parallel)
    t0 = time.monotonic()
    tasks = [asyncio.ensure_future(one(target, proxy, args.timeout, sem, socks, errors)) for _ in range(n)]
    done, pending = await asyncio.wait(tasks, timeout=args.deadline)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
        errors["deadline"] = errors.get("deadline", 0) + len(pending)
    elapsed = time.monotonic() - t0
    status = {"requested": args.n, "attempted": n, "established": len(socks),
              "failed": n - len(socks), "errors": errors, "establish_s": round(elapsed, 3),
              "mode": "direct" if args.direct else "socks5", "pid": os.getpid(), "phase": "holding"}
    write_json(args.status, status)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), args.hold)
    except asyncio.TimeoutError:
        pass
    # How many did the far side close (or send to) while held?
    p = select.poll()
    for s in socks:
        p.register(s, select.POLLIN | select.POLLRDHUP)
    closed = len(p.poll(0))
    status.update(phase="closed", closed_by_peer_while_held=closed,
                  held_s=round(time.monotonic() - t0 - elapsed, 3))
    for s in socks:
        s.close()
    write_json(args.status, status)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("serve")
    sv.add_argument("--listen", required=True)
    sv.add_argument("--ready")
    hd = sub.add_parser("hold")
    hd.add_argument("--target", required=True)
    g = hd.add_mutually_exclusive_group(required=True)
    g.add_argument("--proxy")
    g.add_argument("--direct", action="store_true")
    hd.add_argument("-n", type=int, default=8000)
    hd.add_argument("--parallel", type=int, default=128, help="handshakes in flight (128)")
    hd.add_argument("--timeout", type=float, default=10.0, help="per connection (10 s)")
    hd.add_argument("--deadline", type=float, default=60.0, help="for all of them (60 s)")
    hd.add_argument("--hold", type=float, default=120.0, help="longest hold (120 s)")
    hd.add_argument("--status")
    args = ap.parse_args()
    if args.cmd == "serve":
        serve(args)
    else:
        asyncio.run(hold_main(args))


if __name__ == "__main__":
    main()
