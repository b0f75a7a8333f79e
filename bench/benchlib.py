"""What the Python benchmark scripts (extras.py, digest.py, floor.py) share: loopback ports, the
processes they start (every one stopped on exit), the nginx origin, wrk runs and reports."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

CHILDREN: list[subprocess.Popen] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> float:
    """Seconds until 127.0.0.1:port accepts a connection."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return time.monotonic() - start
        except OSError:
            time.sleep(0.0005)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def wait_ready(process: subprocess.Popen, admin: int, timeout: float, name: str, tail) -> float:
    """Seconds until `process`'s admin listener answers /readyz with 200 (RuntimeError naming
    `name` with `tail()` if the process exits first or it never does)."""
    import urllib.request
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}: {tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{name} not ready after {timeout} s: {tail()}")


def spawn(cmd, **kw) -> subprocess.Popen:
    """Start a child with its stdout and stderr discarded, never a pipe left unread: once its
    64 KiB were full, a child that logs blocked in the write and the benchmark measured the
    stall (Portcullis fell to 574 req/s, then timed out)."""
    p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    CHILDREN.append(p)
    return p


def stop_all(grace: float = 5):
    for p in CHILDREN:
        if p.poll() is None:
            p.terminate()
    for p in CHILDREN:
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()


def start_origin(nginx: str, work: Path) -> int:
    """nginx serving a 1 KiB file at /1k on a free loopback port (keep-alive, no access log)."""
    port = free_port()
    (work / "www").mkdir()
    (work / "www" / "1k").write_bytes(b"x" * 1024)
    (work / "nginx.conf").write_text(f"""daemon off; worker_processes 1; pid {work}/nginx.pid;
error_log {work}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 65;
  client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp;
  server {{ listen 127.0.0.1:{port}; root {work}/www; location = /1k {{ }} }} }}
""")
    for p in (work / "www", work / "www" / "1k"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    spawn([nginx, "-p", work, "-c", work / "nginx.conf", "-e", work / "nginx.err"])
    wait_port(port, 30)
    return port


def wrk(port: int, duration: int, connections: int, script: Path, env: dict | None = None,
        scheme: str = "http", headers: list[str] | None = None) -> dict:
    """One `wrk -t1` run: req/s, p50/p99 in ms, requests, non-2xx responses. `scheme` https
    makes wrk speak TLS to the port; `headers` are extra `-H` values."""
    extra = [arg for header in headers or [] for arg in ("-H", header)]
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", *extra, "-s", str(script),
                          f"{scheme}://127.0.0.1:{port}"], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, timeout=duration + 60)
    text = out.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)) else 0
    total = int(re.search(r"(\d+) requests in", text).group(1))

    def ms(label):
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]

    return {"rps": rps, "p50_ms": ms("50"), "p99_ms": ms("99"), "requests": total, "non2xx": non2xx}


def write_report(out: Path, name: str, title: str, meta: dict, summary: dict, ratios: dict,
                 columns: list[str], row) -> str:
    """`out/NAME.json` and `out/NAME.md`: a table of targets (`row(name, figures)` gives a row's
    cells after the name) and a table of ratios. Returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "targets": summary, "ratios": ratios}, indent=2))
    lines = [f"# {title} ({meta['date']})", "",
             "| target | " + " | ".join(columns) + " |",
             "| --- |" + " ---: |" * len(columns)]
    lines += [f"| {target} | " + " | ".join(row(target, s)) + " |" for target, s in summary.items()]
    lines += ["", "| ratio | value |", "| --- | ---: |"]
    lines += [f"| {k} | {v:.2f} |" for k, v in ratios.items()]
    text = "\n".join(lines) + "\n"
    (out / f"{name}.md").write_text(text)
    return text


def find(program: str, install: str) -> str:
    """Path of `program` (also /usr/sbin); exits naming the Debian packages (`install`) if missing."""
    path = shutil.which(program) or (f"/usr/sbin/{program}" if Path(f"/usr/sbin/{program}").exists() else None)
    if not path:
        sys.exit(f"{program} missing (apt-get install -y {install})")
    return path


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process so far, in seconds (`/proc/PID/stat`)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def self_signed_certificate(work: Path, name: str = "proxy") -> tuple[Path, Path]:
    """An EC P-256 certificate for 127.0.0.1 and localhost, self-signed: (PEM cert, PEM key)."""
    cert, key = work / f"{name}.pem", work / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    return cert, key


def start_byte_source(stop) -> int:
    """A TCP source on loopback, until `stop` (a threading.Event) is set: every connection gets
    1 MiB blocks as fast as it takes them, until the peer closes. Returns its port."""
    import socket
    import threading
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.5)
    block = b"\0" * (1 << 20)

    def serve(conn):
        try:
            while not stop.is_set():
                conn.sendall(block)
        except OSError:
            pass
        finally:
            conn.close()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()
        server.close()

    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()[1]


def connect_download(sock, target: str, total: int, auth: str | None) -> float:
    """MB/s reading `total` bytes through an HTTP/1.1 CONNECT tunnel on `sock` (plain or TLS,
    already connected to the proxy), timed from the proxy's 200."""
    import time
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if auth:
        head += f"Proxy-Authorization: {auth}\r\n"
    sock.sendall((head + "\r\n").encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("closed before the CONNECT's answer")
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") or answer.startswith(b"HTTP/1.0 200"), answer[:120]
    got = len(answer.split(b"\r\n\r\n", 1)[1])
    buffer = bytearray(1 << 20)
    start = time.monotonic()
    while got < total:
        n = sock.recv_into(buffer)
        if not n:
            raise RuntimeError("tunnel closed early")
        got += n
    return total / (time.monotonic() - start) / 1e6


def alternate(rounds: int, pairs, run, duration: int, tag: str, describe=lambda x: "") -> dict:
    """Runs each pair of targets `rounds` times, order reversed every round (so neither side
    always runs warm); returns every run's figures by target."""
    results = {name: [] for pair in pairs for name in pair}
    for r in range(rounds):
        for pair in pairs:
            for name in (pair if r % 2 == 0 else tuple(reversed(pair))):
                x = run(name, duration)
                results[name].append(x)
                print(f"[{tag}] round {r + 1} {name}: {x['rps']:.0f} req/s, p99 {x['p99_ms']:.2f} ms{describe(x)}",
                      flush=True)
    return results


def paired(results: dict, numerator: str, denominator: str) -> list[float]:
    """req/s ratios of two targets, round by round."""
    return [x["rps"] / y["rps"] for x, y in zip(results[numerator], results[denominator])]


def paired_report(title: str, meta: dict, labels: dict, results: dict, ratios: dict,
                  cpu: list[tuple[str, str]]) -> str:
    """Markdown: one row per target (median req/s, p99 and each `(column, key)` of CPU µs per
    request, `—` where a target has none), then the paired ratios with their range."""
    import statistics
    med = statistics.median
    lines = [f"# {title} ({meta['date']})", "",
             "| target | req/s (median) | p99 |" + "".join(f" {column} |" for column, _ in cpu),
             "| --- | ---: | ---: |" + " ---: |" * len(cpu)]
    for name, label in labels.items():
        xs = results[name]
        cells = [f"{med(x['rps'] for x in xs):.0f}", f"{med(x['p99_ms'] for x in xs):.2f} ms"]
        cells += [f"{med(x[key] for x in xs):.1f} µs" if key in xs[0] else "—" for _, key in cpu]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| ratio (paired per round) | median (range) | per round |", "| --- | --- | --- |"]
    lines += [f"| {k} | {med(v):.3f} ({min(v):.3f}–{max(v):.3f}) | {', '.join(f'{x:.3f}' for x in v)} |"
              for k, v in ratios.items()]
    return "\n".join(lines) + "\n"


def release_run(description: str, root: Path, prefix: str):
    """The usual arguments (--bin, --rounds, --duration), the release binary checked, and a
    work directory others can read (nginx): `(args, work)`."""
    import argparse
    import tempfile
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--bin", default=str(root / ".build/release/portcullis"))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=int, default=5)
    args = ap.parse_args()
    if not Path(args.bin).exists():
        sys.exit(f"{args.bin} missing: swift build -c release --product portcullis")
    work = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(work, 0o755)
    return args, work


def sqlite_user(binary: str, db: Path, user: str, password: str):
    """A user in a SQLite store (bcrypt cost 10, `users add`'s)."""
    subprocess.run([binary, "users", "add", user, "--store", f"sqlite:{db}", "--password-stdin"],
                   input=password + "\n", text=True, check=True, capture_output=True)
