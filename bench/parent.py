"""Portcullis as the bridge in front of an authenticating Squid (`--parent`) against clients
talking to that Squid directly with Basic, in one run, everything on loopback (issue 20's
figures):

1. keep-alive requests: `wrk -t1 -c50` + bench/proxy.lua for nginx's 1 KiB file — through the
   bridge (`--auth none`, the bridge answers Squid's Basic) against straight to Squid with
   Basic on every request;
2. bulk: one CONNECT tunnel's download throughput (Python, plain TCP) reading N MiB that a
   local source writes as fast as it can — through bridge and Squid against through Squid alone.

Targets alternate, order reversed every round; ratios are paired within a round. The bridge's
and Squid's CPU per request are reported (the chain runs both on the same two cores).

    python3 bench/parent.py [--rounds 5] [--duration 5] [--bulk-mib 256]
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
USER, PASSWORD = "bench", "benchpass"
AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def bulk(port: int, target: str, total: int, auth: str | None) -> float:
    """MB/s reading `total` bytes through an HTTP/1.1 CONNECT tunnel (plain TCP to the proxy)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        return b.connect_download(s, target, total, auth)


def start_squid(squid: str, work: Path) -> tuple[int, subprocess.Popen]:
    """Squid 5 with Basic (basic_ncsa_auth, credentials cached 2 h), no cache, any CONNECT port."""
    port = b.free_port()
    d = work / "squid"
    d.mkdir()
    users = d / "users.htpasswd"
    subprocess.run(["htpasswd", "-cbB", "-C", "5", users, USER, PASSWORD], check=True, capture_output=True)
    root = os.getuid() == 0
    (d / "squid.conf").write_text("\n".join([
        f"http_port 127.0.0.1:{port}", f"pid_filename {d}/squid.pid", f"cache_log {d}/cache.log",
        f"coredump_dir {d}", "access_log none", "cache_store_log none", "netdb_filename none",
        "cache deny all", "shutdown_lifetime 0 seconds", "pinger_enable off",
        *(["cache_effective_user proxy"] if root else []),
        f"auth_param basic program /usr/lib/squid/basic_ncsa_auth {users}",
        "auth_param basic children 5", "auth_param basic realm bench", "auth_param basic credentialsttl 2 hours",
        "acl auth proxy_auth REQUIRED", "http_access allow auth", "http_access deny all", "",
    ]))
    for p in d.iterdir():
        os.chmod(p, 0o644)
    os.chmod(d, 0o755)
    if root:
        shutil.chown(d, "proxy")
    process = b.spawn([squid, "-N", "-f", d / "squid.conf"])
    b.wait_port(port, 30)
    return port, process


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=str(ROOT / ".build/release/portcullis"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--bulk-mib", type=int, default=256)
    args = ap.parse_args()
    if not Path(args.bin).exists():
        sys.exit(f"{args.bin} missing: swift build -c release --product portcullis")
    work = Path(tempfile.mkdtemp(prefix="portcullis-parent-"))
    os.chmod(work, 0o755)
    stop = threading.Event()
    started = time.monotonic()
    try:
        origin = b.start_origin(b.find("nginx", "nginx-light"), work)
        src = b.start_byte_source(stop)
        squid_port, squid = start_squid(b.find("squid", "squid"), work)
        bridge_port = b.free_port()
        bridge = b.spawn([args.bin, "serve", "--auth", "none", "--listen", f"127.0.0.1:{bridge_port}",
                          "--parent", f"http://{USER}:{PASSWORD}@127.0.0.1:{squid_port}",
                          "--connect-ports", str(src), "--allow-private-destinations", "--log-level", "error",
                          "--data-dir", work / "data"])
        b.wait_port(bridge_port)
        lua = ROOT / "bench" / "proxy.lua"
        base_env = {"BENCH_ORIGIN_URL": f"http://127.0.0.1:{origin}/1k", "BENCH_ORIGIN_HOST": f"127.0.0.1:{origin}"}
        target = f"127.0.0.1:{src}"

        def cpu(process) -> float:
            return sum(b.cpu_seconds(process.pid))

        def requests(kind: str, duration: int) -> dict:
            squid_before, bridge_before = cpu(squid), cpu(bridge)
            if kind == "bridge":
                x = b.wrk(bridge_port, duration, args.connections, lua, base_env)
            else:
                x = b.wrk(squid_port, duration, args.connections, lua, {**base_env, "BENCH_PROXY_AUTH": AUTH})
            n = max(x["requests"], 1)
            x["squid_cpu_us"] = (cpu(squid) - squid_before) / n * 1e6
            x["bridge_cpu_us"] = (cpu(bridge) - bridge_before) / n * 1e6
            assert x["non2xx"] == 0, (kind, x)
            return x

        for kind in ("bridge", "direct"):
            requests(kind, 2)
        bulk(bridge_port, target, 32 << 20, None)
        bulk(squid_port, target, 32 << 20, AUTH)
        total = args.bulk_mib << 20
        results = {"bridge requests": [], "direct requests": [], "bridge bulk": [], "direct bulk": []}
        for r in range(args.rounds):
            order = ["bridge", "direct"] if r % 2 == 0 else ["direct", "bridge"]
            for kind in order:
                x = requests(kind, args.duration)
                results[f"{kind} requests"].append(x)
                print(f"[parent] round {r + 1} {kind}: {x['rps']:.0f} req/s, p99 {x['p99_ms']:.2f} ms, "
                      f"squid {x['squid_cpu_us']:.1f} µs/req, bridge {x['bridge_cpu_us']:.1f} µs/req", flush=True)
            for kind in order:
                squid_before, bridge_before = cpu(squid), cpu(bridge)
                rate = bulk(bridge_port if kind == "bridge" else squid_port, target, total,
                            None if kind == "bridge" else AUTH)
                results[f"{kind} bulk"].append({
                    "mbps": rate,
                    "squid_cpu_s_per_gb": (cpu(squid) - squid_before) / (total / 1e9),
                    "bridge_cpu_s_per_gb": (cpu(bridge) - bridge_before) / (total / 1e9),
                })
                print(f"[parent] round {r + 1} {kind} CONNECT bulk: {rate:.0f} MB/s", flush=True)
        med = statistics.median
        ratios = {
            "keep-alive req/s, client → Portcullis → Squid / client → Squid (target >= 0.9)":
                [x["rps"] / y["rps"] for x, y in zip(results["bridge requests"], results["direct requests"])],
            "CONNECT bulk MB/s, through the chain / through Squid alone (target >= 0.9)":
                [x["mbps"] / y["mbps"] for x, y in zip(results["bridge bulk"], results["direct bulk"])],
        }
        meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": os.cpu_count(),
                "rounds": args.rounds, "duration": args.duration, "bulk_mib": args.bulk_mib,
                "squid": subprocess.run([b.find("squid", "squid"), "-v"], capture_output=True,
                                        text=True).stdout.split("\n")[0],
                "seconds": round(time.monotonic() - started)}
        lines = [f"# Portcullis as a bridge to an authenticating Squid ({meta['date']})", "",
                 "| target | figure (median) | p99 | Squid CPU | Portcullis CPU |",
                 "| --- | ---: | ---: | ---: | ---: |"]
        for kind, label in (("bridge", "client → Portcullis (`--auth none --parent`) → Squid Basic → nginx"),
                            ("direct", "client → Squid Basic → nginx")):
            xs = results[f"{kind} requests"]
            lines.append(f"| {label} | {med(x['rps'] for x in xs):.0f} req/s | {med(x['p99_ms'] for x in xs):.2f} ms "
                         f"| {med(x['squid_cpu_us'] for x in xs):.1f} µs/req | {med(x['bridge_cpu_us'] for x in xs):.1f} µs/req |")
        for kind, label in (("bridge", "CONNECT bulk through Portcullis and Squid"), ("direct", "CONNECT bulk through Squid")):
            xs = results[f"{kind} bulk"]
            lines.append(f"| {label} | {med(x['mbps'] for x in xs):.0f} MB/s | — | {med(x['squid_cpu_s_per_gb'] for x in xs):.2f} s/GB "
                         f"| {med(x['bridge_cpu_s_per_gb'] for x in xs):.2f} s/GB |")
        lines += ["", "| ratio (paired per round) | median (range) | per round |", "| --- | --- | --- |"]
        lines += [f"| {k} | {med(v):.3f} ({min(v):.3f}–{max(v):.3f}) | {', '.join(f'{x:.3f}' for x in v)} |"
                  for k, v in ratios.items()]
        text = "\n".join(lines) + "\n"
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "parent.md").write_text(text)
        (OUT / "parent.json").write_text(json.dumps({"meta": meta, "results": results, "ratios": ratios}, indent=2))
        print(text)
    finally:
        stop.set()
        b.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
