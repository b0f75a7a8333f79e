"""Graceful restart (issue 27): SIGTERM under load, and a zero-downtime replacement through one
inherited listening socket.

1. **SIGTERM under load.** One Portcullis serves keep-alive clients, clients that open a new
   connection per request, requests to an origin that answers after 1 s, a rate-limited big
   download (plain GET) and a big download through a CONNECT tunnel. SIGTERM while all of these
   are in flight: every one of them must finish (200, every byte); a connection the kernel
   accepted must get its answer (never a reset); connections are refused only once the listener
   has closed, and from then on always; the process exits 0 once the last exchange is done, well
   before `--shutdown-grace`. A second run holds an idle CONNECT tunnel open: the drain then ends
   at `--shutdown-grace` (the bound), still exit 0.
2. **Zero-downtime replacement.** This script makes the listening socket and hands it to each
   process as systemd would (`LISTEN_PID`, `LISTEN_FDS=1`, descriptor 3). While the same load
   runs, each round starts a new process on the socket, waits for its `/readyz`, then SIGTERMs
   the old one, which drains while the new one accepts from the same queue. Pass: 0 failed
   requests across every swap, each old process exits 0. A keep-alive connection the old process
   closes while idle may meet a request already sent: as RFC 9112 §9.3.1 allows (and curl,
   browsers and most libraries do), that request is sent again once on a new connection; those
   retries are counted and reported, never hidden — a request that fails on a new connection, or
   whose retry fails, is a failure.

Everything on loopback, bounded (about 35 s; `--ci` about 20 s). Prints its figures and a
PASS/FAIL line; exit 1 on fail.

    python3 bench/reliability/restart.py [--bin PATH] [--rounds 5] [--grace 8] [--ci] [--only sigterm|replacement]

`--bin` defaults to $PORTCULLIS_BIN, else the release build of the tree.
"""
from __future__ import annotations

import argparse
import base64
import http.server
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchlib as b  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "restart", "restart-secret-1"
AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
BIG = 64 << 20  # bytes of the big downloads
BIG_RATE = "24m"  # nginx limit_rate: the big downloads take ~2.7 s, so they are in flight at SIGTERM
SLOW = 1.0  # seconds the slow origin takes to answer
# Failures kept for the report (a bad run could produce thousands).
KEEP = 20


# ---------------------------------------------------------------------------------------------
# Origins


def start_nginx(work: Path) -> int:
    """nginx with /1k and /big (64 MiB, sent at BIG_RATE per connection) on a free port."""
    nginx = b.find("nginx", "nginx-light")
    port = b.free_port()
    www = work / "www"
    www.mkdir()
    (www / "1k").write_bytes(b"x" * 1024)
    with open(www / "big", "wb") as f:
        f.truncate(BIG)  # sparse: zeros, no disk written
    (work / "tmp").mkdir()
    (work / "nginx.conf").write_text(f"""daemon off; worker_processes 1; pid {work}/nginx.pid;
error_log {work}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 65;
  client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp;
  server {{ listen 127.0.0.1:{port}; root {www};
    location = /1k {{ }}
    location = /big {{ limit_rate {BIG_RATE}; }} }} }}
""")
    for p in (work, www, www / "1k", www / "big"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    b.spawn([nginx, "-p", work, "-c", work / "nginx.conf", "-e", work / "nginx.err"])
    b.wait_port(port, 30)
    return port


class SlowHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        time.sleep(SLOW)
        body = b"slow answer\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client (the proxy) that went away: the scenario counts what its clients saw


def start_slow_origin() -> tuple[int, http.server.ThreadingHTTPServer]:
    """An origin on a free loopback port that answers every GET after SLOW seconds."""
    server = QuietServer(("127.0.0.1", 0), SlowHandler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    return server.server_address[1], server


# ---------------------------------------------------------------------------------------------
# Portcullis


class Proxy:
    """One `portcullis serve`: on its own --listen, or on the inherited socket `inherit`."""

    def __init__(self, binary: str, work: Path, name: str, db: Path, origin_ports: list[int], grace: float,
                 listen: int | None = None, inherit: socket.socket | None = None):
        self.admin = b.free_port()
        self.log = work / f"{name}.log"
        args = [binary, "serve", "--store", f"sqlite:{db}", "--allow-private-destinations",
                "--connect-ports", ",".join(map(str, origin_ports)), "--shutdown-grace", str(grace),
                "--admin", f"127.0.0.1:{self.admin}", "--log-level", "notice", "--data-dir", work / "data"]
        if listen is not None:
            args += ["--listen", f"127.0.0.1:{listen}"]
        with open(self.log, "wb") as log:
            if inherit is None:
                self.process = subprocess.Popen([str(a) for a in args], stdin=subprocess.DEVNULL,
                                                stdout=log, stderr=log)
            else:
                # The socket arrives as standard input and the shell moves it to descriptor 3:
                # no preexec_fn (unsafe with the load's threads running), and $$ is the pid the
                # binary gets once the shell execs it.
                self.process = subprocess.Popen(
                    ["sh", "-c", 'exec 3<&0 0</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"', "sh",
                     *[str(a) for a in args]],
                    stdin=inherit.fileno(), stdout=log, stderr=log)
        b.CHILDREN.append(self.process)

    def ready(self, timeout: float = 30) -> float:
        """Seconds until /readyz answers 200 (raises if the process died or it never does)."""
        return b.wait_ready(self.process, self.admin, timeout, "portcullis", self.tail)

    def wait_exit(self, timeout: float, since: float) -> tuple[int | None, float]:
        """The exit code (None if it did not exit within `timeout`) and the seconds from `since`."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - since

    def tail(self) -> str:
        """The log's last lines, or the first lines of a crash report."""
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        crash = next((i for i, line in enumerate(lines)
                      if any(word in line for word in ("Assertion failed", "Fatal error", "Program crashed"))), None)
        return " | ".join(lines[crash:crash + 4] if crash is not None else lines[-5:])


# ---------------------------------------------------------------------------------------------
# Load


class Tally:
    """What every client saw, with times relative to `t0` (set at the SIGTERM or the first swap)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ok = 0
        self.latencies: list[float] = []
        self.refused = 0
        self.first_refused: float | None = None
        self.connected_after_refusal = 0
        self.retried = 0  # requests sent again after an idle keep-alive connection closed
        self.idle_closed = 0  # idle keep-alive connections closed under a request (not retried)
        self.failed: list[str] = []
        self.failures = 0
        # (time, what) of every failure: the SIGTERM scenario tells the listener's close instant apart.
        self.failure_times: list[tuple[float, str]] = []
        self.t0: float | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0 if self.t0 is not None else float("-inf")

    def success(self, seconds: float):
        with self.lock:
            self.ok += 1
            self.latencies.append(seconds)

    def refusal(self):
        with self.lock:
            self.refused += 1
            if self.first_refused is None:
                self.first_refused = self.now()

    def connected(self):
        with self.lock:
            if self.first_refused is not None:
                self.connected_after_refusal += 1

    def failure(self, what: str):
        with self.lock:
            self.failures += 1
            self.failure_times.append((self.now(), what))
            if len(self.failed) < KEEP:
                t = self.now()
                self.failed.append(f"{what} at t{'+' if t >= 0 else ''}{t:.2f} s" if t != float("-inf") else what)


def request_bytes(origin: int, path: str, close: bool, authorization: str = AUTH) -> bytes:
    return (f"GET http://127.0.0.1:{origin}{path} HTTP/1.1\r\nHost: 127.0.0.1:{origin}\r\n"
            f"Proxy-Authorization: {authorization}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n").encode()


class NothingReceived(Exception):
    """The connection ended before the first byte of a response: `reset` (RST) or `closed` (FIN)."""


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, int, bool]:
    """Reads one response with a Content-Length body from `sock` (leftovers stay in `buffer`):
    (status, body bytes, whether the proxy said Connection: close)."""
    while b"\r\n\r\n" not in buffer:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            if not buffer:
                raise NothingReceived("reset") from None
            raise
        if not chunk:
            if not buffer:
                raise NothingReceived("closed")
            raise ConnectionError("closed in the middle of a response head")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    body = len(rest)
    del buffer[:]
    while body < length:
        chunk = sock.recv(min(1 << 20, length - body))
        if not chunk:
            raise ConnectionError(f"closed after {body} of {length} body bytes")
        body += len(chunk)
    if body > length:
        buffer += rest[length:]
    return status, min(body, length), headers.get("connection", "").lower() == "close"


class Client(threading.Thread):
    """GETs of nginx's /1k through the proxy until stopped. `keep_alive`: one connection as long
    as the proxy keeps it (an idle one closed under a request is retried once on a new connection
    when `retry`, else counted); otherwise a new connection per request (Connection: close),
    never retried: a connection that was accepted and then reset is a failure."""

    def __init__(self, port: int, origin: int, tally: Tally, stop: threading.Event, keep_alive: bool, retry: bool,
                 authorization: str = AUTH):
        super().__init__(daemon=True)
        self.port, self.tally, self.stop, self.keep_alive, self.retry = port, tally, stop, keep_alive, retry
        self.request = request_bytes(origin, "/1k", close=not keep_alive, authorization=authorization)

    def connect(self) -> socket.socket | None:
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        except ConnectionRefusedError:
            self.tally.refusal()
            time.sleep(0.01)
            return None
        self.tally.connected()
        return s

    def run(self):
        sock: socket.socket | None = None
        buffer = bytearray()
        while not self.stop.is_set():
            started = time.monotonic()
            reused = sock is not None
            if sock is None:
                sock = self.connect()
                buffer = bytearray()
                if sock is None:
                    continue
            try:
                try:
                    sock.sendall(self.request)
                    status, _, close = read_response(sock, buffer)
                except (NothingReceived, BrokenPipeError, ConnectionResetError):
                    sock.close()
                    sock = None
                    if not reused:
                        raise
                    if not self.retry:
                        with self.tally.lock:
                            self.tally.idle_closed += 1
                        continue
                    with self.tally.lock:
                        self.tally.retried += 1
                    sock = self.connect()
                    buffer = bytearray()
                    if sock is None:
                        self.tally.failure("retry refused")
                        continue
                    sock.sendall(self.request)
                    status, _, close = read_response(sock, buffer)
                if status == 200:
                    self.tally.success(time.monotonic() - started)
                else:
                    self.tally.failure(f"HTTP {status}")
                if close or not self.keep_alive:
                    sock.close()
                    sock = None
            except (OSError, ValueError, NothingReceived) as e:
                self.tally.failure(f"{'keep-alive' if self.keep_alive else 'new connection'}: "
                                   f"{type(e).__name__} {e}".strip())
                if sock is not None:
                    sock.close()
                sock = None
                time.sleep(0.01)
        if sock is not None:
            sock.close()


def fetch(port: int, origin: int, path: str, expect: int) -> dict:
    """One GET through the proxy on its own connection: its status, bytes, start and end."""
    out = {"started": time.monotonic(), "status": 0, "bytes": 0, "error": None, "first_byte": None}
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(request_bytes(origin, path, close=True))
            buffer = bytearray()
            out["status"], out["bytes"], _ = read_response(s, buffer)
    except (OSError, ValueError, NothingReceived) as e:
        out["error"] = f"{type(e).__name__} {e}".strip()
    out["ended"] = time.monotonic()
    out["ok"] = out["status"] == 200 and out["bytes"] == expect and out["error"] is None
    return out


def tunnel_fetch(port: int, origin: int, path: str, expect: int) -> dict:
    """A CONNECT tunnel to nginx, one GET of `path` inside it (Connection: close)."""
    out = {"started": time.monotonic(), "status": 0, "bytes": 0, "error": None}
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(f"CONNECT 127.0.0.1:{origin} HTTP/1.1\r\nHost: 127.0.0.1:{origin}\r\n"
                      f"Proxy-Authorization: {AUTH}\r\n\r\n".encode())
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionError("closed before the CONNECT's answer")
                answer += chunk
            if not answer.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(answer.split(b"\r\n", 1)[0].decode("latin-1"))
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{origin}\r\nConnection: close\r\n\r\n".encode())
            buffer = bytearray(answer.partition(b"\r\n\r\n")[2])
            out["status"], out["bytes"], _ = read_response(s, buffer)
    except (OSError, ValueError, NothingReceived) as e:
        out["error"] = f"{type(e).__name__} {e}".strip()
    out["ended"] = time.monotonic()
    out["ok"] = out["status"] == 200 and out["bytes"] == expect and out["error"] is None
    return out


def in_background(function, *args) -> tuple[threading.Thread, dict]:
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(function(*args)), daemon=True)
    thread.start()
    return thread, result


def start_load(port: int, origin: int, tally: Tally, stop: threading.Event, keep_alive: int, fresh: int,
               retry: bool, authorization: str = AUTH) -> list[Client]:
    """`keep_alive` + `fresh` clients (see ``Client``), started."""
    clients = [Client(port, origin, tally, stop, True, retry, authorization) for _ in range(keep_alive)]
    clients += [Client(port, origin, tally, stop, False, retry, authorization) for _ in range(fresh)]
    for c in clients:
        c.start()
    return clients


# ---------------------------------------------------------------------------------------------
# Scenarios


def sigterm_under_load(args, work: Path, db: Path, nginx: int, slow: int) -> tuple[bool, list[str]]:
    """Scenario 1; returns (passed, report lines)."""
    port = b.free_port()
    proxy = Proxy(args.bin, work, "sigterm", db, [nginx], args.grace, listen=port)
    proxy.ready()
    tally, stop = Tally(), threading.Event()
    clients = start_load(port, nginx, tally, stop, args.keep_alive, args.fresh, retry=False)
    try:
        time.sleep(args.warmup)
        # The long exchanges, started so that they are all in flight at the SIGTERM.
        inflight = [("download (GET, 64 MiB)", in_background(fetch, port, nginx, "/big", BIG)),
                    ("download (CONNECT tunnel, 64 MiB)", in_background(tunnel_fetch, port, nginx, "/big", BIG))]
        time.sleep(0.5)
        inflight += [(f"slow origin ({SLOW:.0f} s) #{i + 1}", in_background(fetch, port, slow, "/slow", 12))
                     for i in range(4)]
        time.sleep(0.3)
        ok_before = tally.ok
        tally.t0 = time.monotonic()
        term = tally.t0
        proxy.process.send_signal(signal.SIGTERM)
        code, exited = proxy.wait_exit(args.grace + 10, since=term)
        time.sleep(0.3)
    finally:
        stop.set()
    for c in clients:
        c.join(15)
    for _, (thread, _) in inflight:
        thread.join(30)
    lines = [f"- load: {args.keep_alive} keep-alive clients and {args.fresh} new-connection-per-request clients "
             f"(GET 1 KiB), 2 big downloads and 4 slow requests in flight at the SIGTERM "
             f"(--shutdown-grace {args.grace:g})"]
    problems = []
    for what, (_, r) in inflight:
        started, ended = r.get("started", 0) - term, r.get("ended", 0) - term
        state = "ok" if r.get("ok") else f"FAILED ({r.get('status')}, {r.get('bytes')} bytes, {r.get('error')})"
        lines.append(f"  - {what}: started t{started:+.2f} s, ended t{ended:+.2f} s, {state}")
        if not r.get("ok"):
            problems.append(f"{what} did not finish")
        elif ended <= 0:
            problems.append(f"{what} was not in flight at the SIGTERM")
    last_inflight = max(r.get("ended", term) - term for _, (_, r) in inflight)
    first_refused = tally.first_refused
    lines.append(f"- requests answered 200: {ok_before} before the SIGTERM, {tally.ok - ok_before} after "
                 f"(in flight or accepted before the listener closed)")
    lines.append(f"- listener closed (first refused connection) at t+{first_refused:.3f} s; "
                 f"{tally.refused} connections refused from then on, {tally.connected_after_refusal} accepted after"
                 if first_refused is not None else "- no connection was refused")
    lines.append(f"- idle keep-alive connections closed under a request sent at the same moment: {tally.idle_closed}")
    lines.append(f"- failed requests (connected, then reset or closed unanswered; non-200; truncated): "
                 f"{tally.failures}")
    lines += [f"  - {f}" for f in tally.failed]
    lines.append(f"- exit code {code} at t+{exited:.2f} s; last in-flight exchange ended at t+{last_inflight:.2f} s")
    # A single process cannot avoid one thing: a connection the kernel queues in the instant the
    # listener closes (after the last accept found the queue empty) is reset by the close. The
    # drain takes the queue before closing, so that is at most one per client connecting right
    # then; anything else is a failure.
    at_close = [what for t, what in tally.failure_times
                if first_refused is not None and "NothingReceived reset" in what and abs(t - first_refused) <= 0.05]
    lines.append(f"- of which reset in the listener's close instant (queued after the last accept): {len(at_close)}")
    if tally.failures - len(at_close) or len(at_close) > args.fresh:
        problems.append(f"{tally.failures} failed requests")
    if first_refused is None or first_refused < 0 or first_refused > 2:
        problems.append("the listener did not close within 2 s of the SIGTERM")
    if tally.connected_after_refusal:
        problems.append("connections accepted after the listener closed")
    if code != 0:
        problems.append(f"exit code {code}: {proxy.tail()}")
    elif not last_inflight <= exited <= last_inflight + 2:
        problems.append("the exit did not follow the last in-flight exchange within 2 s")

    # The bound: an idle tunnel never ends by itself, so the drain lasts --shutdown-grace.
    port = b.free_port()
    proxy = Proxy(args.bin, work, "sigterm-bound", db, [nginx], args.grace, listen=port)
    proxy.ready()
    held = socket.create_connection(("127.0.0.1", port), timeout=30)
    held.sendall(f"CONNECT 127.0.0.1:{nginx} HTTP/1.1\r\nHost: 127.0.0.1:{nginx}\r\n"
                 f"Proxy-Authorization: {AUTH}\r\n\r\n".encode())
    assert held.recv(4096).startswith(b"HTTP/1.1 200"), "the held tunnel was refused"
    term = time.monotonic()
    proxy.process.send_signal(signal.SIGTERM)
    code, exited = proxy.wait_exit(args.grace + 10, since=term)
    held.settimeout(5)
    try:
        closed = held.recv(1) == b""
    except OSError:
        closed = True
    held.close()
    lines.append(f"- with an idle CONNECT tunnel held open: exit code {code} at t+{exited:.2f} s "
                 f"(--shutdown-grace {args.grace:g}), tunnel {'closed' if closed else 'still open'} then")
    if code != 0 or not args.grace - 0.5 <= exited <= args.grace + 2 or not closed:
        problems.append("the drain with a held tunnel did not end at --shutdown-grace with exit 0")
    return not problems, lines + [f"  problem: {p}" for p in problems]


def replacement(args, work: Path, db: Path, nginx: int, slow: int) -> tuple[bool, list[str]]:
    """Scenario 2; returns (passed, report lines)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    port = listener.getsockname()[1]
    problems: list[str] = []
    swaps: list[str] = []
    generation = 0

    def start() -> tuple[Proxy, float]:
        nonlocal generation
        generation += 1
        p = Proxy(args.bin, work, f"gen{generation}", db, [nginx], args.grace, inherit=listener)
        return p, p.ready()

    tally, stop = Tally(), threading.Event()
    try:
        old, _ = start()
        clients = start_load(port, nginx, tally, stop, args.keep_alive, args.fresh, retry=True)
        time.sleep(args.warmup)
        tally.t0 = time.monotonic()
        slow_results = []
        for round_ in range(args.rounds):
            # Slow requests and a download in flight on the old process when it gets its SIGTERM.
            long = [in_background(fetch, port, slow, "/slow", 12) for _ in range(2)]
            long.append(in_background(fetch, port, nginx, "/big", BIG))
            if args.order == "overlap":
                new, ready = start()
                time.sleep(0.2)
                term = time.monotonic()
                old.process.send_signal(signal.SIGTERM)
            else:
                # The old process stops accepting first; the queue waits for the new one.
                term = time.monotonic()
                old.process.send_signal(signal.SIGTERM)
                new, ready = start()
            code, drained = old.wait_exit(args.grace + 10, since=term)
            for thread, _ in long:
                thread.join(30)
            slow_results += [r for _, r in long]
            swaps.append(f"  - swap {round_ + 1} ({args.order}): new process ready in {ready:.2f} s; old one drained and exited "
                         f"{code} in {drained:.2f} s")
            if code != 0:
                problems.append(f"swap {round_ + 1}: the old process exited {code}: {old.tail()}")
            old = new
            time.sleep(args.between)
        stop.set()
        for c in clients:
            c.join(15)
        old.process.send_signal(signal.SIGTERM)
        old.process.wait(args.grace + 10)
    finally:
        stop.set()
        listener.close()
    long_failed = [r for r in slow_results if not r.get("ok")]
    latencies = sorted(tally.latencies)
    p99 = latencies[int(len(latencies) * 0.99)] if latencies else 0
    total = tally.ok + tally.failures
    lines = [f"- load: {args.keep_alive} keep-alive and {args.fresh} new-connection-per-request clients (GET 1 KiB) "
             f"on one socket handed to each process; {args.rounds} swaps, each with 2 slow requests and a 64 MiB "
             f"download in flight on the old process"]
    lines += swaps
    lines.append(f"- requests: {total} ({tally.ok} answered 200), **{tally.failures} failed**; "
                 f"{tally.refused} connections refused")
    lines += [f"  - {f}" for f in tally.failed]
    lines.append(f"- idle keep-alive connections closed by a draining process under a request, sent again on a new "
                 f"connection (RFC 9112 §9.3.1): {tally.retried}")
    lines.append(f"- slow requests and downloads across the swaps: {len(slow_results) - len(long_failed)} of "
                 f"{len(slow_results)} complete")
    if latencies:
        lines.append(f"- latency of 1 KiB GETs: median {statistics.median(latencies) * 1000:.1f} ms, "
                     f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.0f} ms")
    if tally.failures:
        problems.append(f"{tally.failures} failed requests")
    if tally.refused:
        problems.append(f"{tally.refused} refused connections")
    if long_failed:
        problems.append(f"{len(long_failed)} slow requests or downloads failed")
    if tally.ok == 0:
        problems.append("no request went through")
    return not problems, lines + [f"  problem: {p}" for p in problems]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.environ.get("PORTCULLIS_BIN", str(ROOT / ".build/release/portcullis")))
    ap.add_argument("--rounds", type=int, default=5, help="swaps in the zero-downtime replacement")
    ap.add_argument("--grace", type=float, help="--shutdown-grace of every process (default 8, --ci 5)")
    ap.add_argument("--keep-alive", type=int, default=3, help="keep-alive clients")
    ap.add_argument("--fresh", type=int, default=3, help="clients opening a connection per request")
    ap.add_argument("--ci", action="store_true", help="short: 2 swaps, shorter pauses (~30 s)")
    ap.add_argument("--only", choices=["sigterm", "replacement"])
    ap.add_argument("--order", choices=["overlap", "stop-first"],
                    help="replacement: start the new process before the old one's SIGTERM (overlap, the default) "
                         "or just after it (stop-first, the default with --ci: a debug build of swift-nio asserts "
                         "that a readable listening socket yields a connection, which the other process may have "
                         "taken — release builds treat it as a spurious wake-up)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (the processes' logs)")
    args = ap.parse_args()
    args.warmup, args.between = (0.5, 0.5) if args.ci else (1.0, 1.5)
    if args.order is None:
        args.order = "stop-first" if args.ci else "overlap"
    if args.grace is None:
        args.grace = 5 if args.ci else 8
    if args.ci:
        args.rounds = min(args.rounds, 2)
    if not Path(args.bin).exists():
        sys.exit(f"{args.bin} missing: swift build -c release --product portcullis")
    work = Path(tempfile.mkdtemp(prefix="portcullis-restart-"))
    os.chmod(work, 0o755)
    started = time.monotonic()
    slow_server = None
    try:
        nginx = start_nginx(work)
        slow, slow_server = start_slow_origin()
        db = work / "users.db"
        subprocess.run([args.bin, "users", "add", USER, "--store", f"sqlite:{db}", "--password-stdin",
                        "--cost", "4"], input=PASSWORD + "\n", text=True, check=True, capture_output=True, timeout=60)
        print(f"# Graceful restart ({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, "
              f"{os.cpu_count()} CPUs, {Path(args.bin).name})", flush=True)
        verdicts = []
        for name, scenario in (("sigterm", sigterm_under_load), ("replacement", replacement)):
            if args.only and args.only != name:
                continue
            title = {"sigterm": "SIGTERM under load", "replacement": "zero-downtime replacement (inherited socket)"}
            try:
                passed, lines = scenario(args, work, db, nginx, slow)
            except (RuntimeError, OSError, AssertionError) as e:  # a process that died, a refused tunnel
                passed, lines = False, [f"  problem: {e}"]
            print(f"## {title[name]}: {'pass' if passed else 'FAIL'}")
            print("\n".join(lines), flush=True)
            verdicts.append(passed)
        passed = all(verdicts)
        print(f"{'PASS' if passed else 'FAIL'}: graceful restart ({time.monotonic() - started:.0f} s)")
        sys.exit(0 if passed else 1)
    finally:
        if slow_server is not None:
            slow_server.shutdown()
        b.stop_all()
        if args.keep:
            print(f"(work directory kept: {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
