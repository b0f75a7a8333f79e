"""The 407 gate: challenge, Proxy-Status reasons, body hygiene, connection reuse, and
credentials with awkward characters from curl and Python requests."""

from __future__ import annotations

import base64
import os
from urllib.parse import quote

import pytest
import requests

from conftest import SPECIAL_USERS
from portcullis_helpers import (
    PASSWORD, USER, assert_proxy_status, assert_short_text_body, basic, basic_token, run_curl,
)

CHALLENGE = 'Basic realm="Portcullis", charset="UTF-8"'


@pytest.fixture(scope="module")
def gate_proxy(module_launcher):
    return module_launcher.start()


def get(proxy, origin, headers, path="/text"):
    with proxy.conn() as c:
        return c.request("GET", f"{origin.base}{path}", headers)


def assert_407(r, reason: str, realm: str = "Portcullis"):
    assert r.status == 407, r.describe()
    challenges = r.header_all("Proxy-Authenticate")
    assert f'Basic realm="{realm}", charset="UTF-8"' in challenges, r.describe()
    assert_proxy_status(r, details=reason)
    assert_short_text_body(r)
    text = r.body.decode("utf-8").rstrip("\r\n")
    assert "\n" not in text, f"407 body is not one line: {r.body!r}"


def assert_gate_then_retry(proxy, origin, bad_headers, reason):
    """A 407 for bad_headers, then the retry with good credentials on the same socket."""
    with proxy.conn() as c:
        r = c.request("GET", f"{origin.base}/text", bad_headers)
        assert_407(r, reason)
        r2 = c.request("GET", f"{origin.base}/text", [("Proxy-Authorization", basic())])
        assert r2.status == 200, r2.describe()
        assert r2.body == b"hello from origin\n"
    return r


def test_missing_credentials(gate_proxy, module_origin):
    assert_gate_then_retry(gate_proxy, module_origin, [], "missing-credentials")


@pytest.mark.parametrize("value", [
    "Bearer x",
    "Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc",
    'Digest username="alice", realm="Portcullis", nonce="abc", uri="/", response="0123456789abcdef0123456789abcdef"',
    "Negotiate YII=",
])
def test_unsupported_scheme(gate_proxy, module_origin, value):
    r = assert_gate_then_retry(gate_proxy, module_origin, [("Proxy-Authorization", value)], "unsupported-scheme")
    assert b"eyJhbGciOiJIUzI1NiJ9" not in r.body


def _unpadded(user, pw):
    tok = basic_token(user, pw)
    assert tok.endswith("="), "test needs a token with padding"
    return tok.rstrip("=")


def _non_canonical(user, pw):
    """Same decoded bytes under a lenient decoder, but non-zero pad bits (not canonical)."""
    tok = basic_token(user, pw)
    assert tok.endswith("==")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = tok[-3]
    idx = alphabet.index(last)
    assert idx & 0xF == 0
    bad = tok[:-3] + alphabet[idx | 0x1] + "=="
    assert base64.b64decode(bad) == base64.b64decode(tok) and bad != tok
    return bad


MALFORMED = {
    "bang": "Basic !!!",
    "unpadded": "Basic " + _unpadded("alice", "s3cret1"),          # 'alice:s3cret1' -> '...=='
    "non-canonical": "Basic " + _non_canonical("alice", "s3cret1"),
    "no-colon": "Basic " + base64.b64encode(b"alices3cret").decode(),
    "bad-length": "Basic YWxpY2U6czNjcmV0M",
    "inner-space": "Basic YWxp Y2U6czNjcmV0",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_credentials(gate_proxy, module_origin, name):
    value = MALFORMED[name]
    r = assert_gate_then_retry(gate_proxy, module_origin, [("Proxy-Authorization", value)], "malformed-credentials")
    token = value.split(" ", 1)[1]
    assert token.encode() not in r.body


def test_invalid_credentials_same_body_for_unknown_user_and_wrong_password(gate_proxy, module_origin):
    wrong_pw = "Wr0ngPassw0rd-XYZ"
    r_wrong = assert_gate_then_retry(
        gate_proxy, module_origin, [("Proxy-Authorization", basic(USER, wrong_pw))], "invalid-credentials")
    r_unknown = assert_gate_then_retry(
        gate_proxy, module_origin, [("Proxy-Authorization", basic("nobody-here", wrong_pw))], "invalid-credentials")
    assert r_wrong.body == r_unknown.body, (r_wrong.body, r_unknown.body)
    assert r_wrong.header("Proxy-Status") == r_unknown.header("Proxy-Status")
    for r, user in ((r_wrong, USER), (r_unknown, "nobody-here")):
        assert wrong_pw.encode() not in r.raw_head + r.body
        assert basic_token(user, wrong_pw).encode() not in r.raw_head + r.body


def test_empty_password_and_user_are_rejected(gate_proxy, module_origin):
    for user, pw in ((USER, ""), ("", PASSWORD), ("", "")):
        r = get(gate_proxy, module_origin, [("Proxy-Authorization", basic(user, pw))])
        assert r.status == 407, r.describe()
        assert_proxy_status(r)


@pytest.mark.parametrize("value", [
    "basic " + basic_token(USER, PASSWORD),
    "BASIC " + basic_token(USER, PASSWORD),
    "bAsIc " + basic_token(USER, PASSWORD),
    "Basic    " + basic_token(USER, PASSWORD),
    "Basic  " + basic_token(USER, PASSWORD),
])
def test_scheme_case_and_spacing_accepted(gate_proxy, module_origin, value):
    r = get(gate_proxy, module_origin, [("Proxy-Authorization", value)])
    assert r.status == 200, r.describe()
    assert r.body == b"hello from origin\n"


def test_custom_realm(launcher, origin):
    p = launcher.start("--realm", "Corp proxy")
    r = get(p, origin, [])
    assert_407(r, "missing-credentials", realm="Corp proxy")


def test_407_keeps_connection_for_several_failures_then_success(gate_proxy, module_origin):
    with gate_proxy.conn() as c:
        for hdrs, reason in (([], "missing-credentials"),
                             ([("Proxy-Authorization", "Bearer x")], "unsupported-scheme"),
                             ([("Proxy-Authorization", "Basic !!!")], "malformed-credentials"),
                             ([("Proxy-Authorization", basic(USER, "nope"))], "invalid-credentials")):
            r = c.request("GET", f"{module_origin.base}/text", hdrs)
            assert_407(r, reason)
        r = c.request("GET", f"{module_origin.base}/text", [("Proxy-Authorization", basic())])
        assert r.status == 200, r.describe()


def test_407_for_request_with_body_keeps_connection(gate_proxy, module_origin):
    """The unauthenticated request's body must be consumed (or the connection closed), never
    parsed as the next request."""
    body = b"A" * 5000
    with gate_proxy.conn() as c:
        r = c.request("POST", f"{module_origin.base}/upload", [("Content-Type", "text/plain")], body)
        assert_407(r, "missing-credentials")
        if (r.header("Connection") or "").lower() == "close":
            assert c.wait_eof(5) == b""
            return
        r2 = c.request("POST", f"{module_origin.base}/upload", [("Proxy-Authorization", basic())], body)
        assert r2.status == 200, r2.describe()


def test_password_never_logged(launcher, origin):
    secret = "Zq9-very-distinctive-secret"
    p = launcher.start("--log-level", "trace")
    for hdr in (basic(USER, secret), basic("nobody", secret), "Basic " + basic_token(USER, secret)[:-2]):
        with p.conn() as c:
            c.request("GET", f"{origin.base}/text", [("Proxy-Authorization", hdr)])
    with p.conn() as c:
        assert c.request("GET", f"{origin.base}/text", [("Proxy-Authorization", basic())]).status == 200
    assert p.stop() == 0
    logs = p.stderr.text() + p.stdout.text()
    for needle in (secret, basic_token(USER, secret), basic_token("nobody", secret),
                   PASSWORD, basic_token(USER, PASSWORD)):
        assert needle not in logs, f"{needle!r} appears in the proxy's output"


# ----------------------------------------------------------------- special characters

@pytest.mark.parametrize("user", list(SPECIAL_USERS))
def test_special_password_with_curl(gate_proxy, module_origin, user):
    pw = SPECIAL_USERS[user]
    res = run_curl(["-x", gate_proxy.url, "--proxy-user", f"{user}:{pw}",
                    "-w", "\n%{http_code}", f"{module_origin.base}/text"])
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"hello from origin\n\n200", res.stdout
    # and a wrong one (same prefix) is refused
    res = run_curl(["-x", gate_proxy.url, "--proxy-user", f"{user}:{pw}x",
                    "-w", "\n%{http_code}", f"{module_origin.base}/text"])
    assert res.stdout.endswith(b"\n407"), res.stdout


@pytest.mark.parametrize("user", list(SPECIAL_USERS))
def test_special_password_with_requests(gate_proxy, module_origin, user):
    pw = SPECIAL_USERS[user]
    try:
        pw.encode("latin-1")
    except UnicodeEncodeError:
        pytest.skip("requests sends proxy credentials as Latin-1; this password is not Latin-1")
    url = f"http://{quote(user, safe='')}:{quote(pw, safe='')}@127.0.0.1:{gate_proxy.port}"
    s = requests.Session()
    s.trust_env = False
    try:
        r = s.get(f"{module_origin.base}/text", proxies={"http": url}, timeout=10)
        assert r.status_code == 200, (r.status_code, r.text)
        assert r.content == b"hello from origin\n"
        bad = f"http://{quote(user, safe='')}:{quote(pw + 'x', safe='')}@127.0.0.1:{gate_proxy.port}"
        r = s.get(f"{module_origin.base}/text", proxies={"http": bad}, timeout=10)
        assert r.status_code == 407
    finally:
        s.close()


def test_latin1_bytes_fallback_raw(gate_proxy, module_origin):
    """The exact bytes requests sends for 'pässwörd': Latin-1, not UTF-8."""
    r = get(gate_proxy, module_origin, [("Proxy-Authorization", basic("utf8", SPECIAL_USERS["utf8"], "latin-1"))])
    assert r.status == 200, r.describe()
    r = get(gate_proxy, module_origin, [("Proxy-Authorization", basic("utf8", SPECIAL_USERS["utf8"], "utf-8"))])
    assert r.status == 200, r.describe()


def test_two_proxy_authorization_fields_are_refused_even_when_both_are_valid(gate_proxy, module_origin):
    """Which of two credentials would count is a guess two hops can make differently."""
    r = assert_gate_then_retry(
        gate_proxy, module_origin, [("Proxy-Authorization", basic()), ("Proxy-Authorization", basic())],
        "malformed-credentials")
    assert b"More than one Proxy-Authorization" in r.body, r.describe()


def test_pipelined_407_then_authenticated_request(gate_proxy, module_origin):
    from portcullis_helpers import build_request
    with gate_proxy.conn() as c:
        c.send(build_request("GET", f"{module_origin.base}/text", [])
               + build_request("GET", f"{module_origin.base}/headers?second=1", [("Proxy-Authorization", basic())]))
        r1 = c.read_response()
        assert_407(r1, "missing-credentials")
        r2 = c.read_response()
    assert r2.status == 200, r2.describe()
    assert b'"target": "/headers?second=1"' in r2.body


def test_users_file_is_reloaded_when_it_changes(launcher, origin, tmp_path):
    """README: the htpasswd file is re-read when it changes (checked every 2 s)."""
    import os
    from portcullis_helpers import htpasswd_line, wait_until
    path = tmp_path / "users.htpasswd"
    path.write_text(htpasswd_line(USER, PASSWORD, "-B", ["-C", "4"]) + "\n")
    p = launcher.start(htpasswd=path)

    def status(user, pw):
        with p.conn() as c:
            return c.request("GET", f"{origin.base}/text", [("Proxy-Authorization", basic(user, pw))]).status

    assert status("carol", "n3w-user") == 407
    tmp = tmp_path / "users.new"
    tmp.write_text(htpasswd_line("carol", "n3w-user", "-B", ["-C", "4"]) + "\n")
    os.replace(tmp, path)  # alice is gone, carol is new
    wait_until(lambda: status("carol", "n3w-user") == 200, timeout=10, interval=0.25,
               what="the new user to be accepted after the file changed")
    assert status(USER, PASSWORD) == 407, "a removed user still gets in (stale cache)"


def test_password_checks_run_below_the_event_loops_priority(proxy, origin):
    """bcrypt runs on the blocking pool, and a pool thread about to hash lowers its own priority
    (nice +10) so a login storm cannot delay authenticated traffic on the event loops (which
    stay as started)."""
    r = get(proxy, origin, {"Proxy-Authorization": basic(USER, PASSWORD)})
    assert r.status == 200, r.describe()

    def nice(task: str) -> int:
        with open(f"/proc/{proxy.pid}/task/{task}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[16])

    threads = {}
    for task in os.listdir(f"/proc/{proxy.pid}/task"):
        with open(f"/proc/{proxy.pid}/task/{task}/comm") as f:
            threads.setdefault(f.read().strip(), []).append(nice(task))
    base = nice(str(proxy.pid))
    pool = [n for name, ns in threads.items() if name.startswith("TP-#") for n in ns]
    loops = [n for name, ns in threads.items() if name.startswith("NIO-ELT-") for n in ns]
    assert pool and loops, threads
    # The thread that checked the password is lowered; others may not have hashed yet.
    assert min(base + 10, 19) in pool, threads
    assert all(n in (base, min(base + 10, 19)) for n in pool), threads
    assert all(n == base for n in loops), threads
