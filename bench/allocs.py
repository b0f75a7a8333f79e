"""Heap allocations per keep-alive request, for one or more builds side by side: a uprobe on
libc's malloc counted by `perf stat` while wrk (-t1 -c10, Basic, 1 KiB) runs through each build.

    python3 bench/allocs.py BINARY [BINARY...]

Needs perf with uprobes (root). Prints requests, mallocs and mallocs per request, two rounds
per build."""
import sys, os, base64, subprocess, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b
import glob
libc = (glob.glob("/lib/*/libc.so.6") + glob.glob("/usr/lib/*/libc.so.6"))[0]
# The uprobe on malloc (swift_allocObject and every buffer end there); an existing one is kept.
subprocess.run(["perf", "probe", "-q", "-x", libc, "--add", "malloc"], capture_output=True)
work = Path(tempfile.mkdtemp()); os.chmod(work, 0o755)
origin = b.start_origin(b.find("nginx", "nginx-light"), work)
users = work / "users"; subprocess.run(["htpasswd", "-bcB", "-C", "5", users, "bench", "benchpass"], check=True, capture_output=True)
env = {"BENCH_ORIGIN_URL": f"http://127.0.0.1:{origin}/1k", "BENCH_ORIGIN_HOST": f"127.0.0.1:{origin}",
       "BENCH_PROXY_AUTH": "Basic " + base64.b64encode(b"bench:benchpass").decode()}
lua = Path(__file__).resolve().parent / "proxy.lua"
for name in sys.argv[1:]:
    port = b.free_port()
    p = b.spawn([name, "serve", "--listen", f"127.0.0.1:{port}", "--htpasswd", users, "--allow-private-destinations", "--log-level", "error"])
    b.wait_port(port)
    b.wrk(port, 2, 10, lua, env)
    for rnd in range(2):
        perf = subprocess.Popen(["perf", "stat", "-e", "probe_libc:malloc", "-p", str(p.pid), "-x", ",", "--", "sleep", "4"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
        r = b.wrk(port, 3, 10, lua, env)
        err = perf.communicate()[1]
        vals = [int(l.split(",")[0]) for l in err.strip().splitlines() if l and l[0].isdigit()]
        print(os.path.basename(name), "requests", r["requests"], "mallocs", vals[0], "per request", round(vals[0] / r["requests"], 2))
    p.terminate()
