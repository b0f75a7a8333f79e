"""Regressions from the adversarial review (issue 25), through the real binary on loopback:
pipelining into a closing connection, stalled request bodies, memory of client-keyed tables,
duplicate Content-Length, Proxy-Authorization in trailers, unknown schemes echoed, and 502s that
name what the origin did. Each test failed on the code before its fix."""

from __future__ import annotations

import re
import time

import pytest

from portcullis_helpers import assert_proxy_status, basic, wait_until
from test_hostile_origins import ScriptedOrigin

AUTH = ("Proxy-Authorization", basic())


def _alive_and_serving(proxy, origin):
    """The process is still there and a fresh authenticated request gets a 200."""
    time.sleep(0.5)  # the crash came from a completion after the close: give it its chance
    assert proxy.running(), f"proxy died:\n{proxy.stderr.text()[-3000:]}"
    with proxy.conn() as c:
        r = c.request("GET", f"{origin.base}/text", [AUTH])
        assert r.status == 200, r.describe()


class RecordingOrigin(ScriptedOrigin):
    """Keeps every byte each connection sent; answers 200 with an empty body to each request
    once its body (a 4-byte one, or a chunked one with its trailer section) has arrived."""

    def __init__(self):
        self.received: list[bytes] = []
        super().__init__([])

    def _handle(self, conn):
        conn.settimeout(5)
        data = b""
        index = len(self.received)
        self.received.append(b"")
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
                self.received[index] = data
                head, sep, body = data.partition(b"\r\n\r\n")
                if not sep:
                    continue
                chunked = b"transfer-encoding: chunked" in head.lower()
                if chunked and not body.endswith(b"\r\n\r\n"):
                    continue
                if not chunked and b"content-length" in head.lower() and len(body) < 4:
                    continue
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                data = b""
                index = len(self.received)
                self.received.append(b"")
        except OSError:
            pass
        finally:
            conn.close()


@pytest.fixture
def recording_origin():
    o = RecordingOrigin()
    yield o
    o.close()


# -- Finding 1: no request is parsed once the connection is closing ---------------------------

@pytest.mark.parametrize(
    "first",
    [
        b"GET http://127.0.0.1:20001/a HTTP/1.0\r\n\r\n",
        b"GET http://127.0.0.1:20001/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET http://127.0.0.1:20001/a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",  # 400, then close
        b"GET http://127.0.0.1:20001/a HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000000\r\n\r\n",
    ],
    ids=["http10", "connection-close", "bad-request", "huge-body"],
)
def test_a_request_pipelined_behind_a_closing_one_is_never_served(launcher, origin, first):
    proxy = launcher.start()
    second = (
        b"GET http://127.0.0.1:20001/b HTTP/1.1\r\nHost: x\r\n"
        b"Proxy-Authorization: Basic dTpw\r\n\r\n"
    )
    for _ in range(5):
        with proxy.conn() as c:
            c.send(first + second)
            r = c.read_response_head()
            assert r.status in (400, 407, 413), r.describe()
            rest = c.wait_eof(10)
            # Exactly one response: the pipelined request died with the connection.
            assert not re.search(rb"HTTP/1\.[01] \d\d\d ", rest), rest[:300]
    _alive_and_serving(proxy, origin)


def test_an_authenticated_request_pipelined_behind_a_closing_one_is_not_forwarded(launcher, recording_origin):
    proxy = launcher.start()
    first = f"GET {recording_origin.base}/a HTTP/1.0\r\nProxy-Authorization: {basic()}\r\n\r\n".encode()
    second = f"GET {recording_origin.base}/b HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {basic()}\r\n\r\n".encode()
    with proxy.conn() as c:
        c.send(first + second)
        assert c.read_response_head().status == 200
        c.wait_eof(10)
    time.sleep(0.3)
    assert not any(b"GET /b" in r for r in recording_origin.received), recording_origin.received


# -- Finding 2: stalled request bodies ---------------------------------------------------------

def test_a_response_decided_before_the_body_is_sent_at_once_and_the_connection_closes(launcher, origin):
    proxy = launcher.start()
    with proxy.conn(timeout=10) as c:
        start = time.monotonic()
        c.send(f"POST {origin.base}/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n".encode())
        c.send(b"x" * 1000)
        r = c.read_response_head("POST")
        assert r.status == 407, r.describe()
        assert time.monotonic() - start < 5
        assert (r.header("Connection") or "").lower() == "close"
        c.wait_eof(5)


def test_a_stalled_chunked_body_gets_its_407_at_once(launcher, origin):
    proxy = launcher.start()
    with proxy.conn(timeout=10) as c:
        c.send(f"POST {origin.base}/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab".encode())
        r = c.read_response_head("POST")
        assert r.status == 407, r.describe()
        c.wait_eof(5)


def test_a_small_rejected_body_keeps_the_connection_for_the_retry(launcher, origin):
    proxy = launcher.start()
    with proxy.conn() as c:
        r = c.request("POST", f"{origin.base}/upload", [], body=b"hello")
        assert r.status == 407, r.describe()
        r = c.request("POST", f"{origin.base}/upload", [AUTH], body=b"hello")
        assert r.status == 200, r.describe()


# The request-body timer's one real-time smoke test. Its behaviour (when the 408 comes, an origin
# timeout during an unfinished body, a body held back by the proxy) is tested with injected time
# in Tests/PortcullisProxyTests/ProxyConnectionTimerTests.swift.
def test_a_request_body_that_stops_arriving_gets_408_and_the_connection_closes(launcher, silent_origin):
    proxy = launcher.start("--request-body-timeout", "1")
    with proxy.conn(timeout=15) as c:
        start = time.monotonic()
        c.send(
            f"POST http://127.0.0.1:{silent_origin.port}/up HTTP/1.1\r\nHost: x\r\n"
            f"Proxy-Authorization: {basic()}\r\nContent-Length: 1000\r\n\r\n".encode()
            + b"x" * 10
        )
        r = c.read_response_head("POST")
        assert r.status == 408, r.describe()
        assert_proxy_status(r, details="request body not complete in time")
        c.wait_eof(10)
        assert time.monotonic() - start < 15


# -- Finding 3: the challenge-loop table is bounded in bytes ------------------------------------

def test_unique_user_agents_do_not_grow_memory(launcher, origin):
    proxy = launcher.start()
    before = proxy.vm_rss_kib()
    agent_tail = "a" * 60_000
    with proxy.conn(timeout=30) as c:
        for i in range(4000):
            c.send(f"GET {origin.base}/text HTTP/1.1\r\nHost: x\r\nUser-Agent: {i}{agent_tail}\r\n\r\n".encode())
            r = c.read_response()
            assert r.status == 407
    grown = proxy.vm_rss_kib() - before
    # 4,000 × 60 KB kept would be 240 MB; the table keeps fixed-size keys.
    assert grown < 40_000, f"RSS grew by {grown} KiB"


# -- Finding 13: one Content-Length reaches the origin ------------------------------------------

@pytest.mark.parametrize(
    "fields",
    [[("Content-Length", "4"), ("Content-Length", "4")], [("Content-Length", "4, 4")]],
    ids=["two-fields", "list"],
)
def test_a_repeated_content_length_reaches_the_origin_as_one_field(proxy, recording_origin, fields):
    with proxy.conn() as c:
        head = f"POST {recording_origin.base}/p HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {basic()}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in fields)
        c.send(head.encode() + b"\r\nabcd")
        r = c.read_response("POST")
        assert r.status == 200, r.describe()
    sent = recording_origin.received[0]
    upstream_head = sent.split(b"\r\n\r\n")[0].lower()
    assert upstream_head.count(b"content-length") == 1, sent
    assert b"content-length: 4\r\n" in upstream_head + b"\r\n", sent


# -- Finding 14: Proxy-Authorization never in trailers ------------------------------------------

def test_proxy_authorization_in_a_trailer_is_not_forwarded(proxy, recording_origin):
    with proxy.conn() as c:
        c.send(
            f"POST {recording_origin.base}/p HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {basic()}\r\n"
            "Transfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
            f"4\r\nabcd\r\n0\r\nX-Sum: 1\r\nProxy-Authorization: {basic()}\r\nConnection: x\r\n\r\n".encode()
        )
        r = c.read_response("POST")
        assert r.status == 200, r.describe()
    sent = recording_origin.received[0].lower()
    assert b"proxy-authorization" not in sent, sent
    assert sent.endswith(b"0\r\nx-sum: 1\r\n\r\n"), sent


# -- Finding 15: only known scheme names are echoed ---------------------------------------------

def test_a_bare_token_credential_is_never_echoed_or_logged(launcher, origin, tmp_path):
    log = tmp_path / "access.jsonl"
    proxy = launcher.start("--access-log", str(log), "--access-log-format", "json", "--log-level", "debug")
    token = "0123456789abcdef0123456789abcdef"
    for value in (token, f"{token} more", "X" * 40):
        with proxy.conn() as c:
            for _ in range(6):  # enough for the challenge-loop warning
                r = c.request("GET", f"{origin.base}/text", [("Proxy-Authorization", value)])
                assert r.status == 407, r.describe()
                assert value.split()[0].encode() not in r.body
                assert value.split()[0] not in (r.header("Proxy-Status") or "")
    wait_until(lambda: log.exists() and log.read_text().count("\n") >= 18, 5, what="access log lines")
    for text in (log.read_text(), proxy.stderr.text()):
        assert token not in text
        assert "XXXXXXXXXX" not in text


# -- Finding 17: a 502 says what the origin did -------------------------------------------------

@pytest.mark.parametrize(
    "reply,words",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", "Content-Length"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n", "101"),
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n", "folding"),
        (b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n", "control character"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Long: " + b"a" * 70000 + b"\r\n\r\n", "large"),
    ],
    ids=["conflicting-length", "101", "obs-fold", "nul", "long-head"],
)
def test_a_502_names_what_the_origin_did(proxy, reply, words):
    o = ScriptedOrigin([reply])
    try:
        with proxy.conn() as c:
            r = c.request("GET", f"{o.base}/x", [AUTH])
            assert r.status == 502, r.describe()
            assert "closed the connection before" not in r.text
            assert words.lower() in r.text.lower(), r.text
            assert_proxy_status(r, error="http_protocol_error")
    finally:
        o.close()


# -- Finding 16: refusals are summarized, not logged one line each --------------------------------

def test_a_flood_of_refusals_writes_a_summary_not_a_line_each(launcher, origin):
    proxy = launcher.start("--lockout-threshold", "2", "--lockout-duration", "300")
    for i in range(2):
        with proxy.conn(source="127.0.0.31") as c:
            c.request("GET", f"{origin.base}/text", [("Proxy-Authorization", basic("alice", f"guess-{i}"))])
    for _ in range(1000):
        with proxy.conn(source="127.0.0.31") as c:
            assert c.request("GET", f"{origin.base}/text", [AUTH]).status == 429
    proxy.stderr.wait_for(r"login refused: address locked out: \d+ similar lines suppressed", 20)
    lines = proxy.stderr.text().count("login refused: address locked out")
    # 1,000 refusals: at most the per-interval budget (10 per 10 s) plus the summaries.
    assert lines < 60, lines
