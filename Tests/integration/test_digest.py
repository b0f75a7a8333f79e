"""Digest authentication (RFC 7616) through the real binary: curl (--proxy-digest, --proxy-anyauth,
CONNECT with -p), Python's urllib ProxyDigestAuthHandler, and a client written here with hashlib
(stale nonces, replays, rspauth, userhash), against the SQLite store and an htdigest file.
The answers computed here are independent of the proxy's Swift code."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
import urllib.request

import pytest

from portcullis_helpers import (
    PORTCULLIS_BIN, assert_proxy_status, basic, run_curl, wait_until,
)

REALM = "Portcullis"


def users(db, *args, stdin: str | None = None):
    cmd = [PORTCULLIS_BIN, "users", *[str(a) for a in args], "--store", f"sqlite:{db}"]
    out = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{cmd}\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """dora: enrolled for Digest; basil: Basic only."""
    path = tmp_path_factory.mktemp("digest") / "users.db"
    users(path, "add", "dora", "--password-stdin", "--digest", "--cost", "4", stdin="d0ra pass:word\n")
    users(path, "add", "basil", "--password-stdin", "--cost", "4", stdin="basil-pw\n")
    return path


def serve(launcher, db, *extra):
    return launcher.start("--store", f"sqlite:{db}", "--auth", "digest", *extra, htpasswd=None)


# --------------------------------------------------------------------------- a client written here

def H(algorithm: str, text: str) -> str:
    name = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}[algorithm.removesuffix("-sess")]
    return hashlib.new(name, text.encode()).hexdigest()


def parse_challenges(fields: list[str]) -> list[dict]:
    """Digest challenges of a 407, each as a dict (a small RFC 9110 list parser)."""
    out = []
    for field in fields:
        for m in re.finditer(r'(?:^|,)\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)(?:\s+|\s*$)|([^\s=,]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)', field):
            if m.group(1):
                out.append({"scheme": m.group(1)})
            else:
                value = m.group(3)
                if value.startswith('"'):
                    value = re.sub(r'\\(.)', r'\1', value[1:-1])
                out[-1][m.group(2).lower()] = value
    return [c for c in out if c["scheme"].lower() == "digest"]


def answer(ch: dict, user: str, password: str, method: str, uri: str, nc: int = 1,
           cnonce: str = "0a4f113b", algorithm: str | None = None, userhash: bool = False,
           qop: str = "auth") -> str:
    algorithm = algorithm or ch.get("algorithm", "MD5")
    realm, nonce = ch["realm"], ch["nonce"]
    ha1 = H(algorithm, f"{user}:{realm}:{password}")
    if algorithm.endswith("-sess"):
        ha1 = H(algorithm, f"{ha1}:{nonce}:{cnonce}")
    ha2 = H(algorithm, f"{method}:{uri}")
    ncs = f"{nc:08x}"
    response = H(algorithm, f"{ha1}:{nonce}:{ncs}:{cnonce}:{qop}:{ha2}")
    name = H(algorithm, f"{user}:{realm}") if userhash else user
    parts = [f'username="{name}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"',
             f"algorithm={algorithm}", f"qop={qop}", f"nc={ncs}", f'cnonce="{cnonce}"',
             f'response="{response}"', f'opaque="{ch["opaque"]}"']
    if userhash:
        parts.append("userhash=true")
    return "Digest " + ", ".join(parts)


def challenge_of(conn, target: str, method: str = "GET", algorithm: str = "MD5") -> dict:
    conn.send(f"{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    r = conn.read_response(method)
    assert r.status == 407, r.describe()
    chs = [c for c in parse_challenges(r.header_all("Proxy-Authenticate")) if c.get("algorithm") == algorithm]
    assert chs, r.header_all("Proxy-Authenticate")
    return chs[0]


def send(conn, method: str, target: str, authorization: str):
    conn.send(f"{method} {target} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {authorization}\r\n\r\n".encode())
    return conn.read_response(method)


# --------------------------------------------------------------------------- real clients

def curl_digest(p, url, user="dora", password="d0ra pass:word", extra=()):
    res = run_curl(["-v", "--proxy-digest", "-x", p.url, "--proxy-user", f"{user}:{password}",
                    "-w", "\n%{http_code}", *extra, url])
    sent = re.findall(rb"> Proxy-Authorization: Digest (.*)", res.stderr)
    return res, [s.decode() for s in sent]


@pytest.mark.parametrize("algorithms, layout, expected", [
    # The default: one field, SHA-256 then MD5. curl 7.88 reads a field's parameters into one
    # table (the last value wins), so it answers MD5 - and succeeds.
    (None, None, "MD5"),
    ("SHA-256,MD5", "per-algorithm", "SHA-256"),
    ("SHA-256", None, "SHA-256"),
    ("MD5", None, "MD5"),
    ("MD5-sess", None, "MD5-sess"),
])
def test_curl_proxy_digest(launcher, db, origin, algorithms, layout, expected):
    extra = []
    if algorithms:
        extra += ["--digest-algorithms", algorithms]
    if layout:
        extra += ["--digest-challenges", layout]
    p = serve(launcher, db, *extra)
    res, sent = curl_digest(p, f"{origin.base}/text")
    assert res.stdout.endswith(b"\n200"), res.stderr.decode(errors="replace")[-2000:]
    assert sent and f"algorithm={expected}," in sent[-1] + ",", sent
    assert "userhash=true" in sent[-1]  # offered, and curl uses it: the name travels hashed
    assert "dora" not in sent[-1]
    # The origin never sees any Proxy-Authorization.
    assert all(k.lower() != "proxy-authorization" for _, _, hs in origin.requests for k, _ in hs)


def test_curl_wrong_password_gets_407_every_time(launcher, db, origin):
    p = serve(launcher, db)
    for _ in range(3):
        res, sent = curl_digest(p, f"{origin.base}/text", password="not it")
        assert res.stdout.endswith(b"\n407"), res.stdout
        assert sent
    assert origin.requests == []


def test_curl_connect_tunnel_with_digest(launcher, db, tls_origin):
    p = serve(launcher, db, "--connect-ports", tls_origin.port, "--digest-algorithms", "SHA-256")
    res, sent = curl_digest(p, f"https://127.0.0.1:{tls_origin.port}/hello", extra=["-k", "-p"])
    assert res.stdout == b"hello over tls\n\n200", res.stderr.decode(errors="replace")[-2000:]
    assert f'uri="127.0.0.1:{tls_origin.port}"' in sent[-1]
    # The 200 of the CONNECT proves the proxy knew the secret too (mutual authentication).
    assert re.search(rb"< Proxy-Authentication-Info: .*rspauth=", res.stderr), res.stderr[-1500:]


def test_curl_anyauth_picks_digest_among_offered_schemes(launcher, db, origin):
    p = launcher.start("--store", f"sqlite:{db}", "--auth", "basic,digest", htpasswd=None)
    res = run_curl(["-v", "--proxy-anyauth", "-x", p.url, "--proxy-user", "dora:d0ra pass:word",
                    "-w", "\n%{http_code}", f"{origin.base}/text"])
    assert res.stdout.endswith(b"\n200"), res.stderr[-1500:]
    assert b"> Proxy-Authorization: Digest " in res.stderr
    # A user without Digest secrets still gets in with Basic where it is offered.
    res = run_curl(["-x", p.url, "--proxy-user", "basil:basil-pw", "-w", "\n%{http_code}", f"{origin.base}/text"])
    assert res.stdout.endswith(b"\n200")


def test_python_urllib_digest_handler_with_the_default_challenges(launcher, db, origin):
    p = serve(launcher, db)
    manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    manager.add_password(None, origin.base, "dora", "d0ra pass:word")
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": p.url}), urllib.request.ProxyDigestAuthHandler(manager))
    for _ in range(2):
        with opener.open(f"{origin.base}/text", timeout=10) as r:
            assert r.status == 200
            assert "rspauth=" in r.headers["Proxy-Authentication-Info"]


def test_python_urllib_fails_on_per_algorithm_fields_which_is_why_one_field_is_the_default(launcher, db, origin):
    p = serve(launcher, db, "--digest-challenges", "per-algorithm")
    manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    manager.add_password(None, origin.base, "dora", "d0ra pass:word")
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": p.url}), urllib.request.ProxyDigestAuthHandler(manager))
    with pytest.raises(ValueError, match="SHA-256"):
        opener.open(f"{origin.base}/text", timeout=10)


# --------------------------------------------------------------------------- protocol details

@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256", "SHA-512-256", "SHA-256-sess", "SHA-512-256-sess"])
@pytest.mark.parametrize("userhash", [False, True])
def test_every_algorithm_and_userhash_with_rspauth(launcher, db, origin, algorithm, userhash):
    p = serve(launcher, db, "--digest-algorithms", algorithm)
    target = f"{origin.base}/text?q=1"
    with p.conn() as c:
        ch = challenge_of(c, target, algorithm=algorithm)
        assert ch["qop"] == "auth" and ch["charset"] == "UTF-8" and ch["userhash"] == "true"
        for nc, uri in [(1, target), (2, "/text?q=1")]:  # the absolute URI, or its path (what curl sends)
            r = send(c, "GET", target, answer(ch, "dora", "d0ra pass:word", "GET", uri, nc=nc,
                                              userhash=userhash))
            assert r.status == 200, r.describe()
            info = dict(re.findall(r'(\w+)="?([^",]*)"?', r.header("Proxy-Authentication-Info")))
            ha1 = H(algorithm, f"dora:{REALM}:d0ra pass:word")
            if algorithm.endswith("-sess"):
                ha1 = H(algorithm, f"{ha1}:{ch['nonce']}:0a4f113b")
            expected = H(algorithm, f"{ha1}:{ch['nonce']}:{nc:08x}:0a4f113b:auth:{H(algorithm, ':' + uri)}")
            assert info["rspauth"] == expected


def test_stale_nonce_is_recovered_without_asking_the_user_and_replays_are_refused(launcher, db, origin):
    p = serve(launcher, db, "--digest-nonce-lifetime", "1")
    target = f"{origin.base}/text"
    with p.conn() as c:
        ch = challenge_of(c, target)
        auth = answer(ch, "dora", "d0ra pass:word", "GET", target, nc=1)
        assert send(c, "GET", target, auth).status == 200
        # The same nc again (a captured request replayed): stale, never 200.
        r = send(c, "GET", target, auth)
        assert r.status == 407 and parse_challenges(r.header_all("Proxy-Authenticate"))[0]["stale"] == "true"
        time.sleep(1.2)  # past the nonce lifetime (the only way to age a nonce from outside)
        r = send(c, "GET", target, answer(ch, "dora", "d0ra pass:word", "GET", target, nc=2))
        assert r.status == 407, r.describe()
        assert_proxy_status(r, details="stale-nonce")
        fresh = [x for x in parse_challenges(r.header_all("Proxy-Authenticate")) if x["algorithm"] == "MD5"][0]
        assert fresh["stale"] == "true" and fresh["nonce"] != ch["nonce"]
        # The client answers the new challenge with the password it already has: 200.
        assert send(c, "GET", target, answer(fresh, "dora", "d0ra pass:word", "GET", target)).status == 200
        # A wrong password with a stale nonce is a wrong password, not stale.
        r = send(c, "GET", target, answer(ch, "dora", "wrong", "GET", target, nc=3))
        assert r.status == 407 and "stale" not in r.header("Proxy-Authenticate")
        assert_proxy_status(r, details="invalid-credentials")


def test_a_nonce_minted_by_one_instance_works_on_another_sharing_the_store(launcher, db, origin):
    a = serve(launcher, db)
    b = serve(launcher, db)
    target = f"{origin.base}/text"
    with a.conn() as c:
        ch = challenge_of(c, target)
    with b.conn() as c:
        r = send(c, "GET", target, answer(ch, "dora", "d0ra pass:word", "GET", target))
        assert r.status == 200, r.describe()


def test_uri_of_another_request_is_a_400(launcher, db, origin):
    p = serve(launcher, db)
    target = f"{origin.base}/text"
    with p.conn() as c:
        ch = challenge_of(c, target)
        r = send(c, "GET", target, answer(ch, "dora", "d0ra pass:word", "GET", "/somewhere-else"))
        assert r.status == 400, r.describe()
        assert_proxy_status(r, details="digest-uri-mismatch")
    assert origin.requests == []


def test_user_without_digest_secrets_gets_a_generic_407_and_the_log_says_why(launcher, db, origin):
    p = serve(launcher, db)
    target = f"{origin.base}/text"
    with p.conn() as c:
        ch = challenge_of(c, target)
        r = send(c, "GET", target, answer(ch, "basil", "basil-pw", "GET", target))
        assert r.status == 407
        assert_proxy_status(r, details="invalid-credentials")
    p.stderr.wait_for("no-digest-secret", 5)


def test_rotation_grace_applies_to_digest_and_passwd_keeps_enrollment(launcher, tmp_path, origin):
    db = tmp_path / "u.db"
    users(db, "add", "rita", "--password-stdin", "--digest", "--cost", "4", stdin="old-one\n")
    p = serve(launcher, db)
    target = f"{origin.base}/text"

    def status(password):
        with p.conn() as c:
            ch = challenge_of(c, target)
            return send(c, "GET", target, answer(ch, "rita", password, "GET", target)).status

    assert status("old-one") == 200
    users(db, "rotate", "rita", "--grace", "1h", "--password-stdin", "--cost", "4", stdin="new-one\n")
    wait_until(lambda: status("new-one") == 200, 10, what="the rotated secret through Digest")
    assert status("old-one") == 200  # inside the grace
    # passwd without --digest: still enrolled, and the old secrets stop at once.
    users(db, "passwd", "rita", "--password-stdin", "--cost", "4", stdin="third\n")
    wait_until(lambda: status("third") == 200, 10, what="the new password through Digest")
    assert status("old-one") == 407 and status("new-one") == 407


def test_repeated_failures_on_one_connection_close_it(launcher, db, origin):
    p = serve(launcher, db)
    target = f"{origin.base}/text"
    with p.conn() as c:
        ch = challenge_of(c, target)
        statuses = []
        for nc in range(1, 7):
            r = send(c, "GET", target, answer(ch, "dora", "bad guess", "GET", target, nc=nc))
            statuses.append(r.status)
            if (r.header("Connection") or "").lower() == "close":
                break
        assert statuses == [407] * 6, statuses
        assert (r.header("Connection") or "").lower() == "close"
        c.wait_eof()
    p.stderr.wait_for("repeated failed Digest answers", 5)


MALFORMED = [
    'Digest username="dora, realm="Portcullis"',
    'Digest username="dora", username="dora", realm="Portcullis", nonce="n", uri="/", response="x"',
    'Digest realm="Portcullis", nonce="n", uri="/", qop=auth, nc=00000001, cnonce="c", response="00"',
    'Digest username="dora", realm="Portcullis", nonce="n", uri="/", response="0123456789abcdef0123456789abcdef"',
    'Digest username="dora", realm="Portcullis", nonce="n", uri="/", qop=auth-int, nc=00000001, cnonce="c", response="0123456789abcdef0123456789abcdef"',
    'Digest username="dora", realm="Portcullis", nonce="n", uri="/", qop=auth, nc=zz, cnonce="c", response="0123456789abcdef0123456789abcdef"',
    'Digest username="dora", realm="Portcullis", nonce="n", uri="/", qop=auth, nc=00000001, cnonce="c", response="0123456789abcdef0123456789abcdef", algorithm=SHA-1',
    'Digest username="' + "x" * 8000 + '", realm="Portcullis"',
    'Digest nonce="' + "n" * 5000 + '"',
    'Digest ,,,,',
    'Digest =',
    'Digest username*=UTF-8\'\'%C3, realm="Portcullis"',
    'Digest username="a\x01b"',
    'Digest username="dora", realm="Other", nonce="n", uri="/", qop=auth, nc=00000001, cnonce="c", response="0123456789abcdef0123456789abcdef"',
]


@pytest.mark.parametrize("value", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_digest_answers_get_a_407_and_the_connection_survives(launcher, db, origin, value):
    p = serve(launcher, db)
    target = f"{origin.base}/text"
    with p.conn() as c:
        c.send(b"GET " + target.encode() + b" HTTP/1.1\r\nHost: x\r\nProxy-Authorization: "
               + value.encode("latin-1") + b"\r\n\r\n")
        r = c.read_response()
        assert r.status in (400, 407), r.describe()
        assert "x" * 100 not in r.text and "n" * 100 not in r.text  # nothing echoed back
        if r.status == 407:
            assert r.header("Proxy-Status", "").startswith("portcullis; details=")
            ch = [x for x in parse_challenges(r.header_all("Proxy-Authenticate")) if x["algorithm"] == "MD5"][0]
            r = send(c, "GET", target, answer(ch, "dora", "d0ra pass:word", "GET", target))
            assert r.status == 200, r.describe()
    assert p.proc.poll() is None


# --------------------------------------------------------------------------- htdigest

def test_htdigest_file_for_md5_digest_and_basic(launcher, tmp_path, origin):
    users_file = tmp_path / "users.htdigest"
    ha1 = H("MD5", f"hugo:{REALM}:hugo pw")
    users_file.write_text(f"hugo:{REALM}:{ha1}\nother:Elsewhere:{H('MD5', 'other:Elsewhere:x')}\n")
    p = launcher.start("--htdigest", users_file, "--auth", "digest,basic", htpasswd=None)
    res, _ = curl_digest(p, f"{origin.base}/text", user="hugo", password="hugo pw")
    assert res.stdout.endswith(b"\n200"), res.stderr[-1500:]
    with p.conn() as c:
        r = c.request("GET", f"{origin.base}/text", [("Proxy-Authorization", basic("hugo", "hugo pw"))])
        assert r.status == 200
        r = c.request("GET", f"{origin.base}/text", [("Proxy-Authorization", basic("other", "x"))])
        assert r.status == 407  # another realm's users are not this proxy's
    # htdigest holds MD5 only: a SHA-256-only proxy cannot use it (and says so in its log).
    q = launcher.start("--htdigest", users_file, "--auth", "digest", "--digest-algorithms", "SHA-256", htpasswd=None)
    res, _ = curl_digest(q, f"{origin.base}/text", user="hugo", password="hugo pw")
    assert res.stdout.endswith(b"\n407")
    q.stderr.wait_for("no-digest-secret", 5)
    # Reloaded on change.
    users_file.write_text(f"hugo:{REALM}:{H('MD5', f'hugo:{REALM}:changed')}\n")
    wait_until(lambda: curl_digest(p, f"{origin.base}/text", user="hugo", password="changed")[0].stdout.endswith(b"\n200"),
               10, what="the htdigest file to be reloaded")


def test_doctor_answers_our_default_challenges_with_the_strongest_algorithm(launcher, db, origin):
    """`portcullis doctor` parses the one-field layout as RFC 9110 says: it takes SHA-256, the first."""
    p = launcher.start("--store", f"sqlite:{db}", "--auth", "basic,digest", htpasswd=None)
    out = subprocess.run([PORTCULLIS_BIN, "doctor", "--proxy", p.url, "--user", "dora", "--password-stdin",
                          "--target", f"{origin.base}/text"], input="d0ra pass:word\n",
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'accepted: user "dora" with Digest SHA-256' in out.stdout, out.stdout


def test_first_run_with_digest_only_enrolls_admin_and_prints_a_digest_curl_line(launcher, origin, tmp_path_factory):
    """`serve --auth digest` on a fresh machine: the generated admin can log in with Digest."""
    home = tmp_path_factory.mktemp("home")
    p = launcher.start("--auth", "digest", htpasswd=None, home=home)
    m = p.stdout.wait_for(r"curl --proxy-digest -x http://admin:(?P<pw>\S+)@127\.0\.0\.1:\d+ https://example\.com", 10)
    res, sent = curl_digest(p, f"{origin.base}/text", user="admin", password=m.group("pw"))
    assert res.stdout.endswith(b"\n200"), res.stderr[-1500:]
    assert "no user has Digest secrets" not in p.stderr.text()


def test_digest_offered_with_nobody_enrolled_is_said_at_start(launcher, tmp_path):
    db = tmp_path / "u.db"
    users(db, "add", "plain", "--password-stdin", "--cost", "4", stdin="pw\n")
    p = launcher.start("--store", f"sqlite:{db}", "--auth", "basic,digest", htpasswd=None)
    p.stderr.wait_for("no user has Digest secrets yet", 10)
