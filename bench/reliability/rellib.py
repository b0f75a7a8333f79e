"""What the reliability scenarios (soak, store faults, descriptors, slow peers) share: the binary
to test, a Portcullis process with its log in a file, a Python origin in a process of its own
(normal, silent, trickling, endless and TCP echo/sink ports), /proc and /metrics samples, paced
clients and percentiles. Everything on loopback; every socket has a timeout.

`python3 rellib.py origin` runs the origin (the scenarios start it through ``Origin``)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import http.client
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchlib as b  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def binary_argument(ap: argparse.ArgumentParser):
    """`--bin`: $PORTCULLIS_BIN (CI's debug build), else the release build of the tree."""
    ap.add_argument("--bin", default=os.environ.get("PORTCULLIS_BIN", str(ROOT / ".build/release/portcullis")))


def check_binary(path: str):
    if not Path(path).exists():
        sys.exit(f"{path} missing: swift build -c release --product portcullis (or set PORTCULLIS_BIN)")


def exit_on_sigterm():
    """SIGTERM (`timeout`, a CI runner) ends the scenario like Ctrl-C: its finally blocks stop the
    processes it started (Python's default would die without running them)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def run_child(cmd: list, timeout: float) -> subprocess.CompletedProcess:
    """Runs a scenario-like child to the end, its output captured. Past `timeout`, or when this
    process is interrupted, the child gets SIGINT first (its finally blocks stop what it
    started) and SIGKILL only 30 s later; a timeout then raises TimeoutExpired."""
    child = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = child.communicate(timeout=timeout)
        return subprocess.CompletedProcess(child.args, child.returncode, out, err)
    except BaseException:
        child.send_signal(signal.SIGINT)
        try:
            child.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
        raise


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --------------------------------------------------------------------------- the proxy

class Proxy:
    """`portcullis serve` with its stdout and stderr in `work/NAME.log` (a file, never a pipe
    nobody reads), stopped by benchlib.stop_all. `wrapper` goes before the binary (prlimit)."""

    def __init__(self, binary: str, args: list, work: Path, name: str = "proxy", wrapper: list | None = None,
                 admin: bool = True, env: dict | None = None):
        self.port = b.free_port()
        self.admin = b.free_port() if admin else None
        self.log_path = work / f"{name}.log"
        cmd = [*(wrapper or []), binary, "serve", "--listen", f"127.0.0.1:{self.port}",
               "--allow-private-destinations", *args]
        if admin:
            cmd += ["--admin", f"127.0.0.1:{self.admin}"]
        self.log_file = open(self.log_path, "w")
        self.process = subprocess.Popen([str(c) for c in cmd], stdout=self.log_file, stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})})
        b.CHILDREN.append(self.process)
        self.pid = self.process.pid
        try:
            b.wait_port(self.port, 60)
        except RuntimeError:
            raise RuntimeError(f"the proxy did not start:\n{self.log()[-2000:]}") from None

    def log(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def fds(self) -> int:
        return fd_count(self.pid)

    def cpu(self) -> float:
        """User + system CPU seconds so far (nan once the process is gone)."""
        try:
            user, system = b.cpu_seconds(self.pid)
        except OSError:
            return float("nan")
        return user + system

    def metrics(self) -> dict:
        return metrics(self.admin)

    def readyz(self) -> int:
        return readyz(self.admin)


def rss_kib(pid: int) -> int:
    """Resident memory in KiB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid: int) -> int:
    """Open descriptors (0 once the process is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def metrics(admin: int) -> dict:
    """/metrics as {'name{labels}': value} (labels as printed)."""
    c = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    try:
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    finally:
        c.close()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out


def metric(values: dict, name: str) -> float:
    """The sum of a metric over all its label sets (0 when absent)."""
    return sum(v for k, v in values.items() if k == name or k.startswith(name + "{"))


def readyz(admin: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


# --------------------------------------------------------------------------- credentials, requests

def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def sqlite_users(binary: str, db: Path, users: list[tuple[str, str]], *extra: str):
    """Users in a SQLite store, bcrypt cost 4 (fast in debug builds too)."""
    for name, password in users:
        out = subprocess.run([binary, "users", "add", name, "--store", f"sqlite:{db}", "--password-stdin",
                              "--cost", "4", *extra], input=password + "\n", text=True, capture_output=True,
                             timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"users add {name}: {out.stderr.strip()}")


def get(port: int, url: str, authorization: str | None, timeout: float = 10, source: str | None = None,
        headers: dict | None = None) -> tuple[int, float]:
    """One GET through the proxy on a fresh connection (`Connection: close`): (status, seconds);
    status 0 when the connection failed or timed out."""
    started = time.monotonic()
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                       source_address=(source, 0) if source else None)
        h = {"Connection": "close", **(headers or {})}
        if authorization:
            h["Proxy-Authorization"] = authorization
        c.request("GET", url, headers=h)
        r = c.getresponse()
        r.read()
        c.close()
        return r.status, time.monotonic() - started
    except (OSError, http.client.HTTPException):
        return 0, time.monotonic() - started


class KeepAlive:
    """One keep-alive client connection through the proxy; reconnects after a close."""

    def __init__(self, port: int, timeout: float = 10):
        self.port, self.timeout = port, timeout
        self.connection: http.client.HTTPConnection | None = None
        self.reconnects = 0

    def get(self, url: str, authorization: str | None) -> tuple[int, float, bytes]:
        """(status, seconds, body); status 0 and the connection dropped on any error."""
        started = time.monotonic()
        try:
            if self.connection is None:
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                self.reconnects += 1
            self.connection.request("GET", url, headers={"Proxy-Authorization": authorization} if authorization else {})
            r = self.connection.getresponse()
            body = r.read()
            if r.getheader("Connection", "").lower() == "close":
                self.close()
            return r.status, time.monotonic() - started, body
        except (OSError, http.client.HTTPException):
            self.close()
            return 0, time.monotonic() - started, b""

    def close(self):
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def read_head(sock: socket.socket, limit: int = 65536) -> tuple[int, bytes, bytes]:
    """(status, head, bytes after the head) of a response read from `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head ({data[:80]!r})")
        data += chunk
        if len(data) > limit:
            raise ConnectionError("response head too long")
    head, rest = data.split(b"\r\n\r\n", 1)
    return int(head.split(b" ", 2)[1]), head, rest


def connect_tunnel(port: int, target: str, authorization: str, timeout: float = 10,
                   source: str | None = None) -> socket.socket:
    """A CONNECT tunnel through the proxy, after its 200 (raises otherwise); `source`: the
    client's loopback address (127.0.0.0/8: the proxy sees another client)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None)
    try:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {authorization}\r\n\r\n"
                  .encode())
        status, _, rest = read_head(s)
        if status != 200 or rest:
            raise ConnectionError(f"CONNECT answered {status}")
        return s
    except BaseException:
        s.close()
        raise


def digest_challenge(head: bytes) -> dict:
    """The SHA-256 (else the first) Digest challenge of a 407 head, as a dict."""
    found = []
    for line in head.decode("latin-1").split("\r\n"):
        if not line.lower().startswith("proxy-authenticate:"):
            continue
        for part in re.split(r",\s*(?=Digest\s)|^\s*(?=Digest\s)", line.split(":", 1)[1].strip()):
            if part.startswith("Digest"):
                found.append({k.lower(): v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|[^\s,]+)', part)})
    for challenge in found:
        if challenge.get("algorithm", "MD5").upper() == "SHA-256":
            return challenge
    if not found:
        raise ValueError("no Digest challenge in the 407")
    return found[0]


def digest_answer(challenge: dict, user: str, password: str, method: str, uri: str, count: int,
                  cnonce: str) -> str:
    algorithm = challenge.get("algorithm", "MD5")
    name = {"MD5": "md5", "SHA-256": "sha256"}[algorithm.upper()]

    def h(text: str) -> str:
        return hashlib.new(name, text.encode()).hexdigest()

    ha1 = h(f"{user}:{challenge['realm']}:{password}")
    ha2 = h(f"{method}:{uri}")
    nc = f"{count:08x}"
    response = h(f"{ha1}:{challenge['nonce']}:{nc}:{cnonce}:auth:{ha2}")
    value = (f'Digest username="{user}", realm="{challenge["realm"]}", nonce="{challenge["nonce"]}", uri="{uri}", '
             f'algorithm={algorithm}, qop=auth, nc={nc}, cnonce="{cnonce}", response="{response}"')
    if "opaque" in challenge:
        value += f', opaque="{challenge["opaque"]}"'
    return value


# --------------------------------------------------------------------------- pacing, figures

def paced(rate: float, stop: threading.Event):
    """Yields at a fixed rate until `stop` is set; never catches up in a burst after a stall."""
    interval = 1 / rate
    next_at = time.monotonic()
    while not stop.is_set():
        yield
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        else:
            next_at = time.monotonic()


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile (nan for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


class Probe(threading.Thread):
    """Keep-alive GETs of the origin's /1k at a fixed rate as a user nobody disturbs: every
    latency kept with its time, every status other than 200 (or a broken connection) a failure."""

    def __init__(self, port: int, url: str, authorization: str, rate: float, stop: threading.Event):
        super().__init__(daemon=True)
        self.client = KeepAlive(port)
        self.url, self.authorization, self.rate, self.stop = url, authorization, rate, stop
        self.samples: list[tuple[float, float]] = []
        self.failures: list[tuple[float, str]] = []

    def run(self):
        for _ in paced(self.rate, self.stop):
            status, seconds, body = self.client.get(self.url, self.authorization)
            at = time.monotonic()
            if status == 200 and len(body) == 1024:
                self.samples.append((at, seconds))
            else:
                self.failures.append((at, f"HTTP {status}" if status else "connection failed"))
        self.client.close()

    def latencies(self, start: float, end: float) -> list[float]:
        return [s for at, s in self.samples if start <= at < end]

    def failed(self, start: float, end: float) -> list[str]:
        return [f for at, f in self.failures if start <= at < end]


class ProbeProcess:
    """``Probe``s in a process of their own (`python3 rellib.py probes`), so the latencies of
    the clients nobody disturbs do not include waits for this interpreter's lock while the
    scenario drives hundreds of slow peers. Its clock is the same CLOCK_MONOTONIC as
    time.monotonic() here, so windows are taken in this process's time."""

    def __init__(self, port: int, url: str, authorizations: list[str], rate: float):
        self.process = subprocess.Popen([sys.executable, __file__, "probes"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        b.CHILDREN.append(self.process)
        self.process.stdin.write(json.dumps({"port": port, "url": url, "authorizations": authorizations,
                                             "rate": rate}) + "\n")
        self.process.stdin.flush()
        self.samples: list[tuple[float, float]] = []
        self.failures: list[tuple[float, str]] = []

    def finish(self):
        """Stops the probes and collects what they measured."""
        out, _ = self.process.communicate("stop\n", timeout=60)
        result = json.loads(out)
        self.samples = [tuple(x) for x in result["samples"]]
        self.failures = [tuple(x) for x in result["failures"]]

    def latencies(self, start: float, end: float) -> list[float]:
        return [s for at, s in self.samples if start <= at < end]

    def failed(self, start: float, end: float) -> list[str]:
        return [f for at, f in self.failures if start <= at < end]


def probes_main():
    config = json.loads(sys.stdin.readline())
    stop = threading.Event()
    probes = [Probe(config["port"], config["url"], a, config["rate"], stop) for a in config["authorizations"]]
    for probe in probes:
        probe.start()
    sys.stdin.readline()
    stop.set()
    for probe in probes:
        probe.join(15)
    print(json.dumps({"samples": [s for p in probes for s in p.samples],
                      "failures": [f for p in probes for f in p.failures]}))


# --------------------------------------------------------------------------- the origin process

class Origin:
    """The origin (`python3 rellib.py origin`) in a process of its own, so the load the
    scenarios generate does not share an interpreter lock with it. Ports: `http` (see
    ``serve_http``), `echo` (TCP echo), `sink` (reads and never answers nor closes) and `fin`
    (half-closes at once, then reads and never closes)."""

    def __init__(self, work: Path):
        self.log = open(work / "origin.log", "w")
        self.process = subprocess.Popen([sys.executable, __file__, "origin"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.log, text=True)
        b.CHILDREN.append(self.process)
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the origin did not start (origin.log)")
        self.ports = json.loads(line)
        self.http = self.ports["http"]
        self.base = f"http://127.0.0.1:{self.http}"

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.base}/stats", timeout=10) as r:
            return json.loads(r.read())


STATS = {"requests": 0, "silent_open": 0, "big_open": 0, "big_bytes": 0, "sink_open": 0, "sink_eof": 0,
         "fin_open": 0}
BIG = 1 << 30


async def serve_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    """Keep-alive HTTP/1.1: /1k (1 KiB), /silent (never answers), /trickle-head (the head 1 byte
    a second), /trickle-body?n=N (N body bytes, 1 a second), /big (1 GiB as fast as it is
    taken), /stats (these counters as JSON)."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            STATS["requests"] += 1
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            target = line.split(" ")[1]
            if "://" in target:
                target = "/" + target.split("://", 1)[1].partition("/")[2]
            path = target
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if length:
                await reader.readexactly(int(length.group(1)))
            if path == "/1k":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\nContent-Type: text/plain\r\n\r\n"
                             + b"x" * 1024)
            elif path == "/silent":
                STATS["silent_open"] += 1
                try:
                    await reader.read()
                finally:
                    STATS["silent_open"] -= 1
                return
            elif path == "/trickle-head":
                # A pause between bytes, none after the last: the connection is ready for the
                # next request as soon as the response ends (the proxy pools it at once).
                for i, byte in enumerate(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"):
                    if i:
                        await asyncio.sleep(1)
                    writer.write(bytes([byte]))
                    await writer.drain()
            elif path.startswith("/trickle-body"):
                n = int(path.split("n=", 1)[1]) if "n=" in path else 60
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n".encode())
                for i in range(n):
                    await writer.drain()
                    if i:
                        await asyncio.sleep(1)
                    writer.write(b"t")
            elif path == "/big":
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n".encode())
                block = b"\0" * (256 << 10)
                sent = 0
                STATS["big_open"] += 1
                try:
                    while sent < BIG:
                        writer.write(block)
                        await writer.drain()
                        sent += len(block)
                        STATS["big_bytes"] += len(block)
                finally:
                    STATS["big_open"] -= 1
            elif path == "/stats":
                body = json.dumps(STATS).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, IndexError, ValueError):
        pass
    finally:
        writer.close()


async def serve_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve_sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    """Reads to the end and then keeps its side open: the peer's FIN does not close it."""
    STATS["sink_open"] += 1
    try:
        while await reader.read(65536):
            pass
        STATS["sink_eof"] += 1
        await asyncio.sleep(3600)
    except ConnectionError:
        pass
    finally:
        STATS["sink_open"] -= 1
        writer.close()


async def serve_fin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    """Half-closes at once (sends its FIN), then reads and never closes its side."""
    STATS["fin_open"] += 1
    try:
        writer.write_eof()
        while await reader.read(65536):
            pass
        await asyncio.sleep(3600)
    except ConnectionError:
        pass
    finally:
        STATS["fin_open"] -= 1
        writer.close()


async def origin_main():
    servers = {name: await asyncio.start_server(handler, "127.0.0.1", 0, backlog=4096, limit=1 << 16)
               for name, handler in (("http", serve_http), ("echo", serve_echo), ("sink", serve_sink),
                                     ("fin", serve_fin))}
    print(json.dumps({name: s.sockets[0].getsockname()[1] for name, s in servers.items()}), flush=True)
    # Ends with its parent: stdin is a pipe nobody writes, closed when the scenario exits.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__" and sys.argv[1:] == ["origin"]:
    asyncio.run(origin_main())
elif __name__ == "__main__" and sys.argv[1:] == ["probes"]:
    probes_main()
