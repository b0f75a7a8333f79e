#!/usr/bin/env python3
"""Issue 9 figures that bench/run.sh (keep-alive GET side by side) does not take, measured in
one run on loopback only, bounded, and writing bench/out/extras.{md,json}:

- start-up: time from exec to the first accepted connection (median of N runs);
- CONNECT bulk: one 1 GiB download through a CONNECT tunnel, MB/s vs direct, vs Squid's tunnel
  and vs `socat -b 131072` (a plain user-space TCP relay: the copy limit here);
- idle tunnels: Portcullis RSS with 1 000 and 10 000 authenticated CONNECT tunnels held open
  (or as many as the proxy's descriptor limit allows, and 10 000 extrapolated from them);
- login storm: p99 of already-authenticated keep-alive traffic while 200 clients log in with
  uncached bcrypt (cost 10) passwords — proves verification never blocks an event loop.

Needs nginx, squid, socat, curl (installed by bench/run.sh's dependency step or apt). Every
process it starts is stopped on exit. Usage: python3 bench/extras.py [--quick]
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
import threading
import time
from pathlib import Path

from benchlib import free_port, spawn, stop_all, wait_port

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"


def log(msg: str):
    print(f"[extras] {msg}", file=sys.stderr, flush=True)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def curl_speed(args) -> float:
    """Bytes per second of one curl download."""
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download} %{http_code}", *args],
                         capture_output=True, text=True, timeout=300)
    speed, code = out.stdout.split()
    if code not in ("200",):
        raise RuntimeError(f"curl {args}: status {code}")
    return float(speed)


def proxy_nofile(pid: int) -> int:
    """The soft descriptor limit a running process has (`/proc/PID/limits`)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise RuntimeError(f"no descriptor limit for {pid}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds (a smoke run)")
    ap.add_argument("--bin", default=str(ROOT / ".build/release/portcullis"))
    args = ap.parse_args()
    bin_ = Path(args.bin)
    if not bin_.exists():
        sys.exit(f"{bin_} missing: swift build -c release")
    for tool in ("nginx", "squid", "socat", "curl"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} missing (apt-get install -y nginx-light squid socat curl)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, max(hard, 65536)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    work = Path(tempfile.mkdtemp(prefix="portcullis-extras-"))
    os.chmod(work, 0o755)
    results: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": args.quick}
    big_mib = 256 if args.quick else 1024
    rounds = 1 if args.quick else 3
    try:
        # ---------------------------------------------------------------- origin
        www = work / "www"
        www.mkdir()
        (www / "1k").write_bytes(b"x" * 1024)
        with open(www / "big", "wb") as f:
            f.truncate(big_mib << 20)  # sparse: the disk is not what is measured
        os.chmod(www, 0o755)
        nginx_port = free_port()
        conf = work / "nginx.conf"
        conf.write_text(f"""daemon off; master_process off; worker_processes 1; pid {work}/nginx.pid;
error_log {work}/nginx.err; worker_rlimit_nofile 65536;
events {{ worker_connections 30000; }}
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 600; sendfile on;
  server {{ listen 127.0.0.1:{nginx_port}; root {www}; }} }}
""")
        spawn(["nginx" if shutil.which("nginx") else "/usr/sbin/nginx", "-c", conf, "-e", work / "nginx.err"])
        wait_port(nginx_port)

        users = work / "users.htpasswd"
        users.write_text(subprocess.run(["htpasswd", "-nbB", "-C", "5", "bench", "benchpass"],
                                        capture_output=True, text=True, check=True).stdout.strip() + "\n")
        auth = basic("bench", "benchpass")

        # ---------------------------------------------------------------- start-up
        samples = []
        for _ in range(5 if args.quick else 15):
            port = free_port()
            t0 = time.monotonic()
            p = subprocess.Popen([bin_, "serve", "--listen", f"127.0.0.1:{port}", "--htpasswd", users,
                                  "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_port(port)
                samples.append((time.monotonic() - t0) * 1000)
            finally:
                p.terminate()
                p.wait(10)
        results["startup_ms"] = {"median": round(statistics.median(samples), 1), "max": round(max(samples), 1),
                                 "runs": len(samples)}
        log(f"start-up: median {results['startup_ms']['median']} ms")

        # ---------------------------------------------------------------- proxies
        proxy_port = free_port()
        proxy = spawn([bin_, "serve", "--listen", f"127.0.0.1:{proxy_port}", "--htpasswd", users,
                       "--allow-private-destinations", "--connect-ports", str(nginx_port),
                       "--max-connections", "50000", "--max-client-connections", "50000",
                       "--log-level", "warning"])
        wait_port(proxy_port)
        squid_port = free_port()
        sq = work / "squid"
        sq.mkdir()
        os.chmod(sq, 0o777)
        (sq / "squid.conf").write_text(f"""http_port 127.0.0.1:{squid_port}
pid_filename {sq}/squid.pid
cache_log {sq}/cache.log
access_log none
cache deny all
shutdown_lifetime 0 seconds
pinger_enable off
auth_param basic program /usr/lib/squid/basic_ncsa_auth {users}
auth_param basic credentialsttl 2 hours
acl auth proxy_auth REQUIRED
acl SSL_ports port {nginx_port}
acl CONNECT method CONNECT
http_access allow auth
http_access deny all
""" + ("cache_effective_user proxy\n" if os.getuid() == 0 else ""))
        os.chmod(users, 0o644)
        spawn(["squid" if shutil.which("squid") else "/usr/sbin/squid", "-N", "-f", sq / "squid.conf"])
        wait_port(squid_port)
        socat_port = free_port()
        spawn(["socat", "-b", "131072", f"TCP-LISTEN:{socat_port},fork,reuseaddr,bind=127.0.0.1",
               f"TCP:127.0.0.1:{nginx_port}"])
        wait_port(socat_port)

        # ---------------------------------------------------------------- CONNECT bulk
        url = f"http://127.0.0.1:{nginx_port}/big"
        paths = {
            "direct": [url],
            "socat -b 131072": [f"http://127.0.0.1:{socat_port}/big"],
            "Portcullis CONNECT": ["-p", "-x", f"http://bench:benchpass@127.0.0.1:{proxy_port}", url],
            "Squid CONNECT": ["-p", "-x", f"http://bench:benchpass@127.0.0.1:{squid_port}", url],
        }
        speeds: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(rounds):
            for name, curl_args in paths.items():
                speeds[name].append(curl_speed(curl_args))
        med = {k: statistics.median(v) for k, v in speeds.items()}
        results["connect_bulk"] = {
            "size_mib": big_mib,
            "mb_per_s": {k: round(v / 1e6) for k, v in med.items()},
            "ratio_to_direct": {k: round(v / med["direct"], 3) for k, v in med.items()},
            "portcullis_vs_squid": round(med["Portcullis CONNECT"] / med["Squid CONNECT"], 2),
            "portcullis_vs_socat": round(med["Portcullis CONNECT"] / med["socat -b 131072"], 2),
        }
        log(f"CONNECT bulk: {results['connect_bulk']['mb_per_s']}")

        # ---------------------------------------------------------------- Connection: close
        def wrk_rps(url: str, proxy_auth: str | None) -> float:
            env = dict(os.environ)
            cmd = ["wrk", "-t1", "-c50", f"-d{2 if args.quick else 5}s", "-H", "Connection: close"]
            if proxy_auth is not None:
                env.update(BENCH_ORIGIN_URL=f"http://127.0.0.1:{nginx_port}/1k",
                           BENCH_ORIGIN_HOST=f"127.0.0.1:{nginx_port}", BENCH_PROXY_AUTH=proxy_auth)
                cmd += ["-s", str(ROOT / "bench" / "proxy.lua")]
            out = subprocess.run(cmd + [url], capture_output=True, text=True, env=env, timeout=120).stdout
            return float(next(l.split()[1] for l in out.splitlines() if l.startswith("Requests/sec")))

        if shutil.which("wrk"):
            handshakes = {"direct": [], "Portcullis": [], "Squid": []}
            for _ in range(rounds):
                handshakes["direct"].append(wrk_rps(f"http://127.0.0.1:{nginx_port}/1k", None))
                handshakes["Portcullis"].append(wrk_rps(f"http://127.0.0.1:{proxy_port}/", auth))
                handshakes["Squid"].append(wrk_rps(f"http://127.0.0.1:{squid_port}/", auth))
            hs = {k: statistics.median(v) for k, v in handshakes.items()}
            results["connection_close"] = {
                "requests_per_s": {k: round(v) for k, v in hs.items()},
                "portcullis_vs_direct": round(hs["Portcullis"] / hs["direct"], 3),
                "portcullis_vs_squid": round(hs["Portcullis"] / hs["Squid"], 2),
            }
            log(f"Connection: close: {results['connection_close']}")

        # ---------------------------------------------------------------- idle tunnels
        tunnels = {}
        held: list[socket.socket] = []
        base_rss = rss_kib(proxy.pid)
        request = (f"CONNECT 127.0.0.1:{nginx_port} HTTP/1.1\r\nHost: 127.0.0.1:{nginx_port}\r\n"
                   f"Proxy-Authorization: {auth}\r\n\r\n").encode()
        # 10 000 tunnels need ~40 000 descriptors here (client, proxy both ways, nginx).
        # Each tunnel costs the proxy two descriptors: where its limit is below 10 000 × 2 plus
        # what it already has open, the largest count that fits (in hundreds) is measured
        # instead of 10 000, named in the output, and the figure for 10 000 extrapolated.
        targets = [200, 1000] if args.quick else [1000, 10000]
        proxy_limit = proxy_nofile(proxy.pid)
        proxy_open = len(os.listdir(f"/proc/{proxy.pid}/fd"))
        fits = min((proxy_limit - proxy_open - 20) // 2, nofile - 200) // 100 * 100
        targets = sorted({min(t, fits) for t in targets if min(t, fits) > 0})
        results["nofile_limit"] = nofile
        results["proxy_nofile_limit"] = proxy_limit
        for target in targets:
            while len(held) < target:
                s = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
                s.sendall(request)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = s.recv(4096)
                    if not chunk:
                        raise RuntimeError("proxy closed a tunnel being opened")
                    head += chunk
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"CONNECT failed: {head[:60]!r}")
                held.append(s)
            time.sleep(1)  # let the allocator settle before reading RSS
            tunnels[str(target)] = {"rss_mib": round(rss_kib(proxy.pid) / 1024, 1)}
            log(f"{target} idle tunnels: {tunnels[str(target)]['rss_mib']} MiB RSS")
        results["idle_tunnels"] = {"baseline_rss_mib": round(base_rss / 1024, 1), **tunnels}
        largest = max(targets)
        per_tunnel_kib = (tunnels[str(largest)]["rss_mib"] * 1024 - base_rss) / largest
        results["idle_tunnel_kib_each"] = round(per_tunnel_kib, 2)
        if largest < 10000 and not args.quick:
            results["idle_tunnels_10000_extrapolated_mib"] = round((base_rss + 10000 * per_tunnel_kib) / 1024, 1)
        for s in held:
            s.close()
        held.clear()

        # ---------------------------------------------------------------- login storm
        storm_users = 50 if args.quick else 200
        store = work / "storm.db"
        lines = []
        passwords = {}
        for i in range(storm_users):
            pw = f"storm-pw-{i}"
            passwords[f"u{i}"] = pw
            lines.append(subprocess.run(["htpasswd", "-nbB", "-C", "10", f"u{i}", pw],
                                        capture_output=True, text=True, check=True).stdout.strip())
        storm_file = work / "storm.htpasswd"
        storm_file.write_text("\n".join(lines + [users.read_text().strip()]) + "\n")
        subprocess.run([bin_, "users", "import", "--htpasswd", storm_file, "--store", f"sqlite:{store}"],
                       check=True, capture_output=True)
        storm_port = free_port()
        spawn([bin_, "serve", "--listen", f"127.0.0.1:{storm_port}", "--store", f"sqlite:{store}",
               "--allow-private-destinations", "--log-level", "warning"])
        wait_port(storm_port)

        def latencies(duration: float, out: list):
            """Keep-alive requests of an authenticated (cached) client, latency of each in ms."""
            s = socket.create_connection(("127.0.0.1", storm_port), timeout=10)
            req = (f"GET http://127.0.0.1:{nginx_port}/1k HTTP/1.1\r\nHost: 127.0.0.1:{nginx_port}\r\n"
                   f"Proxy-Authorization: {auth}\r\n\r\n").encode()
            end = time.monotonic() + duration
            buf = b""
            while time.monotonic() < end:
                t0 = time.monotonic()
                s.sendall(req)
                while True:
                    i = buf.find(b"\r\n\r\n")
                    if i >= 0:
                        head = buf[:i].decode("latin-1")
                        length = int(head.lower().split("content-length:")[1].split("\r\n")[0])
                        if len(buf) >= i + 4 + length:
                            buf = buf[i + 4 + length:]
                            break
                    buf += s.recv(65536)
                out.append((time.monotonic() - t0) * 1000)
            s.close()

        def p99(values):
            values = sorted(values)
            return round(values[int(len(values) * 0.99) - 1], 2)

        quiet: list[float] = []
        latencies(2 if args.quick else 5, quiet)  # baseline (first request verifies, then cached)

        def login(user):
            with socket.create_connection(("127.0.0.1", storm_port), timeout=120) as s:
                s.sendall((f"GET http://127.0.0.1:{nginx_port}/1k HTTP/1.1\r\nHost: x\r\n"
                           f"Proxy-Authorization: {basic(user, passwords[user])}\r\nConnection: close\r\n\r\n").encode())
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                storm_status.append(data[9:12])

        storm_status: list[bytes] = []
        during: list[float] = []
        measurer = threading.Thread(target=latencies, args=(8 if not args.quick else 4, during))
        measurer.start()
        t0 = time.monotonic()
        loggers = [threading.Thread(target=login, args=(u,)) for u in passwords]
        for t in loggers:
            t.start()
        for t in loggers:
            t.join(120)
        storm_seconds = time.monotonic() - t0
        measurer.join(60)
        results["login_storm"] = {
            "logins": storm_users,
            "bcrypt_cost": 10,
            "storm_seconds": round(storm_seconds, 2),
            "logins_ok": sum(1 for s in storm_status if s == b"200"),
            "login_statuses": {k.decode() or "none": storm_status.count(k) for k in set(storm_status)},
            "cached_traffic_p99_ms_quiet": p99(quiet),
            "cached_traffic_p99_ms_during_storm": p99(during),
            "cached_requests_during_storm": len(during),
        }
        log(f"login storm: {results['login_storm']}")
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "extras.json").write_text(json.dumps(results, indent=2) + "\n")
    b = results["connect_bulk"]
    md = [f"## Portcullis extras — {results['date']}{' (quick)' if args.quick else ''}", "",
          f"- start-up to first accepted connection: median {results['startup_ms']['median']} ms, "
          f"max {results['startup_ms']['max']} ms ({results['startup_ms']['runs']} runs)", "",
          f"CONNECT bulk, {b['size_mib']} MiB, median of {rounds}:", "",
          "| path | MB/s | / direct |", "| --- | ---: | ---: |"]
    for k in b["mb_per_s"]:
        md.append(f"| {k} | {b['mb_per_s'][k]} | {b['ratio_to_direct'][k]} |")
    md += ["", f"Portcullis / Squid {b['portcullis_vs_squid']}, Portcullis / socat {b['portcullis_vs_socat']}", "",
           "| idle authenticated tunnels | Portcullis RSS (MiB) |", "| ---: | ---: |",
           f"| 0 | {results['idle_tunnels']['baseline_rss_mib']} |"]
    for k, v in results["idle_tunnels"].items():
        if k != "baseline_rss_mib":
            md.append(f"| {k} | {v['rss_mib']} |")
    md += ["", f"{results['idle_tunnel_kib_each']} KiB per idle tunnel"]
    if "idle_tunnels_10000_extrapolated_mib" in results:
        md[-1] += (f"; 10 000 tunnels do not fit the proxy's descriptor limit here "
                   f"({results['proxy_nofile_limit']}, two per tunnel): extrapolated "
                   f"{results['idle_tunnels_10000_extrapolated_mib']} MiB")
    if "connection_close" in results:
        c = results["connection_close"]
        md += ["", "New connection per request (`Connection: close`, wrk -c50), median req/s: "
               + ", ".join(f"{k} {v}" for k, v in c["requests_per_s"].items())
               + f" — Portcullis / direct {c['portcullis_vs_direct']}, / Squid {c['portcullis_vs_squid']}"]
    s = results["login_storm"]
    md += ["", f"Login storm: {s['logins']} uncached bcrypt-{s['bcrypt_cost']} logins in {s['storm_seconds']} s "
           f"({s['logins_ok']} ok); cached keep-alive traffic p99 {s['cached_traffic_p99_ms_quiet']} ms quiet, "
           f"{s['cached_traffic_p99_ms_during_storm']} ms during the storm ({s['cached_requests_during_storm']} requests)."]
    (OUT / "extras.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(1)))
    main()
