"""`portcullis doctor` against scripted proxies that misbehave in ways real deployments do and
the peers in test_doctor.py cannot be configured to: Negotiate/NTLM only, NTLM through a proxy
that closes every connection, a realm that changes,
stale nonces forever, a 407 without a challenge, several challenges in one field, and an
https:// proxy. The scripted proxy checks Digest answers itself with Python's hashlib, so the
Digest tests also prove doctor's RFC 7616 arithmetic against an independent implementation.
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import ssl
import struct
import threading

import pytest

from test_doctor import assert_in, assert_result, home, run_doctor  # noqa: F401 - home is a fixture

USER_NAME = "carol"
SECRET = "Sésame, ouvre-toi"
ORIGIN_BODY = b"scripted origin says hello\n"


def _h(algorithm: str, text: str) -> str:
    name = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}[algorithm.upper().removesuffix("-SESS")]
    return hashlib.new(name, text.encode()).hexdigest()


def _params(value: str) -> dict:
    return {k.lower(): (v1 if v1 is not None and q else v2)
            for k, q, v1, v2 in ((m.group(1), m.group(2), m.group(3), m.group(4))
                                 for m in re.finditer(r'([\w*-]+)=(?:(")((?:[^"\\]|\\.)*)"|([^,\s]*))', value))}


def digest_is_valid(header: str, method: str, realm: str, nonce: str, algorithm: str, userhash=False) -> bool:
    """RFC 7616 §3.4.1 checked independently of doctor's code."""
    if not header.startswith("Digest "):
        return False
    p = _params(header[7:])
    if p.get("realm") != realm or p.get("nonce") != nonce or p.get("qop") != "auth":
        return False
    expected_user = _h(algorithm, f"{USER_NAME}:{realm}") if userhash else USER_NAME
    if p.get("username") != expected_user:
        return False
    ha1 = _h(algorithm, f"{USER_NAME}:{realm}:{SECRET}")
    if algorithm.upper().endswith("-SESS"):
        ha1 = _h(algorithm, f"{ha1}:{nonce}:{p['cnonce']}")
    ha2 = _h(algorithm, f"{method}:{p['uri']}")
    return p.get("response") == _h(algorithm, f"{ha1}:{nonce}:{p['nc']}:{p['cnonce']}:auth:{ha2}")


class ScriptedProxy:
    """A loopback HTTP proxy whose answer to each request comes from `script(method, target,
    proxy_authorization, count)` → (status, [(name, value)], body). Responses close the
    connection, so every request doctor sends is one connection here."""

    def __init__(self, script, tls_context: ssl.SSLContext | None = None):
        self.script = script
        self.tls = tls_context
        self.seen: list[tuple[str, str, str | None]] = []
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.lsock.settimeout(0.2)
        self.port = self.lsock.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.lsock.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            conn.settimeout(5)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            lines = data.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            auth = next((l.split(":", 1)[1].strip() for l in lines[1:]
                         if l.lower().startswith("proxy-authorization:")), None)
            self.seen.append((method, target, auth))
            status, headers, body = self.script(method, target, auth, len(self.seen))
            if method == "CONNECT" and status == 200:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                return
            head = f"HTTP/1.1 {status} Scripted\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
            head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            conn.sendall(head.encode("latin-1") + body)
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def url(self, scheme: str = "http") -> str:
        from urllib.parse import quote
        return f"{scheme}://{quote(USER_NAME)}:{quote(SECRET, safe='')}@127.0.0.1:{self.port}"

    def stop(self):
        self.stopping.set()
        self.lsock.close()
        self.thread.join(2)


@pytest.fixture
def scripted():
    made = []

    def make(script, tls_context=None):
        p = ScriptedProxy(script, tls_context)
        made.append(p)
        return p
    yield make
    for p in made:
        p.stop()


TARGET = ["--target", "http://origin.test/x"]


def doctor(proxy: ScriptedProxy, *extra, scheme: str = "http", home=None):
    return run_doctor(*TARGET, *extra, env_vars={"HTTP_PROXY": proxy.url(scheme)},
                      secrets=((USER_NAME, SECRET),), home=home)


def challenge_then(check):
    """407 with `challenges` until `check(auth)` says the answer is right, then the origin's 200."""
    def script(method, target, auth, count):
        if auth is None:
            return 407, [("Proxy-Authenticate", v) for v in check.challenges], b""
        return check(method, auth, count)
    return script


# --------------------------------------------------------------------------- schemes

def test_negotiate_and_ntlm_only_is_a_scheme_mismatch_for_a_basic_client(scripted, home):
    p = scripted(lambda m, t, a, n: (407, [("Proxy-Authenticate", "Negotiate"), ("Proxy-Authenticate", "NTLM")], b""))
    run = doctor(p, "--scheme", "basic", home=home)
    report = assert_result(run, "auth-failed", 2, "scheme-mismatch")
    step = run.step("scheme")
    assert_in("proxy offers only Negotiate, NTLM; Basic credentials will never work here",
              step["message"], run, "scheme message")
    for advice in ("--proxy-negotiate", "--proxy-ntlm", "jdk.http.auth.tunneling.disabledSchemes", "Python requests",
                   "--scheme auto"):
        assert_in(advice, step["fix"], run, "scheme fix")
    assert [c["scheme"] for c in report["challenges"]] == ["Negotiate", "NTLM"]
    assert all(a is None for _, _, a in p.seen), "credentials were sent to a proxy that cannot take them"


def ntlm_challenge_message() -> bytes:
    """An NTLM CHALLENGE (MS-NLMP §2.2.1.2): Unicode, NTLM, target info with the computer name."""
    name = "PROXY".encode("utf-16-le")
    target_info = struct.pack("<HH", 1, len(name)) + name + struct.pack("<HH", 0, 0)
    flags = 0x00000001 | 0x00000004 | 0x00000200 | 0x00008000 | 0x00080000 | 0x00800000
    header = b"NTLMSSP\0" + struct.pack("<I", 2)
    header += struct.pack("<HHI", len(name), len(name), 48)
    header += struct.pack("<I", flags) + bytes(range(8)) + bytes(8)
    header += struct.pack("<HHI", len(target_info), len(target_info), 48 + len(name))
    return header + name + target_info


def test_ntlm_through_a_proxy_that_closes_every_connection_is_named(scripted, home):
    challenge = "NTLM " + base64.b64encode(ntlm_challenge_message()).decode()

    def script(method, target, auth, count):
        if auth and auth.startswith("NTLM "):
            return 407, [("Proxy-Authenticate", challenge)], b""
        return 407, [("Proxy-Authenticate", "NTLM"), ("Proxy-Authenticate", 'Basic realm="closing"')], b""
    p = scripted(script)
    run = doctor(p, home=home)
    report = assert_result(run, "auth-failed", 2, "handshake-interrupted")
    assert report["authentication"]["scheme"] == "NTLM", run.describe()
    auth = run.step("authentication")
    assert_in("does not keep the connection", auth["message"], run, "the authentication step")
    assert_in("cannot work through", auth["fix"], run, "the authentication step's fix")
    # NEGOTIATE went out; the AUTHENTICATE never could.
    assert [a.split(" ")[0] if a else None for _, _, a in p.seen] == [None, "NTLM"], p.seen


def test_a_407_without_a_challenge_is_named(scripted, home):
    p = scripted(lambda m, t, a, n: (407, [], b""))
    run = doctor(p, home=home)
    assert_result(run, "auth-failed", 2, "scheme-mismatch")
    assert run.step("challenge")["status"] == "warn"
    assert_in("without a usable Proxy-Authenticate", run.step("challenge")["message"], run, "challenge message")


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256", "SHA-512-256", "MD5-sess", "SHA-256-sess", "SHA-512-256-sess"])
def test_digest_answers_verify_independently(scripted, home, algorithm):
    realm, nonce = "scripted realm", "n0nce/abc+def=="

    def check(method, auth, count):
        if digest_is_valid(auth, method, realm, nonce, algorithm):
            return 200, [("Via", "1.1 scripted")], ORIGIN_BODY
        return 407, [("Proxy-Authenticate", check.challenges[0])], b""
    check.challenges = [f'Digest realm="{realm}", nonce="{nonce}", qop="auth", algorithm={algorithm}, opaque="op"']
    p = scripted(challenge_then(check))
    run = doctor(p, home=home)
    report = assert_result(run, "ok", 0, "accepted")
    assert report["authentication"]["scheme"] == "Digest"
    assert_in(f"Digest {algorithm}", run.step("authentication")["message"], run, "authentication message")


def test_userhash_hides_the_name_and_still_verifies(scripted, home):
    realm, nonce = "hashed", "nonce-u"

    def check(method, auth, count):
        ok = digest_is_valid(auth, method, realm, nonce, "SHA-256", userhash=True) and "userhash=true" in auth
        return (200, [("Via", "1.1 scripted")], ORIGIN_BODY) if ok else (407, [("Proxy-Authenticate", check.challenges[0])], b"")
    check.challenges = [f'Digest realm="{realm}", nonce="{nonce}", qop="auth", algorithm=SHA-256, userhash=true']
    p = scripted(challenge_then(check))
    run = doctor(p, home=home)
    assert_result(run, "ok", 0, "accepted")
    assert all(USER_NAME not in (a or "") for _, _, a in p.seen), "the user name went out despite userhash"


def test_several_challenges_in_one_field_pick_the_strongest_digest(scripted, home):
    realm, nonce = "a, b", "n2"

    def check(method, auth, count):
        ok = digest_is_valid(auth, method, realm, nonce, "SHA-256")
        return (200, [("Via", "1.1 scripted")], ORIGIN_BODY) if ok else (407, [], b"")
    # One field: commas inside the quoted realm, Basic and two Digest algorithms.
    check.challenges = [f'Basic realm="{realm}", Digest realm="{realm}", nonce="{nonce}", qop="auth", '
                        f'algorithm=MD5, Digest realm="{realm}", nonce="{nonce}", qop="auth", algorithm=SHA-256']
    p = scripted(challenge_then(check))
    run = doctor(p, home=home)
    report = assert_result(run, "ok", 0, "accepted")
    assert [c["scheme"] for c in report["challenges"]] == ["Basic", "Digest", "Digest"]
    assert_in("Digest SHA-256", run.step("authentication")["message"], run, "authentication message")


# --------------------------------------------------------------------------- misbehaving proxies

def test_one_stale_nonce_is_retried_without_asking(scripted, home):
    realm = "stale-once"

    def check(method, auth, count):
        nonce = "old" if count <= 2 else "new"
        if nonce == "old" and digest_is_valid(auth, method, realm, "old", "MD5"):
            return 407, [("Proxy-Authenticate", f'Digest realm="{realm}", nonce="new", qop="auth", stale=true')], b""
        if digest_is_valid(auth, method, realm, "new", "MD5"):
            return 200, [("Via", "1.1 scripted")], ORIGIN_BODY
        return 407, [("Proxy-Authenticate", check.challenges[0])], b""
    check.challenges = [f'Digest realm="{realm}", nonce="old", qop="auth"']
    p = scripted(challenge_then(check))
    run = doctor(p, home=home)
    assert_result(run, "ok", 0, "accepted")
    assert_in("after one stale nonce", run.step("authentication")["message"], run, "authentication message")


def test_stale_forever_is_a_challenge_loop(scripted, home):
    realm = "loop"

    def check(method, auth, count):
        return 407, [("Proxy-Authenticate", f'Digest realm="{realm}", nonce="n{count}", qop="auth", stale=true')], b""
    check.challenges = [f'Digest realm="{realm}", nonce="n0", qop="auth"']
    p = scripted(challenge_then(check))
    run = doctor(p, home=home)
    assert_result(run, "auth-failed", 2, "challenge-loop")
    assert_in("challenge loop", run.step("authentication")["message"], run, "authentication message")


def test_a_realm_that_changes_is_named(scripted, home):
    def script(method, target, auth, count):
        realm = "first" if auth is None else "second"
        return 407, [("Proxy-Authenticate", f'Basic realm="{realm}"')], b""
    p = scripted(script)
    run = doctor(p, home=home)
    report = assert_result(run, "auth-failed", 2, "realm-changed")
    step = run.step("authentication")
    assert_in('from "first" to "second"', step["message"], run, "authentication message")
    assert (step["details"]["realm_before"], step["details"]["realm_after"]) == ("first", "second")
    assert report["authentication"]["scheme"] == "Basic"


def test_a_proxy_that_never_sees_the_credentials_is_a_loop_not_a_wrong_password(scripted, home):
    def script(method, target, auth, count):
        return 407, [("Proxy-Authenticate", 'Basic realm="r"'),
                     ("Proxy-Status", 'portcullis; details="missing-credentials"')], b""
    p = scripted(script)
    run = doctor(p, home=home)
    assert_result(run, "auth-failed", 2, "challenge-loop")
    assert_in("strips Proxy-Authorization", run.step("authentication")["fix"], run, "authentication fix")


# --------------------------------------------------------------------------- https:// proxy

def test_an_https_proxy_is_reached_over_tls(scripted, home, tls_cert):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls_cert[0], tls_cert[1])

    def script(method, target, auth, count):
        if auth is None:
            return 407, [("Proxy-Authenticate", 'Basic realm="tls"')], b""
        return 200, [("Via", "1.1 scripted")], ORIGIN_BODY
    p = scripted(script, tls_context=ctx)
    run = doctor(p, "--proxy-cacert", tls_cert[0], scheme="https", home=home)
    report = assert_result(run, "ok", 0, "accepted")
    assert report["proxy"].startswith("https://carol:***@127.0.0.1:")
    assert "tls_ms" in run.step("reachability")["details"]
    # Without the CA the TLS step of reachability names the trust problem.
    run = doctor(p, scheme="https", home=home)
    assert_result(run, "proxy-unreachable", 1, None)
    assert_in("not trusted", run.step("reachability")["message"], run, "reachability message")
