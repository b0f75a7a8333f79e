"""Idle timeouts for client connections and tunnels (options --client-idle-timeout and
--tunnel-idle-timeout): one real-time smoke test per timer, with generous bounds.

How the timers behave is tested with the event loop's clock moved by the test, in
Tests/PortcullisProxyTests (ProxyConnectionTimerTests: the idle deadline counts from the end of
the last exchange, a slow origin is not cut off by it; ProxyConnectionTunnelTests: the tunnel's
idle timer and what its event closes). Here: the flags reach the binary and real time ends the
connection."""

from __future__ import annotations

import time

from portcullis_helpers import basic, build_request

AUTH = ("Proxy-Authorization", basic())


def test_client_idle_timeout_closes_idle_keepalive_connection(launcher, origin):
    p = launcher.start("--client-idle-timeout", "1")
    with p.conn() as c:
        r = c.request("GET", f"{origin.base}/text", [AUTH])
        assert r.status == 200
        started = time.monotonic()
        rest = c.wait_eof(15)  # socket.timeout (test failure) if it is never closed
        elapsed = time.monotonic() - started
    assert rest == b""
    assert 0.5 <= elapsed < 10, f"closed after {elapsed:.2f}s with a 1 s idle timeout"


def test_tunnel_idle_timeout_closes_silent_tunnel(launcher, echo_origin):
    p = launcher.start("--tunnel-idle-timeout", "1", "--connect-ports", echo_origin.port)
    with p.conn() as c:
        c.send(build_request("CONNECT", f"127.0.0.1:{echo_origin.port}", [AUTH]))
        assert c.read_response_head("CONNECT").status == 200
        c.send(b"hi")
        assert c.read_exact(2) == b"hi"
        started = time.monotonic()
        c.wait_eof(15)
        elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 10, f"tunnel closed after {elapsed:.2f}s with a 1 s idle timeout"
