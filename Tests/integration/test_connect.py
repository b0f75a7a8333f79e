"""CONNECT tunnels: gating on the same socket, early bytes, half-close, port policy, TLS via curl."""

from __future__ import annotations

import socket
import threading

from portcullis_helpers import (
    PASSWORD, USER, assert_proxy_status, basic, build_request, data_bytes, run_curl,
)
from origins import TCPOrigin

AUTH = ("Proxy-Authorization", basic())


def connect_head(port: int, headers=()) -> bytes:
    return build_request("CONNECT", f"127.0.0.1:{port}", list(headers), host=f"127.0.0.1:{port}")


def echo_roundtrip(c, payload: bytes):
    c.send(payload)
    got = c.read_exact(len(payload))
    assert got == payload


def test_connect_gated_then_tunnel_on_same_socket(launcher, echo_origin):
    p = launcher.start("--connect-ports", echo_origin.port)
    with p.conn() as c:
        c.send(connect_head(echo_origin.port))
        r = c.read_response("CONNECT")
        assert r.status == 407, r.describe()
        assert 'Basic realm="Portcullis", charset="UTF-8"' in r.header_all("Proxy-Authenticate")
        assert_proxy_status(r, details="missing-credentials")
        assert echo_origin.connections_accepted == 0
        # wrong password, still the same socket
        c.send(connect_head(echo_origin.port, [("Proxy-Authorization", basic(USER, "wrong"))]))
        r = c.read_response("CONNECT")
        assert r.status == 407, r.describe()
        assert_proxy_status(r, details="invalid-credentials")
        # now with credentials
        c.send(connect_head(echo_origin.port, [AUTH]))
        r = c.read_response_head("CONNECT")
        assert r.version == "HTTP/1.1" and r.status == 200, r.describe()
        assert r.raw_head.startswith(b"HTTP/1.1 200"), r.raw_head
        echo_roundtrip(c, b"ping through the tunnel\n")
        echo_roundtrip(c, b"\x00\x01binary\xff\r\n\r\nGET / HTTP/1.1\r\n\r\n")
    assert echo_origin.connections_accepted == 1


def test_bytes_sent_with_connect_head_are_delivered(launcher, echo_origin):
    p = launcher.start("--connect-ports", echo_origin.port)
    early = b"EARLY-BYTES-in-the-same-write\n"
    with p.conn() as c:
        c.send(connect_head(echo_origin.port, [AUTH]) + early)
        r = c.read_response_head("CONNECT")
        assert r.status == 200, r.describe()
        assert c.read_exact(len(early)) == early
        echo_roundtrip(c, b"and more\n")


def test_half_close_reaches_origin_and_reply_reaches_client(launcher, echo_origin):
    p = launcher.start("--connect-ports", echo_origin.port)
    with p.conn() as c:
        c.send(connect_head(echo_origin.port, [AUTH]))
        r = c.read_response_head("CONNECT")
        assert r.status == 200, r.describe()
        c.send(b"last words")
        c.shutdown_write()
        assert echo_origin.eof_seen.wait(5), "origin did not see EOF after the client's SHUT_WR"
        rest = c.wait_eof(5)
    assert rest == b"last words" + TCPOrigin.EOF_MARK, rest


def test_large_bidirectional_tunnel_transfer(launcher, echo_origin):
    p = launcher.start("--connect-ports", echo_origin.port)
    payload = data_bytes(16 * 1024 * 1024)
    with p.conn(timeout=30) as c:
        c.send(connect_head(echo_origin.port, [AUTH]))
        assert c.read_response_head("CONNECT").status == 200
        err = []

        def writer():
            try:
                c.sock.sendall(payload)
            except OSError as e:  # reported below
                err.append(e)

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        got = c.read_exact(len(payload))
        t.join(30)
        assert not err, err
        assert got == payload


def test_connect_port_not_allowed_is_403(launcher, echo_origin):
    other = TCPOrigin("echo").start()
    try:
        p = launcher.start("--connect-ports", echo_origin.port)
        with p.conn() as c:
            c.send(connect_head(other.port, [AUTH]))
            r = c.read_response("CONNECT")
            assert r.status == 403, r.describe()
            assert_proxy_status(r)
            assert r.body.strip(), "403 without a body naming the cause"
            if (r.header("Connection") or "").lower() != "close":
                # the connection is still usable for an allowed CONNECT
                c.send(connect_head(echo_origin.port, [AUTH]))
                assert c.read_response_head("CONNECT").status == 200
                echo_roundtrip(c, b"after 403\n")
        assert other.connections_accepted == 0
    finally:
        other.stop()


def test_default_connect_ports_is_443_only(launcher, echo_origin):
    p = launcher.start()
    with p.conn() as c:
        c.send(connect_head(echo_origin.port, [AUTH]))
        r = c.read_response("CONNECT")
    assert r.status == 403, r.describe()
    assert echo_origin.connections_accepted == 0


def test_connect_to_private_destination_refused_without_flag(launcher, echo_origin):
    p = launcher.start("--connect-ports", echo_origin.port, private=False)
    with p.conn() as c:
        c.send(connect_head(echo_origin.port, [AUTH]))
        r = c.read_response("CONNECT")
    assert r.status == 403, r.describe()
    assert_proxy_status(r, error="destination_ip_prohibited")
    assert echo_origin.connections_accepted == 0


def test_curl_tls_through_tunnel(launcher, tls_origin):
    p = launcher.start("--connect-ports", tls_origin.port)
    res = run_curl(["-k", "-p", "-x", p.url, "--proxy-user", f"{USER}:{PASSWORD}",
                    "-w", "\n%{http_code}", f"https://127.0.0.1:{tls_origin.port}/hello"])
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"hello over tls\n\n200", res.stdout
    assert tls_origin.connections_accepted == 1


def test_curl_tls_without_credentials_gets_407(launcher, tls_origin):
    p = launcher.start("--connect-ports", tls_origin.port)
    res = run_curl(["-k", "-p", "-x", p.url, "-w", "%{http_connect}",
                    f"https://127.0.0.1:{tls_origin.port}/hello"])
    assert res.returncode != 0
    assert res.stdout.endswith(b"407"), (res.stdout, res.stderr)
    assert tls_origin.connections_accepted == 0


def test_early_bytes_after_a_407_connect_on_same_socket(launcher, echo_origin):
    p = launcher.start("--connect-ports", echo_origin.port)
    early = b"\x16\x03\x01 looks-like-a-client-hello"
    with p.conn() as c:
        c.send(connect_head(echo_origin.port))
        assert c.read_response("CONNECT").status == 407
        c.send(connect_head(echo_origin.port, [AUTH]) + early)
        r = c.read_response_head("CONNECT")
        assert r.status == 200, r.describe()
        assert c.read_exact(len(early)) == early


def test_plain_get_after_a_407_connect_on_same_socket(launcher, echo_origin, origin):
    p = launcher.start("--connect-ports", echo_origin.port)
    with p.conn() as c:
        c.send(connect_head(echo_origin.port))
        assert c.read_response("CONNECT").status == 407
        r = c.request("GET", f"{origin.base}/text", [AUTH])
        assert r.status == 200, r.describe()
        assert r.body == b"hello from origin\n"
