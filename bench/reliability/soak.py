"""Soak (issue 27): mixed load at a fixed, moderate rate for `--minutes` (30 by default; `--ci`:
3), with the proxy's RSS, open descriptors and gauges sampled every 10 s. Pass: no failed
request of any kind, and after the warm-up (a tenth of the run, at least 60 s) RSS and
descriptors grow by less than 5 % along the least-squares line through the samples (for
descriptors, which swing by a few with the connections in flight and the upstream pool, a
growth must also exceed 3 to count).

The load, all on loopback through one Portcullis (`--auth basic,digest`, a SQLite store, the
default lockout and credential cache):

- keep-alive GETs: 4 connections × 10/s, from another process (their latency is reported per
  minute too);
- CONNECT tunnels: 2/s opened to a TCP echo origin, 4 KiB echoed, closed; and 4 tunnels open
  the whole run, echoing 64 bytes every 2 s;
- new connections: 5/s, one GET each (`Connection: close`), 10 users in turn;
- wrong passwords: 1/s, each a user name never seen before with a wrong password, from 250
  client addresses in turn (127.0.2.x: no address reaches the lockout, the throttle's tables get
  a new name every second) — each must get 407;
- Digest: a connection every 5 s: a 407 for the challenge, then 10 GETs at 2/s answering its
  nonce with nc 1…10 (a new nonce in the proxy's table every 5 s).

Portcullis has no gauge for the size of its credential cache, Digest nonce table or login
throttle tables: the figures name that, and RSS stands for them.

    python3 bench/reliability/soak.py [--bin PATH] [--minutes 30] [--ci] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rellib as r  # noqa: E402
from rellib import b  # noqa: E402

GROWTH_BOUND = 0.05
# Descriptors come and go with the connections in flight and the upstream pool: a growth of 5 %
# must also be more than this many to count (5 % of the ~40 the soak holds is 2).
FD_SLACK = 3
SAMPLE_EVERY = 10
KEEPALIVE, KEEPALIVE_RATE = 4, 10


class Load(threading.Thread):
    """One kind of request in a loop at a fixed rate: `step()` returns None when it went as
    expected, else what went wrong."""

    def __init__(self, name: str, rate: float, stop: threading.Event, step):
        super().__init__(daemon=True)
        self.name, self.rate, self.stop, self.step = name, rate, stop, step
        self.ok = 0
        self.failed: list[tuple[float, str]] = []

    def run(self):
        for _ in r.paced(self.rate, self.stop):
            try:
                problem = self.step()
            except (OSError, ValueError, KeyError) as e:
                problem = type(e).__name__
            if problem:
                self.failed.append((time.monotonic(), problem))
            else:
                self.ok += 1


def exchange(s: socket.socket, payload: bytes) -> str | None:
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = s.recv(65536)
        if not chunk:
            return "tunnel closed"
        got += chunk
    return None if got == payload else "echo differs"


class Digest:
    """A Digest client: a connection, the 407's challenge, then GETs answering its nonce."""

    def __init__(self, port: int, url: str, user: str, password: str):
        self.port, self.url, self.user, self.password = port, url, user, password
        self.sock: socket.socket | None = None
        self.challenge: dict | None = None
        self.count = 0
        self.cycles = 0

    def request(self, authorization: str | None) -> tuple[int, bytes]:
        head = f"GET {self.url} HTTP/1.1\r\nHost: {self.url.split('/')[2]}\r\n"
        if authorization:
            head += f"Proxy-Authorization: {authorization}\r\n"
        self.sock.sendall((head + "\r\n").encode())
        status, response, rest = r.read_head(self.sock)
        length = int(next((line.split(b":")[1] for line in response.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), b"0"))
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed in a body")
            rest += chunk
        return status, response

    def step(self) -> str | None:
        try:
            return self.exchange()
        except (OSError, ValueError):
            if self.sock:
                self.sock.close()
            self.sock = None
            raise

    def exchange(self) -> str | None:
        if self.sock is None or self.count >= 10:
            if self.sock:
                self.sock.close()
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            status, response = self.request(None)
            if status != 407:
                return f"challenge answered {status}"
            self.challenge, self.count = r.digest_challenge(response), 0
            self.cycles += 1
        self.count += 1
        answer = r.digest_answer(self.challenge, self.user, self.password, "GET", self.url, self.count,
                                 f"c{self.cycles:x}")
        status, _ = self.request(answer)
        if status != 200:
            self.sock.close()
            self.sock = None
            return f"HTTP {status}"
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    r.binary_argument(ap)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--ci", action="store_true", help="3 minutes (CI runs it with the debug build)")
    ap.add_argument("--json", help="write every sample here")
    args = ap.parse_args()
    r.check_binary(args.bin)
    r.exit_on_sigterm()
    if args.ci:
        args.minutes = 3
    total = args.minutes * 60
    warmup = max(60.0, total / 10)
    work = Path(tempfile.mkdtemp(prefix="portcullis-soak-"))
    stop = threading.Event()
    loads: list[Load] = []
    held: list[socket.socket] = []
    try:
        origin = r.Origin(work)
        url = origin.url("/1k")
        echo = f"127.0.0.1:{origin.ports['echo']}"
        db = work / "users.db"
        basic_users = [(f"user{i}", f"user-secret-{i}") for i in range(KEEPALIVE + 10 + 1)]
        r.sqlite_users(args.bin, db, basic_users)
        r.sqlite_users(args.bin, db, [("digester", "digest-secret")], "--digest")
        proxy = r.Proxy(args.bin, ["--store", f"sqlite:{db}", "--auth", "basic,digest", "--log-level", "info",
                                   "--connect-ports", origin.ports["echo"]], work)
        tunnel_auth = r.basic(*basic_users[-1])
        keepalive = r.ProbeProcess(proxy.port, url, [r.basic(*u) for u in basic_users[:KEEPALIVE]], KEEPALIVE_RATE)
        for _ in range(4):
            held.append(r.connect_tunnel(proxy.port, echo, tunnel_auth))
        walk_in_users = basic_users[KEEPALIVE:KEEPALIVE + 10]
        counter = {"walk": 0, "wrong": 0, "held": 0}

        def tunnel() -> str | None:
            with r.connect_tunnel(proxy.port, echo, tunnel_auth) as s:
                return exchange(s, b"t" * 4096)

        def held_tunnels() -> str | None:
            counter["held"] += 1
            i = counter["held"] % len(held)
            try:
                problem = exchange(held[i], b"h" * 64)
            except OSError as e:
                problem = type(e).__name__
            if problem:  # counted once; a new tunnel takes its place
                held[i].close()
                held[i] = r.connect_tunnel(proxy.port, echo, tunnel_auth)
            return problem

        def walk_in() -> str | None:
            counter["walk"] += 1
            status, _ = r.get(proxy.port, url, r.basic(*walk_in_users[counter["walk"] % len(walk_in_users)]))
            return None if status == 200 else f"HTTP {status}"

        def wrong_password() -> str | None:
            counter["wrong"] += 1
            n = counter["wrong"]
            status, _ = r.get(proxy.port, url, r.basic(f"ghost-{n}", f"not-the-password-{n}"),
                              source=f"127.0.2.{n % 250 + 1}")
            return None if status == 407 else f"HTTP {status}"

        digest = Digest(proxy.port, url, "digester", "digest-secret")
        loads = [Load("CONNECT tunnels", 2, stop, tunnel), Load("held tunnels", 2, stop, held_tunnels),
                 Load("new connections", 5, stop, walk_in), Load("wrong passwords", 1, stop, wrong_password),
                 Load("Digest", 2, stop, digest.step)]
        for load in loads:
            load.start()
        started = time.monotonic()
        samples = []
        print(f"# Soak ({r.now_utc()}): {args.minutes:g} min, warm-up {warmup:.0f} s, samples every {SAMPLE_EVERY} s",
              flush=True)
        while time.monotonic() - started < total and proxy.alive():
            time.sleep(SAMPLE_EVERY - (time.monotonic() - started) % SAMPLE_EVERY)
            try:
                m = proxy.metrics()
            except OSError:
                break  # the proxy is gone: reported below
            sample = {"t": round(time.monotonic() - started, 1), "at": time.monotonic(), "rss_kib": proxy.rss_kib(),
                      "fds": proxy.fds(), "cpu_s": round(proxy.cpu(), 2),
                      "connections": r.metric(m, "portcullis_client_connections_active"),
                      "tunnels": r.metric(m, "portcullis_tunnels_active"),
                      "requests": r.metric(m, "portcullis_requests_total"),
                      "cache_hits": r.metric(m, 'portcullis_credential_cache_total{result="hit"}'),
                      "log_lines": proxy.log().count("\n")}
            samples.append(sample)
            if len(samples) % 6 == 0 or args.ci:
                print(f"  {sample['t']:6.0f} s: RSS {sample['rss_kib'] / 1024:.1f} MiB, {sample['fds']} fds, "
                      f"{sample['connections']:.0f} connections, {sample['tunnels']:.0f} tunnels, "
                      f"{sample['requests']:.0f} requests, CPU {sample['cpu_s']:.1f} s, {sample['log_lines']} log "
                      "lines", flush=True)
        stop.set()
        for load in loads:
            load.join(15)
        keepalive.finish()
        alive = proxy.alive()
        measured = [s for s in samples if s["t"] > warmup]
        first = [s for s in measured if s["t"] <= warmup + 60]
        last = [s for s in measured if s["t"] > samples[-1]["t"] - 60] if samples else []
        problems: list[str] = []
        print(f"# Soak: {len(samples)} samples over {samples[-1]['t'] if samples else 0:.0f} s")
        kinds = [("keep-alive GETs", len(keepalive.samples), [f for _, f in keepalive.failures])]
        kinds += [(load.name, load.ok, [f for _, f in load.failed]) for load in loads]
        for name, ok, failed in kinds:
            print(f"- {name}: {ok + len(failed)} requests, {len(failed)} failed"
                  + (f" ({', '.join(sorted(set(failed))[:5])})" if failed else ""))
            if failed:
                problems.append(f"{len(failed)} {name} failed")
        if len(measured) < 3 or not first or not last:
            problems.append("too few samples after the warm-up")
        else:
            for key, label, unit, slack in (("rss_kib", "RSS", 1024, 0), ("fds", "descriptors", 1, FD_SLACK)):
                # Growth along the least-squares line through every sample after the warm-up: a
                # leak raises it steadily, while connections in flight and the upstream pool make
                # single samples (and even a minute's median) swing by several descriptors.
                times, values = [s["t"] for s in measured], [s[key] for s in measured]
                slope, intercept = statistics.linear_regression(times, values)
                start, end = intercept + slope * times[0], intercept + slope * times[-1]
                growth = end / start - 1
                print(f"- {label}: {start / unit:.1f} → {end / unit:.1f}{' MiB' if unit > 1 else ''} over the "
                      f"{(times[-1] - times[0]) / 60:.1f} min after the warm-up (fitted line, growth "
                      f"{100 * growth:+.1f} %, bound +{100 * GROWTH_BOUND:.0f} %); medians of the first and last "
                      f"minute {statistics.median(s[key] for s in first) / unit:.1f} and "
                      f"{statistics.median(s[key] for s in last) / unit:.1f}, range "
                      f"{min(values) / unit:.1f}–{max(values) / unit:.1f}")
                if growth >= GROWTH_BOUND and end - start > slack:
                    problems.append(f"{label} grew by {100 * growth:.1f} %")
            def spread(key: str) -> str:
                return f"{min(s[key] for s in measured):.0f}–{max(s[key] for s in measured):.0f}"

            elapsed = last[-1]["t"] - first[0]["t"]
            cpu = (last[-1]["cpu_s"] - first[0]["cpu_s"]) / elapsed
            rate = (last[-1]["requests"] - first[0]["requests"]) / elapsed
            lines = (last[-1]["log_lines"] - first[0]["log_lines"]) / elapsed * 60
            print(f"- after the warm-up: {rate:.0f} requests/s counted by the proxy, {cpu:.3f} cores "
                  f"({1e6 * cpu / rate:.0f} µs of CPU per request), {lines:.1f} log lines per minute; "
                  f"connections {spread('connections')}, tunnels {spread('tunnels')}")
            minutes = []
            for start in range(0, int(samples[-1]["t"]), 60):
                window = keepalive.latencies(started + start, started + start + 60)
                if window:
                    minutes.append(1000 * r.percentile(window, 99))
            print("- keep-alive p99 per minute (ms): " + ", ".join(f"{x:.1f}" for x in minutes))
        print("- credential cache, Digest nonce and login throttle table sizes: not sampled — the proxy has no gauge "
              "for them (RSS stands for them)")
        if not alive:
            problems.append("the proxy died")
        if args.json:
            Path(args.json).write_text(json.dumps({"samples": samples, "problems": problems}, indent=1))
        for problem in problems:
            print(f"  problem: {problem}")
        print(f"{'PASS' if not problems else 'FAIL'}: soak")
        sys.exit(0 if not problems else 1)
    finally:
        stop.set()
        for s in held:
            s.close()
        b.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
