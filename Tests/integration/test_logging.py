"""Logging never stops the proxy (security finding 18).

With stderr a pipe that nobody reads (a benchmark that forgot it, a stalled log shipper), the
64 KiB pipe fills after a few hundred lines; when lines were written where they were logged,
every event loop then blocked in the write and the proxy stopped answering. Here the pipe is
never read while the test floods the proxy with first-leg 407s (one debug line each; refusals
logged at info are summarized past a few per interval, so they cannot fill a pipe): every
request must still be answered promptly, the lines that did not fit must be counted in
/metrics, and once the pipe is read again one line must say how many were dropped.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request

from conftest import _ALL_PROXY_LOGS
from portcullis_helpers import (
    PORTCULLIS_BIN, RawConn, _StreamCollector, build_request, clean_env, free_port, try_connect, wait_until,
)

# No credentials: refused at once, and logged at debug, one line each ("authentication failed").
NO_CREDENTIALS: list = []
TARGET = "http://127.0.0.1:9/"


def dropped_lines(admin_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(r'^portcullis_log_lines_dropped_total\{log="server"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_a_stderr_nobody_reads_costs_log_lines_not_requests(users_file, tmp_path):
    port, admin = free_port(), free_port()
    read_end, write_end = os.pipe()
    cmd = [PORTCULLIS_BIN, "serve", "--listen", f"127.0.0.1:{port}", "--htpasswd", str(users_file),
           "--admin", f"127.0.0.1:{admin}", "--log-level", "debug", "--lockout-threshold", "1000000"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=write_end,
                            env=clean_env(tmp_path))
    os.close(write_end)
    stderr = None
    try:
        wait_until(lambda: try_connect("127.0.0.1", port) == "ok" or proc.poll() is not None, 20,
                   what="the proxy listening")
        assert proc.poll() is None, f"portcullis exited with {proc.returncode}"

        # 1,000 refusals one after the other, about 170 KB of log: far past the pipe's 64 KiB,
        # where the proxy used to stop. Each answered within 2 s (RawConn gives up after 5 s).
        slowest = 0.0
        with RawConn("127.0.0.1", port, timeout=5) as c:
            for _ in range(1000):
                started = time.monotonic()
                assert c.request("GET", TARGET, NO_CREDENTIALS).status == 407
                slowest = max(slowest, time.monotonic() - started)
        assert slowest < 2.0, f"slowest refusal took {slowest:.2f} s"

        # Then more, pipelined 100 at a time, until the 1 MiB queue overflows and lines are
        # dropped (bounded: about 7,000 lines are needed).
        batch = build_request("GET", TARGET, NO_CREDENTIALS) * 100
        deadline = time.monotonic() + 120
        with RawConn("127.0.0.1", port, timeout=5) as c:
            while dropped_lines(admin) == 0:
                assert time.monotonic() < deadline, "no log line dropped after 120 s of refusals"
                started = time.monotonic()
                c.send(batch)
                for _ in range(100):
                    assert c.read_response().status == 407
                assert time.monotonic() - started < 10.0, "100 pipelined refusals took over 10 s"
        counted = dropped_lines(admin)

        # Somebody reads at last: the queued lines arrive, then the report of the drops.
        stderr = _StreamCollector(os.fdopen(read_end, "rb"))
        read_end = None
        m = stderr.wait_for(r"dropped_lines=(\d+) \[\w+\] (\d+) log lines dropped", 30)
        assert 0 < int(m.group(1)) <= counted
        assert "authentication failed" in stderr.text()

        # The last lines are not lost on a normal exit.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        stderr.wait_closed(10)
        assert "shutting down" in stderr.text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if read_end is not None:
            os.close(read_end)
        if stderr is not None:
            stderr.wait_closed(5)
            _ALL_PROXY_LOGS.append(("portcullis serve (stderr unread)", stderr.text()))
