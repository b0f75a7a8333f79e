"""Short-lived tokens against passwords, in one run, everything on loopback (issue 23's
figures): keep-alive GETs of nginx's 1 KiB file through Portcullis (SQLite store, `wrk -t1
-c50`, proxy.lua), the credential on every request being

1. the user's password (bcrypt cost 10, `users add`'s) or a token as the Basic password, with
   the credential cache on (the usual case: both answered from the cache);
2. the same with `--credential-cache-ttl 0.001`, so every request is checked again: a bcrypt
   check, against a token's MAC and the in-memory tokens table (no database round trip).

Targets alternate, order reversed every round; ratios are paired within a round.

    python3 bench/tokens.py [--rounds 4] [--duration 5]
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
USER, PASSWORD = "bench", "benchpass"


def main():
    args, work = b.release_run(__doc__.split("\n\n")[0], ROOT, "portcullis-tokens-")
    started = time.monotonic()
    try:
        origin = b.start_origin(b.find("nginx", "nginx-light"), work)
        db = work / "users.db"
        b.sqlite_user(args.bin, db, USER, PASSWORD)
        token = subprocess.run([args.bin, "tokens", "issue", "--user", USER, "--ttl", "1h", "--label", "bench",
                                "--store", f"sqlite:{db}"], text=True, check=True, capture_output=True).stdout.strip()
        proxies = {}
        for name, extra in (("cached", []), ("checked", ["--credential-cache-ttl", "0.001"])):
            port = b.free_port()
            process = b.spawn([args.bin, "serve", "--listen", f"127.0.0.1:{port}", "--store", f"sqlite:{db}", *extra,
                               "--allow-private-destinations", "--log-level", "error", "--data-dir", work / name])
            b.wait_port(port)
            proxies[name] = (port, process)
        lua = ROOT / "bench" / "proxy.lua"

        def env(secret: str) -> dict:
            return {"BENCH_ORIGIN_URL": f"http://127.0.0.1:{origin}/1k", "BENCH_ORIGIN_HOST": f"127.0.0.1:{origin}",
                    "BENCH_PROXY_AUTH": "Basic " + base64.b64encode(f"{USER}:{secret}".encode()).decode()}

        targets = {
            "cached-password": ("cached", PASSWORD), "cached-token": ("cached", token),
            "checked-password": ("checked", PASSWORD), "checked-token": ("checked", token),
        }

        def run(name: str, duration: int) -> dict:
            proxy, secret = targets[name]
            port, process = proxies[proxy]
            before = sum(b.cpu_seconds(process.pid))
            x = b.wrk(port, duration, 50, lua, env(secret))
            x["proxy_cpu_us"] = (sum(b.cpu_seconds(process.pid)) - before) / max(x["requests"], 1) * 1e6
            assert x["non2xx"] == 0, (name, x)
            return x

        for name in targets:
            run(name, 2)
        results = b.alternate(args.rounds, (("cached-password", "cached-token"), ("checked-password", "checked-token")),
                              run, args.duration, "tokens", lambda x: f", {x['proxy_cpu_us']:.1f} µs/req")
        ratios = {
            "cached: token / password": b.paired(results, "cached-token", "cached-password"),
            "every request checked: token / password (bcrypt)": b.paired(results, "checked-token", "checked-password"),
            "token checked every request / token cached": b.paired(results, "checked-token", "cached-token"),
        }
        meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": os.cpu_count(),
                "rounds": args.rounds, "duration": args.duration, "seconds": round(time.monotonic() - started)}
        labels = {
            "cached-password": "password, cached credential",
            "cached-token": "token as the Basic password, cached credential",
            "checked-password": "password, every request checked (bcrypt cost 10)",
            "checked-token": "token, every request checked (MAC + in-memory table)",
        }
        text = b.paired_report("Tokens vs passwords", meta, labels, results, ratios, [("proxy CPU", "proxy_cpu_us")])
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "tokens.md").write_text(text)
        (OUT / "tokens.json").write_text(json.dumps({"meta": meta, "results": results, "ratios": ratios}, indent=2))
        print(text)
    finally:
        b.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
