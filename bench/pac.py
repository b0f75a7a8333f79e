"""PAC files (issue 22's figures), in one run, everything on loopback:

1. serving: `GET /proxy.pac` straight at Portcullis' listener (`serve --pac`) against nginx
   serving the same file as a static file (`wrk -t1 -c50`, keep-alive); and proxied keep-alive
   GETs of nginx's 1 KiB file through Portcullis with and without `--pac` (the document check
   must cost the proxied path nothing);
2. evaluating: `portcullis pac test` wall time for 1 and for 1,000 URLs through a corporate PAC
   (child process start, load, per-URL cost);
3. bounds: wall time until `pac test` fails on each hostile PAC of Tests/integration/pac/hostile
   (the issue's bound: 2 s).

wrk targets alternate, order reversed every round; ratios are paired within a round.

    python3 bench/pac.py [--rounds 4] [--duration 5]
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
PAC_DIR = ROOT / "Tests" / "integration" / "pac"
CORPORATE = PAC_DIR / "corporate" / "acme_bypass.pac"
USER, PASSWORD = "bench", "benchpass"


def table_arguments(tsv: Path) -> list[str]:
    """--resolve/--my-ip of a regression table's directives, and --no-dns."""
    args = ["--no-dns"]
    for line in tsv.read_text().splitlines():
        if line.startswith("@resolve "):
            args += ["--resolve", line.split(" ", 1)[1].strip()]
        elif line.startswith("@my-ip "):
            args += ["--my-ip", line.split(" ", 1)[1].strip()]
    return args


def timed(cmd: list) -> tuple[float, int]:
    started = time.monotonic()
    result = subprocess.run([str(c) for c in cmd], capture_output=True, timeout=120)
    return time.monotonic() - started, result.returncode


def main():
    args, work = b.release_run(__doc__.split("\n\n")[0], ROOT, "portcullis-pac-")
    started = time.monotonic()
    med = statistics.median
    try:
        origin = b.start_origin(b.find("nginx", "nginx-light"), work)
        shutil.copy(CORPORATE, work / "www" / "proxy.pac")
        os.chmod(work / "www" / "proxy.pac", 0o644)
        db = work / "users.db"
        b.sqlite_user(args.bin, db, USER, PASSWORD)
        proxies = {}

        def start(name: str, extra: list):
            port = b.free_port()
            process = b.spawn([args.bin, "serve", "--listen", f"127.0.0.1:{port}", "--store", f"sqlite:{db}", *extra,
                               "--allow-private-destinations", "--log-level", "error", "--data-dir", work / name])
            b.wait_port(port)
            proxies[name] = (port, process)

        start("proxy", [])
        start("proxy-pac", ["--pac", CORPORATE])
        lua = ROOT / "bench" / "proxy.lua"
        proxied = {"BENCH_ORIGIN_URL": f"http://127.0.0.1:{origin}/1k", "BENCH_ORIGIN_HOST": f"127.0.0.1:{origin}",
                   "BENCH_PROXY_AUTH": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
        pac_port = proxies["proxy-pac"][0]
        targets = {
            # (port, wrk environment, pid whose CPU is counted)
            "pac-portcullis": (pac_port, {"BENCH_ORIGIN_URL": "/proxy.pac", "BENCH_ORIGIN_HOST": f"127.0.0.1:{pac_port}"},
                               proxies["proxy-pac"][1].pid),
            "pac-nginx": (origin, {"BENCH_ORIGIN_URL": "/proxy.pac", "BENCH_ORIGIN_HOST": f"127.0.0.1:{origin}"}, None),
            "proxied": (proxies["proxy"][0], proxied, proxies["proxy"][1].pid),
            "proxied-pac": (pac_port, proxied, proxies["proxy-pac"][1].pid),
        }

        def run(name: str, duration: int) -> dict:
            port, env, pid = targets[name]
            before = sum(b.cpu_seconds(pid)) if pid else 0
            x = b.wrk(port, duration, 50, lua, env)
            if pid:
                x["proxy_cpu_us"] = (sum(b.cpu_seconds(pid)) - before) / max(x["requests"], 1) * 1e6
            assert x["non2xx"] == 0, (name, x)
            return x

        for name in targets:
            run(name, 2)
        results = b.alternate(args.rounds, (("pac-portcullis", "pac-nginx"), ("proxied", "proxied-pac")), run,
                              args.duration, "pac")
        ratios = {
            "GET /proxy.pac, Portcullis / nginx static file": b.paired(results, "pac-portcullis", "pac-nginx"),
            "proxied GET with --pac / without (target ≈ 1)": b.paired(results, "proxied-pac", "proxied"),
        }

        # Evaluation: 1 and 1,000 URLs through the corporate PAC.
        table = table_arguments(CORPORATE.with_suffix(".tsv"))
        urls = [f"http://host{i}.example.com/path" for i in range(1000)]
        one, thousand = [], []
        for _ in range(5):
            one.append(timed([args.bin, "pac", "test", "--pac", CORPORATE, *table, urls[0]])[0])
            thousand.append(timed([args.bin, "pac", "test", "--pac", CORPORATE, *table, *urls])[0])
        per_url_us = (med(thousand) - med(one)) / 999 * 1e6

        # Bounds: each hostile PAC, three times.
        hostile = {}
        for pac in sorted((PAC_DIR / "hostile").glob("*.pac")):
            times = []
            for _ in range(3):
                seconds, code = timed([args.bin, "pac", "test", "--pac", pac, "http://www.example.com/"])
                assert code == 1, (pac.name, code)
                times.append(seconds)
            hostile[pac.stem] = (med(times), max(times))
            print(f"[pac] hostile {pac.stem}: median {med(times):.3f} s, max {max(times):.3f} s", flush=True)

        meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": os.cpu_count(),
                "rounds": args.rounds, "duration": args.duration, "seconds": round(time.monotonic() - started)}
        labels = {
            "pac-portcullis": "GET /proxy.pac from Portcullis (serve --pac)",
            "pac-nginx": "GET /proxy.pac from nginx (static file)",
            "proxied": "proxied 1 KiB GET, Portcullis without --pac",
            "proxied-pac": "proxied 1 KiB GET, Portcullis with --pac",
        }
        lines = [b.paired_report("PAC files", meta, labels, results, ratios, [("proxy CPU", "proxy_cpu_us")]).rstrip("\n")]
        lines += ["", "| `pac test` through acme_bypass.pac (5 runs) | median |", "| --- | ---: |",
                  f"| 1 URL (two process starts, load, one evaluation) | {med(one) * 1000:.0f} ms |",
                  f"| 1,000 URLs | {med(thousand) * 1000:.0f} ms |",
                  f"| per further URL | {per_url_us:.0f} µs |",
                  "", "| hostile PAC: `pac test` until exit 1 (3 runs) | median | max |", "| --- | ---: | ---: |"]
        lines += [f"| {name} | {m:.3f} s | {x:.3f} s |" for name, (m, x) in hostile.items()]
        text = "\n".join(lines) + "\n"
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "pac.md").write_text(text)
        (OUT / "pac.json").write_text(json.dumps({"meta": meta, "results": results, "ratios": ratios,
                                                  "evaluation": {"one": one, "thousand": thousand,
                                                                 "per_url_us": per_url_us},
                                                  "hostile": hostile}, indent=2))
        print(text)
    finally:
        b.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
