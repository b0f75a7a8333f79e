"""The TLS listener against HAProxy terminating TLS (`mode http`, no auth) on the same
certificate, both in front of the same nginx, everything on loopback. Issue 21's figures:

1. keep-alive: `wrk -t1 -c50` GETs of 1 KiB over TLS connections that stay open (Portcullis
   with Basic credentials on every request, cache warm; HAProxy with none);
2. new TLS connections: the same with `Connection: close`, so every request is a TCP connect,
   a full TLS handshake (wrk resumes no session), one GET and a close.

Targets alternate, order reversed every round; ratios are paired within a round. Both servers
get the machine's cores (Portcullis: its default event loops; HAProxy: its default threads).

    python3 bench/tls.py [--rounds 6] [--duration 5] [--bin .build/release/portcullis]
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def certificate(work: Path) -> tuple[Path, Path, Path]:
    """An EC P-256 certificate for 127.0.0.1 (self-signed): PEM cert, key, and both in one file
    for HAProxy."""
    cert, key = b.self_signed_certificate(work)
    both = work / "haproxy.pem"
    both.write_text(cert.read_text() + key.read_text())
    return cert, key, both


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=str(ROOT / ".build/release/portcullis"))
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    args = ap.parse_args()
    if not Path(args.bin).exists():
        sys.exit(f"{args.bin} missing: swift build -c release --product portcullis")
    work = Path(tempfile.mkdtemp(prefix="portcullis-tls-"))
    os.chmod(work, 0o755)
    started = time.monotonic()
    try:
        origin = b.start_origin(b.find("nginx", "nginx-light"), work)
        cert, key, both = certificate(work)
        users = work / "users"
        subprocess.run(["htpasswd", "-bcB", "-C", "5", users, "bench", "benchpass"], check=True, capture_output=True)
        pport = b.free_port()
        proxy = b.spawn([args.bin, "serve", "--listen-tls", f"127.0.0.1:{pport}", "--tls-cert", cert, "--tls-key", key,
                         "--htpasswd", users, "--allow-private-destinations", "--log-level", "error",
                         "--data-dir", work / "data"])
        b.wait_port(pport)
        hport = b.free_port()
        cfg = (ROOT / "bench" / "haproxy.cfg.in").read_text().replace("@NBTHREAD@", "")
        cfg = cfg.replace("bind 127.0.0.1:@PORT@", f"bind 127.0.0.1:{hport} ssl crt {both} alpn http/1.1")
        cfg = cfg.replace("@ORIGIN_PORT@", str(origin))
        (work / "haproxy.cfg").write_text(cfg)
        haproxy = b.spawn([b.find("haproxy", "haproxy"), "-db", "-f", work / "haproxy.cfg"])
        b.wait_port(hport)
        url = f"http://127.0.0.1:{origin}/1k"
        env = {"BENCH_ORIGIN_URL": url, "BENCH_ORIGIN_HOST": f"127.0.0.1:{origin}",
               "BENCH_PROXY_AUTH": "Basic " + base64.b64encode(b"bench:benchpass").decode()}
        lua = ROOT / "bench" / "proxy.lua"
        plain = work / "plain.lua"
        plain.write_text('wrk.path = "/1k"\n')
        # A check that both answer, through TLS, with what they should.
        check = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--proxy-insecure", "--proxy",
                                f"https://127.0.0.1:{pport}", "--proxy-user", "bench:benchpass", url],
                               capture_output=True, text=True)
        assert check.stdout == "200", check
        check = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-k",
                                f"https://127.0.0.1:{hport}/1k"], capture_output=True, text=True)
        assert check.stdout == "200", check

        def run(target: str, close: bool, duration: int) -> dict:
            pid = proxy.pid if target == "portcullis" else haproxy.pid
            before = sum(b.cpu_seconds(pid))
            t0 = time.monotonic()
            headers = ["Connection: close"] if close else []
            if target == "portcullis":
                x = b.wrk(pport, duration, args.connections, lua, env, scheme="https", headers=headers)
            else:
                x = b.wrk(hport, duration, args.connections, plain, scheme="https", headers=headers)
            elapsed = time.monotonic() - t0
            x["server_cpu_us"] = (sum(b.cpu_seconds(pid)) - before) / max(x["requests"], 1) * 1e6
            x["server_cores"] = (sum(b.cpu_seconds(pid)) - before) / elapsed
            assert x["non2xx"] == 0, (target, x)
            return x

        for close in (False, True):  # warm-up: the credential cache, page cache, CPU frequency
            for target in ("portcullis", "haproxy"):
                run(target, close, 2)
        results = {(t, c): [] for t in ("portcullis", "haproxy") for c in (False, True)}
        for r in range(args.rounds):
            order = ["portcullis", "haproxy"] if r % 2 == 0 else ["haproxy", "portcullis"]
            for close in (False, True):
                for target in order:
                    x = run(target, close, args.duration)
                    results[(target, close)].append(x)
                    kind = "new-conn" if close else "keep-alive"
                    print(f"[tls] round {r + 1} {kind} {target}: {x['rps']:.0f}/s p50 {x['p50_ms']:.2f} ms "
                          f"p99 {x['p99_ms']:.2f} ms, server {x['server_cpu_us']:.1f} µs/req "
                          f"({x['server_cores']:.2f} cores)", flush=True)
        summary, ratios = {}, {}
        for (target, close), xs in results.items():
            name = f"{target} {'new TLS connection per request' if close else 'keep-alive'}"
            summary[name] = {k: statistics.median(x[k] for x in xs) for k in ("rps", "p50_ms", "p99_ms", "server_cpu_us", "server_cores")}
        for close, label, target in ((False, "keep-alive req/s portcullis/haproxy (target >= 0.9)", 0.9),
                                     (True, "new TLS connections/s portcullis/haproxy (target >= 0.8)", 0.8)):
            per = [p["rps"] / h["rps"] for p, h in zip(results[("portcullis", close)], results[("haproxy", close)])]
            ratios[label] = {"median": statistics.median(per), "min": min(per), "max": max(per),
                             "rounds": [round(v, 3) for v in per]}
            cpu = [h["server_cpu_us"] / p["server_cpu_us"] for p, h in zip(results[("portcullis", close)], results[("haproxy", close)])]
            ratios[f"server CPU per request haproxy/portcullis, {'new connections' if close else 'keep-alive'}"] = {
                "median": statistics.median(cpu), "min": min(cpu), "max": max(cpu), "rounds": [round(v, 3) for v in cpu]}
        meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": os.cpu_count(),
                "rounds": args.rounds, "duration": args.duration, "connections": args.connections,
                "haproxy": subprocess.run([b.find("haproxy", "haproxy"), "-v"], capture_output=True, text=True).stdout.split("\n")[0],
                "seconds": round(time.monotonic() - started)}
        lines = [f"# TLS listener vs HAProxy ({meta['date']})", "",
                 "| target | req/s | p50 ms | p99 ms | server CPU µs/req | server cores |",
                 "| --- | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {n} | {s['rps']:.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['server_cpu_us']:.1f} | {s['server_cores']:.2f} |"
                  for n, s in summary.items()]
        lines += ["", "| ratio (paired per round) | median (range) | per round |", "| --- | --- | --- |"]
        lines += [f"| {k} | {v['median']:.3f} ({v['min']:.3f}–{v['max']:.3f}) | {', '.join(map(str, v['rounds']))} |"
                  for k, v in ratios.items()]
        text = "\n".join(lines) + "\n"
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "tls.md").write_text(text)
        (OUT / "tls.json").write_text(json.dumps({"meta": meta, "targets": summary, "ratios": ratios}, indent=2))
        print(text)
    finally:
        b.stop_all()


if __name__ == "__main__":
    main()
