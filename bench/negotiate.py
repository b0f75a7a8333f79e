#!/usr/bin/env python3
"""Negotiate and NTLM figures for issue 19, side by side in one run, loopback only:

1. **Keep-alive throughput.** One Portcullis process (`--auth negotiate,ntlm,basic`, a keytab
   from the throwaway KDC of `scripts/kdc-test-server.sh`, an embedded store with the user
   enrolled for NTLM) in front of a local nginx serving 1 KiB. Each round opens N connections
   per scheme and authenticates each once here in Python — Basic: one request with the
   credentials (the proxy's credential cache is warm from the warm-up); NTLM: pyspnego's
   NEGOTIATE/CHALLENGE/AUTHENTICATE; Negotiate: python-gssapi's SPNEGO token after the 407 —
   then hands the open sockets to `negload` (bench/negload.c, compiled on first use), a
   one-thread epoll client that runs a closed loop of `GET` on every connection for the
   round's duration, as `wrk -t1` would. NTLM and Negotiate requests then carry no
   credentials (the proxy bound the connection to the user); Basic requests carry
   `Proxy-Authorization: Basic …` every time, as Basic clients do. The three schemes and
   `basic-wrk` (the same Basic load from `wrk -t1` and bench/proxy.lua: is negload as light a
   client?) alternate, the order reversing every round; the ratios NTLM/Basic and Negotiate/Basic are
   taken within each round (paired) and reported as median and range. The proxy's and the
   client's CPU per request are read from /proc and getrusage.
2. **New-connection Kerberos handshakes.** `negload handshake`: C connections at a time, each
   connects, sends `GET` without credentials, takes the 407, answers with a SPNEGO token from
   gss_init_sec_context (the user's tickets copied once into a MEMORY cache; the service
   ticket for HTTP/localhost is fetched once and reused), gets the 200, checks the mutual-
   authentication token when there is one, closes, starts over. Against Portcullis and against
   Squid with its stock `negotiate_kerberos_auth` helper (`-k KEYTAB -s HTTP/localhost@REALM`,
   `children 20 startup=0 idle=1` as Squid's squid.conf recommends), both on the same keytab
   and KDC, both with MIT's default replay cache in a directory of their own and both with
   `KRB5RCACHETYPE=none` (four targets, alternating every round). Reports handshakes/s, p50/p99
   and the ratio Portcullis/Squid per replay-cache setting.

Needs the KDC's environment (KRB5_CONFIG, PORTCULLIS_TEST_KRB5_*): run under
`bash scripts/kdc-test-server.sh run python3 bench/negotiate.py`, or just
`python3 bench/negotiate.py`, which re-runs itself that way when the environment is missing.
Needs nginx, squid (+ /usr/lib/squid/negotiate_kerberos_auth), cc, libkrb5-dev, pyspnego,
python-gssapi. Writes bench/out/negotiate.{md,json}. About 4½ minutes with the defaults.

Usage: python3 bench/negotiate.py [--part keepalive|handshake|all] [--rounds N] [--duration S]
       [--connections N] [--hs-rounds N] [--hs-duration S] [--concurrency N] [--quick] [--deadline S]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

if "PORTCULLIS_TEST_KRB5_KEYTAB" not in os.environ and os.environ.get("NEGOTIATE_BENCH_UNDER_KDC") != "1":
    # Re-run under a throwaway KDC (started, and deleted on exit, by the project's script).
    os.environ["NEGOTIATE_BENCH_UNDER_KDC"] = "1"
    os.execvp("bash", ["bash", str(ROOT / "scripts" / "kdc-test-server.sh"), "run", sys.executable,
                       str(Path(__file__).resolve()), *sys.argv[1:]])

from benchlib import CHILDREN, cpu_seconds, find, free_port, spawn, start_origin, stop_all, wait_port, wrk  # noqa: E402

OUT = ROOT / "bench" / "out"
USER, PASSWORD = "bench", "Bench-pa55word"
SPN_HOST = "localhost"  # the service principal is HTTP/localhost: clients name the proxy so


def log(msg: str):
    print(f"[negotiate] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- HTTP on a socket

def read_response(sock: socket.socket) -> tuple[int, dict[str, list[str]]]:
    """One response (head and Content-Length body): its status and headers (lower-case names)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data[:200]!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    left = int(headers.get("content-length", ["0"])[0]) - len(body)
    while left > 0:
        chunk = sock.recv(min(left, 65536))
        if not chunk:
            raise ConnectionError("closed in the body")
        left -= len(chunk)
    return int(lines[0].split()[1]), headers


def get(sock: socket.socket, target: str, host: str, auth: str | None = None):
    extra = f"Proxy-Authorization: {auth}\r\n" if auth else ""
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
    return read_response(sock)


def challenge(headers: dict, scheme: str) -> bytes | None:
    for v in headers.get("proxy-authenticate", []):
        if v.split(" ", 1)[0] == scheme and " " in v:
            return base64.b64decode(v.split(" ", 1)[1])
    return None


def authenticate(port: int, scheme: str, target: str, host: str) -> socket.socket:
    """A connection to the proxy on which `scheme` has succeeded once (a 200 through it)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if scheme == "basic":
        status, headers = get(sock, target, host, "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
    elif scheme == "ntlm":
        import spnego
        client = spnego.client(USER, PASSWORD, protocol="ntlm")
        status, headers = get(sock, target, host, "NTLM " + base64.b64encode(client.step()).decode())
        assert status == 407, status
        token = client.step(challenge(headers, "NTLM"))
        status, headers = get(sock, target, host, "NTLM " + base64.b64encode(token).decode())
    else:
        import gssapi
        status, headers = get(sock, target, host)
        assert status == 407 and "Negotiate" in headers.get("proxy-authenticate", []), (status, headers)
        ctx = gssapi.SecurityContext(name=gssapi.Name(f"HTTP@{SPN_HOST}", gssapi.NameType.hostbased_service),
                                     usage="initiate", mech=gssapi.OID.from_int_seq("1.3.6.1.5.5.2"),
                                     flags=gssapi.RequirementFlag.mutual_authentication)
        status, headers = get(sock, target, host, "Negotiate " + base64.b64encode(ctx.step()).decode())
        final = challenge(headers, "Negotiate")
        if final:
            ctx.step(final)
    if status != 200:
        raise RuntimeError(f"{scheme}: {status} {headers}")
    return sock


# ----------------------------------------------------------------------------- processes

def build_negload(work: Path) -> Path:
    exe = work / "negload"
    cc = shutil.which("cc") or shutil.which("gcc") or sys.exit("no C compiler (apt-get install gcc)")
    subprocess.run([cc, "-O2", "-Wall", "-o", exe, ROOT / "bench" / "negload.c", "-lgssapi_krb5", "-lkrb5"],
                   check=True, timeout=120)
    return exe


def negload(exe: Path, args: list, pass_fds=(), env=None, timeout=120) -> dict:
    out = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, pass_fds=pass_fds,
                         env=env, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"negload {args[0]} failed: {out.stderr}")
    return json.loads(out.stdout)


def tree_cpu(pid: int) -> tuple[float, float]:
    """User + system CPU seconds of a process and of its live children (Squid's helpers)."""
    own, children = sum(cpu_seconds(pid)), 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    children += sum(cpu_seconds(int(entry.name)))
            except (OSError, ValueError):
                pass
    return own, children


def machine_busy() -> tuple[float, float]:
    """CPU seconds all cores have spent busy since boot (/proc/stat: everything but idle and iowait),
    and of those, in softirq (loopback TCP's receive path)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - fields[3] - fields[4]) / tick, fields[6] / tick


class Meter:
    """CPU used between start() and stop(): the machine's, and the processes the benchmark started
    (the server measured, nginx), so that what else ran on the shared machine shows as `others`
    (other tenants, kernel threads). Softirq is reported on its own too: /proc/stat counts it, and
    this kernel also charges it to whichever process it interrupted, so it is part of the rest."""

    def __init__(self, nginx_pid: int):
        self.nginx_pid = nginx_pid

    def start(self, server_pid: int):
        self.server_pid = server_pid
        self.t, self.busy, self.nginx = time.monotonic(), machine_busy(), sum(tree_cpu(self.nginx_pid))
        self.server = tree_cpu(server_pid)

    def stop(self, res: dict, client_cpu_s: float):
        wall = time.monotonic() - self.t
        own, children = tree_cpu(self.server_pid)
        res["server_main_cpu_s"], res["server_helpers_cpu_s"] = own - self.server[0], children - self.server[1]
        res["server_cpu_s"] = res["server_main_cpu_s"] + res["server_helpers_cpu_s"]
        res["nginx_cores"] = (sum(tree_cpu(self.nginx_pid)) - self.nginx) / wall
        busy, softirq = machine_busy()
        res["machine_busy_cores"] = (busy - self.busy[0]) / wall
        res["softirq_cores"] = (softirq - self.busy[1]) / wall
        res["others_cores"] = max(0.0, res["machine_busy_cores"] - res["server_cpu_s"] / wall - client_cpu_s / wall
                                  - res["nginx_cores"])


def start_portcullis(binary: str, work: Path, name: str, env: dict) -> tuple[int, subprocess.Popen]:
    port = free_port()
    data = work / "data"
    p = spawn([binary, "serve", "--listen", f"127.0.0.1:{port}", "--auth", "negotiate,ntlm,basic",
               "--keytab", os.environ["PORTCULLIS_TEST_KRB5_KEYTAB"], "--data-dir", data,
               "--allow-private-destinations", "--log-level", "warning"], env=env)
    wait_port(port, 30)
    log(f"{name}: Portcullis pid {p.pid} on {port}")
    return port, p


def start_squid(squid: str, work: Path, name: str, rcache_none: bool) -> tuple[int, subprocess.Popen]:
    port = free_port()
    sq = work / name
    sq.mkdir()
    root = os.getuid() == 0
    keytab = sq / "http.keytab"
    shutil.copy(os.environ["PORTCULLIS_TEST_KRB5_KEYTAB"], keytab)
    krb5conf = sq / "krb5.conf"  # the KDC's directory is private to its owner; Squid runs as proxy
    shutil.copy(os.environ["KRB5_CONFIG"], krb5conf)
    (sq / "rcache").mkdir()
    realm = os.environ["PORTCULLIS_TEST_KRB5_REALM"]
    (sq / "squid.conf").write_text("\n".join([
        f"http_port 127.0.0.1:{port}", f"pid_filename {sq}/squid.pid", f"cache_log {sq}/cache.log",
        f"coredump_dir {sq}", "access_log none", "cache_store_log none", "netdb_filename none",
        "cache deny all", "shutdown_lifetime 0 seconds", "pinger_enable off",
        *(["cache_effective_user proxy"] if root else []),
        f"auth_param negotiate program /usr/lib/squid/negotiate_kerberos_auth -k {keytab} -s HTTP/{SPN_HOST}@{realm}",
        # squid.conf's recommended settings for Negotiate (its own example block).
        "auth_param negotiate children 20 startup=0 idle=1",
        "auth_param negotiate keep_alive on",
        "acl auth proxy_auth REQUIRED", "http_access allow auth", "http_access deny all", "",
    ]))
    for path in [sq, *sq.iterdir()]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
        if root:
            shutil.chown(path, "proxy")
    os.chmod(keytab, 0o600)
    env = {**os.environ, "KRB5_CONFIG": str(krb5conf), "KRB5RCACHEDIR": str(sq / "rcache")}
    env.pop("KRB5CCNAME", None)
    if rcache_none:
        env["KRB5RCACHETYPE"] = "none"
    p = spawn([squid, "-N", "-f", sq / "squid.conf"], env=env)
    wait_port(port, 30)
    log(f"{name}: Squid pid {p.pid} on {port}")
    return port, p


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} (range {min(values):.3f}–{max(values):.3f})"


# ----------------------------------------------------------------------------- part 1

def keepalive_part(args, exe: Path, port: int, proxy: subprocess.Popen, meter: Meter, target: str, host: str,
                   work: Path) -> dict:
    schemes = ["basic", "ntlm", "negotiate"]
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    requests = {}
    for s in schemes:
        path = work / f"{s}.request"
        extra = f"Proxy-Authorization: {basic}\r\n" if s == "basic" else ""
        path.write_bytes(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
        requests[s] = path

    def run(scheme: str, seconds: float) -> dict:
        if scheme == "basic-wrk":
            # The same Basic load from wrk -t1 (bench/proxy.lua): is negload as light a client?
            env = {"BENCH_ORIGIN_URL": target, "BENCH_ORIGIN_HOST": host, "BENCH_PROXY_AUTH": basic}
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            meter.start(proxy.pid)
            w = wrk(port, int(seconds), args.connections, ROOT / "bench" / "proxy.lua", env)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            res = {"rps": w["rps"], "requests": w["requests"], "seconds": float(int(seconds)),
                   "non200": w["non2xx"], "errors": 0, "p50_us": w["p50_ms"] * 1000, "p99_us": w["p99_ms"] * 1000,
                   "setup_s": 0.0,
                   "client_cpu_s": after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime}
        else:
            t0 = time.monotonic()
            socks = [authenticate(port, scheme, target, host) for _ in range(args.connections)]
            setup = time.monotonic() - t0
            meter.start(proxy.pid)
            res = negload(exe, ["keepalive", seconds, requests[scheme], *[s.fileno() for s in socks]],
                          pass_fds=[s.fileno() for s in socks], timeout=seconds + 60)
            res["client_cpu_s"] = res["cpu_user"] + res["cpu_sys"]
            res["setup_s"] = setup
        meter.stop(res, res["client_cpu_s"])
        if scheme != "basic-wrk":
            for s in socks:
                s.close()
        res["proxy_cpu_us_per_request"] = res["server_cpu_s"] * 1e6 / max(1, res["requests"])
        res["client_cpu_us_per_request"] = res["client_cpu_s"] * 1e6 / max(1, res["requests"])
        return res

    schemes.append("basic-wrk")
    for s in schemes:  # warm-up: the credential cache, the origin's connections, the pool
        run(s, 1 if args.quick else 2)
    rounds: dict[str, list[dict]] = {s: [] for s in schemes}
    for r in range(args.rounds):
        for s in schemes if r % 2 == 0 else list(reversed(schemes)):
            res = run(s, args.duration)
            rounds[s].append(res)
            log(f"keep-alive round {r + 1} {s}: {res['rps']:.0f} req/s, p50 {res['p50_us'] / 1000:.2f} ms, "
                f"p99 {res['p99_us'] / 1000:.2f} ms, non-200 {res['non200']}, errors {res['errors']}, "
                f"proxy {res['proxy_cpu_us_per_request']:.1f} µs/req ({res['server_cpu_s'] / res['seconds']:.2f} cores), "
                f"client {res['client_cpu_s'] / res['seconds']:.2f} cores, nginx {res['nginx_cores']:.2f}, "
                f"others {res['others_cores']:.2f} (softirq {res['softirq_cores']:.2f}), {args.connections} logins in {res['setup_s']:.2f} s")
            time.sleep(0.5)
    paired = {
        f"{s}/basic": [x["rps"] / b["rps"] for x, b in zip(rounds[s], rounds["basic"])] for s in ("ntlm", "negotiate")
    }
    paired["basic/basic-wrk (negload vs wrk as the client)"] = [
        b["rps"] / w["rps"] for b, w in zip(rounds["basic"], rounds["basic-wrk"])]
    cpu_paired = {
        f"{s}/basic": [x["proxy_cpu_us_per_request"] / b["proxy_cpu_us_per_request"]
                       for x, b in zip(rounds[s], rounds["basic"])] for s in ("ntlm", "negotiate")
    }
    return {"rounds": rounds, "paired_rps_ratio": paired, "paired_cpu_per_request_ratio": cpu_paired}


# ----------------------------------------------------------------------------- part 2

def handshake_part(args, exe: Path, targets: dict[str, tuple[int, subprocess.Popen]], meter: Meter, target: str,
                   host: str, env: dict) -> dict:
    names = list(targets)

    def run(name: str, seconds: float) -> dict:
        port, proc = targets[name]
        meter.start(proc.pid)
        res = negload(exe, ["handshake", seconds, args.concurrency, port, target, host, f"HTTP/{SPN_HOST}"],
                      env=env, timeout=seconds + 60)
        res["client_cpu_s"] = res["cpu_user"] + res["cpu_sys"]
        # Squid's helpers start on demand and stay (idle=1 keeps them): none exits mid-run.
        meter.stop(res, res["client_cpu_s"])
        res["server_cpu_us_per_handshake"] = res["server_cpu_s"] * 1e6 / max(1, res["handshakes"])
        res["client_cpu_us_per_handshake"] = res["client_cpu_s"] * 1e6 / max(1, res["handshakes"])
        return res

    for name in names:  # warm-up: Squid starts its helpers on demand
        w = run(name, 1 if args.quick else 2)
        log(f"warm-up {name}: {w['rate']:.0f}/s, errors {w['errors']} {w['last_error']}")
    rounds: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.hs_rounds):
        for name in names if r % 2 == 0 else list(reversed(names)):
            res = run(name, args.hs_duration)
            rounds[name].append(res)
            log(f"handshake round {r + 1} {name}: {res['rate']:.0f}/s, p50 {res['p50_us'] / 1000:.2f} ms, "
                f"p99 {res['p99_us'] / 1000:.2f} ms, errors {res['errors']} {res['last_error']}, "
                f"mutual {res['mutual_checked']}/{res['handshakes']}, "
                f"server {res['server_cpu_us_per_handshake']:.0f} µs/handshake ({res['server_cpu_s'] / res['seconds']:.2f} cores), "
                f"client {res['client_cpu_us_per_handshake']:.0f} µs/handshake ({res['client_cpu_s'] / res['seconds']:.2f} cores), "
                f"nginx {res['nginx_cores']:.2f}, others {res['others_cores']:.2f} (softirq {res['softirq_cores']:.2f})")
            time.sleep(0.5)
    paired, cpu = {}, {}
    for rc in ("rcache-default", "rcache-none"):
        p, s = f"portcullis-{rc}", f"squid-{rc}"
        if p in rounds and s in rounds:
            paired[f"portcullis/squid {rc}"] = [a["rate"] / b["rate"] for a, b in zip(rounds[p], rounds[s])]
            cpu[f"squid/portcullis {rc}"] = [b["server_cpu_us_per_handshake"] / a["server_cpu_us_per_handshake"]
                                             for a, b in zip(rounds[p], rounds[s])]
    return {"rounds": rounds, "paired_rate_ratio": paired, "paired_cpu_per_handshake_ratio": cpu}


# ----------------------------------------------------------------------------- report

def report(meta: dict, ka: dict | None, hs: dict | None) -> str:
    med = statistics.median

    def cores(rs, key):
        return f"{med(x[key] / x['seconds'] for x in rs):.2f}"

    lines = [f"# Negotiate and NTLM (issue 19), {meta['date']}", "",
             f"Commit {meta['commit']}{' (Sources/ dirty)' if meta['dirty'] else ''}, binary built "
             f"{meta['binary_mtime']}, {meta['cores']} cores, kernel {meta['kernel']}, {meta['squid']}, "
             f"load average before {meta['load_before'][0]:.2f}, after {meta['load_after'][0]:.2f}; "
             f"{meta['seconds']} s in all.", ""]
    if ka:
        lines += [f"## Keep-alive GET 1 KiB on authenticated connections ({meta['connections']} connections, "
                  f"{meta['rounds']} rounds × {meta['duration']:g} s, alternating)", "",
                  "| scheme | req/s | p50 ms | p99 ms | non-200 | errors | proxy CPU µs/req | client CPU µs/req "
                  "| cores: proxy | client | nginx | others | softirq (in all) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for s, rs in ka["rounds"].items():
            lines.append(f"| {s} | {med(x['rps'] for x in rs):.0f} | {med(x['p50_us'] for x in rs) / 1000:.2f} | "
                         f"{med(x['p99_us'] for x in rs) / 1000:.2f} | {sum(x['non200'] for x in rs)} | "
                         f"{sum(x['errors'] for x in rs)} | {med(x['proxy_cpu_us_per_request'] for x in rs):.1f} | "
                         f"{med(x['client_cpu_us_per_request'] for x in rs):.1f} | {cores(rs, 'server_cpu_s')} | "
                         f"{cores(rs, 'client_cpu_s')} | {med(x['nginx_cores'] for x in rs):.2f} | "
                         f"{med(x['others_cores'] for x in rs):.2f} | {med(x['softirq_cores'] for x in rs):.2f} |")
        lines += ["", "| ratio (paired per round) | median (range) | per round |", "| --- | --- | --- |"]
        for k, v in ka["paired_rps_ratio"].items():
            goal = " (target ≥ 0.9)" if "wrk" not in k else ""
            lines.append(f"| req/s {k}{goal} | {spread(v)} | {', '.join(f'{x:.3f}' for x in v)} |")
        for k, v in ka["paired_cpu_per_request_ratio"].items():
            lines.append(f"| proxy CPU per request {k} | {spread(v)} | {', '.join(f'{x:.3f}' for x in v)} |")
        lines.append("")
    if hs:
        lines += [f"## New connection + Kerberos handshake + one GET ({meta['concurrency']} at a time, "
                  f"{meta['hs_rounds']} rounds × {meta['hs_duration']:g} s, alternating)", "",
                  "| target | handshakes/s | p50 ms | p99 ms | errors | mutual auth checked "
                  "| server CPU µs/handshake (main + helpers) | client CPU µs/handshake "
                  "| cores: server | client | nginx | others | softirq (in all) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for n, rs in hs["rounds"].items():
            lines.append(f"| {n} | {med(x['rate'] for x in rs):.0f} | {med(x['p50_us'] for x in rs) / 1000:.2f} | "
                         f"{med(x['p99_us'] for x in rs) / 1000:.2f} | {sum(x['errors'] for x in rs)} | "
                         f"{sum(x['mutual_checked'] for x in rs)}/{sum(x['handshakes'] for x in rs)} | "
                         f"{med(x['server_cpu_us_per_handshake'] for x in rs):.0f} "
                         f"({med(x['server_main_cpu_s'] * 1e6 / max(1, x['handshakes']) for x in rs):.0f} + "
                         f"{med(x['server_helpers_cpu_s'] * 1e6 / max(1, x['handshakes']) for x in rs):.0f}) | "
                         f"{med(x['client_cpu_us_per_handshake'] for x in rs):.0f} | {cores(rs, 'server_cpu_s')} | "
                         f"{cores(rs, 'client_cpu_s')} | {med(x['nginx_cores'] for x in rs):.2f} | "
                         f"{med(x['others_cores'] for x in rs):.2f} | {med(x['softirq_cores'] for x in rs):.2f} |")
        lines += ["", "| ratio (paired per round) | median (range) | per round |", "| --- | --- | --- |"]
        for k, v in hs["paired_rate_ratio"].items():
            lines.append(f"| handshakes/s {k} (target ≥ 3) | {spread(v)} | {', '.join(f'{x:.3f}' for x in v)} |")
        for k, v in hs["paired_cpu_per_handshake_ratio"].items():
            lines.append(f"| server CPU per handshake {k} | {spread(v)} | {', '.join(f'{x:.3f}' for x in v)} |")
        for rc in ("rcache-default", "rcache-none"):
            p, s = hs["rounds"].get(f"portcullis-{rc}"), hs["rounds"].get(f"squid-{rc}")
            if p and s:
                lines.append(f"| p50 / p99 portcullis ÷ squid, {rc} (medians) | "
                             f"{med(x['p50_us'] for x in p) / med(x['p50_us'] for x in s):.3f} / "
                             f"{med(x['p99_us'] for x in p) / med(x['p99_us'] for x in s):.3f} | |")
        lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=str(ROOT / ".build/release/portcullis"))
    ap.add_argument("--part", choices=["keepalive", "handshake", "all"], default="all")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--duration", type=float, default=4)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--hs-rounds", type=int, default=6)
    ap.add_argument("--hs-duration", type=float, default=4)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s each (a smoke run)")
    ap.add_argument("--deadline", type=int, default=900, help="give up (and clean up) after this many seconds")
    args = ap.parse_args()

    def expired(*_):
        raise TimeoutError(f"bench/negotiate.py: still running after --deadline {args.deadline} s")

    signal.signal(signal.SIGALRM, expired)
    signal.alarm(args.deadline)
    if args.quick:
        args.rounds = args.hs_rounds = 1
        args.duration = args.hs_duration = 2
    if "PORTCULLIS_TEST_KRB5_KEYTAB" not in os.environ:
        sys.exit("the test KDC did not start (see above); needs krb5-kdc, krb5-admin-server, krb5-user")
    if not Path(args.bin).exists():
        sys.exit(f"{args.bin} missing: swift build -c release --product portcullis")
    nginx, squid = find("nginx", "nginx-light"), find("squid", "squid")
    work = Path(tempfile.mkdtemp(prefix="portcullis-negotiate-"))
    os.chmod(work, 0o755)
    started = time.monotonic()
    try:
        exe = build_negload(work)
        # The user's ticket, in a cache of this run's own.
        ccache = f"FILE:{work / 'ccache'}"
        os.environ["KRB5CCNAME"] = ccache
        subprocess.run(["kinit", os.environ["PORTCULLIS_TEST_KRB5_USER"]], check=True, capture_output=True,
                       input=os.environ["PORTCULLIS_TEST_KRB5_PASSWORD"].encode(), timeout=30)
        origin = start_origin(nginx, work)
        meter = Meter(CHILDREN[-1].pid)
        target, host = f"http://127.0.0.1:{origin}/1k", f"127.0.0.1:{origin}"
        subprocess.run([args.bin, "users", "add", USER, "--ntlm", "--password-stdin", "--data-dir", work / "data"],
                       input=PASSWORD.encode(), check=True, capture_output=True, timeout=60)
        base_env = {k: v for k, v in os.environ.items() if k != "KRB5CCNAME"}
        # Each server keeps its replay cache in a directory of its own (MIT's default type, dfl:
        # one file per user id), never /var/tmp shared with anything else on the machine.
        servers: dict[str, tuple[int, subprocess.Popen]] = {}
        for rc in ("rcache-default", "rcache-none"):
            d = work / f"portcullis-{rc}"
            d.mkdir()
            env = {**base_env, "KRB5RCACHEDIR": str(d)}
            if rc == "rcache-none":
                env["KRB5RCACHETYPE"] = "none"
            servers[f"portcullis-{rc}"] = start_portcullis(args.bin, work, f"portcullis-{rc}", env)
            if args.part in ("handshake", "all"):
                servers[f"squid-{rc}"] = start_squid(squid, work, f"squid-{rc}", rc == "rcache-none")
        meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                         text=True).stdout.strip(),
                "dirty": bool(subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "Sources"],
                                             capture_output=True, text=True).stdout.strip()),
                "binary_mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(Path(args.bin).stat().st_mtime)),
                "cores": os.cpu_count(), "kernel": os.uname().release,
                "squid": subprocess.run([squid, "-v"], capture_output=True, text=True).stdout.splitlines()[0],
                "load_before": os.getloadavg(), **vars(args)}
        ka = hs = None
        if args.part in ("keepalive", "all"):
            port, proc = servers["portcullis-rcache-default"]
            ka = keepalive_part(args, exe, port, proc, meter, target, host, work)
        if args.part in ("handshake", "all"):
            order = ["portcullis-rcache-default", "squid-rcache-default", "portcullis-rcache-none", "squid-rcache-none"]
            hs = handshake_part(args, exe, {n: servers[n] for n in order}, meter, target, host,
                                {**os.environ, "KRB5CCNAME": ccache})
        meta["load_after"] = os.getloadavg()
        meta["seconds"] = round(time.monotonic() - started)
        text = report(meta, ka, hs)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "negotiate.md").write_text(text)
        (OUT / "negotiate.json").write_text(json.dumps({"meta": meta, "keepalive": ka, "handshake": hs}, indent=2))
        print(text)
        log(f"done in {meta['seconds']} s; wrote bench/out/negotiate.{{md,json}}")
    finally:
        stop_all(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
