"""Absolute-form forwarding: header rewriting, keep-alive, pipelining, framing, 100-continue,
and the responses the proxy generates for upstream failures."""

from __future__ import annotations

import json
import time

import pytest
import requests

from portcullis_helpers import (
    assert_proxy_status, assert_short_text_body, basic, build_request, data_bytes, free_port,
    run_curl, sha256_of_data, PASSWORD, USER,
)

AUTH = ("Proxy-Authorization", basic())


def headers_seen(resp) -> dict:
    info = json.loads(resp.body)
    info["lower"] = {}
    for k, v in info["headers"]:
        info["lower"].setdefault(k.lower(), []).append(v)
    return info


def test_absolute_form_get_is_forwarded(proxy, origin):
    with proxy.conn() as c:
        r = c.request("GET", f"{origin.base}/text", [AUTH])
    assert r.status == 200, r.describe()
    assert r.body == b"hello from origin\n"
    via = r.header("Via")
    assert via and "portcullis" in via.lower(), f"response Via {via!r}"
    # the origin got an origin-form request
    assert origin.requests[-1][1] == "/text"


def test_origin_form_request_is_400(proxy, origin):
    with proxy.conn() as c:
        r = c.request("GET", "/", [AUTH], host=origin.authority)
    assert r.status == 400, r.describe()
    assert_short_text_body(r)
    assert origin.connections_accepted == 0


def test_upstream_request_headers_are_rewritten(proxy, origin):
    hdrs = [
        ("Host", "wrong.example:1234"),  # must be replaced by the target authority
        AUTH,
        ("Proxy-Connection", "keep-alive"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Upgrade", "h2c"),
        ("Connection", "X-Secret, x-other-hop"),
        ("X-Secret", "1"),
        ("X-Other-Hop", "2"),
        ("X-End-To-End", "kept"),
        ("User-Agent", "portcullis-tests"),
    ]
    with proxy.conn() as c:
        r = c.request("GET", f"{origin.base}/headers?q=1", hdrs)
    assert r.status == 200, r.describe()
    info = headers_seen(r)
    seen = info["lower"]
    for gone in ("proxy-authorization", "proxy-connection", "keep-alive", "te", "trailer",
                 "upgrade", "x-secret", "x-other-hop"):
        assert gone not in seen, f"{gone} was forwarded upstream: {info['headers']}"
    assert seen.get("x-end-to-end") == ["kept"], info["headers"]
    assert seen.get("user-agent") == ["portcullis-tests"], info["headers"]
    assert seen.get("host") == [origin.authority], info["headers"]
    assert any("portcullis" in v.lower() for v in seen.get("via", [])), info["headers"]
    assert info["target"] == "/headers?q=1", info["target"]
    # the credential never reaches the origin, in any header
    token = basic().split()[1]
    assert token not in json.dumps(info["headers"])


def test_host_header_equals_target_authority(proxy, origin):
    with proxy.conn() as c:
        r = c.request("GET", f"{origin.base}/headers", [AUTH])  # Host from the target
    seen = headers_seen(r)["lower"]
    assert seen["host"] == [origin.authority]


def test_response_carries_via(proxy, origin):
    with proxy.conn() as c:
        r = c.request("GET", f"{origin.base}/headers", [AUTH])
    assert r.status == 200
    assert "portcullis" in (r.header("Via") or "").lower(), r.describe()


def test_keep_alive_reuses_one_upstream_connection(proxy, origin):
    with proxy.conn() as c:
        ids = []
        for i in range(4):
            r = c.request("GET", f"{origin.base}/headers?i={i}", [AUTH])
            assert r.status == 200, r.describe()
            ids.append(headers_seen(r)["conn_id"])
    assert len(set(ids)) == 1, f"upstream connections used: {ids}"
    assert origin.connections_accepted == 1


def test_pipelined_requests_get_responses_in_order(proxy, origin):
    with proxy.conn() as c:
        # the first is slow so a proxy that answered out of order would show it
        c.send(build_request("GET", f"{origin.base}/delay/0.3", [AUTH])
               + build_request("GET", f"{origin.base}/headers?second=1", [AUTH])
               + build_request("GET", f"{origin.base}/text", [AUTH]))
        r1 = c.read_response()
        r2 = c.read_response()
        r3 = c.read_response()
    assert (r1.status, r1.body) == (200, b"slept\n"), r1.describe()
    assert r2.status == 200 and headers_seen(r2)["target"] == "/headers?second=1", r2.describe()
    assert (r3.status, r3.body) == (200, b"hello from origin\n"), r3.describe()


def test_http10_request_gets_response_then_close(proxy, origin):
    with proxy.conn() as c:
        c.send(build_request("GET", f"{origin.base}/text", [AUTH], version="HTTP/1.0"))
        r = c.read_response_head()
        assert r.status == 200, r.describe()
        assert "chunked" not in (r.header("Transfer-Encoding") or "").lower(), \
            "chunked response to an HTTP/1.0 client"
        body = b"".join(c.iter_body(r))
        assert body == b"hello from origin\n"
        rest = c.wait_eof(5)  # raises socket.timeout if the proxy keeps it open
        assert rest == b"", f"bytes after the response: {rest!r}"


@pytest.mark.parametrize("method, path, extra, status, tag", [
    ("HEAD", "/bytes/5000", [], 200, "head"),
    ("GET", "/status/204", [], 204, "204"),
    # the origin's 304 carries Content-Length: 1234 (the representation's length): no body follows
    ("GET", "/status/304", [("If-None-Match", '"v1"')], 304, "304"),
])
def test_bodiless_response_framing_keeps_the_connection_in_step(proxy, origin, method, path, extra, status, tag):
    with proxy.conn() as c:
        r = c.request(method, f"{origin.base}{path}", [AUTH, *extra])
        assert r.status == status, r.describe()
        if method == "HEAD":
            assert r.header("Content-Length") in (None, "5000"), r.describe()
        r2 = c.request("GET", f"{origin.base}/headers?after={tag}", [AUTH])
    assert r2.status == 200, r2.describe()
    assert headers_seen(r2)["target"] == f"/headers?after={tag}"


def test_close_delimited_origin_body_is_rechunked_and_the_client_keeps_its_connection(proxy, origin):
    """The origin ends its body by closing its connection: that close is between the proxy and
    the origin only. An HTTP/1.1 client gets the body chunked, whole, and its connection serves
    the next request (over a new upstream connection)."""
    with proxy.conn() as c:
        r = c.request("GET", f"{origin.base}/closedelim", [AUTH])  # strict chunked parser
        assert r.status == 200, r.describe()
        assert (r.header("Transfer-Encoding") or "").lower() == "chunked", r.describe()
        assert r.header("Content-Length") is None, r.describe()
        assert r.header("Connection") is None, r.describe()
        assert r.body == b"close-delimited body\n" * 100
        r2 = c.request("GET", f"{origin.base}/headers?after=close", [AUTH])
        assert r2.status == 200, r2.describe()
        assert headers_seen(r2)["target"] == "/headers?after=close"
    assert origin.connections_accepted == 2


def test_close_delimited_origin_body_reaches_an_http10_client_as_it_came(proxy, origin):
    with proxy.conn() as c:
        c.send(build_request("GET", f"{origin.base}/closedelim", [AUTH], version="HTTP/1.0"))
        r = c.read_response_head()
        assert r.status == 200, r.describe()
        assert r.header("Transfer-Encoding") is None and r.header("Content-Length") is None, r.describe()
        assert (r.header("Connection") or "").lower() == "close", r.describe()
        assert c.read_to_eof() == b"close-delimited body\n" * 100


def test_post_with_body_is_forwarded(proxy, origin):
    body = data_bytes(300_000)
    with proxy.conn() as c:
        r = c.request("POST", f"{origin.base}/upload", [AUTH, ("Content-Type", "application/octet-stream")], body)
    assert r.status == 200, r.describe()
    info = json.loads(r.body)
    assert info["length"] == len(body) and info["sha256"] == sha256_of_data(len(body))


def test_expect_100_continue_raw(proxy, origin):
    body = data_bytes(200_000)
    with proxy.conn() as c:
        c.send(build_request("POST", f"{origin.base}/upload",
                             [AUTH, ("Expect", "100-continue"), ("Content-Length", str(len(body)))]))
        c.settimeout(5)
        try:
            interim = c.read_response_head(skip_interim=False)
        except TimeoutError:
            raise AssertionError("no 100 Continue (nor any response) within 5 s of an Expect: 100-continue "
                                 "head; the origin sends 100 Continue") from None
        c.settimeout(10)
        assert interim.status == 100, f"expected 100 Continue before sending the body:\n{interim.describe()}"
        c.send(body)
        r = c.read_response()
    assert r.status == 200, r.describe()
    info = json.loads(r.body)
    assert info["length"] == len(body) and info["sha256"] == sha256_of_data(len(body))


def test_expect_100_continue_with_curl(proxy, origin, tmp_path):
    size = 3 * 1024 * 1024  # large enough that curl sends Expect: 100-continue itself
    f = tmp_path / "upload.bin"
    f.write_bytes(data_bytes(size))
    res = run_curl(["-x", proxy.url, "--proxy-user", f"{USER}:{PASSWORD}", "--expect100-timeout", "6",
                    "--data-binary", f"@{f}", "-H", "Content-Type: application/octet-stream",
                    "-w", "\n%{http_code} %{time_total}", f"{origin.base}/upload"])
    assert res.returncode == 0, res.stderr
    body, _, tail = res.stdout.rpartition(b"\n")
    code, total = tail.decode().split()
    assert code == "200", res.stdout
    info = json.loads(body)
    assert info["expect"] == "100-continue", "curl did not use Expect (test assumption)"
    assert info["length"] == size and info["sha256"] == sha256_of_data(size)
    # curl waits --expect100-timeout (6 s) for 100 Continue before sending anyway
    assert float(total) < 5.0, f"upload took {total}s: 100 Continue was not relayed"


def test_requests_library_through_proxy(proxy, origin):
    s = requests.Session()
    s.trust_env = False
    proxies = {"http": f"http://{USER}:{PASSWORD}@127.0.0.1:{proxy.port}"}
    for i in range(3):
        r = s.get(f"{origin.base}/headers?n={i}", proxies=proxies, timeout=10)
        assert r.status_code == 200
        assert r.json()["target"] == f"/headers?n={i}"
    s.close()


# ----------------------------------------------------------------- upstream failures

def test_connection_refused_is_502(proxy):
    dead = free_port()
    with proxy.conn() as c:
        r = c.request("GET", f"http://127.0.0.1:{dead}/", [AUTH])
        assert r.status == 502, r.describe()
        assert_proxy_status(r, error="connection_refused")
        assert_short_text_body(r)
        # a generated error does not end the client connection
        if (r.header("Connection") or "").lower() != "close":
            r2 = c.request("GET", f"http://127.0.0.1:{dead}/again", [AUTH])
            assert r2.status == 502


def test_dns_failure_is_502(launcher, dns_sandbox):
    wrapper, dns = dns_sandbox
    if wrapper is None:
        pytest.skip("cannot make a private mount namespace to keep the DNS lookup on loopback")
    p = launcher.start()
    started = time.monotonic()
    with p.conn(timeout=15) as c:
        r = c.request("GET", "http://does-not-exist.invalid/", [AUTH])
    assert r.status == 502, r.describe()
    assert_proxy_status(r, error="dns_error")
    assert_short_text_body(r)
    assert time.monotonic() - started < 10
    if dns is not None:
        assert dns.queries > 0, "the lookup did not reach the loopback DNS server"


# The origin-response timer's one real-time smoke test; its behaviour is tested with injected
# time in Tests/PortcullisProxyTests/ProxyConnectionTimerTests.swift.
def test_origin_silence_is_504(launcher, silent_origin):
    p = launcher.start("--upstream-response-timeout", "1")
    started = time.monotonic()
    with p.conn(timeout=15) as c:
        r = c.request("GET", f"http://127.0.0.1:{silent_origin.port}/", [AUTH])
    elapsed = time.monotonic() - started
    assert r.status == 504, r.describe()
    assert_proxy_status(r, error="http_response_timeout")
    assert_short_text_body(r)
    assert 0.8 <= elapsed < 10, f"504 after {elapsed:.2f}s with a 1 s timeout"
    assert silent_origin.connections_accepted == 1


def test_private_destination_is_403_without_flag(launcher, origin):
    p = launcher.start(private=False)
    with p.conn() as c:
        for target in (f"{origin.base}/text", f"http://localhost:{origin.port}/text"):
            r = c.request("GET", target, [AUTH])
            assert r.status == 403, f"{target}:\n{r.describe()}"
            assert_proxy_status(r, error="destination_ip_prohibited")
            assert_short_text_body(r)
            if (r.header("Connection") or "").lower() == "close":
                c.close()
                c = p.conn()
    assert origin.connections_accepted == 0, "the proxy connected to a prohibited destination"


def test_private_destination_ipv6_loopback_is_403(launcher, origin):
    p = launcher.start(private=False)
    with p.conn() as c:
        r = c.request("GET", f"http://[::1]:{origin.port}/text", [AUTH])
    assert r.status == 403, r.describe()
    assert_proxy_status(r, error="destination_ip_prohibited")


def test_pooled_upstream_closed_by_origin_is_replaced(proxy, origin):
    """The origin drops its idle keep-alive connection between two requests; the next request
    on the same client connection must still succeed (on a new upstream connection)."""
    with proxy.conn() as c:
        r = c.request("GET", f"{origin.base}/headers?n=1", [AUTH])
        assert r.status == 200, r.describe()
        origin.close_all()  # FIN/RST on the pooled upstream connection
        for i in range(2, 4):
            r = c.request("GET", f"{origin.base}/headers?n={i}", [AUTH])
            assert r.status == 200, r.describe()
            assert headers_seen(r)["target"] == f"/headers?n={i}"
    assert origin.connections_accepted == 2


def test_connections_do_not_leak_memory(proxy, origin):
    """Each closed client connection must free what it held. A handler that kept its context
    leaked ~3.4 KiB per connection (found by bench/extras.py): 4 000 connections would add
    ~13 MiB. Measured as VmRSS growth after a warm-up, with a bound far above malloc noise."""
    import threading

    def rss_kib() -> int:
        for line in open(f"/proc/{proxy.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def burst(n: int):
        for _ in range(n):
            with proxy.conn() as c:
                assert c.request("GET", f"{origin.base}/text", [AUTH, ("Connection", "close")]).status == 200

    def parallel(total: int):
        threads = [threading.Thread(target=burst, args=(total // 8,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)

    parallel(800)  # warm-up: pools, caches, allocator arenas
    before = rss_kib()
    parallel(4000)
    grown = rss_kib() - before
    assert grown < 6 * 1024, f"VmRSS grew by {grown} KiB over 4 000 connections"
