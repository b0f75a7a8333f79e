"""Parent proxies: Portcullis forwarding through a real Squid that asks for Basic or Digest,
answering the parent's 407 itself; the client's own credentials never leave the first hop."""

from __future__ import annotations

import json
import socket
import urllib.parse

import pytest

from portcullis_helpers import (
    PASSWORD, USER, assert_proxy_status, basic, build_request, free_port, run_curl,
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


def test_curl_through_the_bridge_without_credentials_of_its_own(launcher, tls_origin, squid_parent_basic):
    """The laptop case: --auth none on loopback, the parent's credentials held by the bridge."""
    p = launcher.start("--auth", "none", "--parent", parent_url(squid_parent_basic),
                       "--connect-ports", tls_origin.port, htpasswd=None)
    r = run_curl(["-sS", "-k", "--proxy", f"http://127.0.0.1:{p.port}", f"https://127.0.0.1:{tls_origin.port}/"])
    assert r.returncode == 0, r.stderr
