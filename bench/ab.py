"""Two Portcullis builds side by side: keep-alive Basic GET of 1 KiB through each (wrk -t1 -c50)
in alternating order, HAProxy (reverse proxy, no auth) between them in every round.

    python3 bench/ab.py OLD_BINARY NEW_BINARY [ROUNDS=6] [SECONDS=6]

Prints req/s per round, the per-round ratio new/old and its median, and each / HAProxy. A change
on the request path is judged by the paired ratio: one-at-a-time rounds swing ±15 % here."""
import sys, os, time, base64, statistics, subprocess, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b

old, new = sys.argv[1], sys.argv[2]
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 6
dur = int(sys.argv[4]) if len(sys.argv) > 4 else 6
work = Path(tempfile.mkdtemp()); os.chmod(work, 0o755)
origin = b.start_origin(b.find("nginx", "nginx-light"), work)
users = work / "users"; subprocess.run(["htpasswd", "-bcB", "-C", "5", users, "bench", "benchpass"], check=True, capture_output=True)
def proxy(bin_):
    port = b.free_port()
    b.spawn([bin_, "serve", "--listen", f"127.0.0.1:{port}", "--htpasswd", users, "--allow-private-destinations", "--log-level", "error"])
    b.wait_port(port); return port
ports = {"old": proxy(old), "new": proxy(new)}
hport = b.free_port()
cfg = (Path(__file__).resolve().parent / "haproxy.cfg.in").read_text().replace("@NBTHREAD@", "")
for k, v in {"@PORT@": str(hport), "@ORIGIN_PORT@": str(origin), "@LISTEN_PORT@": str(hport)}.items(): cfg = cfg.replace(k, v)
(work / "h.cfg").write_text(cfg)
b.spawn([b.find("haproxy", "haproxy"), "-db", "-f", work / "h.cfg"]); b.wait_port(hport)
env = {"BENCH_ORIGIN_URL": f"http://127.0.0.1:{origin}/1k", "BENCH_ORIGIN_HOST": f"127.0.0.1:{origin}",
       "BENCH_PROXY_AUTH": "Basic " + base64.b64encode(b"bench:benchpass").decode()}
lua = Path(__file__).resolve().parent / "proxy.lua"
plain = work / "plain.lua"; plain.write_text("")
for name in ports:
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-x", f"http://bench:benchpass@127.0.0.1:{ports[name]}", env["BENCH_ORIGIN_URL"]], capture_output=True, text=True)
    print(name, "curl", out.stdout)
    b.wrk(ports[name], 2, 50, lua, env)  # warm-up, fills the credential cache
res = {"old": [], "new": [], "haproxy": []}
for r in range(rounds):
    order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
    for name in order[:1] + ["haproxy"] + order[1:]:
        if name == "haproxy":
            x = b.wrk(hport, dur, 50, plain)
        else:
            x = b.wrk(ports[name], dur, 50, lua, env)
            assert x["non2xx"] == 0, x
        res[name].append(x["rps"])
b.stop_all()
for k, v in res.items(): print(k, [round(x) for x in v], "median", round(statistics.median(v)))
print("new/old per round:", [round(n / o, 3) for n, o in zip(res["new"], res["old"])], "median", round(statistics.median([n / o for n, o in zip(res["new"], res["old"])]), 3))
print("new/haproxy median", round(statistics.median(res["new"]) / statistics.median(res["haproxy"]), 3), "old/haproxy", round(statistics.median(res["old"]) / statistics.median(res["haproxy"]), 3))
