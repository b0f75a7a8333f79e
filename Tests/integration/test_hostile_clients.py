"""Requests whose framing two parsers could read differently (request smuggling) and other
malformed input from clients: each gets a clear 4xx/5xx with Proxy-Status, the connection
closes cleanly, and nothing of it reaches the origin."""

from __future__ import annotations

import pytest

from portcullis_helpers import assert_proxy_status, basic, wait_until

AUTH = f"Proxy-Authorization: {basic()}\r\n"


def _refused(proxy, origin, raw: bytes, status: int, details: str):
    before = len(origin.requests)
    with proxy.conn() as c:
        c.send(raw)
        r = c.read_response()
        assert r.status == status, r.describe()
        assert_proxy_status(r, details=details)
        assert (r.header("Connection") or "").lower() == "close"
        c.wait_eof()
    assert len(origin.requests) == before, "a refused request reached the origin"


@pytest.mark.parametrize("fields,details", [
    ("Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", "both Transfer-Encoding and Content-Length"),
    ("Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", "both Transfer-Encoding and Content-Length"),
    ("Content-Length: 4\r\nContent-Length: 5\r\n", "invalid or conflicting Content-Length"),
    ("Transfer-Encoding: chunked, identity\r\n", "invalid Transfer-Encoding"),
    ("Transfer-Encoding: identity\r\n", "Transfer-Encoding does not end in chunked"),
    ("Transfer-Encoding : chunked\r\n", "malformed header line"),
    ("X-Fold: a\r\n Transfer-Encoding: chunked\r\n", "obsolete line folding"),
    ("Host: other.example\r\n", "more than one Host field"),
])
def test_ambiguous_request_framing_is_refused(proxy, origin, fields, details):
    raw = (f"POST {origin.base}/upload HTTP/1.1\r\nHost: {origin.authority}\r\n{AUTH}{fields}\r\n"
           "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n").encode()
    _refused(proxy, origin, raw, 400, details)


def test_transfer_encoding_in_http10_is_refused(proxy, origin):
    raw = (f"POST {origin.base}/upload HTTP/1.0\r\n{AUTH}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n").encode()
    _refused(proxy, origin, raw, 400, "Transfer-Encoding in an HTTP/1.0 request")


def test_unsupported_http_version_is_505(proxy, origin):
    _refused(proxy, origin, f"GET {origin.base}/text HTTP/2.0\r\nHost: x\r\n\r\n".encode(), 505,
             "only HTTP/1.0 and HTTP/1.1 are spoken here")


def test_oversized_head_is_431(proxy, origin):
    raw = f"GET {origin.base}/text HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 70000}\r\n\r\n".encode()
    _refused(proxy, origin, raw, 431, "request head larger than 64 KiB")


def test_bad_chunk_framing_mid_body_closes_the_request(proxy, origin):
    # The head is fine and goes upstream; the body turns out to be broken half-way. The origin
    # must never see a complete request, and the client gets a 400.
    raw = (f"POST {origin.base}/upload HTTP/1.1\r\nHost: {origin.authority}\r\n{AUTH}"
           "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n\r\n").encode()
    with proxy.conn() as c:
        c.send(raw)
        r = c.read_response()
        assert r.status == 400, r.describe()
        assert_proxy_status(r, details="invalid chunk size")
        c.wait_eof()
    assert not [m for m, p, _ in origin.requests if p == "/upload"], "a broken body was delivered"


def test_valid_chunked_upload_with_trailers_is_forwarded_as_sent(proxy, echo_origin):
    # The echo origin records the bytes it receives (its echo is no HTTP response; the client
    # gets a 502 for that, which is not what this test is about).
    body = b"4;x=y\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Sum: 1\r\n\r\n"
    raw = (f"POST http://127.0.0.1:{echo_origin.port}/echo HTTP/1.1\r\nHost: x\r\n{AUTH}"
           "Transfer-Encoding: chunked\r\n\r\n").encode() + body
    with proxy.conn() as c:
        c.send(raw)
        c.read_response()
    wait_until(lambda: echo_origin.received.endswith(body), 5, what="the chunked body at the origin")
    seen = bytes(echo_origin.received)
    assert seen.startswith(b"POST /echo HTTP/1.1\r\n")
    assert b"\r\nTransfer-Encoding: chunked\r\n" in seen
    assert b"Proxy-Authorization" not in seen
