"""Parent proxies: Portcullis forwarding through a real Squid that asks for Basic or Digest,
answering the parent's 407 itself; the client's own credentials never leave the first hop."""

from __future__ import annotations

import json
import sys
import socket
import threading
import urllib.parse

import pytest

from portcullis_helpers import (
    PASSWORD, USER, assert_proxy_status, basic, build_request, free_port, run_curl, wait_until,
)
from peers import module_peers, peers, squid_basic, squid_digest  # noqa: F401 - fixtures

AUTH = ("Proxy-Authorization", basic())
PARENT_USER = "bridge"
PARENT_PASSWORD = "p@ss:w%rd/é"


def parent_url(peer, user=PARENT_USER, password=PARENT_PASSWORD) -> str:
    if user is None:
        return f"http://127.0.0.1:{peer.port}"
    q = lambda s: urllib.parse.quote(s, safe="")  # noqa: E731
    return f"http://{q(user)}:{q(password)}@127.0.0.1:{peer.port}"


@pytest.fixture(scope="module")
def squid_parent_basic(module_peers):
    return module_peers.squid("basic", users={PARENT_USER: PARENT_PASSWORD})


@pytest.fixture(scope="module")
def squid_parent_digest(module_peers):
    return module_peers.squid("digest", users={PARENT_USER: PARENT_PASSWORD})


def connect_through(p, port: int, headers=(AUTH,)):
    c = p.conn()
    c.send(build_request("CONNECT", f"127.0.0.1:{port}", list(headers), host=f"127.0.0.1:{port}"))
    return c, c.read_response_head("CONNECT")


@pytest.mark.parametrize("kind", ["basic", "digest"])
def test_connect_through_an_authenticating_squid(launcher, echo_origin, squid_parent_basic,
                                                 squid_parent_digest, kind):
    parent = squid_parent_basic if kind == "basic" else squid_parent_digest
    p = launcher.start("--connect-ports", echo_origin.port, "--parent", parent_url(parent))
    for _ in range(3):  # the second and third learn nothing new: the scheme is remembered
        c, r = connect_through(p, echo_origin.port)
        with c:
            assert r.status == 200, r.describe()
            c.send(b"ping through two proxies\n")
            assert c.read_exact(25) == b"ping through two proxies\n"
    assert echo_origin.connections_accepted == 3
    # Squid's log of the parent's side is off; what the origin saw is only the tunnel bytes.


def test_a_wrong_parent_password_is_a_502_that_says_so(launcher, echo_origin, squid_parent_basic):
    p = launcher.start("--connect-ports", echo_origin.port,
                       "--parent", parent_url(squid_parent_basic, password="wrong-password"))
    c, r = connect_through(p, echo_origin.port)
    with c:
        assert r.status == 502, r.describe()
        assert_proxy_status(r, error="proxy_configuration_error")
        assert "refused the proxy's Basic credentials" in r.header("Proxy-Status")
        # Never the parent's challenge: the client would send its own secret to the wrong hop.
        assert not r.header_all("Proxy-Authenticate")
    assert echo_origin.connections_accepted == 0


def test_no_parent_credentials_is_a_502_naming_what_the_parent_wants(launcher, echo_origin,
                                                                      squid_parent_digest):
    p = launcher.start("--connect-ports", echo_origin.port, "--parent", parent_url(squid_parent_digest, user=None))
    c, r = connect_through(p, echo_origin.port)
    with c:
        assert r.status == 502, r.describe()
        assert "asks for credentials (Digest) and none are configured" in r.header("Proxy-Status")


def test_the_password_can_come_from_a_file(launcher, echo_origin, squid_parent_basic, tmp_path):
    secret = tmp_path / "parent-password"
    secret.write_text(PARENT_PASSWORD + "\n", encoding="utf-8")
    p = launcher.start("--connect-ports", echo_origin.port,
                       "--parent", f"http://{PARENT_USER}@127.0.0.1:{squid_parent_basic.port}",
                       "--parent-password-file", secret)
    c, r = connect_through(p, echo_origin.port)
    with c:
        assert r.status == 200, r.describe()


def test_a_dead_first_parent_fails_over_to_the_second(launcher, echo_origin, squid_parent_basic):
    dead = free_port()
    p = launcher.start("--connect-ports", echo_origin.port,
                       "--parent", f"http://{PARENT_USER}:x@127.0.0.1:{dead}",
                       "--parent", parent_url(squid_parent_basic))
    for _ in range(3):
        c, r = connect_through(p, echo_origin.port)
        with c:
            assert r.status == 200, r.describe()
    # The origin's accept loop counts a connection after the kernel accepted it, which can be
    # after the tunnel's 200 reached the client: wait for the count, then want exactly three.
    wait_until(lambda: echo_origin.connections_accepted >= 3, 5, what="three connections at the origin")
    assert echo_origin.connections_accepted == 3
    assert "parent proxy unreachable" in p.stderr.text()
    assert p.stderr.text().count("parent proxy unreachable") == 1  # logged once, not per request


def test_direct_for_bypasses_the_parent(launcher, echo_origin):
    dead = free_port()
    p = launcher.start("--connect-ports", echo_origin.port, "--parent", f"http://127.0.0.1:{dead}",
                       "--direct-for", "127.0.0.0/8")
    c, r = connect_through(p, echo_origin.port)
    with c:
        assert r.status == 200, r.describe()


def test_curl_through_the_bridge_without_credentials_of_its_own(launcher, tls_origin, origin, squid_parent_basic,
                                                                 tmp_path):
    """The laptop case: --auth none on loopback, the parent's credentials held by the bridge;
    the access log names the parent (Squid's FIRSTUP_PARENT, JSON's "parent")."""
    log = tmp_path / "access.log"
    p = launcher.start("--auth", "none", "--parent", parent_url(squid_parent_basic),
                       "--connect-ports", tls_origin.port, "--access-log", log, "--access-log-format", "json",
                       htpasswd=None)
    r = run_curl(["-sS", "-k", "--proxy", f"http://127.0.0.1:{p.port}", f"https://127.0.0.1:{tls_origin.port}/"])
    assert r.returncode == 0 and r.stdout == b"hello over tls\n", r.stderr
    r = run_curl(["-sS", "--proxy", f"http://127.0.0.1:{p.port}", f"{origin.base}/text"])
    assert r.returncode == 0 and r.stdout == b"hello from origin\n", r.stderr
    wait_until(lambda: len(log.read_text().splitlines()) >= 2, 10, what="two access-log lines")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert {rec["method"] for rec in records} == {"CONNECT", "GET"}, records
    for rec in records:
        assert rec["parent"] == f"127.0.0.1:{squid_parent_basic.port}", rec
        assert rec["upstream"] == "127.0.0.1" and rec["status"] == 200, rec


def get_through(p, url: str, headers=(AUTH,), method="GET", body=b""):
    with p.conn() as c:
        hs = list(headers)
        if body:
            hs.append(("Content-Length", str(len(body))))
        c.send(build_request(method, url, hs, body=body))
        return c.read_response(method)


@pytest.mark.parametrize("kind", ["basic", "digest"])
def test_plain_requests_through_an_authenticating_squid(launcher, origin, squid_parent_basic,
                                                        squid_parent_digest, kind):
    parent = squid_parent_basic if kind == "basic" else squid_parent_digest
    p = launcher.start("--parent", parent_url(parent))
    for i in range(4):
        r = get_through(p, f"{origin.base}/headers?n={i}")
        assert r.status == 200, r.describe()
        seen = json.loads(r.body)
        names = [k.lower() for k, _ in seen["headers"]]
        # Neither the client's credentials nor the bridge's reach the origin.
        assert "proxy-authorization" not in names, seen
        assert seen["target"] == f"/headers?n={i}"
    # Once the scheme is known, a request with a body goes through on the first try.
    r = get_through(p, f"{origin.base}/upload", method="POST", body=b"x" * 1000)
    assert r.status == 200, r.describe()
    assert json.loads(r.body)["length"] == 1000


def test_plain_request_with_a_wrong_parent_password_is_a_502(launcher, origin, squid_parent_digest):
    p = launcher.start("--parent", parent_url(squid_parent_digest, password="wrong-password"))
    r = get_through(p, f"{origin.base}/text")
    assert r.status == 502, r.describe()
    assert "refused the proxy's Digest credentials" in r.header("Proxy-Status")
    assert not r.header_all("Proxy-Authenticate")
    assert origin.requests == []


def test_a_body_before_the_scheme_is_known_gets_a_502_that_says_why(launcher, origin, squid_parent_basic):
    p = launcher.start("--parent", parent_url(squid_parent_basic))
    r = get_through(p, f"{origin.base}/upload", method="POST", body=b"y" * 10)
    assert r.status == 502, r.describe()
    assert "after the request body went out" in r.header("Proxy-Status")
    # The 407 taught the scheme: the same request now goes through.
    r = get_through(p, f"{origin.base}/upload", method="POST", body=b"y" * 10)
    assert r.status == 200, r.describe()


class RecordingParent:
    """A parent proxy that answers every request with a 407 asking for Basic until the request
    carries the bridge's credentials, then 200; it records every request head it got."""

    def __init__(self, close_after_407: bool = False):
        self.close_after_407 = close_after_407
        self.connections = 0
        self.heads: list[bytes] = []
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.port = self.server.getsockname()[1]
        self.expected = "Basic " + __import__("base64").b64encode(
            f"{PARENT_USER}:{PARENT_PASSWORD}".encode()).decode()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                self.heads.append(head)
                if f"Proxy-Authorization: {self.expected}".encode() in head:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                else:
                    body = b"auth please"
                    close = b"Connection: close\r\n" if self.close_after_407 else b""
                    conn.sendall(b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="p"\r\n'
                                 b"%sContent-Length: %d\r\n\r\n%s" % (close, len(body), body))
                    if self.close_after_407:
                        return

    def close(self):
        self.server.close()


def test_a_parent_that_closes_after_its_407_gets_the_request_again_on_a_new_connection(launcher):
    parent = RecordingParent(close_after_407=True)
    try:
        p = launcher.start("--parent", parent_url(parent))
        r = get_through(p, "http://origin.invalid/x")
        assert r.status == 200 and r.body == b"ok", r.describe()
        assert len(parent.heads) == 2 and parent.connections == 2, parent.heads
    finally:
        parent.close()


def test_the_parent_gets_the_bridges_credentials_and_never_the_clients(launcher):
    parent = RecordingParent()
    try:
        p = launcher.start("--parent", parent_url(parent))
        target = "http://origin.invalid:8080/a?b=c"
        r = get_through(p, target)
        assert r.status == 200 and r.body == b"ok", r.describe()
        r = get_through(p, target)
        assert r.status == 200, r.describe()
        first, second, third = parent.heads[:3]
        # Absolute-form to the parent, and the client's own Basic token nowhere.
        assert first.startswith(b"GET http://origin.invalid:8080/a?b=c HTTP/1.1\r\n"), first
        assert b"Proxy-Authorization" not in first
        assert parent.expected.encode() in second
        for head in parent.heads:
            assert basic().encode() not in head, head
        # The third (a new client request) carried the credentials at once: Basic is remembered.
        assert parent.expected.encode() in third
        assert len(parent.heads) == 3
    finally:
        parent.close()


def test_portcullis_as_an_ntlm_parent_plain_and_connect(launcher, tmp_path, origin, echo_origin):
    """The corporate side speaks only NTLM (here Portcullis itself with an NTLM-enrolled user);
    the bridge answers its challenge: a plain request authenticates the parent connection once
    and later requests on it need nothing; a CONNECT does the handshake on its own connection."""
    from test_negotiate_ntlm import access_lines, add_user
    data = tmp_path / "data"
    add_user(data, PARENT_USER, PARENT_PASSWORD, "--ntlm")
    log = tmp_path / "parent-access.log"
    corp = launcher.start("--auth", "ntlm", "--data-dir", data, "--access-log", log,
                          "--connect-ports", echo_origin.port, htpasswd=None)
    p = launcher.start("--connect-ports", echo_origin.port,
                       "--parent", parent_url(corp, user=f"CORP\\{PARENT_USER}"))
    with p.conn() as c:
        for i in range(3):
            c.send(build_request("GET", f"{origin.base}/text?{i}", [AUTH]))
            r = c.read_response("GET")
            assert r.status == 200, r.describe()
    c, r = connect_through(p, echo_origin.port)
    with c:
        assert r.status == 200, r.describe()
        c.send(b"ntlm tunnel\n")
        assert c.read_exact(12) == b"ntlm tunnel\n"
    # The tunnel's line is written once both of its sides have closed.
    wait_until(lambda: len(access_lines(log)) >= 7, 10, what="the parent's access log")
    lines = access_lines(log)
    statuses = [line[3].split("/")[1] for line in lines]
    users = [line[7] for line in lines]
    # Plain: a 407 (bare NTLM), a 407 (CHALLENGE), then three 200 as the bridge's user on one
    # authenticated connection; CONNECT: 407, 200 (the NEGOTIATE went pre-emptively).
    assert statuses.count("200") == 4, lines
    assert all(u == PARENT_USER for u, s in zip(users, statuses) if s == "200"), lines
    assert statuses.count("407") == 3, lines


def test_parents_that_route_back_make_a_508_not_an_endless_loop(launcher, origin, echo_origin):
    a_port, b_port = free_port(), free_port()
    a = launcher.start("--auth", "none", "--parent", f"http://127.0.0.1:{b_port}",
                       "--connect-ports", echo_origin.port, listen=[f"127.0.0.1:{a_port}"], htpasswd=None)
    launcher.start("--auth", "none", "--parent", f"http://127.0.0.1:{a_port}", "--connect-ports", echo_origin.port,
                   listen=[f"127.0.0.1:{b_port}"], htpasswd=None)
    r = get_through(a, f"{origin.base}/text", headers=())
    assert r.status == 508, r.describe()
    assert_proxy_status(r, error="proxy_loop_detected")
    c, r = connect_through(a, echo_origin.port, headers=())
    with c:
        # A refuses the looped CONNECT with a 508; B tells A "parent answered 508" in a 502,
        # which A passes on as its parent's answer: one round, not an endless one.
        assert r.status == 502 and "answered 502" in r.header("Proxy-Status"), r.describe()
    assert origin.requests == [] and echo_origin.connections_accepted == 0


def _negotiate_parent(launcher, tmp_path, echo_origin):
    from test_negotiate_ntlm import negotiate_proxy
    return negotiate_proxy(launcher, tmp_path, "--connect-ports", str(echo_origin.port))


def _through_negotiate_parent(launcher, bridge, corp, origin, echo_origin):
    """Three plain requests on one client connection and a CONNECT, through the bridge; the
    parent logs the Kerberos user for each 200."""
    from test_negotiate_ntlm import access_lines
    import os
    with bridge.conn() as c:
        for i in range(3):
            c.send(build_request("GET", f"{origin.base}/text?{i}", [AUTH]))
            r = c.read_response("GET")
            assert r.status == 200, r.describe()
    c, r = connect_through(bridge, echo_origin.port)
    with c:
        assert r.status == 200, r.describe()
        c.send(b"kerberos tunnel\n")
        assert c.read_exact(16) == b"kerberos tunnel\n"
    wait_until(lambda: sum(1 for line in access_lines(corp.access_log) if line[3].endswith("/200")) >= 4, 10,
               what="the parent's access log")
    principal = f"{os.environ['PORTCULLIS_TEST_KRB5_USER']}@{os.environ['PORTCULLIS_TEST_KRB5_REALM']}"
    lines = access_lines(corp.access_log)
    assert {line[7] for line in lines if line[3].endswith("/200")} == {principal}, lines


@pytest.mark.skipif(not __import__("os").environ.get("PORTCULLIS_TEST_KRB5_KEYTAB")
                    and __import__("os").environ.get("PORTCULLIS_REQUIRE_KDC") != "1",
                    reason="no test KDC (run under scripts/kdc-test-server.sh)")
def test_portcullis_as_a_negotiate_parent_from_the_ticket_cache(launcher, tmp_path, origin, echo_origin):
    import os
    import subprocess
    from test_negotiate_ntlm import kerberos_env as _unused  # noqa: F401 - same ticket set-up below
    env = {"KRB5CCNAME": f"FILE:{tmp_path / 'bridge-ccache'}", "KRB5_CONFIG": os.environ["KRB5_CONFIG"]}
    subprocess.run(["kinit", os.environ["PORTCULLIS_TEST_KRB5_USER"]],
                   input=os.environ["PORTCULLIS_TEST_KRB5_PASSWORD"].encode(), check=True,
                   capture_output=True, timeout=30, env={**os.environ, **env})
    corp = _negotiate_parent(launcher, tmp_path, echo_origin)
    bridge = launcher.start("--connect-ports", echo_origin.port,
                            "--parent", f"http://localhost:{corp.port}", env=env)
    _through_negotiate_parent(launcher, bridge, corp, origin, echo_origin)


@pytest.mark.skipif(not __import__("os").environ.get("PORTCULLIS_TEST_KRB5_KEYTAB")
                    and __import__("os").environ.get("PORTCULLIS_REQUIRE_KDC") != "1",
                    reason="no test KDC (run under scripts/kdc-test-server.sh)")
def test_portcullis_as_a_negotiate_parent_from_a_client_keytab(launcher, tmp_path, origin, echo_origin):
    """--parent-keytab: no ticket cache at all; MIT gets the ticket from the keytab itself."""
    import os
    import subprocess
    keytab = tmp_path / "client.keytab"
    principal = f"{os.environ['PORTCULLIS_TEST_KRB5_USER']}@{os.environ['PORTCULLIS_TEST_KRB5_REALM']}"
    made = subprocess.run(["kadmin.local", "-q", f"ktadd -k {keytab} -norandkey {principal}"],
                          capture_output=True, text=True, timeout=30)
    assert keytab.exists(), made.stdout + made.stderr
    corp = _negotiate_parent(launcher, tmp_path, echo_origin)
    bridge = launcher.start("--connect-ports", echo_origin.port, "--parent", f"http://localhost:{corp.port}",
                            "--parent-keytab", keytab,
                            env={"KRB5_CONFIG": os.environ["KRB5_CONFIG"],
                                 "KRB5CCNAME": f"FILE:{tmp_path / 'no-such-ccache'}"})
    _through_negotiate_parent(launcher, bridge, corp, origin, echo_origin)


class StaticSite:
    """A plain HTTP server over a directory (git's dumb protocol, a pip "simple" index)."""

    def __init__(self, root):
        import functools
        import http.server
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
        handler.log_message = lambda *args: None
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _wheel(path):
    """A minimal pure-Python wheel, demo_pkg 1.0."""
    import hashlib
    import zipfile
    files = {
        "demo_pkg/__init__.py": b"VALUE = 42\n",
        "demo_pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n",
        "demo_pkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = ""
    for name, data in files.items():
        digest = __import__("base64").urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{name},sha256={digest},{len(data)}\n"
    record += "demo_pkg-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("demo_pkg-1.0.dist-info/RECORD", record)


def test_git_and_pip_through_the_bridge_without_proxy_credentials(launcher, squid_parent_basic, tmp_path):
    """The laptop case end to end: git (dumb HTTP clone) and pip (download from a simple index)
    with a proxy URL that holds no credentials; Squid, the corporate proxy, asks for Basic and
    gets the bridge's."""
    import os
    import subprocess
    site = tmp_path / "site"
    repo_src = tmp_path / "src"
    subprocess.run(["git", "init", "-q", str(repo_src)], check=True)
    (repo_src / "README").write_text("through two proxies\n")
    git_env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@t", "GIT_TERMINAL_PROMPT": "0", "HOME": str(tmp_path)}
    subprocess.run(["git", "-C", str(repo_src), "add", "README"], check=True, env=git_env)
    subprocess.run(["git", "-C", str(repo_src), "commit", "-qm", "one"], check=True, env=git_env)
    site.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(repo_src), str(site / "repo.git")], check=True, env=git_env)
    subprocess.run(["git", "-C", str(site / "repo.git"), "update-server-info"], check=True, env=git_env)
    (site / "simple" / "demo-pkg").mkdir(parents=True)
    _wheel(site / "simple" / "demo-pkg" / "demo_pkg-1.0-py3-none-any.whl")
    (site / "simple" / "demo-pkg" / "index.html").write_text(
        '<html><body><a href="demo_pkg-1.0-py3-none-any.whl">demo_pkg-1.0-py3-none-any.whl</a></body></html>\n')
    static = StaticSite(site)
    try:
        log = tmp_path / "bridge-access.log"
        bridge = launcher.start("--auth", "none", "--parent", parent_url(squid_parent_basic), "--access-log", log,
                                htpasswd=None)
        proxy = f"http://127.0.0.1:{bridge.port}"
        clone = subprocess.run(["git", "-c", f"http.proxy={proxy}", "clone", "-q",
                                f"http://127.0.0.1:{static.port}/repo.git", str(tmp_path / "clone")],
                               capture_output=True, text=True, timeout=60, env=git_env)
        assert clone.returncode == 0, clone.stderr
        assert (tmp_path / "clone" / "README").read_text() == "through two proxies\n"
        pip = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
                              "--disable-pip-version-check", "--index-url", f"http://127.0.0.1:{static.port}/simple/",
                              "--proxy", proxy, "-d", str(tmp_path / "wheels"), "demo-pkg"],
                             capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
        assert pip.returncode == 0, pip.stdout + pip.stderr
        assert (tmp_path / "wheels" / "demo_pkg-1.0-py3-none-any.whl").exists()
        # Both really went through the bridge and on to the parent.
        wait_until(lambda: "demo_pkg-1.0-py3-none-any.whl" in log.read_text(), 5, what="pip's download logged")
        lines = log.read_text().splitlines()
        assert any("/repo.git/info/refs" in line for line in lines), lines
        assert all("FIRSTUP_PARENT/127.0.0.1" in line for line in lines if f":{static.port}/" in line), lines
    finally:
        static.close()


def test_an_https_parent_plain_and_connect(launcher, tls_cert, origin, echo_origin):
    """Portcullis' own TLS listener as the parent (Basic over TLS); the bridge verifies its
    certificate against --parent-cacert."""
    cert, key = tls_cert
    port = free_port()
    corp = launcher.start("--listen-tls", f"127.0.0.1:{port}", "--tls-cert", cert, "--tls-key", key,
                          "--connect-ports", echo_origin.port, listen=[], connect=("127.0.0.1", port))
    url = f"https://{USER}:{PASSWORD}@127.0.0.1:{port}"
    bridge = launcher.start("--auth", "none", "--parent", url, "--parent-cacert", cert,
                            "--connect-ports", echo_origin.port, htpasswd=None)
    r = get_through(bridge, f"{origin.base}/text", headers=())
    assert r.status == 200 and r.body == b"hello from origin\n", r.describe()
    c, r = connect_through(bridge, echo_origin.port, headers=())
    with c:
        assert r.status == 200, r.describe()
        c.send(b"tls to the parent\n")
        assert c.read_exact(18) == b"tls to the parent\n"
    # Without the CA, the parent's certificate is not trusted: a 502 that says so, both ways.
    untrusting = launcher.start("--auth", "none", "--parent", url, "--connect-ports", echo_origin.port,
                                htpasswd=None)
    r = get_through(untrusting, f"{origin.base}/text", headers=())
    assert r.status == 502, r.describe()
    assert_proxy_status(r, error="tls_certificate_error")
    c, r = connect_through(untrusting, echo_origin.port, headers=())
    with c:
        assert r.status == 502, r.describe()
        assert_proxy_status(r, error="tls_certificate_error")


def test_an_https_parent_whose_certificate_names_another_host_is_refused(launcher, tmp_path, origin):
    import subprocess
    cert, key = tmp_path / "other.pem", tmp_path / "other.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-keyout", str(key), "-out", str(cert), "-subj", "/CN=other.example",
                    "-addext", "subjectAltName=DNS:other.example"], check=True, capture_output=True, timeout=60)
    port = free_port()
    launcher.start("--listen-tls", f"127.0.0.1:{port}", "--tls-cert", cert, "--tls-key", key, listen=[],
                   connect=("127.0.0.1", port))
    bridge = launcher.start("--auth", "none", "--parent", f"https://{USER}:{PASSWORD}@127.0.0.1:{port}",
                            "--parent-cacert", cert, htpasswd=None)
    r = get_through(bridge, f"{origin.base}/text", headers=())
    assert r.status == 502, r.describe()
    assert_proxy_status(r, error="tls_certificate_error")
    assert origin.requests == []


def test_routes_send_each_host_to_its_parent_or_direct(launcher, origin, tmp_path):
    """Two parents (both ask for the bridge's Basic); routes from a config file send
    *.one.test to the first, *.two.test to the second, and the origin's address direct."""
    first, second = RecordingParent(), RecordingParent()
    try:
        config = tmp_path / "portcullis.yaml"
        config.write_text(
            f"parent: [\"{parent_url(first)}\", \"{parent_url(second)}\"]\n"
            "routes:\n"
            f"  - \"*.one.test=127.0.0.1:{first.port}\"\n"
            f"  - {{hosts: [\"*.two.test\"], via: \"127.0.0.1:{second.port}\"}}\n"
            "  - {hosts: [127.0.0.0/8], via: direct}\n")
        p = launcher.start("--config", config)
        assert get_through(p, "http://a.one.test/x").status == 200
        assert get_through(p, "http://b.two.test/y").status == 200
        r = get_through(p, f"{origin.base}/text")
        assert r.status == 200 and r.body == b"hello from origin\n", r.describe()
        assert [h.split(b" ")[1] for h in first.heads] == [b"http://a.one.test/x"] * 2
        assert [h.split(b" ")[1] for h in second.heads] == [b"http://b.two.test/y"] * 2
        # A host no rule names goes through the parents in order: the first.
        assert get_through(p, "http://elsewhere.test/z").status == 200
        assert first.heads[-1].split(b" ")[1] == b"http://elsewhere.test/z"
    finally:
        first.close()
        second.close()


def test_doctor_reports_the_parent_each_target_went_through(launcher, origin, tls_origin, squid_parent_basic,
                                                           tmp_path):
    """A Portcullis with a parent names it as the next hop (Proxy-Status next-hop, RFC 9209):
    doctor shows it per target; a --direct-for target has none."""
    from test_doctor import assert_result, proxy_env, run_doctor
    from peers import proxy_url
    home = tmp_path / "home"
    home.mkdir()
    p = launcher.start("--parent", parent_url(squid_parent_basic), "--connect-ports", tls_origin.port,
                       "--direct-for", "localhost")
    through = f"{origin.base}/text"
    direct = f"http://localhost:{origin.port}/text"
    tunnel = f"https://127.0.0.1:{tls_origin.port}/"
    run = run_doctor("--target", through, "--target", direct, "--target", tunnel, "--insecure", home=home,
                     env_vars=proxy_env(proxy_url(p.port, USER, PASSWORD)))
    report = assert_result(run, "ok", 0, "accepted")
    by_url = {t["url"]: t for t in report["targets"]}
    parent = f"127.0.0.1:{squid_parent_basic.port}"
    assert by_url[through].get("next_hop") == parent, run.describe()
    assert f"its parent proxy {parent}" in by_url[through]["message"], run.describe()
    assert "next_hop" not in by_url[direct], run.describe()
    assert by_url[tunnel].get("next_hop") == parent, run.describe()
