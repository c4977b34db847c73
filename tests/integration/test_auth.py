"""RFC 1929 username/password: with --user, no-auth is refused, good credentials work, bad ones
get 01 01 and a close; raw clients and curl."""

import os
import shutil
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

ALICE = ("alice", "secret")
BOB = ("bob", "hunter2")


class AuthTest(h.EchoProxyTestCase):
    proxy_args = ["--user", "alice:secret", "--user", "bob:hunter2"]

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="ringsocks-auth-")
        cls.blob = os.urandom(3 * 1024 * 1024 + 7)
        with open(os.path.join(cls.dir, "blob.bin"), "wb") as f:
            f.write(cls.blob)
        cls.http = h.HttpServer(cls.dir)
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.http.close()
            shutil.rmtree(cls.dir, ignore_errors=True)

    def client(self):
        return h.open_client(self.proxy)

    def login(self, s, user, password, methods=(h.M_USERPASS,)):
        s.sendall(h.greeting(methods))
        self.assertEqual(h.recv_exact(s, 2).hex(), "0502")
        s.sendall(h.auth_request(user, password))

    def assert_login_ok_and_relay(self, creds):
        with self.client() as s:
            self.login(s, *creds)
            self.assertEqual(h.recv_exact(s, 2).hex(), "0100")
            s.sendall(h.request("127.0.0.1", self.echo.port))
            r = h.read_reply(s)
            self.assertEqual(r.rep, h.REP_OK, r)
            msg = f"authenticated as {creds[0]}".encode()
            self.assertEqual(h.echo_roundtrip(s, msg), msg)

    def test_no_auth_refused(self):
        with self.client() as s:
            s.sendall(h.greeting((h.M_NOAUTH,)))
            data, how = h.read_to_close(s, timeout=5 * h.SLOW)
            self.assertEqual(data.hex(), "05ff")

    def test_gssapi_only_refused(self):
        with self.client() as s:
            s.sendall(h.greeting((h.M_GSSAPI,)))
            data, how = h.read_to_close(s, timeout=5 * h.SLOW)
            self.assertEqual(data.hex(), "05ff")

    def test_login_ok(self):
        self.assert_login_ok_and_relay(ALICE)

    @h.ringsocks_only  # several --user
    def test_second_user(self):
        self.assert_login_ok_and_relay(BOB)

    def test_both_methods_offered_userpass_chosen(self):
        with self.client() as s:
            self.login(s, *ALICE, methods=(h.M_NOAUTH, h.M_USERPASS))
            self.assertEqual(h.recv_exact(s, 2).hex(), "0100")
            s.sendall(h.request("127.0.0.1", self.echo.port))
            self.assertEqual(h.read_reply(s).rep, h.REP_OK)
            self.assertEqual(h.echo_roundtrip(s, b"both"), b"both")

    def test_bad_credentials(self):
        cases = [
            ("alice", "wrong"),
            ("alice", "secre"),  # prefix
            ("alice", "secrets"),  # longer
            ("alice", "SECRET"),
            ("Alice", "secret"),
            ("alic", "secret"),
            ("mallory", "secret"),
            ("alice", BOB[1]),  # bob's password is not alice's
            ("bob", ALICE[1]),
        ]
        for user, password in cases:
            with self.subTest(user=user, password=password), self.client() as s:
                self.login(s, user, password)
                data, how = h.read_to_close(s, timeout=5 * h.SLOW)
                self.assertEqual(data.hex(), "0101")

    def test_empty_fields_rejected(self):
        # ULEN/PLEN 0 is outside RFC 1929 (1-255): a failure status or a silent close
        for user, password in (("alice", ""), ("", "secret"), ("", "")):
            with self.subTest(user=user, password=password), self.client() as s:
                self.login(s, user, password)
                data, how = h.read_to_close(s, timeout=5 * h.SLOW)
                self.assertIn(data.hex(), ("0101", ""))

    def test_max_length_credentials_rejected(self):
        with self.client() as s:
            self.login(s, "u" * 255, "p" * 255)
            data, how = h.read_to_close(s, timeout=5 * h.SLOW)
            self.assertEqual(data.hex(), "0101")

    def test_bad_subnegotiation_version(self):
        with self.client() as s:
            s.sendall(h.greeting((h.M_USERPASS,)))
            self.assertEqual(h.recv_exact(s, 2).hex(), "0502")
            s.sendall(h.auth_request(*ALICE, ver=2))
            data, how = h.read_to_close(s, timeout=5 * h.SLOW)
            # closed, either silently or with a failure status: never a success
            self.assertTrue(data == b"" or (len(data) == 2 and data[1] != 0), data.hex())

    def test_auth_one_byte_at_a_time(self):
        with h.open_client(self.proxy, nodelay=True) as s:
            wire = h.greeting((h.M_USERPASS,)) + h.auth_request(*ALICE) + h.request("127.0.0.1", self.echo.port)
            for i, b in enumerate(wire):
                s.sendall(bytes([b]))
                time.sleep(0.005)
            self.assertEqual(h.recv_exact(s, 4).hex(), "05020100")
            self.assertEqual(h.read_reply(s).rep, h.REP_OK)
            self.assertEqual(h.echo_roundtrip(s, b"dribbled"), b"dribbled")

    def test_pipelined_auth_request_and_payload(self):
        payload = os.urandom(5000)
        with self.client() as s:
            s.sendall(h.greeting((h.M_USERPASS,)) + h.auth_request(*ALICE)
                      + h.request("127.0.0.1", self.echo.port) + payload)
            self.assertEqual(h.recv_exact(s, 4).hex(), "05020100")
            r = h.read_reply(s)
            self.assertEqual(r.rep, h.REP_OK, r)
            self.assertEqual(h.recv_exact(s, len(payload)), payload)

    def test_pipelined_request_after_bad_password_is_not_served(self):
        before = self.echo.accepted
        with self.client() as s:
            s.sendall(h.greeting((h.M_USERPASS,)) + h.auth_request("alice", "nope")
                      + h.request("127.0.0.1", self.echo.port) + b"should never arrive")
            data, how = h.read_to_close(s, timeout=5 * h.SLOW)
            self.assertEqual(data[:4].hex(), "05020101")
            self.assertEqual(len(data), 4, data.hex())
        self.assertEqual(self.echo.accepted, before, "the proxy connected for an unauthenticated client")

    def run_curl(self, args, url):
        out = os.path.join(self.dir, f"out-{os.getpid()}")
        if os.path.exists(out):
            os.unlink(out)
        r = h.curl(args + ["-o", out, url])
        got = None
        if os.path.exists(out):
            with open(out, "rb") as f:
                got = f.read()
            os.unlink(out)
        return r, got

    def test_curl_proxy_user(self):
        r, got = self.run_curl(["--socks5", f"127.0.0.1:{self.proxy.port}", "--proxy-user", "alice:secret"],
                               self.http.url("blob.bin"))
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.assertEqual(h.sha256(got), h.sha256(self.blob))

    def test_curl_url_credentials(self):
        r, got = self.run_curl(["-x", f"socks5h://alice:secret@127.0.0.1:{self.proxy.port}"],
                               self.http.url("blob.bin", host="localhost"))
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.assertEqual(h.sha256(got), h.sha256(self.blob))

    def test_curl_wrong_password_fails(self):
        r, got = self.run_curl(["--socks5", f"127.0.0.1:{self.proxy.port}", "--proxy-user", "alice:nope"],
                               self.http.url("blob.bin"))
        self.assertNotEqual(r.returncode, 0)
        self.assertFalse(got, "curl got data with a wrong password")

    def test_curl_without_credentials_fails(self):
        r, got = self.run_curl(["--socks5", f"127.0.0.1:{self.proxy.port}"], self.http.url("blob.bin"))
        self.assertNotEqual(r.returncode, 0)
        self.assertFalse(got)


if __name__ == "__main__":
    h.main()
