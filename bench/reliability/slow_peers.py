"""Slow and dead peers (issue 27): origins that never answer or trickle 1 byte a second, clients
that never read a 1 GiB response or send their request head 1 byte a second, connections that
send nothing, and 1,000 half-open CONNECT tunnels (half of them closed for writing by the
client, half by the origin, neither side ever closing) — while 4 keep-alive clients nobody
disturbs send GETs at a fixed rate.

Two parts, one Portcullis each, both on a SQLite store before a Python origin process:

1. **Hang** (the default timeouts, 30–600 s, none fires): every slow peer at once, held for
   `--hold` seconds. Figures: the proxy's RSS before, at its peak and after (the memory bound),
   the bytes the 1 GiB origins got rid of (what the kernel and the proxy buffer for a client that
   does not read), the other clients' p99 before and while the peers hang (bound: +50 ms, no
   failed request); then every slow client leaves and the proxy must give back its descriptors
   and close every upstream connection they held.
2. **Timeouts** (short ones: `--upstream-response-timeout`, `--request-head-timeout`,
   `--client-idle-timeout`, `--tunnel-idle-timeout`): each must fire within [T, T + 1.5 s] —
   504 for a silent and a head-trickling origin, 408 for a head-trickling client, a close for an
   idle connection, and all 1,000 half-open tunnels closed (the proxy's tunnel gauge and
   descriptors back to where they were). A body that trickles is relayed as it comes (no
   timeout: bytes flow). A client that does not read has no timeout in Portcullis: whether its
   connection is still open at the end is reported.

Everything on loopback, bounded (about 1½ minutes). Prints its figures and a pass/fail line;
exit 1 on fail.

    python3 bench/reliability/slow_peers.py [--bin PATH] [--tunnels 1000] [--hold 10]
"""
from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rellib as r  # noqa: E402
from rellib import b  # noqa: E402

MEMORY_BOUND_MIB = 64
P99_SLACK_MS = 100  # the machine is shared: its noise reaches tens of ms
TIMEOUT_SLACK = 1.5
SHORT = {"response": 3, "head": 3, "idle": 5, "tunnel": 6}
COUNTS = {"silent": 50, "trickle-head": 20, "trickle-body": 20, "never-read": 10, "slow-head": 20, "idle": 20}
PROBES, PROBE_RATE = 4, 20


class Peer(threading.Thread):
    """One slow peer on a connection of its own: `outcome` (a status, 'closed', 'open' or an
    error name) and `seconds` from its start to that outcome."""

    def __init__(self, kind: str, proxy: r.Proxy, origin: r.Origin, authorization: str, leave: threading.Event):
        super().__init__(daemon=True)
        self.kind, self.proxy, self.origin, self.authorization, self.leave = kind, proxy, origin, authorization, leave
        self.outcome, self.seconds, self.detail = None, None, ""
        self.ready = threading.Event()

    def request(self, path: str) -> bytes:
        return (f"GET {self.origin.url(path)} HTTP/1.1\r\nHost: 127.0.0.1:{self.origin.http}\r\n"
                f"Proxy-Authorization: {self.authorization}\r\n\r\n").encode()

    def run(self):
        started = time.monotonic()
        try:
            s = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=1)
        except OSError as e:
            self.outcome, self.seconds = type(e).__name__, 0
            self.ready.set()
            return
        try:
            self.outcome = getattr(self, "run_" + self.kind.replace("-", "_"))(s)
        except OSError as e:
            self.outcome = "closed" if isinstance(e, ConnectionError) else type(e).__name__
        finally:
            self.seconds = time.monotonic() - started
            self.ready.set()
            s.close()

    def wait_reply(self, s: socket.socket):
        """The status of the reply, or 'open' when the peers are told to leave first."""
        s.settimeout(0.25)
        while not self.leave.is_set():
            try:
                return r.read_head(s)[0]
            except socket.timeout:
                continue
        return "open"

    def run_silent(self, s):
        s.sendall(self.request("/silent"))
        self.ready.set()
        return self.wait_reply(s)

    def run_trickle_head(self, s):
        s.sendall(self.request("/trickle-head"))
        self.ready.set()
        return self.wait_reply(s)

    def run_trickle_body(self, s):
        s.sendall(self.request("/trickle-body?n=4"))
        s.settimeout(30)
        status, _, rest = r.read_head(s)
        got, gaps, last = len(rest), [], time.monotonic()
        self.ready.set()
        while got < 4:
            chunk = s.recv(16)
            if not chunk:
                return "closed"
            got += len(chunk)
            gaps.append(time.monotonic() - last)
            last = time.monotonic()
        self.detail = f"bytes every {max(gaps):.2f} s at most"
        return status

    def run_never_read(self, s):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        s.sendall(self.request("/big"))
        self.ready.set()
        self.leave.wait()
        return "open"

    def run_slow_head(self, s):
        s.settimeout(0.25)
        self.ready.set()
        for byte in self.request("/1k"):
            if self.leave.is_set():
                return "open"
            s.send(bytes([byte]))
            try:
                return r.read_head(s)[0]
            except socket.timeout:
                self.leave.wait(0.75)
        return self.wait_reply(s)

    def run_idle(self, s):
        s.settimeout(0.25)
        self.ready.set()
        while not self.leave.is_set():
            try:
                return "closed" if not s.recv(1) else "data"
            except socket.timeout:
                continue
        return "open"


def half_open_tunnels(proxy: r.Proxy, origin: r.Origin, authorization: str, count: int) -> list[socket.socket]:
    """`count` CONNECT tunnels, half to the sink (the client then closes its sending side), half
    to the origin that half-closes at once; nobody closes the rest. From 100 client addresses
    (127.0.3.x: the proxy allows 512 connections per address). Returns the client sockets."""
    tunnels = []
    for i in range(count):
        port = origin.ports["sink"] if i % 2 == 0 else origin.ports["fin"]
        s = r.connect_tunnel(proxy.port, f"127.0.0.1:{port}", authorization, source=f"127.0.3.{i % 100 + 1}")
        if i % 2 == 0:
            s.shutdown(socket.SHUT_WR)
        tunnels.append(s)
    return tunnels


def until(predicate, timeout: float, interval: float = 0.1) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval)
    return None


def start_proxy(args, work: Path, origin: r.Origin, db: Path, name: str, timeouts: list) -> r.Proxy:
    ports = ",".join(str(origin.ports[k]) for k in ("sink", "fin"))
    return r.Proxy(args.bin, ["--store", f"sqlite:{db}", "--log-level", "warning", "--connect-ports", ports,
                              "--lockout-threshold", "1000000", *timeouts], work, name=name)


def hang(args, work, origin, db, users, problems) -> None:
    proxy = start_proxy(args, work, origin, db, "hang", [])
    auth = r.basic(*users[-1])
    leave = threading.Event()
    probes = r.ProbeProcess(proxy.port, origin.url("/1k"), [r.basic(n, p) for n, p in users[:PROBES]], PROBE_RATE)
    time.sleep(1)
    base_start = time.monotonic()
    time.sleep(args.hold)
    base_end = time.monotonic()
    fds_before, rss_before = proxy.fds(), proxy.rss_kib()
    peak = [rss_before]
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            peak.append(proxy.rss_kib())
            sampling.wait(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    peers = [Peer(kind, proxy, origin, auth, leave) for kind, n in COUNTS.items() for _ in range(n)]
    for peer in peers:
        peer.start()
    tunnels = half_open_tunnels(proxy, origin, auth, args.tunnels)
    for peer in peers:
        peer.ready.wait(10)
    hang_start = time.monotonic()
    time.sleep(args.hold)
    hang_end = time.monotonic()
    held = {k: sum(1 for p in peers if p.kind == k and p.outcome is None) for k in COUNTS}
    stats = origin.stats()
    fds_hanging, rss_hanging = proxy.fds(), proxy.rss_kib()
    gauges = proxy.metrics()
    leave.set()
    for s in tunnels:
        s.close()
    for peer in peers:
        peer.join(10)
    time.sleep(2)
    fds_left, waiting = proxy.fds(), origin.stats()
    sampling.set()
    sampler.join(5)
    probes.finish()
    rss_after = proxy.rss_kib()
    base = probes.latencies(base_start, base_end)
    during = probes.latencies(hang_start, hang_end)
    failed = [f for _, f in probes.failures]
    p99_base, p99_during = 1000 * r.percentile(base, 99), 1000 * r.percentile(during, 99)
    growth = (max(peak) - rss_before) / 1024
    print(f"## Hang (default timeouts), {args.hold:.0f} s")
    print("- slow peers held at once: " + ", ".join(f"{held[k]} {k}" for k in COUNTS)
          + f" (trickle-body ends after 4 s), {len(tunnels)} half-open tunnels (proxy: "
          f"{r.metric(gauges, 'portcullis_tunnels_active'):.0f} tunnels, "
          f"{r.metric(gauges, 'portcullis_client_connections_active'):.0f} client connections, "
          f"{fds_hanging} descriptors)")
    print(f"- proxy RSS: {rss_before / 1024:.1f} MiB before, peak {max(peak) / 1024:.1f} MiB "
          f"(+{growth:.1f} MiB; bound +{MEMORY_BOUND_MIB} MiB), {rss_hanging / 1024:.1f} MiB at the end of the hold, "
          f"{rss_after / 1024:.1f} MiB after they left")
    print(f"- the 1 GiB origins sent {stats['big_bytes'] / max(1, COUNTS['never-read']) / 2**20:.1f} MiB each to "
          "clients that never read (kernel buffers on both sides and the proxy's), then waited")
    print(f"- other clients (another process, {PROBES} keep-alive connections at {PROBE_RATE} req/s each): "
          f"{len(base)} requests before, p99 {p99_base:.1f} ms (max {1000 * max(base):.0f}); {len(during)} while the "
          f"peers hang, p99 {p99_during:.1f} ms (max {1000 * max(during):.0f}; bound +{P99_SLACK_MS} ms); "
          f"{len(failed)} failed")
    print(f"- 2 s after the slow clients closed their connections: {fds_left} descriptors ({fds_before} before); "
          f"the proxy still waits on {waiting['silent_open']} silent origins (a client's FIN is taken as a "
          f"half-close: the request stands until --upstream-response-timeout), {waiting['big_open']} 1 GiB "
          f"transfers; the {len(tunnels) // 2} tunnels the client had half-closed first stay until "
          "--tunnel-idle-timeout (their close sends nothing more)")
    if growth > MEMORY_BOUND_MIB:
        problems.append(f"hang: RSS grew by {growth:.1f} MiB")
    if failed or not during or p99_during > p99_base + P99_SLACK_MS:
        problems.append(f"hang: other clients affected (p99 {p99_base:.1f} → {p99_during:.1f} ms, "
                        f"{len(failed)} failed)")
    if any(held[k] != COUNTS[k] for k in COUNTS if k != "trickle-body"):
        problems.append(f"hang: a slow peer ended during the hold ({held})")
    if waiting["big_open"]:
        problems.append("hang: a 1 GiB transfer's upstream stayed open after its client left")


def timeouts(args, work, origin, db, users, problems) -> None:
    flags = ["--upstream-response-timeout", SHORT["response"], "--request-head-timeout", SHORT["head"],
             "--client-idle-timeout", SHORT["idle"], "--tunnel-idle-timeout", SHORT["tunnel"]]
    proxy = start_proxy(args, work, origin, db, "timeouts", flags)
    auth = r.basic(*users[-1])
    leave = threading.Event()
    fds_before = proxy.fds()
    kinds = {"silent": ("response", 504), "trickle-head": ("response", 504), "slow-head": ("head", 408),
             "idle": ("idle", "closed"), "trickle-body": (None, 200), "never-read": (None, None)}
    peers = [Peer(kind, proxy, origin, auth, leave) for kind in kinds for _ in range(10)]
    for peer in peers:
        peer.start()
    opened = time.monotonic()
    tunnels = half_open_tunnels(proxy, origin, auth, args.tunnels)
    built = time.monotonic()
    active = r.metric(proxy.metrics(), "portcullis_tunnels_active")
    gone = until(lambda: r.metric(proxy.metrics(), "portcullis_tunnels_active") == 0, SHORT["tunnel"] + 15, 0.1)
    closed_after = (time.monotonic() - built) if gone is not None else None
    for peer in peers:
        if peer.kind != "never-read":
            peer.join(SHORT["response"] + 15)
    never_read_open = origin.stats()["big_open"]
    fds_end = proxy.fds()
    leave.set()
    for s in tunnels:
        s.close()
    for peer in peers:
        peer.join(10)
    # What may stay: the upstream connections of the trickled bodies, pooled for reuse.
    pooled = sum(1 for p in peers if p.kind == "trickle-body")
    settled = until(lambda: proxy.fds() <= fds_before + pooled + 2, 10)
    fds_last = proxy.fds()
    print(f"## Timeouts (response {SHORT['response']} s, request head {SHORT['head']} s, client idle "
          f"{SHORT['idle']} s, tunnel idle {SHORT['tunnel']} s)")
    for kind, (timeout, expected) in kinds.items():
        group = [p for p in peers if p.kind == kind]
        outcomes = sorted({str(p.outcome) for p in group})
        times = [p.seconds for p in group if p.seconds is not None]
        line = (f"- {len(group)} {kind}: {', '.join(outcomes)} after {min(times):.2f}–{max(times):.2f} s"
                + (f" ({group[0].detail})" if group[0].detail else ""))
        if timeout:
            t = SHORT[timeout]
            line += f" (configured {t} s)"
            if any(p.outcome != expected or not t <= p.seconds <= t + TIMEOUT_SLACK for p in group):
                problems.append(f"timeouts: {kind} answered {outcomes} after {min(times):.2f}–{max(times):.2f} s, "
                                f"want {expected} after {t}–{t + TIMEOUT_SLACK} s")
        elif kind == "trickle-body":
            if any(p.outcome != 200 for p in group):
                problems.append(f"timeouts: a trickled body was not relayed ({outcomes})")
        else:
            line += (f"; {never_read_open} of their upstream connections still open after "
                     f"{time.monotonic() - opened:.0f} s (no timeout applies to a client that does not read)")
        print(line)
    print(f"- {len(tunnels)} half-open tunnels built in {built - opened:.1f} s ({active:.0f} in the proxy's gauge): "
          + (f"all closed {closed_after:.2f} s after the last was built (configured {SHORT['tunnel']} s)"
             if closed_after is not None else "NOT all closed"))
    print(f"- proxy descriptors: {fds_before} before, {fds_end} once everything but the never-reading clients "
          f"ended ({2 * never_read_open} of them theirs, {pooled} pooled upstream connections), {fds_last} after "
          f"those clients left")
    if closed_after is None or closed_after > SHORT["tunnel"] + TIMEOUT_SLACK:
        problems.append(f"timeouts: half-open tunnels closed after {closed_after} s (configured {SHORT['tunnel']} s)")
    if fds_end > fds_before + 2 * never_read_open + pooled + 2 or settled is None:
        problems.append(f"timeouts: descriptors {fds_before} → {fds_end} → {fds_last}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    r.binary_argument(ap)
    ap.add_argument("--tunnels", type=int, default=1000)
    ap.add_argument("--hold", type=float, default=10, help="seconds of the baseline and of the hang")
    args = ap.parse_args()
    r.check_binary(args.bin)
    r.exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="portcullis-slow-"))
    problems: list[str] = []
    try:
        origin = r.Origin(work)
        db = work / "users.db"
        users = [(f"probe{i}", f"probe-secret-{i}") for i in range(PROBES)] + [("slow", "slow-secret")]
        r.sqlite_users(args.bin, db, users)
        print(f"# Slow and dead peers ({r.now_utc()})")
        hang(args, work, origin, db, users, problems)
        timeouts(args, work, origin, db, users, problems)
        for problem in problems:
            print(f"  problem: {problem}")
        print(f"{'PASS' if not problems else 'FAIL'}: slow and dead peers")
        sys.exit(0 if not problems else 1)
    finally:
        b.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
