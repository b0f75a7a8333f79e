"""Descriptor exhaustion (issue 27): Portcullis runs with a low descriptor limit (`prlimit
--nofile=N:N`: soft and hard, since `serve` raises its soft limit to the hard one) and a client
opens connections until every descriptor the proxy may have is taken, so `accept()` fails with
EMFILE. While it is saturated: the proxy's CPU (user + system seconds over the saturated
interval, less what the same clients cost before the burst: a busy accept loop shows as about
one core), the lines it logs (once per burst, not one per accept attempt), and keep-alive
clients that were connected before the burst (they must keep getting 200). Then the burst's
connections close: a client that connected during the saturation (waiting in the listen
backlog) and a new one must be served within a bound.

Last, saturated once more while 4 clients send logins with wrong passwords on connections made
before (each a login check: work queued on the proxy's task executor), the proxy is stopped for
1.2 s and continued 4 times (SIGSTOP/SIGCONT, what an overloaded host or a VM losing its CPU
does): it must still be running. (At ba34c12 it is not: libdispatch's worker-pool monitor, a 1-second timer
that opens /proc/<tid>/stat for each worker while work is queued, treats the failed open as a
dead worker and traps — SIGILL. Without the freezes it happens too, more rarely.)

By default serve's own connection cap applies (an eighth of the limit, at least 64 descriptors,
kept in reserve: 96 connections under 256), so the proxy refuses the burst itself (503) before
its descriptors run out, and the scenario checks the same things of that. `--max-connections
N` passes an explicit cap: above what the limit holds (10000), the accept loop meets EMFILE — the
pause and its log lines are measured, and the freezes can end the process (libdispatch), which is
why the default keeps the reserve.

Everything on loopback, bounded (about 45 s). Prints its figures and a pass/fail line; exit 1
on fail.

    python3 bench/reliability/descriptors.py [--bin PATH] [--limit 256] [--saturated 10] [--bursts 2]
                                             [--freezes 4] [--max-connections N]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rellib as r  # noqa: E402
from rellib import b  # noqa: E402

EXTRA_CPU_BOUND = 0.10  # cores above the probes' own cost while saturated
RESUME_BOUND = 2.0  # seconds from the burst's close to a waiting and a new client's 200
LOG_LINES_BOUND = 3  # lines per burst
PROBES, PROBE_RATE = 4, 10


class Waiter(threading.Thread):
    """A GET on a connection made while the proxy is saturated (it waits in the backlog)."""

    def __init__(self, port: int, url: str, authorization: str):
        super().__init__(daemon=True)
        self.port, self.url, self.authorization = port, url, authorization
        self.status, self.done_at = None, None

    def run(self):
        self.status, _ = r.get(self.port, self.url, self.authorization, timeout=30)
        self.done_at = time.monotonic()


class Logins(threading.Thread):
    """Requests with a wrong password, a new one each time, on a connection made before the
    burst: every answer is a login check (a Swift task and a password hash), so the proxy has
    work queued on its task executor the whole time."""

    def __init__(self, port: int, url: str, user: str, stop: threading.Event):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.url, self.user, self.stop = url, user, stop
        self.answers: list[int] = []
        self.error = ""

    def run(self):
        n = 0
        while not self.stop.is_set():
            n += 1
            authorization = r.basic(self.user, f"wrong-{id(self)}-{n}")
            try:
                self.sock.sendall(f"GET {self.url} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {authorization}\r\n"
                                  "Content-Length: 0\r\n\r\n".encode())
                status, head, rest = r.read_head(self.sock)
                length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), b"0"))
                while len(rest) < length:
                    rest += self.sock.recv(65536)
                self.answers.append(status)
            except OSError as e:
                self.error = type(e).__name__
                return
        self.sock.close()


def freezes(proxy: r.Proxy, url: str, user: str, limit: int, count: int, problems: list[str]):
    """Saturated again, with logins under way on connections made before, the proxy is stopped
    for 1.2 s and continued `count` times (SIGSTOP/SIGCONT): what an overloaded host or a VM
    that loses its CPU does to it. Its timers are overdue on resumption while work waits."""
    stop = threading.Event()
    logins = [Logins(proxy.port, url, user, stop) for _ in range(4)]
    held, _ = burst(proxy, limit, 0)
    for login in logins:
        login.start()
    time.sleep(0.5)
    for _ in range(count):
        if not proxy.alive():
            break
        os.kill(proxy.pid, signal.SIGSTOP)
        time.sleep(1.2)
        os.kill(proxy.pid, signal.SIGCONT)
        time.sleep(0.3)
    time.sleep(1)
    answered = sum(len(login.answers) for login in logins)
    stop.set()
    for login in logins:
        login.join(15)
    alive = proxy.alive()
    for s in held:
        s.close()
    statuses = sorted({s for login in logins for s in login.answers})
    print(f"- saturated again with {len(held)} connections, 4 clients sending logins with wrong passwords on "
          f"connections made before, and the proxy stopped for 1.2 s {count} times (SIGSTOP/SIGCONT): "
          f"{answered} answers ({', '.join(map(str, statuses)) or 'none'}); proxy "
          + ("running" if alive else f"DEAD (exit status {proxy.process.returncode})"))
    if not alive:
        problems.append("freezes: the proxy died while out of descriptors; the end of its log:\n"
                        + "\n".join("      " + line[:300] for line in proxy.log().splitlines()[-6:]))
    elif not answered or any(s != 407 for s in statuses):
        problems.append(f"freezes: logins answered {statuses}, {answered} in all")


def describe(failures: list[str]) -> str:
    """' (HTTP 502 ×3, …)' for a list of failures, '' for none."""
    if not failures:
        return ""
    counts = {f: failures.count(f) for f in sorted(set(failures))}
    return " (" + ", ".join(f"{f} ×{n}" for f, n in counts.items()) + ")"


def burst(proxy: r.Proxy, limit: int, extra: int) -> tuple[list[socket.socket], float]:
    """Connections (nothing sent) until the proxy holds `limit` descriptors, then `extra` more
    that wait in its backlog. Returns them and the seconds it took."""
    started = time.monotonic()
    held: list[socket.socket] = []
    while proxy.fds() < limit and len(held) < 4 * limit and proxy.alive():  # 4 × limit: refused by a cap
        for _ in range(16):
            held.append(socket.create_connection(("127.0.0.1", proxy.port), timeout=10))
        time.sleep(0.01)
    deadline = time.monotonic() + 5
    while proxy.fds() < limit and time.monotonic() < deadline and proxy.alive():
        time.sleep(0.05)
    for _ in range(extra if proxy.alive() else 0):
        held.append(socket.create_connection(("127.0.0.1", proxy.port), timeout=10))
    return held, time.monotonic() - started


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    r.binary_argument(ap)
    ap.add_argument("--limit", type=int, default=256, help="the proxy's descriptor limit")
    ap.add_argument("--saturated", type=float, default=10, help="seconds each burst holds the proxy saturated")
    ap.add_argument("--bursts", type=int, default=2)
    ap.add_argument("--freezes", type=int, default=4,
                    help="SIGSTOP/SIGCONT cycles of 1.2 s while saturated with logins under way (0: none)")
    ap.add_argument("--max-connections", type=int,
                    help="passed to serve (default: serve's own cap, which keeps descriptors in reserve; 10000 is far "
                         "above what the limit holds, so the proxy meets EMFILE)")
    args = ap.parse_args()
    r.check_binary(args.bin)
    r.exit_on_sigterm()
    b.find("prlimit", "util-linux")
    work = Path(tempfile.mkdtemp(prefix="portcullis-descriptors-"))
    stop = threading.Event()
    try:
        origin = r.Origin(work)
        db = work / "users.db"
        users = [(f"keep{i}", f"keep-secret-{i}") for i in range(PROBES)] + [("late", "late-secret")]
        r.sqlite_users(args.bin, db, users)
        # No lockout: the freezes' wrong passwords come from 127.0.0.1 too.
        cap = ["--max-connections", args.max_connections] if args.max_connections else []
        proxy = r.Proxy(args.bin, ["--store", f"sqlite:{db}", "--log-level", "info", "--lockout-threshold", "1000000",
                                   *cap], work,
                        wrapper=["prlimit", f"--nofile={args.limit}:{args.limit}"])
        url = origin.url("/1k")
        late = r.basic("late", "late-secret")
        assert r.get(proxy.port, url, late)[0] == 200, proxy.log()
        probes = [r.Probe(proxy.port, url, r.basic(n, p), PROBE_RATE, stop) for n, p in users[:PROBES]]
        for probe in probes:
            probe.start()
        time.sleep(2)
        fds_before = proxy.fds()
        t0, c0 = time.monotonic(), proxy.cpu()
        time.sleep(3)
        baseline_cpu = (proxy.cpu() - c0) / (time.monotonic() - t0)
        print(f"# Descriptor exhaustion ({r.now_utc()})")
        print(f"- proxy under `prlimit --nofile={args.limit}:{args.limit}`, {fds_before} descriptors open with "
              f"{PROBES} keep-alive clients at {PROBE_RATE} req/s each: {baseline_cpu:.3f} cores")
        problems: list[str] = []
        for n in range(1, args.bursts + 1):
            log_before = proxy.log().count("\n")
            held, took = burst(proxy, args.limit, 64)
            waiter = Waiter(proxy.port, url, late)
            waiter.start()
            saturated_at, cpu_at = time.monotonic(), proxy.cpu()
            time.sleep(args.saturated)
            seconds = time.monotonic() - saturated_at
            cores = (proxy.cpu() - cpu_at) / seconds
            fds_saturated = proxy.fds() if proxy.alive() else 0
            if not proxy.alive():
                problems.append(f"burst {n}: the proxy died while saturated")
            # Refused by a connection cap before the limit (no EMFILE): the waiting client gets
            # its 503 at once and the refusals are logged through the proxy's refusal limiter
            # (10 lines per 10 s and a summary).
            capped = 0 < fds_saturated < args.limit
            log_bound = 11 * (1 + int((took + seconds) // 10)) if capped else LOG_LINES_BOUND
            waiter_ok = {200, 503} if capped else {200}
            lines = proxy.log().splitlines()[log_before:]
            released_at = time.monotonic()
            for s in held:
                s.close()
            fresh_status, fresh_seconds = r.get(proxy.port, url, late, timeout=30)
            waiter.join(35)
            waited = (waiter.done_at - released_at) if waiter.done_at else float("inf")
            during = [s for p in probes for s in p.latencies(saturated_at, released_at)]
            failed = [f for p in probes for f in p.failed(saturated_at, released_at)]
            print(f"- burst {n}: {len(held)} connections in {took:.1f} s "
                  + ("(the proxy refused those over its cap, before its limit)" if capped else
                     f"({len(held) - 64} to the limit, 64 more waiting in the backlog)")
                  + f"; proxy at {fds_saturated} descriptors for {seconds:.1f} s")
            print(f"  - proxy CPU while saturated: {cores:.3f} cores ({cores - baseline_cpu:+.3f} over the "
                  f"clients' own cost; bound +{EXTRA_CPU_BOUND:.2f}: a busy accept loop is about +1)")
            print(f"  - log lines during the burst: {len(lines)}"
                  + "".join(f"\n      {line[:200]}" for line in lines[:3]))
            print(f"  - keep-alive clients connected before: {len(during)} requests while saturated, "
                  f"{len(failed)} failed{describe(failed)}, p99 {1000 * r.percentile(during, 99):.1f} ms"
                  + (" (a request whose upstream connection is not pooled needs a descriptor too)"
                     if "HTTP 502" in failed else ""))
            print(f"  - after the burst closed: the client that connected while saturated got {waiter.status} "
                  f"{'after' if waited >= 0 else 'before the close, by'} {abs(waited):.2f} s, a new client "
                  f"{fresh_status} in {fresh_seconds:.2f} s (bound {RESUME_BOUND:.0f} s)")
            if cores - baseline_cpu > EXTRA_CPU_BOUND:
                problems.append(f"burst {n}: the proxy spins ({cores:.2f} cores while saturated)")
            if not 1 <= len(lines) <= log_bound:
                problems.append(f"burst {n}: {len(lines)} log lines (want 1–{log_bound})")
            if failed:
                problems.append(f"burst {n}: {len(failed)} requests of connected clients failed")
            if waiter.status not in waiter_ok or waited > RESUME_BOUND or fresh_status != 200 \
                    or fresh_seconds > RESUME_BOUND:
                problems.append(f"burst {n}: service did not resume within {RESUME_BOUND:.0f} s")
            time.sleep(3)
        if args.freezes and proxy.alive():
            freezes(proxy, url, "late", args.limit, args.freezes, problems)
        stop.set()
        for probe in probes:
            probe.join(15)
        time.sleep(1)
        fds_after = proxy.fds()
        print(f"- descriptors: {fds_before} before, {fds_after} after the bursts; proxy "
              f"{'running' if proxy.alive() else 'DEAD'}")
        if not proxy.alive() and not any("died" in p for p in problems):
            problems.append(f"the proxy died (exit status {proxy.process.returncode}); the end of its log:\n"
                            + "\n".join("      " + line[:300] for line in proxy.log().splitlines()[-25:]))
        if fds_after > fds_before + 4:
            problems.append(f"descriptors not given back ({fds_before} → {fds_after})")
        for problem in problems:
            print(f"  problem: {problem}")
        passed = not problems
        print(f"{'PASS' if passed else 'FAIL'}: descriptor exhaustion")
        sys.exit(0 if passed else 1)
    finally:
        stop.set()
        b.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
