"""Short-lived tokens (`portcullis tokens`, `POST /v1/tokens`) with two real proxies sharing one
SQLite store: a token works as the Basic password and as Bearer, on both instances; it expires
on time with the credentials-no-longer-valid 407; a revocation reaches both within 2 s; the
admin endpoint refuses a wrong password, a user asking for another, a token asking for a token;
no token in any log, access log line or metric."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from portcullis_helpers import PORTCULLIS_BIN, assert_proxy_status, basic, free_port, wait_until

RUNNER, RUNNER_PASSWORD = "runner", "runner-long-lived-secret"
ISSUER, ISSUER_PASSWORD = "issuer", "issuer-long-lived-secret"


def cli(db, *args, stdin: str | None = None, check: bool = True):
    cmd = [PORTCULLIS_BIN, *[str(a) for a in args], "--store", f"sqlite:{db}"]
    out = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
    if check:
        assert out.returncode == 0, f"{cmd}\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "users.db"
    cli(path, "users", "add", RUNNER, "--password-stdin", "--cost", "4", stdin=RUNNER_PASSWORD + "\n")
    cli(path, "users", "add", ISSUER, "--groups", "token-issuers", "--password-stdin", "--cost", "4",
        stdin=ISSUER_PASSWORD + "\n")
    return path


@pytest.fixture
def pair(launcher, db, tmp_path):
    """Two proxies on the one database, each with an admin listener and a JSON access log."""
    proxies = []
    for name in ("a", "b"):
        admin = free_port()
        log = tmp_path / f"access-{name}.log"
        p = launcher.start("--store", f"sqlite:{db}", "--auth", "basic,bearer", "--admin", f"127.0.0.1:{admin}",
                           "--access-log", log, "--access-log-format", "json", htpasswd=None)
        p.admin = admin
        p.access_log = log
        proxies.append(p)
    return proxies


def through(proxy, origin, authorization: str | None):
    headers = [("Proxy-Authorization", authorization)] if authorization else []
    with proxy.conn() as c:
        return c.request("GET", f"{origin.base}/text", headers)


def issue(db, *args) -> str:
    out = cli(db, "tokens", "issue", "--user", RUNNER, *args)
    token = out.stdout.strip()
    assert "\n" not in token and token.startswith("pct_"), out.stdout
    return token


def post(admin: int, body: dict | None, user: str | None, password: str | None):
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(f"http://127.0.0.1:{admin}/v1/tokens", data=data, method="POST")
    if user is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def no_secret_anywhere(proxies, secrets):
    for p in proxies:
        texts = [p.stderr.text(), p.access_log.read_text() if p.access_log.exists() else ""]
        with urllib.request.urlopen(f"http://127.0.0.1:{p.admin}/metrics", timeout=10) as r:
            texts.append(r.read().decode())
        for secret in secrets:
            for text in texts:
                assert secret not in text, f"a token or password is in a log or the metrics of {p.url}"


def test_a_token_is_a_basic_password_and_a_bearer_on_both_instances(pair, db, origin):
    a, b = pair
    token = issue(db, "--ttl", "1h", "--label", "job-17")
    for p in (a, b):
        assert through(p, origin, basic(RUNNER, token)).status == 200
        assert through(p, origin, f"Bearer {token}").status == 200
    # Another user's name with it is a wrong password; a forged token is not one of ours.
    assert_proxy_status(through(a, origin, basic(ISSUER, token)), details="invalid-credentials")
    r = through(a, origin, f"Bearer {token[:-4]}AAAA")
    assert r.status == 407
    # The 407 offers Bearer beside Basic.
    challenges = [v for k, v in through(a, origin, None).headers if k.lower() == "proxy-authenticate"]
    assert 'Bearer realm="Portcullis"' in challenges, challenges
    # The access log names the user and the token's label, never the token.
    wait_until(lambda: "job-17" in a.access_log.read_text(), 10, what="the access log line")
    lines = [json.loads(line) for line in a.access_log.read_text().splitlines()]
    used = [line for line in lines if line.get("token") == "job-17"]
    assert used and all(line["user"] == RUNNER for line in used), lines
    assert {line["auth_scheme"] for line in used} == {"basic", "bearer"}, used
    listed = json.loads(cli(db, "tokens", "list", "--json").stdout)
    assert [t["label"] for t in listed] == ["job-17"] and listed[0]["state"] == "active"
    no_secret_anywhere(pair, [token, RUNNER_PASSWORD, ISSUER_PASSWORD])


def test_an_expired_token_gets_the_no_longer_valid_407(pair, db, origin):
    a, _ = pair
    token = issue(db, "--ttl", "2s")
    assert through(a, origin, basic(RUNNER, token)).status == 200
    wait_until(lambda: through(a, origin, basic(RUNNER, token)).status == 407, 10, what="the token's end")
    assert_proxy_status(through(a, origin, basic(RUNNER, token)), details="credentials-no-longer-valid")
    a.stderr.wait_for("detail=token-expired", 5)


def test_a_revocation_reaches_both_instances_within_2_seconds(pair, db, origin):
    a, b = pair
    token = issue(db, "--label", "job-9")
    for p in (a, b):
        assert through(p, origin, f"Bearer {token}").status == 200
    cli(db, "tokens", "revoke", "--label", "job-9")
    revoked = time.monotonic()
    for p in (a, b):
        wait_until(lambda: through(p, origin, f"Bearer {token}").status == 407, 5, what="the revocation")
    assert time.monotonic() - revoked < 2.5
    assert_proxy_status(through(b, origin, f"Bearer {token}"), details="credentials-no-longer-valid")
    b.stderr.wait_for("detail=token-revoked", 5)
    # Disabling the user ends its other tokens too.
    other = issue(db)
    assert through(a, origin, basic(RUNNER, other)).status == 200
    cli(db, "users", "disable", RUNNER)
    wait_until(lambda: through(a, origin, basic(RUNNER, other)).status == 407, 5, what="the user disabled")


def test_the_ttl_is_capped(db):
    out = cli(db, "tokens", "issue", "--user", RUNNER, "--ttl", "2d", check=False)
    assert out.returncode != 0 and "--token-max-ttl" in out.stderr


def test_post_v1_tokens(pair, db, origin):
    a, b = pair
    # Its own token, with its long-lived password.
    status, answer = post(a.admin, {"ttl": "10m", "label": "ci-job"}, RUNNER, RUNNER_PASSWORD)
    assert status == 200, answer
    assert set(answer) == {"user", "token", "expires_at", "id"} and answer["user"] == RUNNER
    assert through(b, origin, basic(RUNNER, answer["token"])).status == 200
    # A wrong password, no credentials.
    assert post(a.admin, {}, RUNNER, "wrong")[0] == 401
    assert post(a.admin, {}, None, None)[0] == 401
    # Another user's token: only for members of token-issuers.
    status, answer2 = post(a.admin, {"user": ISSUER}, RUNNER, RUNNER_PASSWORD)
    assert status == 403 and "token-issuers" in answer2["error"]
    status, answer3 = post(a.admin, {"user": RUNNER, "label": "minted"}, ISSUER, ISSUER_PASSWORD)
    assert status == 200 and answer3["user"] == RUNNER
    # A token does not mint tokens; a lifetime past --token-max-ttl (24h) is refused.
    assert post(a.admin, {}, RUNNER, answer["token"])[0] == 403
    assert post(a.admin, {"ttl": "2d"}, RUNNER, RUNNER_PASSWORD)[0] == 400
    assert post(a.admin, {"ttl": "soon"}, RUNNER, RUNNER_PASSWORD)[0] == 400
    listed = json.loads(cli(db, "tokens", "list", "--user", RUNNER, "--json").stdout)
    assert sorted(t["label"] for t in listed) == ["ci-job", "minted"]
    a.stderr.wait_for("token issued", 5)
    no_secret_anywhere(pair, [answer["token"], answer3["token"], RUNNER_PASSWORD, ISSUER_PASSWORD])


def test_bearer_needs_a_user_database(launcher, users_file):
    p = launcher.start("--auth", "basic,bearer", ready=False)
    p.proc.wait(30)
    assert p.proc.returncode != 0
    assert "bearer" in p.stderr.text()


# ------------------------------------------------------------------ expiry warnings

def iso_in(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))


def expires_in(response) -> int | None:
    for name, value in response.headers:
        if name.lower() == "proxy-status" and "credential-expires-in=" in value:
            return int(value.split("credential-expires-in=")[1].split('"')[0])
    return None


def test_expiry_warnings(launcher, db, origin):
    admin = free_port()
    cli(db, "users", "add", "soon", "--password-stdin", "--cost", "4", stdin="soon-secret\n")
    cli(db, "users", "add", "later", "--password-stdin", "--cost", "4", stdin="later-secret\n")
    cli(db, "users", "expire", "soon", "--at", iso_in(2 * 86400))
    cli(db, "users", "expire", "later", "--at", iso_in(30 * 86400))
    p = launcher.start("--store", f"sqlite:{db}", "--admin", f"127.0.0.1:{admin}", htpasswd=None)
    # The hint on a response to a credential ending within the 7-day window, not outside it.
    seconds = expires_in(through(p, origin, basic("soon", "soon-secret")))
    assert seconds is not None and 2 * 86400 - 60 <= seconds <= 2 * 86400, seconds
    assert expires_in(through(p, origin, basic("later", "later-secret"))) is None
    assert expires_in(through(p, origin, basic(RUNNER, RUNNER_PASSWORD))) is None
    # Cached (second request): still counted down, still there.
    assert expires_in(through(p, origin, basic("soon", "soon-secret"))) is not None
    # One warning in the log, naming the user and never the password.
    p.stderr.wait_for(r"user=soon .*credential expires soon", 10)
    assert "user=later" not in p.stderr.text() and "soon-secret" not in p.stderr.text()
    # The gauges.
    def gauges():
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
            text = r.read().decode()
        return {line.split("{state=\"")[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line.startswith("portcullis_users{")}
    wait_until(lambda: gauges().get("expiring") == 1, 10, what="the users gauges")
    assert gauges() == {"active": 3, "expiring": 1, "expired": 0, "disabled": 0, "rotating": 0}, gauges()
    # users list --expiring-within: exit 1 with the user listed, exit 0 when nothing ends.
    out = cli(db, "users", "list", "--expiring-within", "7d", check=False)
    assert out.returncode == 1 and "soon" in out.stdout and "later" not in out.stdout, out.stdout
    out = cli(db, "users", "list", "--expiring-within", "1d", check=False)
    assert out.returncode == 0, out.stdout
    token = issue(db, "--ttl", "1h", "--label", "nightly")
    out = cli(db, "users", "list", "--expiring-within", "1d", "--json", check=False)
    listed = json.loads(out.stdout)
    assert out.returncode == 1 and [t["label"] for t in listed["tokens"]] == ["nightly"] and listed["users"] == []
    # A token ends by design: no hint on its responses.
    assert expires_in(through(p, origin, basic(RUNNER, token))) is None


def test_doctor_warns_days_before(launcher, db, origin):
    cli(db, "users", "add", "soon", "--password-stdin", "--cost", "4", stdin="soon-secret\n")
    cli(db, "users", "expire", "soon", "--at", iso_in(3 * 86400))
    p = launcher.start("--store", f"sqlite:{db}", htpasswd=None)
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "HTTP_PROXY": f"http://soon:soon-secret@{p.host}:{p.port}"}
    out = subprocess.run([PORTCULLIS_BIN, "doctor", "--target", f"{origin.base}/text", "--json"], env=env,
                         capture_output=True, text=True, timeout=60)
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["verdict"] == "ok", out.stdout
    step = next(s for s in report["steps"] if s["name"] == "authentication")
    assert step["status"] == "warn" and "expires in 2 d" in step["message"], step
    assert iso_in(3 * 86400)[:10] in step["message"] or iso_in(3 * 86400 - 86400)[:10] in step["message"], step
    out = subprocess.run([PORTCULLIS_BIN, "doctor", "--target", f"{origin.base}/text", "--startup-check"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("portcullis doctor: WARN (exit 0)"), out.stdout
    assert "soon-secret" not in out.stdout + out.stderr
