"""HTTP/2 on the TLS listener (ALPN h2), with a real HTTP/2 client library (Python's h2 over
ssl): several streams on one connection — absolute GETs and CONNECT tunnels carrying bytes both
ways — each authenticated on its own (a 407 ends its stream, not the connection), a stream that
stops reading does not stall the others, and the usual abuse (rapid reset, CONTINUATION floods)
ends the connection with GOAWAY without the proxy growing."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import struct
import time

import h2.config
import h2.exceptions
import h2.connection
import h2.events
import h2.settings
import pytest

from portcullis_helpers import basic, free_port, try_connect, wait_until
from test_negotiate_ntlm import KEYTAB, _GSSAPIClient, kerberos_env, needs_kdc  # noqa: F401 - kerberos_env is a fixture
from test_tls import CA, access_records


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return CA(tmp_path_factory.mktemp("h2ca"))


@pytest.fixture
def h2_proxy(launcher, tmp_path, ca, echo_origin):
    cert, key, _ = ca.leaf("proxy")
    port = free_port()
    p = launcher.start("--listen-tls", f"127.0.0.1:{port}", "--tls-cert", cert, "--tls-key", key,
                       "--connect-ports", echo_origin.port, "--access-log", tmp_path / "access.log",
                       "--access-log-format", "json")
    wait_until(lambda: try_connect("127.0.0.1", port, 0.5) == "ok", 10, what="the TLS listener")
    p.tls_port = port
    p.access_log = tmp_path / "access.log"
    return p


class Client:
    """One HTTP/2 connection to the proxy; events are gathered per stream."""

    def __init__(self, port: int, ca: CA, window: int | None = None, context: ssl.SSLContext | None = None):
        if context is None:
            context = ssl.create_default_context(cafile=str(ca.cert))
            context.set_alpn_protocols(["h2", "http/1.1"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        if window:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flush()
        self.headers: dict[int, list] = {}
        self.data: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.reset: set[int] = set()
        self.reset_codes: dict[int, int] = {}
        self.terminated = None
        # Streams whose reader stopped: their data is acknowledged for the connection only, so
        # their own window stays shut (as a browser tab that stopped reading one download).
        self.stalled: set[int] = set()

    def flush(self):
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def request(self, method: str, authority: str, path: str | None = None, auth: str | None = None,
                end: bool = True) -> int:
        stream = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":authority", authority)]
        if method != "CONNECT":
            headers += [(":scheme", "http"), (":path", path or "/")]
        if auth:
            headers.append(("proxy-authorization", auth))
        self.conn.send_headers(stream, headers, end_stream=end)
        self.flush()
        return stream

    def send(self, stream: int, data: bytes, end: bool = False):
        self.conn.send_data(stream, data, end_stream=end)
        self.flush()

    def pump(self, until, timeout: float = 10):
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting on the HTTP/2 connection")
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                self.terminated = self.terminated or "eof"
                return
            for event in self.conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    self.headers[event.stream_id] = event.headers
                elif isinstance(event, h2.events.DataReceived):
                    self.data.setdefault(event.stream_id, bytearray()).extend(event.data)
                    if event.stream_id in self.stalled:
                        if event.flow_controlled_length:
                            self.conn.increment_flow_control_window(event.flow_controlled_length)
                    else:
                        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended.add(event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    self.reset.add(event.stream_id)
                    self.reset_codes[event.stream_id] = int(event.error_code)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.terminated = event
            self.flush()

    def status(self, stream: int) -> int:
        headers = dict((k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v)
                       for k, v in self.headers[stream])
        return int(headers[":status"])

    def header(self, stream: int, name: str) -> str | None:
        for k, v in self.headers.get(stream, []):
            k = k.decode() if isinstance(k, bytes) else k
            if k == name:
                return v.decode() if isinstance(v, bytes) else v
        return None

    def close(self):
        self.sock.close()


def test_streams_are_requests_each_authenticated_on_its_own(h2_proxy, ca, origin):
    c = Client(h2_proxy.tls_port, ca)
    c.pump(lambda: c.conn.outbound_flow_control_window > 65535, timeout=5)
    # Windows sized for bulk transfers: at least 1 MiB for the connection and each stream.
    assert c.conn.outbound_flow_control_window >= 1 << 20
    assert c.conn.remote_settings.initial_window_size >= 1 << 20
    authority = f"127.0.0.1:{origin.port}"
    denied = c.request("GET", authority, "/text")
    ok = c.request("GET", authority, "/text", auth=basic())
    c.pump(lambda: {denied, ok} <= c.ended)
    assert c.status(denied) == 407
    assert c.header(denied, "proxy-authenticate", ).startswith("Basic")
    assert c.status(ok) == 200 and len(c.data[ok]) > 0
    # The 407 ended its stream only: the connection serves the retry.
    retry = c.request("GET", authority, "/text", auth=basic())
    c.pump(lambda: retry in c.ended)
    assert c.status(retry) == 200
    assert c.terminated is None
    c.close()
    wait_until(lambda: len(access_records(h2_proxy.access_log)) >= 3, 5, what="access log lines")
    records = access_records(h2_proxy.access_log)
    assert {r["listener"] for r in records} == {"h2"}
    assert {r["client"] for r in records} == {"127.0.0.1"}
    assert sorted(r["status"] for r in records) == [200, 200, 407]


def test_connect_tunnels_and_gets_share_one_connection(h2_proxy, ca, origin, echo_origin):
    c = Client(h2_proxy.tls_port, ca)
    tunnels = [c.request("CONNECT", f"127.0.0.1:{echo_origin.port}", auth=basic(), end=False) for _ in range(2)]
    gets = [c.request("GET", f"127.0.0.1:{origin.port}", "/text", auth=basic()) for _ in range(3)]
    c.pump(lambda: all(s in c.headers for s in tunnels) and set(gets) <= c.ended)
    assert [c.status(s) for s in tunnels] == [200, 200]
    assert [c.status(s) for s in gets] == [200, 200, 200]
    # Bytes both ways on both tunnels, interleaved; then each side's END_STREAM.
    for i in range(5):
        for n, s in enumerate(tunnels):
            c.send(s, f"tunnel {n} chunk {i}\n".encode())
    expected = {s: b"".join(f"tunnel {n} chunk {i}\n".encode() for i in range(5)) for n, s in enumerate(tunnels)}
    c.pump(lambda: all(bytes(c.data.get(s, b"")) == expected[s] for s in tunnels))
    for s in tunnels:
        c.send(s, b"", end=True)
    c.pump(lambda: set(tunnels) <= c.ended | c.reset)
    assert c.terminated is None
    c.close()


def test_a_tunnel_that_stops_reading_does_not_stall_the_others(h2_proxy, ca, origin, echo_origin):
    # A 64 KiB stream window on the client: the stalled stream fills it and stops.
    c = Client(h2_proxy.tls_port, ca, window=65535)
    stalled = c.request("CONNECT", f"127.0.0.1:{echo_origin.port}", auth=basic(), end=False)
    c.pump(lambda: stalled in c.headers)
    assert c.status(stalled) == 200
    c.stalled.add(stalled)
    sent = 0
    while sent < 480_000:  # echoed back into a window the client never reopens
        if c.conn.local_flow_control_window(stalled) < 16000:
            c.pump(lambda: c.conn.local_flow_control_window(stalled) >= 16000, timeout=5)
            continue
        c.conn.send_data(stalled, b"x" * 16000)
        c.flush()
        sent += 16000
    deadline = time.monotonic() + 1
    c.pump(lambda: time.monotonic() > deadline, timeout=2)
    fresh = c.request("GET", f"127.0.0.1:{origin.port}", "/text", auth=basic())
    c.pump(lambda: fresh in c.ended, timeout=10)
    assert c.status(fresh) == 200
    assert len(c.data.get(stalled, b"")) <= 65535
    c.close()


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def raw_h2(port: int, ca: CA) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(ca.cert))
    context.set_alpn_protocols(["h2"])
    s = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
    s.sendall(PREFACE + frame(4, 0, 0))  # SETTINGS, empty
    return s


def read_until_goaway(s: ssl.SSLSocket, timeout: float = 10) -> int | None:
    """The GOAWAY error code the proxy sent, or None if the connection ended without one."""
    buffer = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except (socket.timeout, TimeoutError):
            continue
        except (ConnectionResetError, ssl.SSLError):
            return None
        if not chunk:
            return None
        buffer += chunk
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, payload = buffer[3], buffer[9:9 + length]
            buffer = buffer[9 + length:]
            if kind == 7:  # GOAWAY
                return int.from_bytes(payload[4:8], "big")
    raise AssertionError("no GOAWAY and no close")


def test_rapid_reset_ends_the_connection_with_goaway(h2_proxy, ca, origin):
    from hpack import Encoder
    s = raw_h2(h2_proxy.tls_port, ca)
    rss = h2_proxy.vm_rss_kib()
    encoder = Encoder()
    block = encoder.encode([(":method", "GET"), (":scheme", "http"), (":authority", f"127.0.0.1:{origin.port}"),
                            (":path", "/delay/1")])
    burst = b""
    for i in range(1000):
        stream = 1 + 2 * i
        burst += frame(1, 0x4, stream, block) + frame(3, 0, stream, struct.pack(">I", 8))  # HEADERS, RST_STREAM CANCEL
    try:
        s.sendall(burst)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        pass
    code = read_until_goaway(s)
    assert code in (None, 0xB, 0x1), code  # ENHANCE_YOUR_CALM, or PROTOCOL_ERROR
    s.close()
    assert h2_proxy.running()
    assert h2_proxy.vm_rss_kib() < rss + 64 * 1024


def test_a_continuation_flood_ends_the_connection(h2_proxy, ca, origin):
    from hpack import Encoder
    s = raw_h2(h2_proxy.tls_port, ca)
    block = Encoder().encode([(":method", "GET"), (":scheme", "http"), (":authority", f"127.0.0.1:{origin.port}"),
                              (":path", "/text")])
    flood = frame(1, 0, 1, block)  # HEADERS without END_HEADERS
    flood += b"".join(frame(9, 0, 1, b"x-pad: " + b"a" * 10) for _ in range(2000))  # CONTINUATION, never ending
    try:
        s.sendall(flood)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        pass
    code = read_until_goaway(s)
    assert code in (None, 0x1, 0xB, 0x9), code  # PROTOCOL_ERROR, ENHANCE_YOUR_CALM, COMPRESSION_ERROR
    s.close()
    assert h2_proxy.running()


def test_http11_clients_still_get_http11_on_the_tls_port(h2_proxy, ca, origin):
    context = ssl.create_default_context(cafile=str(ca.cert))
    context.set_alpn_protocols(["http/1.1"])
    with context.wrap_socket(socket.create_connection(("127.0.0.1", h2_proxy.tls_port), timeout=10),
                             server_hostname="localhost") as s:
        assert s.selected_alpn_protocol() == "http/1.1"
        s.sendall(f"GET {origin.base}/text HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n"
                  f"Proxy-Authorization: {basic()}\r\n\r\n".encode())
        assert s.recv(64).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("kind, payload", [
    ("ping", (6, 0, 0, b"12345678")),
    ("settings", (4, 0, 0, b"")),
])
def test_control_frame_floods_end_the_connection(h2_proxy, ca, kind, payload):
    s = raw_h2(h2_proxy.tls_port, ca)
    flood = frame(*payload) * 2000
    try:
        s.sendall(flood)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        pass
    code = read_until_goaway(s)
    assert code in (None, 0xB), code  # ENHANCE_YOUR_CALM
    s.close()
    assert h2_proxy.running()


def test_streams_beyond_the_limit_are_refused_and_an_oversized_header_list_too(launcher, tmp_path, ca, origin):
    cert, key, _ = ca.leaf("proxy")
    port = free_port()
    p = launcher.start("--listen-tls", f"127.0.0.1:{port}", "--tls-cert", cert, "--tls-key", key,
                       "--http2-max-streams", "2")
    wait_until(lambda: try_connect("127.0.0.1", port, 0.5) == "ok", 10, what="the TLS listener")
    c = Client(port, ca)
    c.pump(lambda: c.conn.remote_settings.max_concurrent_streams == 2, timeout=5)
    slow = [c.request("GET", f"127.0.0.1:{origin.port}", "/delay/1", auth=basic()) for _ in range(2)]
    # The h2 library refuses to open a third itself: the limit is the proxy's SETTINGS.
    with pytest.raises(h2.exceptions.TooManyStreamsError):
        c.request("GET", f"127.0.0.1:{origin.port}", "/text", auth=basic())
    c.pump(lambda: set(slow) <= c.ended, timeout=10)
    assert [c.status(s) for s in slow] == [200, 200]
    # A header list over the proxy's limit (SETTINGS_MAX_HEADER_LIST_SIZE): not served.
    stream = c.conn.get_next_available_stream_id()
    c.conn.send_headers(stream, [(":method", "GET"), (":scheme", "http"), (":authority", f"127.0.0.1:{origin.port}"),
                                 (":path", "/text"), ("x-big", "a" * 70000)], end_stream=True)
    c.flush()
    c.pump(lambda: stream in c.reset or stream in c.ended or c.terminated is not None, timeout=10)
    assert stream in c.reset or c.terminated is not None or c.status(stream) in (400, 431)
    c.close()
    assert p.running()


def test_a_client_certificate_names_every_streams_user(launcher, tmp_path, ca, origin):
    cert, key, _ = ca.leaf("proxy")
    carol_cert, carol_key, _ = ca.leaf("carol", client=True)
    port = free_port()
    launcher.start("--listen-tls", f"127.0.0.1:{port}", "--tls-cert", cert, "--tls-key", key,
                   "--tls-client-ca", ca.cert, "--auth", "certificate,basic", "--cert-users-implicit",
                   "--access-log", tmp_path / "access.log", "--access-log-format", "json")
    wait_until(lambda: try_connect("127.0.0.1", port, 0.5) == "ok", 10, what="the TLS listener")
    context = ssl.create_default_context(cafile=str(ca.cert))
    context.load_cert_chain(str(carol_cert), str(carol_key))
    context.set_alpn_protocols(["h2"])
    c = Client(port, ca, context=context)
    streams = [c.request("GET", f"127.0.0.1:{origin.port}", "/text") for _ in range(3)]
    c.pump(lambda: set(streams) <= c.ended)
    assert [c.status(s) for s in streams] == [200, 200, 200]
    c.close()
    wait_until(lambda: len(access_records(tmp_path / "access.log")) >= 3, 5, what="access log lines")
    assert {(r["user"], r["auth_scheme"], r["listener"]) for r in access_records(tmp_path / "access.log")} == {
        ("carol", "certificate", "h2")}


@pytest.mark.parametrize("auth", ["NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAKAGFKAAAADw==",
                                  "Negotiate TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAKAGFKAAAADw=="])
def test_ntlm_on_a_stream_asks_for_http11(h2_proxy, ca, origin, auth):
    """NTLM authenticates a connection over several requests; on HTTP/2 a stream is one request,
    so the stream is reset with HTTP_1_1_REQUIRED (clients retry over HTTP/1.1) and the
    connection serves on."""
    c = Client(h2_proxy.tls_port, ca)
    ntlm = c.request("GET", f"127.0.0.1:{origin.port}", "/text", auth=auth)
    c.pump(lambda: ntlm in c.reset)
    assert c.reset_codes[ntlm] == 0xD
    ok = c.request("GET", f"127.0.0.1:{origin.port}", "/text", auth=basic())
    c.pump(lambda: ok in c.ended)
    assert c.status(ok) == 200
    c.close()


@needs_kdc
def test_kerberos_through_negotiate_on_each_stream(launcher, tmp_path, ca, origin, kerberos_env, monkeypatch):
    """Kerberos inside Negotiate takes one leg: each stream carries its own token and is
    authenticated on its own (python-gssapi as the client, the test realm's KDC)."""
    for k, v in kerberos_env.items():
        monkeypatch.setenv(k, v)
    cert, key, _ = ca.leaf("proxy")
    port = free_port()
    launcher.start("--listen-tls", f"127.0.0.1:{port}", "--tls-cert", cert, "--tls-key", key,
                   "--auth", "negotiate,basic", "--keytab", KEYTAB,
                   "--access-log", tmp_path / "access.log", "--access-log-format", "json",
                   env={"KRB5_CONFIG": os.environ.get("KRB5_CONFIG")})
    wait_until(lambda: try_connect("127.0.0.1", port, 0.5) == "ok", 10, what="the TLS listener")
    c = Client(port, ca)
    streams = []
    for _ in range(3):
        token = _GSSAPIClient().step()
        streams.append(c.request("GET", f"127.0.0.1:{origin.port}", "/text",
                                 auth="Negotiate " + base64.b64encode(token).decode()))
    c.pump(lambda: set(streams) <= c.ended)
    assert [c.status(s) for s in streams] == [200, 200, 200]
    assert all((c.header(s, "proxy-authenticate") or "").startswith("Negotiate ") for s in streams)
    c.close()
    wait_until(lambda: len(access_records(tmp_path / "access.log")) >= 3, 5, what="access log lines")
    user = f"{os.environ['PORTCULLIS_TEST_KRB5_USER']}@{os.environ['PORTCULLIS_TEST_KRB5_REALM']}"
    assert {(r["user"], r["auth_scheme"], r["listener"]) for r in access_records(tmp_path / "access.log")} == {
        (user, "negotiate", "h2")}


def read_to_eof(s: ssl.SSLSocket, timeout: float) -> bool:
    """Whether the proxy closed the connection within `timeout` (everything before is dropped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if not s.recv(65536):
                return True
        except (socket.timeout, TimeoutError):
            continue
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            return True
    return False


@pytest.mark.parametrize("bad", ["data-on-stream-0", "bad-preface"])
def test_a_goaway_for_an_error_is_followed_by_the_close(h2_proxy, ca, bad):
    """RFC 9113 §5.4.1: after a GOAWAY for a connection error the proxy closes the connection
    (it used to stay open until the idle timeout, and a Go client hung on it)."""
    if bad == "bad-preface":
        context = ssl.create_default_context(cafile=str(ca.cert))
        context.set_alpn_protocols(["h2"])
        s = context.wrap_socket(socket.create_connection(("127.0.0.1", h2_proxy.tls_port), timeout=10),
                                server_hostname="localhost")
        s.sendall(b"CONNECT x.test:443 HTTP/1.1\r\n\r\n")  # 24 bytes at least: not the preface
    else:
        s = raw_h2(h2_proxy.tls_port, ca)
        s.sendall(frame(0, 0, 0, b"x"))  # DATA on the connection's stream: PROTOCOL_ERROR
    started = time.monotonic()
    assert read_to_eof(s, 5), "the connection stayed open after the GOAWAY"
    assert time.monotonic() - started < 2
    s.close()
    assert h2_proxy.running()


def test_a_client_that_closes_its_connection_ends_it_and_its_tunnels(h2_proxy, ca, echo_origin):
    """HTTP/2 has no half-close: a client that closed its side is gone, and the proxy closes the
    connection and the tunnels on it (they used to sit in CLOSE-WAIT until the idle timeout)."""
    c = Client(h2_proxy.tls_port, ca)
    stream = c.request("CONNECT", f"127.0.0.1:{echo_origin.port}", auth=basic(), end=False)
    c.pump(lambda: stream in c.headers)
    assert c.status(stream) == 200
    c.send(stream, b"ping")
    c.pump(lambda: bytes(c.data.get(stream, b"")) == b"ping")
    assert not echo_origin.eof_seen.is_set()
    c.sock.shutdown(socket.SHUT_WR)  # a FIN without close_notify, as a killed browser sends
    started = time.monotonic()
    assert echo_origin.eof_seen.wait(10), "the tunnel stayed open after the client left"
    # The proxy's close_notify waits 1 s for the client's, which never comes.
    assert time.monotonic() - started < 3
    assert read_to_eof(c.sock, 2)
    c.sock.close()
