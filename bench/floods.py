"""The security review's floods against one binary (issue 25), all on loopback, bounded:
RSS before and after 25,000 requests with unique 60 KB User-Agents (the challenge-loop table),
RSS before and after 4,000 failed logins with unique 45 KB user names from 800 addresses (the
throttle), the answers to 200 simultaneous distinct wrong passwords from one address, and —
with wrk and nginx installed — throughput while stderr is a pipe nobody reads (5 s of a wrong
password, then 5 s of the right one).

    python3 bench/floods.py BINARY USERS.htpasswd     # a user alice (any password)

Run it on the build before and after a change to compare."""
import sys, time, subprocess, threading, os, base64
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "Tests" / "integration"))
from portcullis_helpers import RawConn, basic, free_port, try_connect

bin_, users = sys.argv[1], sys.argv[2]
def rss(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"): return int(l.split()[1]) // 1024
def start(*extra):
    port = free_port()
    p = subprocess.Popen([bin_, "serve", "--listen", f"127.0.0.1:{port}", "--htpasswd", users, "--allow-private-destinations", *extra],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while try_connect("127.0.0.1", port, 0.5) != "ok": time.sleep(0.05)
    return p, port

p, port = start("--lockout-threshold", "1000000")
before = rss(p.pid); t = time.time()
tail = "a" * 60000
with RawConn("127.0.0.1", port, timeout=30) as c:
    for i in range(25000):
        c.send(f"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: x\r\nUser-Agent: {i}{tail}\r\n\r\n".encode())
        assert c.read_response().status == 407
print(f"finding 3: 25,000 x 60 KB User-Agent: RSS {before} -> {rss(p.pid)} MiB ({time.time()-t:.1f} s)")
p.kill()

p, port = start("--lockout-threshold", "1000000")
before = rss(p.pid); t = time.time()
tail = "n" * 45000
for i in range(4000):
    src = f"127.1.{i % 800 // 250}.{1 + i % 800 % 250}"
    with RawConn("127.0.0.1", port, timeout=30, source=src) as c:
        assert c.request("GET", "http://127.0.0.1:9/", [("Proxy-Authorization", basic(f"{i}{tail}", "x"))]).status == 407
print(f"finding 12: 4,000 failures with unique 45 KB names from 800 addresses: RSS {before} -> {rss(p.pid)} MiB ({time.time()-t:.1f} s)")
p.kill()

p, port = start("--lockout-threshold", "10")
conns = [RawConn("127.0.0.1", port, timeout=60, source="127.0.0.77") for _ in range(200)]
res = []; b = threading.Barrier(200)
def go(i, c):
    b.wait()
    pw = f"wrong-{i}"
    res.append(c.request("GET", "http://127.0.0.1:9/", [("Proxy-Authorization", basic("alice", pw))]).status)
ts = [threading.Thread(target=go, args=(i, c)) for i, c in enumerate(conns)]
[t.start() for t in ts]; [t.join() for t in ts]
from collections import Counter
print(f"finding 8: 200 simultaneous guesses from one address : {dict(Counter(res))}")
p.kill()

# Finding 18: logging must never block an event loop.
import shutil
if shutil.which("wrk") and (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
    import tempfile
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import benchlib as b
    work = Path(tempfile.mkdtemp()); os.chmod(work, 0o755)
    origin = b.start_origin(b.find("nginx", "nginx-light"), work)
    bench_users = work / "users"
    subprocess.run(["htpasswd", "-bcB", "-C", "5", bench_users, "bench", "benchpass"], check=True, capture_output=True)
    port = free_port()
    read_end, write_end = os.pipe()   # stderr: a pipe nobody reads
    p = subprocess.Popen([bin_, "serve", "--listen", f"127.0.0.1:{port}", "--htpasswd", bench_users,
                          "--allow-private-destinations", "--log-level", "info", "--lockout-threshold", "1000000000"],
                         stdout=subprocess.DEVNULL, stderr=write_end)
    b.wait_port(port)
    lua = Path(__file__).resolve().parent / "proxy.lua"
    env = {"BENCH_ORIGIN_URL": f"http://127.0.0.1:{origin}/1k", "BENCH_ORIGIN_HOST": f"127.0.0.1:{origin}"}
    bad = b.wrk(port, 5, 50, lua, {**env, "BENCH_PROXY_AUTH": "Basic " + base64.b64encode(b"bench:wrong").decode()})
    good = b.wrk(port, 5, 50, lua, {**env, "BENCH_PROXY_AUTH": "Basic " + base64.b64encode(b"bench:benchpass").decode()})
    print(f"finding 18: stderr unread: wrong password {bad['rps']:.0f} req/s ({bad['requests']} answered), "
          f"then right password {good['rps']:.0f} req/s ({good['requests'] - good['non2xx']} OK)")
    p.kill()
    b.stop_all()
