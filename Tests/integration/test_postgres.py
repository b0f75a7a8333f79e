"""The PostgreSQL user store with the real binary: `users` commands on a postgres:// store,
two proxies sharing one database (a change reaches both), and a lost database (cached logins
keep working, /readyz says not ready, a restarted server is picked up again). The database's
password must never show up in any output or log.

The server is the one of `scripts/postgres-test-server.sh run …` (PORTCULLIS_TEST_POSTGRES_*),
or one these tests start with that script. Without one they skip, except in CI or with
PORTCULLIS_REQUIRE_POSTGRES=1, where that is a failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from conftest import EXTRA_SECRETS
from portcullis_helpers import PORTCULLIS_BIN, REPO_ROOT, basic, free_port, wait_until

SCRIPT = REPO_ROOT / "scripts" / "postgres-test-server.sh"
REQUIRED = bool(os.environ.get("CI")) or os.environ.get("PORTCULLIS_REQUIRE_POSTGRES") == "1"


class PostgresServer:
    def __init__(self, url: str, password: str, directory: str | None):
        self.url, self.password, self.directory = url, password, directory
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port

    def secrets(self) -> set[str]:
        return {self.password, quote(self.password, safe="")}

    def fresh(self) -> str:
        """The URL of a new, empty database (each test its own: no shared users or counter)."""
        name = "it_" + uuid.uuid4().hex
        env = dict(os.environ, PGPASSWORD=self.password)
        out = subprocess.run(
            ["psql", "-h", self.host, "-p", str(self.port), "-U", "portcullis", "-d", "portcullis",
             "-v", "ON_ERROR_STOP=1", "-q", "-c", f"CREATE DATABASE {name}"],
            env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        parts = urlsplit(self.url)
        return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))

    def stop(self):
        subprocess.run(["bash", str(SCRIPT), "stop", self.directory], check=True, capture_output=True, timeout=60)

    def start(self):
        subprocess.run(["bash", str(SCRIPT), "start", self.directory], check=True, capture_output=True, timeout=60)


def _unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"PostgreSQL test server required (CI / PORTCULLIS_REQUIRE_POSTGRES=1): {reason}")
    pytest.skip(f"no PostgreSQL test server: {reason}")


@pytest.fixture(scope="module")
def pg():
    url = os.environ.get("PORTCULLIS_TEST_POSTGRES_URL")
    own = None
    if url:
        server = PostgresServer(url, os.environ.get("PORTCULLIS_TEST_POSTGRES_PASSWORD", ""),
                                os.environ.get("PORTCULLIS_TEST_POSTGRES_DIR"))
    else:
        # Not under tmp_path: the server runs as the postgres user, which must reach it.
        own = tempfile.mkdtemp(prefix="portcullis-pg.")
        try:
            out = subprocess.run(["bash", str(SCRIPT), "start", own], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            out = None
            reason = repr(e)
        if out is None or out.returncode != 0:
            shutil.rmtree(own, ignore_errors=True)
            _unavailable(reason if out is None else out.stderr.strip()[-500:])
        values = dict(line.removeprefix("export ").split("=", 1) for line in out.stdout.splitlines() if "=" in line)
        values = {k: v.strip("'") for k, v in values.items()}
        server = PostgresServer(values["PORTCULLIS_TEST_POSTGRES_URL"], values["PORTCULLIS_TEST_POSTGRES_PASSWORD"],
                                own)
    EXTRA_SECRETS.update(server.secrets())
    yield server
    if own:
        subprocess.run(["bash", str(SCRIPT), "stop", own], capture_output=True, timeout=60)
        shutil.rmtree(own, ignore_errors=True)


def users(pg: PostgresServer, url: str, *args, stdin: str | None = None, check: bool = True):
    """`portcullis users ARGS --store URL`; its output never holds the database password."""
    cmd = [PORTCULLIS_BIN, "users", *[str(a) for a in args], "--store", url]
    out = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
    for secret in pg.secrets():
        assert secret not in out.stdout + out.stderr, "the database password is in the output of users"
    if check:
        assert out.returncode == 0, f"users {args}\n{out.stdout}\n{out.stderr}"
    return out


def status(proxy, origin, user, password) -> int:
    with proxy.conn() as c:
        return c.request("GET", f"{origin.base}/text", [("Proxy-Authorization", basic(user, password))]).status


def readyz(admin: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def assert_no_db_password(pg: PostgresServer, proxy):
    text = proxy.stderr.text() + proxy.stdout.text()
    for secret in pg.secrets():
        assert secret not in text, "the database password is in the proxy's log"


def test_users_commands_work_on_postgres_and_never_show_the_password(pg, tmp_path):
    url = pg.fresh()
    audit = tmp_path / "audit.jsonl"
    users(pg, url, "add", "erin", "--password-stdin", "--groups", "ops", "--cost", "4", "--ntlm",
          "--audit-log", audit, stdin="erin-pass-123\n")
    users(pg, url, "rotate", "erin", "--grace", "1h", "--cost", "4")
    users(pg, url, "expire", "erin", "--at", "2099-01-01T00:00:00Z")
    listed = users(pg, url, "list", "--json").stdout
    assert '"erin"' in listed and '"rotating"' in listed and "$2" not in listed
    assert json.loads(listed)[0]["ntlm"] is True
    exported = users(pg, url, "export", "--htpasswd").stdout
    assert exported.startswith("erin:$2")
    out = users(pg, url, "add", "erin", "--password-stdin", stdin="x\n", check=False)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "user erin already exists" in out.stderr
    users(pg, url, "remove", "erin")
    assert "erin-pass-123" not in audit.read_text()
    # A wrong database password: one clear line naming the database without any password.
    parts = urlsplit(url)
    wrong = url.replace(parts.netloc, f"portcullis:not-it-{uuid.uuid4().hex[:6]}@{parts.hostname}:{parts.port}")
    out = users(pg, wrong, "list", check=False)
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert "password authentication failed" in out.stderr and "portcullis:***@" in out.stderr
    assert "not-it-" not in out.stderr


def test_two_proxies_on_one_database_share_users_and_a_disable_reaches_both(launcher, pg, origin):
    url = pg.fresh()
    users(pg, url, "add", "pguser", "--password-stdin", "--cost", "4", stdin="pg-user-pass\n")
    a = launcher.start("--store", url, htpasswd=None)
    b = launcher.start("--store", url, htpasswd=None)
    for proxy in (a, b):
        assert status(proxy, origin, "pguser", "pg-user-pass") == 200
        assert status(proxy, origin, "pguser", "wrong-password") == 407
    # Added through one proxy's database, seen by the other at once (never cached as unknown).
    users(pg, url, "add", "second", "--password-stdin", "--cost", "4", stdin="second-pass\n")
    assert status(b, origin, "second", "second-pass") == 200
    users(pg, url, "disable", "pguser")
    started = time.monotonic()
    wait_until(lambda: status(a, origin, "pguser", "pg-user-pass") == 407
               and status(b, origin, "pguser", "pg-user-pass") == 407, 6, what="both proxies to reject")
    assert time.monotonic() - started < 6
    for proxy in (a, b):
        assert "postgres://portcullis:***@" in proxy.stderr.text()  # the store named, redacted
        assert_no_db_password(pg, proxy)


def test_a_lost_database_keeps_verified_users_and_a_restarted_one_is_picked_up(launcher, pg, origin):
    if not pg.directory:
        _unavailable("PORTCULLIS_TEST_POSTGRES_DIR is not set: this test must stop and start the server")
    url = pg.fresh()
    users(pg, url, "add", "kept", "--password-stdin", "--cost", "4", stdin="kept-pass\n")
    admin = free_port()
    proxy = launcher.start("--store", url, "--admin", f"127.0.0.1:{admin}", htpasswd=None)
    assert status(proxy, origin, "kept", "kept-pass") == 200
    wait_until(lambda: readyz(admin) == 200, 10, what="ready")
    pg.stop()
    try:
        wait_until(lambda: readyz(admin) == 503, 15, interval=0.2, what="/readyz to say not ready")
        # Verified before the loss: served from the cache, the store's generation did not move.
        for _ in range(5):
            assert status(proxy, origin, "kept", "kept-pass") == 200
        # Never verified: the store cannot say, so 503 (not 407), and at once, not after a timeout.
        started = time.monotonic()
        assert status(proxy, origin, "kept", "other-pass") == 503
        assert time.monotonic() - started < 2
    finally:
        pg.start()
    wait_until(lambda: readyz(admin) == 200, 60, interval=0.5, what="/readyz ready again after the restart")
    users(pg, url, "add", "late", "--password-stdin", "--cost", "4", stdin="late-pass\n")
    wait_until(lambda: status(proxy, origin, "late", "late-pass") == 200, 15, interval=0.2, what="a new user")
    proxy.stderr.wait_for("user database reachable again", 5)
    log = proxy.stderr.text()
    assert log.count("lost the user database") == 1, "the loss is logged once, not per request or poll"
    assert_no_db_password(pg, proxy)


def test_serve_with_an_unreachable_database_is_one_clear_line(launcher):
    port = free_port()
    secret = f"never-shown-{uuid.uuid4().hex[:8]}"
    EXTRA_SECRETS.add(secret)
    proxy = launcher.start("--store", f"postgres://portcullis:{secret}@127.0.0.1:{port}/db", htpasswd=None,
                           ready=False)
    assert proxy.proc.wait(timeout=30) != 0
    proxy.stderr.wait_closed(5)
    text = proxy.stderr.text() + proxy.stdout.text()
    assert f"cannot reach the user database at postgres://portcullis:***@127.0.0.1:{port}/db: connection refused" \
        in text, text
    assert secret not in text
