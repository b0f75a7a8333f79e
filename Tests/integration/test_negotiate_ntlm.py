"""Negotiate (Kerberos, against the throwaway KDC of scripts/kdc-test-server.sh) and NTLM
(against users enrolled with --ntlm): curl and pyspnego as clients, plain requests and CONNECT,
one handshake per connection, failures with their reasons."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest

from portcullis_helpers import PORTCULLIS_BIN, free_port, run_curl, wait_until

# ASCII: curl derives the NT hash from a non-ASCII password wrongly (UTF-8 bytes widened, not
# UTF-16), so a non-ASCII password only works with clients that do it right (pyspnego, below).
NTLM_USER, NTLM_PASSWORD = "bob", "Ntlm-pa$$word 1"

KEYTAB = os.environ.get("PORTCULLIS_TEST_KRB5_KEYTAB")
# Under CI the KDC must be there: its tests fail rather than skip.
needs_kdc = pytest.mark.skipif(
    not KEYTAB and os.environ.get("PORTCULLIS_REQUIRE_KDC") != "1",
    reason="no test KDC (run under scripts/kdc-test-server.sh)",
)


def add_user(data_dir: Path, name: str, password: str, *flags: str):
    subprocess.run([PORTCULLIS_BIN, "users", "add", name, "--data-dir", str(data_dir), "--password-stdin", *flags],
                   input=password.encode(), check=True, capture_output=True, timeout=60)


def access_lines(path: Path) -> list[list[str]]:
    """The access log's lines (Squid format), split: [time, elapsed, client, code/status, bytes,
    method, url, user, hierarchy, type]."""
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def ntlm_proxy(launcher, tmp_path):
    data = tmp_path / "data"
    add_user(data, NTLM_USER, NTLM_PASSWORD, "--ntlm")
    add_user(data, "carol", "only-basic-here")  # not enrolled for NTLM
    log = tmp_path / "access.log"
    p = launcher.start("--auth", "ntlm,basic", "--data-dir", data, "--access-log", log, htpasswd=None)
    p.access_log = log
    return p


# ----------------------------------------------------------------------------------- NTLM

def test_curl_ntlm_authenticates_a_connection_once_for_several_requests(ntlm_proxy, origin):
    url = origin.base + "/text"
    res = run_curl(["-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_code}\n",
                    "--proxy-ntlm", "-U", f"{NTLM_USER}:{NTLM_PASSWORD}", "-x", ntlm_proxy.url, url, url, url])
    assert res.stdout.decode().split() == ["200", "200", "200"], res.stderr
    wait_until(lambda: len(access_lines(ntlm_proxy.access_log)) >= 4, 5, what="access log lines")
    lines = access_lines(ntlm_proxy.access_log)
    statuses = [line[3].split("/")[1] for line in lines]
    # One 407 carrying the CHALLENGE, then three requests as bob: one handshake for the connection.
    assert statuses == ["407", "200", "200", "200"], lines
    assert [line[7] for line in lines[1:]] == [NTLM_USER] * 3


def test_each_new_connection_authenticates_again(ntlm_proxy, origin):
    for _ in range(2):
        res = run_curl(["-o", "/dev/null", "-w", "%{http_code}", "--proxy-ntlm",
                        "-U", f"{NTLM_USER}:{NTLM_PASSWORD}", "-x", ntlm_proxy.url, origin.base + "/text"])
        assert res.stdout == b"200", res.stderr
    wait_until(lambda: len(access_lines(ntlm_proxy.access_log)) >= 4, 5, what="access log lines")
    statuses = [line[3].split("/")[1] for line in access_lines(ntlm_proxy.access_log)]
    assert statuses == ["407", "200", "407", "200"]


def test_curl_ntlm_through_connect(launcher, tmp_path, tls_origin):
    data = tmp_path / "data"
    add_user(data, NTLM_USER, NTLM_PASSWORD, "--ntlm")
    p = launcher.start("--auth", "ntlm", "--data-dir", data, "--connect-ports", str(tls_origin.port), htpasswd=None)
    res = run_curl(["-k", "-p", "--proxy-ntlm", "-U", f"{NTLM_USER}:{NTLM_PASSWORD}", "-x", p.url,
                    "-w", "\n%{http_code}", f"https://127.0.0.1:{tls_origin.port}/tls"])
    assert res.stdout.decode().rsplit("\n", 1)[-1] == "200", res.stderr


def test_wrong_password_and_unenrolled_user_get_407(ntlm_proxy, origin):
    for user, password in [(NTLM_USER, "not-the-password"), ("carol", "only-basic-here"), ("nobody", "x")]:
        res = run_curl(["-o", "/dev/null", "-w", "%{http_code}", "--proxy-ntlm", "-U", f"{user}:{password}",
                        "-x", ntlm_proxy.url, origin.base + "/text"])
        assert res.stdout == b"407", (user, res.stderr)
    log = ntlm_proxy.stderr.text()
    assert "no-nt-hash" in log  # carol: the operator learns what to do
    # Basic still works for a user without an NT hash.
    res = run_curl(["-o", "/dev/null", "-w", "%{http_code}", "-U", "carol:only-basic-here",
                    "-x", ntlm_proxy.url, origin.base + "/text"])
    assert res.stdout == b"200"


def _handshake(conn, target: str, client, scheme: str, host: str):
    """Runs a Negotiate/NTLM handshake on one connection; returns the final response."""
    token = client.step()
    while True:
        resp = conn.request("GET", target, headers=[("Host", host),
                                                    ("Proxy-Authorization", f"{scheme} {base64.b64encode(token).decode()}")])
        if resp.status != 407:
            return resp
        challenge = [v for v in resp.header_all("Proxy-Authenticate") if v.startswith(scheme + " ")]
        if not challenge:  # refused: the handshake starts over
            return resp
        token = client.step(base64.b64decode(challenge[0].split(" ", 1)[1]))


def test_pyspnego_ntlm_client_and_the_bound_connection(ntlm_proxy, origin):
    spnego = pytest.importorskip("spnego")
    client = spnego.client(NTLM_USER, NTLM_PASSWORD, protocol="ntlm")
    host = f"127.0.0.1:{origin.port}"
    with ntlm_proxy.conn() as conn:
        resp = _handshake(conn, origin.base + "/text", client, "NTLM", host)
        assert resp.status == 200, resp.describe()
        # The connection is bob's now: no credentials needed on it.
        again = conn.request("GET", origin.base + "/text", headers=[("Host", host)])
        assert again.status == 200, again.describe()
    # Another connection without credentials is challenged.
    with ntlm_proxy.conn() as conn:
        fresh = conn.request("GET", origin.base + "/text", headers=[("Host", host)])
        assert fresh.status == 407
        assert "NTLM" in fresh.header_all("Proxy-Authenticate")


def test_ntlm_v1_is_refused_with_its_reason(ntlm_proxy, origin):
    spnego = pytest.importorskip("spnego")
    # pyspnego's LM_COMPAT_LEVEL 0 makes it answer with NTLMv1.
    os.environ["LM_COMPAT_LEVEL"] = "0"
    try:
        client = spnego.client(NTLM_USER, NTLM_PASSWORD, protocol="ntlm")
        with ntlm_proxy.conn() as conn:
            resp = _handshake(conn, origin.base + "/text", client, "NTLM", f"127.0.0.1:{origin.port}")
    finally:
        del os.environ["LM_COMPAT_LEVEL"]
    assert resp.status == 407
    assert 'details="ntlm-v1-refused"' in (resp.header("Proxy-Status") or ""), resp.describe()


# ------------------------------------------------------------------------------ Negotiate

@pytest.fixture
def kerberos_env(tmp_path):
    """A ticket for the KDC's user in a ticket cache of this test's own."""
    env = {"KRB5CCNAME": f"FILE:{tmp_path / 'ccache'}", "KRB5_CONFIG": os.environ["KRB5_CONFIG"]}
    subprocess.run(["kinit", os.environ["PORTCULLIS_TEST_KRB5_USER"]],
                   input=os.environ["PORTCULLIS_TEST_KRB5_PASSWORD"].encode(), check=True,
                   capture_output=True, timeout=30, env={**os.environ, **env})
    return env


def negotiate_proxy(launcher, tmp_path, *extra, keytab=None):
    port = free_port()
    log = tmp_path / "access.log"
    p = launcher.start("--auth", "negotiate,basic", "--keytab", keytab or KEYTAB, "--access-log", log,
                       *extra, listen=[f"127.0.0.1:{port}"],
                       env={"KRB5_CONFIG": os.environ.get("KRB5_CONFIG")})
    # Clients name the proxy by host name: the service principal is HTTP/localhost.
    p.negotiate_url = f"http://localhost:{port}"
    p.access_log = log
    return p


@needs_kdc
def test_curl_negotiate_plain_and_connect(launcher, tmp_path, origin, tls_origin, kerberos_env):
    p = negotiate_proxy(launcher, tmp_path, "--connect-ports", str(tls_origin.port))
    res = run_curl(["-o", "/dev/null", "-w", "%{http_code}", "--proxy-negotiate", "-U", ":",
                    "-x", p.negotiate_url, origin.base + "/text"], env=kerberos_env)
    assert res.stdout == b"200", res.stderr
    res = run_curl(["-k", "-p", "-o", "/dev/null", "-w", "%{http_code}", "--proxy-negotiate", "-U", ":",
                    "-x", p.negotiate_url, f"https://127.0.0.1:{tls_origin.port}/tls"], env=kerberos_env)
    assert res.stdout == b"200", res.stderr
    wait_until(lambda: len(access_lines(p.access_log)) >= 2, 5, what="access log lines")
    users = {line[7] for line in access_lines(p.access_log) if line[3].endswith("/200")}
    assert users == {f"{os.environ['PORTCULLIS_TEST_KRB5_USER']}@{os.environ['PORTCULLIS_TEST_KRB5_REALM']}"}


@needs_kdc
def test_strip_realm_names_the_user_alone(launcher, tmp_path, origin, kerberos_env):
    p = negotiate_proxy(launcher, tmp_path, "--strip-realm")
    res = run_curl(["-o", "/dev/null", "-w", "%{http_code}", "--proxy-negotiate", "-U", ":",
                    "-x", p.negotiate_url, origin.base + "/text"], env=kerberos_env)
    assert res.stdout == b"200", res.stderr
    wait_until(lambda: access_lines(p.access_log), 5, what="access log line")
    assert access_lines(p.access_log)[-1][7] == os.environ["PORTCULLIS_TEST_KRB5_USER"]


@needs_kdc
@pytest.mark.parametrize("strip", [False, True])
def test_the_policy_may_name_a_kerberos_user_either_way(launcher, tmp_path, origin, kerberos_env, strip):
    """`alice` and `alice@REALM` both name the Kerberos user in --policy, with or without
    --strip-realm; a rule naming someone else still refuses (403, never 407)."""
    user, realm = os.environ["PORTCULLIS_TEST_KRB5_USER"], os.environ["PORTCULLIS_TEST_KRB5_REALM"]
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""
rules:
  - name: short
    action: allow
    users: [{user}]
    methods: [GET]
  - name: full
    action: allow
    users: ["{user}@{realm}"]
    methods: [HEAD]
  - name: someone-else
    action: allow
    users: ["{user}@OTHER.REALM", "x{user}"]
""")
    p = negotiate_proxy(launcher, tmp_path, "--policy", policy, *(["--strip-realm"] if strip else []))

    def code(*args):
        res = run_curl(["-o", "/dev/null", "-w", "%{http_code}", "--proxy-negotiate", "-U", ":",
                        "-x", p.negotiate_url, *args, origin.base + "/text"], env=kerberos_env)
        return res.stdout.decode()

    assert code() == "200"
    assert code("-I") == "200"
    assert code("-X", "POST", "-d", "x") == "403"


@needs_kdc
def test_no_ticket_gets_a_407_offering_negotiate(launcher, tmp_path, origin):
    p = negotiate_proxy(launcher, tmp_path)
    env = {"KRB5CCNAME": f"FILE:{tmp_path / 'empty-ccache'}", "KRB5_CONFIG": os.environ["KRB5_CONFIG"]}
    res = run_curl(["-i", "--proxy-negotiate", "-U", ":", "-x", p.negotiate_url, origin.base + "/text"], env=env)
    head = res.stdout.decode("latin-1")
    assert head.startswith("HTTP/1.1 407"), head
    assert "Proxy-Authenticate: Negotiate\r\n" in head
    assert "Proxy-Authenticate: Basic" in head


@needs_kdc
def test_a_keytab_with_another_key_fails_with_a_logged_reason(launcher, tmp_path, origin, kerberos_env):
    p = negotiate_proxy(launcher, tmp_path, keytab=os.environ["PORTCULLIS_TEST_KRB5_WRONG_KEYTAB"])
    res = run_curl(["-o", "/dev/null", "-w", "%{http_code}", "--proxy-negotiate", "-U", ":",
                    "-x", p.negotiate_url, origin.base + "/text"], env=kerberos_env)
    assert res.stdout == b"407"
    p.stderr.wait_for("no-keytab-key", 5)
    assert "keytab" in p.stderr.text()


class _GSSAPIClient:
    """python-gssapi's initiator for HTTP@localhost over SPNEGO, shaped like pyspnego's client."""

    def __init__(self):
        import gssapi
        spnego_mech = gssapi.OID.from_int_seq("1.3.6.1.5.5.2")
        self.ctx = gssapi.SecurityContext(
            name=gssapi.Name("HTTP@localhost", gssapi.NameType.hostbased_service),
            usage="initiate", mech=spnego_mech,
            flags=gssapi.RequirementFlag.mutual_authentication)

    def step(self, token: bytes | None = None) -> bytes | None:
        return self.ctx.step(token)

    @property
    def complete(self) -> bool:
        return self.ctx.complete


@needs_kdc
def test_python_gssapi_client(launcher, tmp_path, origin, kerberos_env, monkeypatch):
    pytest.importorskip("gssapi")
    for k, v in kerberos_env.items():
        monkeypatch.setenv(k, v)
    p = negotiate_proxy(launcher, tmp_path)
    client = _GSSAPIClient()
    with p.conn() as conn:
        resp = _handshake(conn, origin.base + "/text", client, "Negotiate", f"127.0.0.1:{origin.port}")
        assert resp.status == 200, resp.describe()
        final = resp.header("Proxy-Authenticate")
        assert final and final.startswith("Negotiate "), resp.describe()
        client.step(base64.b64decode(final.split(" ", 1)[1]))  # mutual authentication
        assert client.complete


@pytest.mark.parametrize("keytab, words", [
    ("/nonexistent/http.keytab", "cannot read"),
    (None, "--auth negotiate needs the proxy's keytab"),
])
def test_serve_refuses_a_keytab_it_cannot_use(tmp_path, keytab, words):
    args = [PORTCULLIS_BIN, "serve", "--listen", f"127.0.0.1:{free_port()}", "--auth", "negotiate",
            "--data-dir", str(tmp_path)]
    if keytab:
        args += ["--keytab", keytab]
    env = {k: v for k, v in os.environ.items() if k != "KRB5_KTNAME"}
    res = subprocess.run(args, capture_output=True, timeout=60, env=env)
    assert res.returncode != 0
    assert words in res.stderr.decode(), res.stderr


# ------------------------------------------------------------- origins that do NTLM themselves

class _ConnectionAuthOrigin:
    """An origin that authenticates connections as IIS does with NTLM: a request with
    `Authorization: NTLM <name>` makes its connection <name>'s; requests without it get a 401
    offering NTLM unless their connection was authenticated before."""

    def __init__(self):
        import http.server
        import socketserver
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                auth = self.headers.get("Authorization", "")
                if auth.startswith("NTLM "):
                    self.connection_user = auth[5:]
                user = getattr(self, "connection_user", None)
                if user is None:
                    body = b"who are you?\n"
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", "NTLM")
                else:
                    body = f"hello {user}\n".encode()
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_an_origin_authenticated_connection_never_serves_another_user(launcher):
    from portcullis_helpers import basic
    # One event loop: every client connection draws from the same pool of upstream connections.
    proxy = launcher.start(env={"PORTCULLIS_EVENT_LOOPS": "1"})
    origin = _ConnectionAuthOrigin()
    try:
        url = f"http://127.0.0.1:{origin.port}/private"
        host = ("Host", f"127.0.0.1:{origin.port}")
        with proxy.conn() as a:
            first = a.request("GET", url, headers=[host, ("Proxy-Authorization", basic()),
                                                   ("Authorization", "NTLM alice")])
            assert first.status == 200 and first.body == b"hello alice\n", first.describe()
            # The same client connection keeps the origin's authenticated connection.
            again = a.request("GET", url, headers=[host, ("Proxy-Authorization", basic())])
            assert again.body == b"hello alice\n", again.describe()
            # Another client connection (another user, for all the origin knows) must not get it.
            with proxy.conn() as b:
                other = b.request("GET", url, headers=[host, ("Proxy-Authorization", basic())])
                assert other.status == 401, other.describe()
    finally:
        origin.stop()


@needs_kdc
def test_curl_anyauth_finds_a_scheme_that_works(launcher, tmp_path, origin, kerberos_env):
    data = tmp_path / "data"
    add_user(data, NTLM_USER, NTLM_PASSWORD, "--ntlm", "--digest")
    for schemes, env, user in [
        # All four offered, with a ticket: Negotiate.
        ("negotiate,ntlm,digest,basic", kerberos_env, ":"),
        # Without Negotiate, a password: curl's next choice (Digest) works.
        ("ntlm,digest,basic", {}, f"{NTLM_USER}:{NTLM_PASSWORD}"),
        ("ntlm,basic", {}, f"{NTLM_USER}:{NTLM_PASSWORD}"),
    ]:
        port = free_port()
        extra = ["--keytab", KEYTAB] if "negotiate" in schemes else []
        launcher.start("--auth", schemes, *extra, "--data-dir", data, listen=[f"127.0.0.1:{port}"],
                       htpasswd=None, env={"KRB5_CONFIG": os.environ["KRB5_CONFIG"]})
        res = run_curl(["-o", "/dev/null", "-w", "%{http_code}", "--proxy-anyauth", "-U", user,
                        "-x", f"http://localhost:{port}", origin.base + "/text"], env=env)
        assert res.stdout == b"200", (schemes, res.stderr)
    # A client limit, not ours: curl 7.88 picks Negotiate whenever it is offered and, without a
    # ticket, gives up instead of trying the next scheme (README: use --proxy-ntlm there).


@needs_kdc
def test_the_replay_cache_is_the_proxys_own(launcher, tmp_path, origin, kerberos_env):
    data = tmp_path / "data"
    port = free_port()
    env = {"KRB5_CONFIG": os.environ["KRB5_CONFIG"], "KRB5RCACHEDIR": None}
    launcher.start("--auth", "negotiate", "--keytab", KEYTAB, "--data-dir", data,
                   listen=[f"127.0.0.1:{port}"], htpasswd=None, env=env)
    res = run_curl(["-o", "/dev/null", "-w", "%{http_code}", "--proxy-negotiate", "-U", ":",
                    "-x", f"http://localhost:{port}", origin.base + "/text"], env=kerberos_env)
    assert res.stdout == b"200", res.stderr
    rcache = data / "krb5-rcache"
    assert rcache.is_dir() and oct(rcache.stat().st_mode & 0o777) == "0o700"
    assert any(rcache.iterdir()), "MIT's replay cache file is in the data directory"
