"""curl through ringsocks: --socks5 (IP literal) and --socks5-hostname (the proxy resolves),
small and multi-MiB files, IPv4 and IPv6 destinations, a name served by the test DNS server."""

import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

TEST_NAME = "www.ringsocks.test"


class CurlTest(h.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="ringsocks-www-")
        cls.files = {
            "small.txt": b"hello through ringsocks\n",
            "empty.bin": b"",
            "big.bin": os.urandom(5 * 1024 * 1024 + 12345),
        }
        for name, data in cls.files.items():
            with open(os.path.join(cls.dir, name), "wb") as f:
                f.write(data)
        cls.http4 = h.HttpServer(cls.dir, "127.0.0.1")
        cls.http6 = h.HttpServer(cls.dir, "::1")
        super().setUpClass()
        cls.dns.add(TEST_NAME, a=["127.0.0.1"])

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.http4.close()
            cls.http6.close()
            shutil.rmtree(cls.dir, ignore_errors=True)

    def fetch(self, proxy_flag, url, name):
        out = os.path.join(self.dir, f"out-{os.getpid()}-{name}")
        try:
            r = h.curl([proxy_flag, f"127.0.0.1:{self.proxy.port}", "-o", out, url])
            self.assertEqual(r.returncode, 0, f"curl {proxy_flag} {url} failed: {r.stderr.decode()}")
            with open(out, "rb") as f:
                got = f.read()
        finally:
            if os.path.exists(out):
                os.unlink(out)
        want = self.files[name]
        self.assertEqual(len(got), len(want), f"{url}: length")
        self.assertEqual(h.sha256(got), h.sha256(want), f"{url}: sha256")

    def test_socks5_ip_small(self):
        self.fetch("--socks5", self.http4.url("small.txt"), "small.txt")

    def test_socks5_ip_empty(self):
        self.fetch("--socks5", self.http4.url("empty.bin"), "empty.bin")

    def test_socks5_ip_big(self):
        self.fetch("--socks5", self.http4.url("big.bin"), "big.bin")

    def test_socks5_hostname_localhost(self):
        # "localhost" is resolved by the proxy (from /etc/hosts or the test DNS server)
        self.fetch("--socks5-hostname", self.http4.url("small.txt", host="localhost"), "small.txt")
        self.fetch("--socks5-hostname", self.http4.url("big.bin", host="localhost"), "big.bin")

    @h.ringsocks_only  # microsocks uses the system resolver
    def test_socks5_hostname_test_dns(self):
        before = self.dns.count(TEST_NAME)
        self.fetch("--socks5-hostname", self.http4.url("small.txt", host=TEST_NAME), "small.txt")
        self.fetch("--socks5-hostname", self.http4.url("big.bin", host=TEST_NAME), "big.bin")
        self.assertGreaterEqual(self.dns.count(TEST_NAME) - before, 1,
                                "the proxy did not ask the --resolver server for the name")

    def test_socks5_ipv6_destination(self):
        self.fetch("--socks5", self.http6.url("small.txt"), "small.txt")
        self.fetch("--socks5", self.http6.url("big.bin"), "big.bin")

    def test_socks5h_url_scheme(self):
        # proxy given as a URL: socks5h:// makes curl pass the name to the proxy
        out = os.path.join(self.dir, f"out-{os.getpid()}-scheme")
        try:
            r = h.curl(["-x", f"socks5h://127.0.0.1:{self.proxy.port}", "-o", out,
                        self.http4.url("big.bin", host="localhost")])
            self.assertEqual(r.returncode, 0, r.stderr.decode())
            with open(out, "rb") as f:
                self.assertEqual(h.sha256(f.read()), h.sha256(self.files["big.bin"]))
        finally:
            if os.path.exists(out):
                os.unlink(out)

    def test_many_sequential_fetches(self):
        # one curl, 30 URLs, each over its own proxied connection (no keep-alive: HTTP/1.0 server)
        urls = [self.http4.url("small.txt") for _ in range(30)]
        r = h.curl(["--socks5", f"127.0.0.1:{self.proxy.port}"] + urls)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.assertEqual(r.stdout, self.files["small.txt"] * 30)


if __name__ == "__main__":
    h.main()
