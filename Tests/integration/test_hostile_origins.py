"""Origins that break HTTP/1.1 framing must not desync the client connection: the proxy answers
502 with error=http_protocol_error (or closes if the response had already started), and an
upstream connection left out of step is never reused."""

from __future__ import annotations

import socket
import threading

import pytest

from portcullis_helpers import RawConn, assert_proxy_status, basic

AUTH = ("Proxy-Authorization", basic())


class ScriptedOrigin:
    """Answers each request head it reads with the next canned byte string; counts connections."""

    def __init__(self, replies: list[bytes]):
        self.replies = list(replies)
        self.connections = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        conn.settimeout(5)
        data = b""
        try:
            while self.replies:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                _, data = data.split(b"\r\n\r\n", 1)
                conn.sendall(self.replies.pop(0))
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self._stop.set()
        self.sock.close()


@pytest.fixture
def scripted():
    origins = []

    def make(*replies: bytes) -> ScriptedOrigin:
        o = ScriptedOrigin(list(replies))
        origins.append(o)
        return o

    yield make
    for o in origins:
        o.close()


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/2 200 OK\r\n\r\n",
    b"garbage\r\n\r\n",
])
def test_malformed_response_heads_are_502_and_the_client_connection_survives(proxy, scripted, reply):
    bad = scripted(reply)
    good = scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    with proxy.conn() as c:
        r = c.request("GET", f"{bad.base}/", [AUTH])
        assert r.status == 502, r.describe()
        assert_proxy_status(r, error="http_protocol_error")
        if (r.header("Connection") or "").lower() != "close":
            r2 = c.request("GET", f"{good.base}/", [AUTH])
            assert r2.status == 200 and r2.body == b"ok", r2.describe()


def test_bytes_after_a_response_make_the_upstream_connection_unusable(proxy, scripted):
    # The first reply smuggles a second response after its body. A proxy that reused the
    # connection would hand that smuggled response to the next request.
    o = scripted(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh",
    )
    with proxy.conn() as c:
        r1 = c.request("GET", f"{o.base}/one", [AUTH])
        assert r1.status == 200 and r1.body == b"ok", r1.describe()
        # The script is shared by all origin connections: whichever connection reads the second
        # request answers "fresh". On the first connection, the smuggled bytes would come first.
        r2 = c.request("GET", f"{o.base}/two", [AUTH])
    assert r2.body != b"SMUGGLED", "a smuggled response reached the client"
    assert o.connections == 2, f"the out-of-step upstream connection was reused ({o.connections} connections)"


def test_transfer_encoding_wins_over_content_length_from_an_origin(proxy, scripted):
    o = scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n0\r\n\r\n")
    with proxy.conn() as c:
        r = c.request("GET", f"{o.base}/", [AUTH])
        assert r.status == 200 and r.body == b"hello", r.describe()
        assert r.header("Content-Length") is None, "Content-Length forwarded beside Transfer-Encoding"


def test_truncated_body_closes_the_client_connection(proxy, scripted):
    o = scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-a-bit")
    with proxy.conn() as c:
        c.send(b"GET " + o.base.encode() + b"/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: "
               + basic().encode() + b"\r\n\r\n")
        head = c.read_response_head()
        assert head.status == 200
        # 100 bytes were promised, 10 came, then the origin closed: the proxy must close too
        # rather than leave the client waiting or let it reuse a desynchronised connection.
        c.wait_eof(5)  # raises socket.timeout if the proxy keeps the connection open
