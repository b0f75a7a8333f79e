"""Abuse protection through the real binary: failed-login backoff and lockout per client
address (and never per user name), the request-head deadline against slowloris, and the
header-count limit. Other client addresses come from 127.0.0.0/8 (127.0.0.2, 127.0.0.3)."""

from __future__ import annotations

import time

from portcullis_helpers import PASSWORD, USER, assert_proxy_status, basic

GOOD = ("Proxy-Authorization", basic())
BAD = ("Proxy-Authorization", basic(USER, "not-the-password"))


def _guess(i):
    """A distinct wrong password each time: repeats of one wrong credential count once."""
    return ("Proxy-Authorization", basic(USER, f"guess-{i}"))


def _get(proxy, origin, auth, source="127.0.0.1"):
    with proxy.conn(source=source, timeout=15) as c:
        return c.request("GET", f"{origin.base}/text", [auth] if auth else [])


def test_repeated_failures_lock_the_address_out_but_not_the_user(launcher, origin):
    proxy = launcher.start("--lockout-threshold", "4", "--lockout-duration", "60")
    for i in range(3):
        r = _get(proxy, origin, _guess(i), "127.0.0.2")
        assert r.status == 407, r.describe()
        assert_proxy_status(r, details="invalid-credentials")
    # The fourth failure locks 127.0.0.2 out …
    assert _get(proxy, origin, _guess(3), "127.0.0.2").status == 407
    locked = _get(proxy, origin, GOOD, "127.0.0.2")
    assert locked.status == 429, locked.describe()
    assert_proxy_status(locked, details="locked-out")
    assert 1 <= int(locked.header("Retry-After")) <= 60
    assert (locked.header("Connection") or "").lower() == "close"
    # … even with no credentials at all (the first leg of a handshake) …
    assert _get(proxy, origin, None, "127.0.0.2").status == 429
    # … while the same user from a well-behaved address is not affected: user names are never locked.
    ok = _get(proxy, origin, GOOD, "127.0.0.3")
    assert ok.status == 200, ok.describe()


def test_a_locked_address_cannot_tell_a_right_password_from_a_wrong_one(launcher, origin):
    # Once locked, a cached right password gets the same 429 as a wrong one: otherwise the
    # lockout is an unthrottled oracle (issue 25, finding 10). A connection that proved the
    # credential before the lock keeps using it: that tells the client nothing new.
    proxy = launcher.start("--lockout-threshold", "2", "--lockout-duration", "60")
    with proxy.conn(source="127.0.0.4") as kept:
        assert kept.request("GET", f"{origin.base}/text", [GOOD]).status == 200
        for i in range(2):
            assert _get(proxy, origin, ("Proxy-Authorization", basic(USER, f"guess-{i}")), "127.0.0.4").status == 407
        assert _get(proxy, origin, None, "127.0.0.4").status == 429
        assert _get(proxy, origin, GOOD, "127.0.0.4").status == 429
        assert _get(proxy, origin, BAD, "127.0.0.4").status == 429
        assert kept.request("GET", f"{origin.base}/text", [GOOD]).status == 200


def test_concurrent_guesses_get_no_more_checks_than_the_threshold(launcher, origin):
    # Finding 8: 200 connections at once, each another password, all got checked. Checks in
    # flight now count: at most `threshold` of them are checked, the rest get 429 unchecked.
    import threading
    proxy = launcher.start("--lockout-threshold", "10", "--lockout-duration", "60")
    conns = [proxy.conn(source="127.0.0.21", timeout=30) for _ in range(60)]
    statuses = []
    barrier = threading.Barrier(len(conns))

    def guess(i, c):
        barrier.wait()
        r = c.request("GET", f"{origin.base}/text", [("Proxy-Authorization", basic(USER, f"wrong-{i}"))])
        statuses.append(r.status)

    threads = [threading.Thread(target=guess, args=(i, c)) for i, c in enumerate(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for c in conns:
        c.close()
    assert len(statuses) == 60
    assert statuses.count(407) <= 10, statuses
    assert statuses.count(429) >= 50, statuses
    # … and the address is now locked: the right password does not get through either.
    assert _get(proxy, origin, GOOD, "127.0.0.21").status == 429


def test_an_own_successful_login_does_not_wipe_the_guesses(launcher, origin):
    # Finding 9: 9 guesses for alice, a login as the attacker's own account, repeated, never
    # met a 429. Only the user who logged in is forgiven.
    proxy = launcher.start("--lockout-threshold", "10", "--lockout-duration", "60")
    own = ("Proxy-Authorization", basic("colon", "pa:ss:wo:rd"))
    statuses = []
    for i in range(12):
        statuses.append(_get(proxy, origin, ("Proxy-Authorization", basic(USER, f"guess-{i}")), "127.0.0.22").status)
        statuses.append(_get(proxy, origin, own, "127.0.0.22").status)
    assert 429 in statuses, statuses
    assert statuses.index(429) <= 2 * 10, statuses


def test_a_repeated_stale_password_locks_nobody_out(launcher, origin):
    # Finding 11: pip retries one wrong password 5 times a run, Java up to 20 a request. The
    # same wrong credential counts once: 40 repeats lock nothing, and other users at the
    # address are untouched.
    proxy = launcher.start("--lockout-threshold", "10", "--lockout-duration", "60")
    for _ in range(40):
        assert _get(proxy, origin, BAD, "127.0.0.23").status == 407
    assert _get(proxy, origin, GOOD, "127.0.0.23").status == 200
    assert _get(proxy, origin, ("Proxy-Authorization", basic("colon", "pa:ss:wo:rd")), "127.0.0.23").status == 200


def test_spraying_user_names_locks_the_address(launcher, origin):
    proxy = launcher.start("--lockout-threshold", "10", "--lockout-duration", "60")
    statuses = [
        _get(proxy, origin, ("Proxy-Authorization", basic(f"user{i}", "Winter2026!")), "127.0.0.24").status
        for i in range(12)
    ]
    assert statuses[:9] == [407] * 9, statuses
    assert statuses[-1] == 429, statuses


def test_long_unique_user_names_do_not_stay_in_memory(launcher, origin):
    # Finding 12: 4,000 failures with unique 45 KB names from 800 addresses grew RSS by 211 MB.
    # The throttle keeps fixed-size hashes of names, never the names.
    proxy = launcher.start()
    before = proxy.vm_rss_kib()
    tail = "n" * 45_000
    for i in range(2000):
        source = f"127.0.{2 + i // 250}.{1 + i % 250}"
        auth = ("Proxy-Authorization", basic(f"{i}{tail}", "x"))
        assert _get(proxy, origin, auth, source).status == 407
    after = proxy.vm_rss_kib()
    # Kept, the names alone would be 90 MB.
    assert after - before < 30_000, f"RSS grew by {after - before} KiB"


def test_failed_logins_are_slowed_down(launcher, origin):
    # Backoff starts halfway to the lockout (threshold 8: from the 4th failure, 100 ms, then
    # 200 ms, 400 ms, 800 ms): seven failures in a row cannot all come back at once. Counted as
    # a lower bound, so a slow machine cannot fail it.
    proxy = launcher.start("--lockout-threshold", "8")
    start = time.monotonic()
    for i in range(7):
        assert _get(proxy, origin, _guess(i), "127.0.0.5").status == 407
    assert time.monotonic() - start >= 0.1 + 0.2 + 0.4 + 0.8


def test_a_slow_request_head_gets_408_and_the_connection_closes(launcher, origin):
    proxy = launcher.start("--request-head-timeout", "1")
    with proxy.conn(timeout=10) as c:
        c.send(f"GET {origin.base}/text HTTP/1.1\r\nHost: {origin.authority}\r\nX-Slow: ".encode())
        r = c.read_response()
        assert r.status == 408, r.describe()
        assert_proxy_status(r, details="request head not complete in time")
        c.wait_eof()
    # A normal client on the same proxy is unaffected.
    assert _get(proxy, origin, GOOD).status == 200


def test_too_many_header_fields_get_431(proxy, origin):
    fields = [(f"X-F{i}", "v") for i in range(101)]
    with proxy.conn() as c:
        r = c.request("GET", f"{origin.base}/text", [GOOD] + fields)
        assert r.status == 431, r.describe()
        assert_proxy_status(r, details="more than 100 header fields")


def test_clients_outside_the_allow_list_get_403_and_a_close(launcher, origin):
    proxy = launcher.start("--allow-clients", "127.0.0.1/32, ::1")
    with proxy.conn(source="127.0.0.2") as c:
        r = c.read_response()  # answered at accept time, before any request
        assert r.status == 403, r.describe()
        assert_proxy_status(r, details="client address not allowed")
        c.wait_eof()
    assert _get(proxy, origin, GOOD, "127.0.0.1").status == 200


def test_connections_per_client_address_are_limited(launcher, origin):
    proxy = launcher.start("--max-client-connections", "2")
    first, second = proxy.conn(source="127.0.0.6"), proxy.conn(source="127.0.0.6")
    try:
        # Both admitted: they work.
        for c in (first, second):
            assert c.request("GET", f"{origin.base}/text", [GOOD]).status == 200
        with proxy.conn(source="127.0.0.6") as third:
            r = third.read_response()
            assert r.status == 429, r.describe()
            assert_proxy_status(r, details="too many connections from this address")
            third.wait_eof()
        # Another address is not affected.
        assert _get(proxy, origin, GOOD, "127.0.0.7").status == 200
    finally:
        first.close()
        second.close()
    # Closed connections are released.
    def admitted():
        try:
            return _get(proxy, origin, GOOD, "127.0.0.6").status == 200
        except OSError:
            return False
    from portcullis_helpers import wait_until
    wait_until(admitted, 5, what="a new connection from 127.0.0.6 admitted after two closed")


def test_per_user_connection_limit(launcher, origin):
    proxy = launcher.start("--user-max-connections", "1")
    with proxy.conn() as first:
        assert first.request("GET", f"{origin.base}/text", [GOOD]).status == 200
        with proxy.conn() as second:
            r = second.request("GET", f"{origin.base}/text", [GOOD])
            assert r.status == 429, r.describe()
            assert_proxy_status(r, details="user connection limit")
        # The first connection keeps working.
        assert first.request("GET", f"{origin.base}/text", [GOOD]).status == 200
    from portcullis_helpers import wait_until
    wait_until(lambda: _get(proxy, origin, GOOD).status == 200, 5, what="the user's slot released on close")


def test_per_user_address_limit_names_a_shared_credential(launcher, origin):
    proxy = launcher.start("--user-max-addresses", "2")
    assert _get(proxy, origin, GOOD, "127.0.0.11").status == 200
    assert _get(proxy, origin, GOOD, "127.0.0.12").status == 200
    r = _get(proxy, origin, GOOD, "127.0.0.13")
    assert r.status == 429, r.describe()
    assert_proxy_status(r, details="user address limit")
    assert "shared" in r.body.decode()


def test_per_user_rate_limit(launcher, origin):
    proxy = launcher.start("--user-max-rate", "2")
    statuses = []
    with proxy.conn() as c:
        for _ in range(12):
            statuses.append(c.request("GET", f"{origin.base}/text", [GOOD]).status)
    assert statuses.count(429) >= 1, statuses
    assert statuses[0] == 200


def test_request_body_limit(launcher, origin):
    proxy = launcher.start("--max-request-body", "1000")
    with proxy.conn() as c:
        r = c.request("POST", f"{origin.base}/upload", [GOOD], b"x" * 1001)
        assert r.status == 413, r.describe()
        assert_proxy_status(r, details="request body too large")
    with proxy.conn() as c:
        assert c.request("POST", f"{origin.base}/upload", [GOOD], b"x" * 1000).status == 200
    # A chunked body that grows past the limit is stopped too.
    with proxy.conn() as c:
        c.send((f"POST {origin.base}/upload HTTP/1.1\r\nHost: {origin.authority}\r\nProxy-Authorization: {GOOD[1]}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n").encode() + b"400\r\n" + b"y" * 1024 + b"\r\n")
        r = c.read_response()
        assert r.status == 413, r.describe()
        c.wait_eof()
