"""Out of descriptors: the listener pauses accepting a second at a time instead of spinning,
says so once per burst, keeps the open connections working and accepts again as soon as
descriptors free up."""

from __future__ import annotations

import socket
import time

from portcullis_helpers import (
    ProxyProcess, RawConn, basic, clean_env, free_port, wait_until,
)

AUTH = ("Proxy-Authorization", basic())


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks


def test_by_default_connections_are_refused_before_descriptors_run_out(tmp_path, users_file, origin):
    """Out of descriptors, libdispatch's worker monitor cannot open /proc/…/stat and ends the
    process: by default the connection limit keeps an eighth of the descriptors (at least 64) in
    reserve, so connections get a 503 instead."""
    port = free_port()
    p = ProxyProcess(
        ["serve", "--listen", f"127.0.0.1:{port}", "--htpasswd", str(users_file),
         "--allow-private-destinations"],
        clean_env(tmp_path), ("127.0.0.1", port), wrapper=["prlimit", "--nofile=256:256"])
    hogs: list[socket.socket] = []
    try:
        p.wait_ready()
        assert "few descriptors allowed: at most 96 connections at once" in p.stderr.text(), p.stderr.text()[-2000:]
        # 96 taken; the 4 more get their 503 once the proxy reached them in its accept queue.
        for _ in range(100):
            hogs.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(1)
        with RawConn("127.0.0.1", port, timeout=10) as c:
            r = c.request("GET", f"{origin.base}/text", [AUTH])
        assert r.status == 503, r.describe()
        assert "cannot accept connections" not in p.stderr.text()
        for hog in hogs[:5]:
            hog.close()
        wait_until(lambda: _served(port, origin), 5, what="a connection served once one closed")
    finally:
        for hog in hogs:
            hog.close()
        p.kill()


def _served(port: int, origin) -> bool:
    with RawConn("127.0.0.1", port, timeout=10) as c:
        return c.request("GET", f"{origin.base}/text", [AUTH]).status == 200


def test_a_listener_out_of_descriptors_pauses_logs_once_and_recovers(tmp_path, users_file, origin):
    port = free_port()
    p = ProxyProcess(
        ["serve", "--listen", f"127.0.0.1:{port}", "--htpasswd", str(users_file),
         "--allow-private-destinations", "--lockout-threshold", "1000000",
         # Above what 64 descriptors hold (the default would be capped so that they never run
         # out): the operator's number stands, and the descriptors run out.
         "--max-connections", "1000"],
        clean_env(tmp_path), ("127.0.0.1", port), wrapper=["prlimit", "--nofile=64:64"])
    hogs: list[socket.socket] = []
    try:
        p.wait_ready()
        kept = RawConn("127.0.0.1", port)
        r = kept.request("GET", f"{origin.base}/text", [AUTH])
        assert r.status == 200, r.describe()
        # Connections complete in the kernel's queue even when the proxy cannot accept them.
        for _ in range(120):
            hogs.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        wait_until(lambda: "cannot accept connections" in p.stderr.text(), 10, what="the accept warning")
        before = cpu_seconds(p.pid)
        time.sleep(3)
        spent = cpu_seconds(p.pid) - before
        # A busy accept loop burns two thirds of a core here; paused, next to nothing.
        assert spent < 0.3, f"{spent:.2f} s of CPU in 3 s while out of descriptors"
        # The connection that was open keeps working.
        r = kept.request("GET", f"{origin.base}/text", [AUTH])
        assert r.status == 200, r.describe()
        assert p.stderr.text().count("cannot accept connections") == 1, p.stderr.text()[-3000:]
        for hog in hogs:
            hog.close()
        hogs.clear()
        # Accepting again within the pause (1 s), with one line saying how long it lasted.
        started = time.monotonic()
        with RawConn("127.0.0.1", port, timeout=10) as c:
            r = c.request("GET", f"{origin.base}/text", [AUTH])
        assert r.status == 200, r.describe()
        assert time.monotonic() - started < 3
        wait_until(lambda: "accepting connections again" in p.stderr.text(), 5, what="the recovery line")
        kept.close()
    finally:
        for hog in hogs:
            hog.close()
        p.kill()
