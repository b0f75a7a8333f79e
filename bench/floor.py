#!/usr/bin/env python3
"""How close can a SwiftNIO proxy get to HAProxy here? (issues 3 and 9)

Side by side in one run, `wrk -t1 -c50`, keep-alive GET of a 1 KiB file from a local nginx:

- direct to nginx;
- Portcullis, Basic auth (the product);
- HAProxy `mode http` as a reverse proxy (issue 9's reference relay, the config of run.sh);
- `nio-floor` (bench/nio-floor): a plain TCP relay on SwiftNIO with Portcullis' channel
  settings, one upstream connection per client, no HTTP parsing and no authentication. It does
  strictly less per request than any HTTP proxy built on SwiftNIO, so its figure is the ceiling
  for one: what NIO's channel pipeline and read/write path cost on this machine.

For each relay it records req/s and the process' CPU per request (user and system, from
/proc), which is steadier than req/s on a shared VM. Rounds alternate the targets. Writes
bench/out/floor.{md,json}. Loopback only, bounded (about 2 minutes with the defaults), every
process it starts is stopped on exit. Builds bench/nio-floor (release) on first use.

Usage: python3 bench/floor.py [--duration S] [--rounds N] [--quick]
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import cpu_seconds, find, free_port, spawn, start_origin, stop_all, wait_port, wrk, write_report

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
FLOOR_DIR = ROOT / "bench" / "nio-floor"
USER, PASSWORD = "bench", "benchpass"


def log(msg: str):
    print(f"[floor] {msg}", file=sys.stderr, flush=True)


def build_floor() -> Path:
    binary = FLOOR_DIR / ".build" / "release" / "nio-floor"
    if not binary.exists():
        log("building bench/nio-floor (release, once) ...")
        subprocess.run(["swift", "build", "-c", "release", "--package-path", str(FLOOR_DIR)], check=True,
                       stdout=subprocess.DEVNULL, timeout=1800)
    return binary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / ".build/release/portcullis"))
    ap.add_argument("--duration", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="2 s, 1 round (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.rounds = 2, 1
    if not Path(args.bin).exists():
        sys.exit(f"{args.bin} missing: swift build -c release --product portcullis")
    install = "nginx-light haproxy wrk apache2-utils"
    nginx, haproxy, _ = find("nginx", install), find("haproxy", install), find("wrk", install)
    floor = build_floor()
    work = Path(tempfile.mkdtemp(prefix="portcullis-floor-"))
    os.chmod(work, 0o755)
    try:
        origin_port = start_origin(nginx, work)

        users = work / "users"
        users.write_text(subprocess.run(["htpasswd", "-nbB", USER, PASSWORD], capture_output=True, text=True,
                                        check=True).stdout)
        pc_port = free_port()
        portcullis = spawn([args.bin, "serve", "--htpasswd", users, "--listen", f"127.0.0.1:{pc_port}",
                            "--allow-private-destinations", "--log-level", "warning"])
        wait_port(pc_port, 30)

        ha_port = free_port()
        template = (ROOT / "bench" / "haproxy.cfg.in").read_text()  # run.sh's config, the same file
        (work / "haproxy.cfg").write_text(template.replace("@PORT@", str(ha_port))
                                          .replace("@ORIGIN_PORT@", str(origin_port)).replace("@NBTHREAD@", ""))
        ha = spawn([haproxy, "-db", "-f", work / "haproxy.cfg"])
        wait_port(ha_port, 30)

        fl_port = free_port()
        fl = spawn([floor, fl_port, origin_port])
        wait_port(fl_port, 30)

        basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        proxied = work / "proxied.lua"
        proxied.write_text(f'wrk.path = "http://127.0.0.1:{origin_port}/1k"\n'
                           f'wrk.headers["Host"] = "127.0.0.1:{origin_port}"\n'
                           f'wrk.headers["Proxy-Authorization"] = "{basic}"\n')
        plain = work / "plain.lua"
        plain.write_text(f'wrk.path = "/1k"\nwrk.headers["Host"] = "127.0.0.1:{origin_port}"\n')
        targets = [
            ("direct", origin_port, plain, None),
            ("portcullis", pc_port, proxied, portcullis.pid),
            ("haproxy", ha_port, plain, ha.pid),
            ("nio-floor", fl_port, plain, fl.pid),
        ]
        for name, port, script, _ in targets:  # warm-up: pools filled, caches hot
            wrk(port, 1, args.connections, script)
        results: dict[str, list] = {name: [] for name, *_ in targets}
        for r in range(args.rounds):
            order = targets if r % 2 == 0 else list(reversed(targets))
            for name, port, script, pid in order:
                before = cpu_seconds(pid) if pid else None
                res = wrk(port, args.duration, args.connections, script)
                if pid:
                    after = cpu_seconds(pid)
                    res["user_us"] = (after[0] - before[0]) * 1e6 / max(1, res["requests"])
                    res["sys_us"] = (after[1] - before[1]) * 1e6 / max(1, res["requests"])
                log(f"round {r + 1} {name}: {res['rps']:.0f} req/s, p99 {res['p99_ms']:.2f} ms, "
                    f"non-2xx {res['non2xx']}"
                    + (f", CPU user {res['user_us']:.1f} + sys {res['sys_us']:.1f} µs/request" if pid else ""))
                results[name].append(res)

        def med(name, key):
            return statistics.median(x[key] for x in results[name])

        summary = {}
        for name, *_rest in targets:
            s = {k: med(name, k) for k in ("rps", "p99_ms")}
            if "user_us" in results[name][0]:
                s |= {"user_us": med(name, "user_us"), "sys_us": med(name, "sys_us")}
            summary[name] = s | {"non2xx": sum(x["non2xx"] for x in results[name]), "rounds": results[name]}
        ratios = {
            "portcullis / direct": summary["portcullis"]["rps"] / summary["direct"]["rps"],
            "portcullis / haproxy": summary["portcullis"]["rps"] / summary["haproxy"]["rps"],
            "nio-floor / haproxy": summary["nio-floor"]["rps"] / summary["haproxy"]["rps"],
            "portcullis / nio-floor": summary["portcullis"]["rps"] / summary["nio-floor"]["rps"],
        }
        meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "duration_s": args.duration,
                "rounds": args.rounds, "connections": args.connections, "cores": os.cpu_count()}
        print(write_report(
            OUT, "floor",
            f"The SwiftNIO floor: keep-alive GET 1 KiB, wrk -t1 -c{args.connections}, "
            f"{args.rounds}×{args.duration}s medians", meta, summary, ratios,
            ["req/s", "p99 ms", "non-2xx", "CPU user µs/req", "CPU sys µs/req"],
            lambda name, s: [f"{s['rps']:.0f}", f"{s['p99_ms']:.2f}", str(s["non2xx"]),
                             f"{s['user_us']:.1f}" if "user_us" in s else "—",
                             f"{s['sys_us']:.1f}" if "sys_us" in s else "—"]), end="")
    finally:
        stop_all(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
