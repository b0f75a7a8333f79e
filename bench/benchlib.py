"""What the Python benchmark scripts (extras.py, digest.py) share: loopback ports and the
processes they start, every one of which is stopped on exit."""

from __future__ import annotations

import socket
import subprocess
import time

CHILDREN: list[subprocess.Popen] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> float:
    """Seconds until 127.0.0.1:port accepts a connection."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return time.monotonic() - start
        except OSError:
            time.sleep(0.0005)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def spawn(cmd, **kw) -> subprocess.Popen:
    p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
    CHILDREN.append(p)
    return p


def stop_all(grace: float = 5):
    for p in CHILDREN:
        if p.poll() is None:
            p.terminate()
    for p in CHILDREN:
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
