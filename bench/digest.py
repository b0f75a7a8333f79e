#!/usr/bin/env python3
"""Digest vs Basic on the keep-alive benchmark (issues 5 and 9), side by side in one run:
`wrk -t1 -c50`, keep-alive GET of a 1 KiB file from a local nginx, through

- Portcullis with Basic, with Digest MD5 and with Digest SHA-256 (one process, `--auth
  basic,digest`, SQLite store with the user enrolled for Digest);
- Squid 5 with Basic (`basic_ncsa_auth`, bcrypt) and with Digest (`digest_file_auth`, MD5 —
  the only algorithm Squid has), one process offering both.

wrk cannot hash, so every Digest answer is computed here beforehand (Python hashlib) for
nonces fetched from the proxy under test: 50 nonces per round, used in turn (request i takes
nonce i mod 50) with counts 1, 2, 3 … per nonce, as 50 clients with a nonce each would, so
that no answer is ever sent twice (both proxies refuse replays). wrk is handed whole prebuilt
requests, for Basic too. Each Digest request is a real Digest check: the proxies cannot cache
an answer, only the user's secret.
Rounds alternate the targets. Writes bench/out/digest.{md,json}. Loopback only, bounded
(about 2 minutes with the defaults), every process it starts is stopped on exit.

Usage: python3 bench/digest.py [--duration S] [--rounds N] [--quick]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (CHILDREN, cpu_seconds, find, free_port, spawn, start_origin, stop_all, wait_port, wrk,
                      write_report)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
USER, PASSWORD = "bench", "benchpass"
NONCES = 50

LUA = r"""
-- Every request is built beforehand: wrk's Lua then only slices one string per request, the
-- same small cost for Basic and Digest, so the harness adds as little as it can to what is
-- measured. The Digest requests are one string of equal-length records, not a table of
-- strings: a table of hundreds of thousands of strings makes LuaJIT's collector walk it on
-- every cycle, and wrk (not the proxy) becomes what is measured.
local blob, width, count = nil, 0, 0
local n = 0
local basic = os.getenv("BENCH_BASIC")
local target = os.getenv("BENCH_TARGET")
local host = os.getenv("BENCH_HOST")
local fixed = nil
init = function(args)
  if basic == nil or basic == "" then
    local f = assert(io.open(os.getenv("BENCH_ANSWERS"), "rb"))
    blob = f:read("*a")
    f:close()
    width = tonumber(os.getenv("BENCH_WIDTH"))
    count = #blob / width
  else
    fixed = wrk.format("GET", target, { ["Host"] = host, ["Proxy-Authorization"] = basic })
  end
end
request = function()
  if fixed ~= nil then return fixed end
  n = n + 1
  local i = n <= count and n or count  -- ran out: a replay, counted as non-2xx
  return blob:sub((i - 1) * width + 1, i * width)
end
"""


def log(msg: str):
    print(f"[digest] {msg}", file=sys.stderr, flush=True)


def H(algorithm: str, text: str) -> str:
    return hashlib.new({"MD5": "md5", "SHA-256": "sha256"}[algorithm], text.encode()).hexdigest()


def challenges(port: int, target: str, host: str) -> list[dict]:
    """One 407's Digest challenges, as dicts."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n")[0].decode("latin-1")
    assert head.split()[1] == "407", head
    found = []
    for line in head.split("\r\n"):
        if not line.lower().startswith("proxy-authenticate:"):
            continue
        for part in re.split(r",\s*(?=Digest\s)|^\s*(?=Digest\s)", line.split(":", 1)[1].strip()):
            if not part.startswith("Digest"):
                continue
            found.append({k.lower(): v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|[^\s,]+)', part)})
    return found


def answers(port: int, target: str, host: str, realm: str, algorithm: str, count: int, path: Path):
    """`count` Digest answers to fresh nonces, never one twice."""
    nonces = []
    for _ in range(NONCES):
        ch = [c for c in challenges(port, target, host) if c.get("algorithm", "MD5") == algorithm][0]
        nonces.append((ch["nonce"], ch.get("opaque")))
    ha1 = H(algorithm, f"{USER}:{realm}:{PASSWORD}")
    ha2 = H(algorithm, f"GET:{target}")
    lines = []
    counts = [0] * NONCES
    for i in range(count):
        # Request i uses nonce i mod 50 with the next count of that nonce, as 50 clients each
        # with its own nonce would: a connection that stalls for a few hundred requests is
        # then only a few counts behind on its nonce, well inside the 64-wide replay window
        # (with one nonce shared by all 50 connections such a stall fell out of it).
        k = i % NONCES
        nonce, opaque = nonces[k]
        counts[k] += 1
        nc = f"{counts[k]:08x}"
        cnonce = f"c{k:02d}"
        response = H(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        value = (f'Digest username="{USER}", realm="{realm}", nonce="{nonce}", uri="{target}", '
                 f'algorithm={algorithm}, qop=auth, nc={nc}, cnonce="{cnonce}", response="{response}"')
        if opaque:
            value += f', opaque="{opaque}"'
        lines.append(value)
    # Whole requests of equal length (trailing spaces in the field are optional whitespace,
    # trimmed by both proxies). Returns the record width.
    requests = [f"GET {target} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: {v}" for v in lines]
    width = max(map(len, requests))
    path.write_text("".join(r.ljust(width) + "\r\n\r\n" for r in requests))
    return width + 4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / ".build/release/portcullis"))
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="2 s, 1 round (a smoke run)")
    ap.add_argument("--only", help="comma-separated target names (default: all five; ratios need all)")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.rounds = 2, 1
    if not Path(args.bin).exists():
        sys.exit(f"{args.bin} missing: swift build -c release")
    install = "nginx-light squid wrk"
    nginx, squid, _ = find("nginx", install), find("squid", install), find("wrk", install)
    helpers = Path("/usr/lib/squid")
    work = Path(tempfile.mkdtemp(prefix="portcullis-digest-"))
    os.chmod(work, 0o755)
    try:
        # -- origin
        origin_port = start_origin(nginx, work)
        target = f"http://127.0.0.1:{origin_port}/1k"
        host = f"127.0.0.1:{origin_port}"

        # -- Portcullis: one process, Basic and Digest, the user enrolled for Digest
        db = work / "users.db"
        subprocess.run([args.bin, "users", "add", USER, "--store", f"sqlite:{db}", "--password-stdin", "--digest"],
                       input=PASSWORD + "\n", text=True, check=True, capture_output=True)
        pc_port = free_port()
        portcullis = spawn([args.bin, "serve", "--store", f"sqlite:{db}", "--auth", "basic,digest", "--listen",
               f"127.0.0.1:{pc_port}", "--allow-private-destinations", "--digest-nonce-lifetime", "3600",
               "--log-level", "warning"])
        wait_port(pc_port, 30)

        # -- Squid: Basic and Digest in one process
        sq_port = free_port()
        sq = work / "squid"
        sq.mkdir()
        squid_realm = "portcullis-bench"
        htpasswd = sq / "users.htpasswd"
        subprocess.run(["htpasswd", "-cbB", htpasswd, USER, PASSWORD], check=True, capture_output=True)
        digest_file = sq / "users.digest"
        digest_file.write_text(f"{USER}:{squid_realm}:{H('MD5', f'{USER}:{squid_realm}:{PASSWORD}')}\n")
        root = os.getuid() == 0
        (sq / "squid.conf").write_text("\n".join([
            f"http_port 127.0.0.1:{sq_port}", f"pid_filename {sq}/squid.pid", f"cache_log {sq}/cache.log",
            f"coredump_dir {sq}", "access_log none", "cache_store_log none", "netdb_filename none",
            "cache deny all", "shutdown_lifetime 0 seconds", "pinger_enable off",
            *(["cache_effective_user proxy"] if root else []),
            f"auth_param digest program {helpers}/digest_file_auth -c {digest_file}",
            "auth_param digest children 5", f"auth_param digest realm {squid_realm}",
            "auth_param digest nonce_max_count 100000000", "auth_param digest nonce_max_duration 60 minutes",
            "auth_param digest nonce_strictness off",
            # Squid insists on nc arriving in order per nonce; fifty connections sharing a nonce
            # deliver them slightly out of order, so its nc check is off. Squid then does less
            # per request than Portcullis, which always keeps a replay window.
            "auth_param digest check_nonce_count off",
            f"auth_param basic program {helpers}/basic_ncsa_auth {htpasswd}",
            "auth_param basic children 5", f"auth_param basic realm {squid_realm}",
            "auth_param basic credentialsttl 2 hours",
            "acl auth proxy_auth REQUIRED", "http_access allow auth", "http_access deny all", "",
        ]))
        for p in sq.iterdir():
            os.chmod(p, 0o644)
        os.chmod(sq, 0o755)
        if root:
            shutil.chown(sq, "proxy")
        spawn([squid, "-N", "-f", sq / "squid.conf"])
        wait_port(sq_port, 30)

        basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        script = work / "bench.lua"
        script.write_text(LUA)
        targets = [
            ("portcullis-basic", pc_port, None, None),
            ("portcullis-digest-md5", pc_port, "MD5", "Portcullis"),
            ("portcullis-digest-sha256", pc_port, "SHA-256", "Portcullis"),
            ("squid-basic", sq_port, None, None),
            ("squid-digest-md5", sq_port, "MD5", squid_realm),
        ]
        if args.only:
            targets = [t for t in targets if t[0] in args.only.split(",")]
        results: dict[str, list] = {name: [] for name, *_ in targets}
        log(f"portcullis pid {CHILDREN[1].pid}")
        # The fastest rate seen on each proxy: Basic's (the warm-up measures it) bounds its Digest.
        rate: dict[int, float] = {}
        # Warm-up (helpers started, pools filled), not recorded.
        for name, port, algorithm, realm in targets:
            if algorithm is None:
                res = wrk(port, 1, args.connections, script,
                          {"BENCH_BASIC": basic, "BENCH_TARGET": target, "BENCH_HOST": host})
                rate[port] = max(rate.get(port, 0), res["rps"])
        for r in range(args.rounds):
            for name, port, algorithm, realm in targets:
                env = {"BENCH_TARGET": target, "BENCH_HOST": host}
                if algorithm is None:
                    env["BENCH_BASIC"] = basic
                else:
                    path = work / f"{name}.answers"
                    # Twice what the measured rate needs: answers that run out turn the rest of
                    # the run into replays, refused and counted as non-2xx. 40,000/s until a
                    # rate was measured (--only without the Basic target).
                    count = max(50_000, int(2 * args.duration * rate.get(port, 40_000)))
                    env["BENCH_WIDTH"] = str(answers(port, target, host, realm, algorithm, count, path))
                    env["BENCH_ANSWERS"] = str(path)
                before = sum(cpu_seconds(portcullis.pid))
                res = wrk(port, args.duration, args.connections, script, env)
                rate[port] = max(rate.get(port, 0), res["rps"])
                if algorithm is not None and res["requests"] >= count:
                    log(f"round {r + 1} {name}: all {count} prebuilt answers used; the excess were replays")
                if name.startswith("portcullis"):
                    # CPU the proxy spent per request: steadier on a shared VM than req/s, whose
                    # level moves with whatever else the host runs.
                    res["cpu_us"] = (sum(cpu_seconds(portcullis.pid)) - before) * 1e6 / max(1, res["requests"])
                log(f"round {r + 1} {name}: {res['rps']:.0f} req/s, p99 {res['p99_ms']:.2f} ms, non-2xx {res['non2xx']}"
                    + (f", proxy CPU {res['cpu_us']:.1f} µs/request" if "cpu_us" in res else ""))
                results[name].append(res)

        if args.only:
            return

        def median(name, key):
            return statistics.median(x[key] for x in results[name])

        summary = {name: {k: median(name, k) for k in ("rps", "p50_ms", "p99_ms")} |
                   ({"cpu_us": median(name, "cpu_us")} if name.startswith("portcullis") else {}) |
                   {"non2xx": sum(x["non2xx"] for x in results[name]), "rounds": results[name]}
                   for name in results}
        ratios = {
            "portcullis digest MD5 / basic": summary["portcullis-digest-md5"]["rps"] / summary["portcullis-basic"]["rps"],
            "portcullis digest SHA-256 / basic": summary["portcullis-digest-sha256"]["rps"] / summary["portcullis-basic"]["rps"],
            "squid digest / basic": summary["squid-digest-md5"]["rps"] / summary["squid-basic"]["rps"],
            "portcullis digest MD5 / squid digest": summary["portcullis-digest-md5"]["rps"] / summary["squid-digest-md5"]["rps"],
            "portcullis basic / squid basic": summary["portcullis-basic"]["rps"] / summary["squid-basic"]["rps"],
            "portcullis CPU per request, basic / digest MD5": summary["portcullis-basic"]["cpu_us"]
            / summary["portcullis-digest-md5"]["cpu_us"],
            "portcullis CPU per request, basic / digest SHA-256": summary["portcullis-basic"]["cpu_us"]
            / summary["portcullis-digest-sha256"]["cpu_us"],
        }
        meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "duration_s": args.duration,
                "rounds": args.rounds, "connections": args.connections, "cores": os.cpu_count()}
        print(write_report(
            OUT, "digest",
            f"Digest vs Basic, keep-alive GET 1 KiB, wrk -t1 -c{args.connections}, "
            f"{args.rounds}×{args.duration}s medians", meta, summary, ratios,
            ["req/s", "p50 ms", "p99 ms", "non-2xx", "proxy CPU µs/request"],
            lambda name, s: [f"{s['rps']:.0f}", f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}", str(s["non2xx"]),
                             f"{s['cpu_us']:.1f}" if "cpu_us" in s else "—"]), end="")
    finally:
        stop_all(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
