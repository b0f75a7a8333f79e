"""Shared helpers for the Portcullis integration tests.

Everything here talks to loopback only (127.0.0.1 / ::1) and every blocking call has a
deadline: socket timeouts, subprocess timeouts, polling loops with an end time.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import re
import signal as _signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PORTCULLIS_BIN = os.environ.get("PORTCULLIS_BIN", str(REPO_ROOT / ".build" / "debug" / "portcullis"))

# The default user of the suite's users file.
USER = "alice"
PASSWORD = "s3cret"

DEFAULT_TIMEOUT = 10.0

PROXY_ENV_VARS = (
    "http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy",
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "FTP_PROXY", "CURL_HOME",
)


# --------------------------------------------------------------------------- ports, polling

def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind port 0, read it, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def wait_until(predicate, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Poll predicate() until it returns a truthy value; raise TimeoutError after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def try_connect(host: str, port: int, timeout: float = 1.0):
    """'ok' if a TCP connection could be made, 'refused' if refused, else the exception name."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        return "ok"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:  # noqa: BLE001 - reported to the caller
        return type(e).__name__
    finally:
        s.close()


# --------------------------------------------------------------------------- credentials

def basic_token(user: str, password: str, encoding: str = "utf-8") -> str:
    return base64.b64encode(f"{user}:{password}".encode(encoding)).decode("ascii")


def basic(user: str = USER, password: str = PASSWORD, encoding: str = "utf-8") -> str:
    """The value of a Proxy-Authorization header with Basic credentials."""
    return "Basic " + basic_token(user, password, encoding)


# --------------------------------------------------------------------------- deterministic data

_BLOCK_LEN = (1 << 20) + 13  # not a power of two, so block edges never line up with chunk edges
_BLOCK = random.Random(0x5EED).randbytes(_BLOCK_LEN)
_BLOCK2 = _BLOCK + _BLOCK


def data_chunks(total: int, chunk: int = 1 << 20):
    """`total` pseudo-random bytes as memoryview chunks (the same bytes every time)."""
    view = memoryview(_BLOCK2)
    pos = 0
    while pos < total:
        n = min(chunk, total - pos, _BLOCK_LEN)
        off = pos % _BLOCK_LEN
        yield view[off:off + n]
        pos += n


def data_bytes(total: int) -> bytes:
    return b"".join(bytes(c) for c in data_chunks(total))


def sha256_of_data(total: int) -> str:
    h = hashlib.sha256()
    for c in data_chunks(total):
        h.update(c)
    return h.hexdigest()


# --------------------------------------------------------------------------- raw HTTP client

@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list  # list of (name, value) in order
    body: bytes = b""
    raw_head: bytes = b""

    def header(self, name: str, default=None):
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return default

    def header_all(self, name: str) -> list:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def has_header(self, name: str) -> bool:
        return self.header(name) is not None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def describe(self) -> str:
        return f"{self.raw_head.decode('latin-1')}{self.body[:500]!r}"


class RawConn:
    """A client socket with its own buffer, so we can read an HTTP head and then keep reading
    tunnel bytes without a buffered file object eating them."""

    def __init__(self, host: str, port: int, timeout: float = DEFAULT_TIMEOUT, source: str | None = None):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source is not None:
            self.sock.bind((source, 0))  # e.g. 127.0.0.2: another client address on loopback
        self.sock.connect((host, port))
        self.buf = bytearray()
        self.host, self.port = host, port

    # -- plumbing
    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def settimeout(self, t: float):
        self.sock.settimeout(t)

    def send(self, data: bytes):
        self.sock.sendall(data)

    def shutdown_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    def _fill(self) -> bool:
        chunk = self.sock.recv(1 << 18)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_until(self, delim: bytes, limit: int = 1 << 20) -> bytes:
        while True:
            idx = self.buf.find(delim)
            if idx >= 0:
                end = idx + len(delim)
                out = bytes(self.buf[:end])
                del self.buf[:end]
                return out
            if len(self.buf) > limit:
                raise AssertionError(f"no {delim!r} within {limit} bytes: {bytes(self.buf[:200])!r}")
            if not self._fill():
                raise EOFError(f"connection closed while waiting for {delim!r}; got {bytes(self.buf)!r}")

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError(f"connection closed after {len(self.buf)} of {n} bytes")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_some(self) -> bytes:
        """Whatever is buffered, else one recv (b'' on EOF)."""
        if self.buf:
            out = bytes(self.buf)
            self.buf.clear()
            return out
        return self.sock.recv(1 << 18)

    def read_to_eof(self, limit: int = 64 << 20) -> bytes:
        while self._fill():
            if len(self.buf) > limit:
                raise AssertionError("too much data before EOF")
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def wait_eof(self, timeout: float = 5.0) -> bytes:
        """Read until the peer closes (EOF or reset). Returns any bytes seen before that.
        Raises socket.timeout if the peer keeps the connection open past `timeout`."""
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            data = bytes(self.buf)
            self.buf.clear()
            while True:
                try:
                    chunk = self.sock.recv(65536)
                except ConnectionResetError:
                    return data
                if not chunk:
                    return data
                data += chunk
        finally:
            self.sock.settimeout(old)

    # -- HTTP
    def request(self, method: str, target: str, headers=None, body: bytes = b"",
                version: str = "HTTP/1.1", host: str | None = None) -> Response:
        self.send(build_request(method, target, headers, body, version, host))
        return self.read_response(method)

    def read_response_head(self, method: str = "GET", skip_interim: bool = True) -> Response:
        while True:
            raw = self.read_until(b"\r\n\r\n")
            resp = parse_head(raw)
            if skip_interim and 100 <= resp.status < 200 and resp.status != 101:
                continue
            return resp

    def iter_body(self, resp: Response, method: str = "GET", chunk_limit: int = 1 << 20):
        """Yield the body of `resp` as it arrives, framed per RFC 9112 §6."""
        if method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200:
            return
        if method == "CONNECT" and 200 <= resp.status < 300:
            return
        te = (resp.header("Transfer-Encoding") or "").lower()
        if te:
            assert te.replace(" ", "").split(",")[-1] == "chunked", f"unexpected Transfer-Encoding {te!r}"
            while True:
                line = self.read_until(b"\r\n", limit=4096)
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    # trailers until the empty line
                    while self.read_until(b"\r\n", limit=65536) != b"\r\n":
                        pass
                    return
                remaining = size
                while remaining:
                    if not self.buf and not self._fill():
                        raise EOFError("connection closed inside a chunk")
                    n = min(remaining, len(self.buf))
                    out = bytes(self.buf[:n])
                    del self.buf[:n]
                    remaining -= n
                    yield out
                assert self.read_exact(2) == b"\r\n", "chunk not followed by CRLF"
            return
        cl = resp.header("Content-Length")
        if cl is not None:
            remaining = int(cl)
            while remaining:
                if not self.buf and not self._fill():
                    raise EOFError(f"connection closed with {remaining} body bytes missing")
                n = min(remaining, len(self.buf))
                out = bytes(self.buf[:n])
                del self.buf[:n]
                remaining -= n
                yield out
            return
        # close-delimited
        while True:
            if self.buf:
                out = bytes(self.buf)
                self.buf.clear()
                yield out
            if not self._fill():
                return

    def read_response(self, method: str = "GET", skip_interim: bool = True) -> Response:
        resp = self.read_response_head(method, skip_interim)
        resp.body = b"".join(self.iter_body(resp, method))
        return resp


def build_request(method: str, target: str, headers=None, body: bytes = b"",
                  version: str = "HTTP/1.1", host: str | None = None) -> bytes:
    """Build a request. `headers` is a list of (name, value) or a dict; a Host header is added
    from the target unless one is given (pass host='' to send none)."""
    hdrs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {k.lower() for k, _ in hdrs}
    if "host" not in names and host != "":
        if host is None:
            m = re.match(r"^[a-zA-Z]+://([^/]+)", target)
            host = m.group(1) if m else target
        hdrs.insert(0, ("Host", host))
    if body and "content-length" not in names and "transfer-encoding" not in names:
        hdrs.append(("Content-Length", str(len(body))))
    head = f"{method} {target} {version}\r\n"
    out = head.encode("latin-1") + b"".join(
        k.encode("latin-1") + b": " + (v if isinstance(v, bytes) else v.encode("latin-1")) + b"\r\n"
        for k, v in hdrs
    ) + b"\r\n"
    return out + body


def parse_head(raw: bytes) -> Response:
    lines = raw.decode("latin-1").split("\r\n")
    status_line = lines[0]
    m = re.match(r"^(HTTP/\d\.\d) (\d{3})(?: (.*))?$", status_line)
    assert m, f"bad status line {status_line!r}"
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        assert sep, f"bad header line {line!r}"
        headers.append((name.strip(), value.strip()))
    return Response(m.group(1), int(m.group(2)), m.group(3) or "", headers, raw_head=raw)


# --------------------------------------------------------------------------- Proxy-Status

def proxy_status_params(value: str) -> dict:
    """Parse `portcullis; error=x; details="y"` into {'error': 'x', 'details': 'y'}."""
    out = {}
    for part in value.split(";")[1:]:
        k, _, v = part.strip().partition("=")
        v = v.strip()
        if v.startswith('"') and v.endswith('"'):
            v = v[1:-1]
        out[k.strip()] = v
    return out


def assert_proxy_status(resp: Response, *, error: str | None = None, details: str | None = None):
    ps = resp.header("Proxy-Status")
    assert ps is not None, f"no Proxy-Status header:\n{resp.describe()}"
    assert ps.startswith("portcullis"), f"Proxy-Status {ps!r} does not start with 'portcullis'"
    if error is not None:
        assert f"error={error}" in ps, f"Proxy-Status {ps!r} lacks error={error}"
    if details is not None:
        assert f'details="{details}"' in ps, f'Proxy-Status {ps!r} lacks details="{details}"'


def assert_short_text_body(resp: Response, max_len: int = 2000):
    ctype = resp.header("Content-Type") or ""
    assert ctype.lower().startswith("text/plain"), f"Content-Type {ctype!r} is not text/plain:\n{resp.describe()}"
    assert resp.body.strip(), f"empty body:\n{resp.describe()}"
    assert len(resp.body) <= max_len, f"body of {len(resp.body)} bytes is not short"
    resp.body.decode("utf-8")  # text


# --------------------------------------------------------------------------- proxy process

class _StreamCollector:
    """Drains a pipe in a thread and lets a test wait for a line."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.data = bytearray()
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while True:
                chunk = os.read(self.pipe.fileno(), 65536)
                if not chunk:
                    break
                with self.cond:
                    self.data += chunk
                    self.cond.notify_all()
        except OSError:
            pass
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()

    def text(self) -> str:
        with self.cond:
            return self.data.decode("utf-8", "replace")

    def wait_for(self, pattern: str, timeout: float):
        """Wait until `pattern` (regex, multiline) matches the collected text; return the match."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                m = rx.search(self.data.decode("utf-8", "replace"))
                if m:
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise TimeoutError(
                        f"pattern {pattern!r} not seen within {timeout}s (stream closed={self.closed}); "
                        f"got:\n{self.data.decode('utf-8', 'replace')[-3000:]}")
                self.cond.wait(left)

    def wait_closed(self, timeout: float):
        self.thread.join(timeout)


class ProxyProcess:
    def __init__(self, args: list, env: dict, connect_addr: tuple, wrapper: list | None = None):
        self.args = args
        self.cmd = (wrapper or []) + [PORTCULLIS_BIN] + args
        self.env = env
        self.host, self.port = connect_addr
        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.stdout = _StreamCollector(self.proc.stdout)
        self.stderr = _StreamCollector(self.proc.stderr)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{h}:{self.port}"

    def wait_ready(self, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.stderr.wait_closed(2)
                raise AssertionError(
                    f"portcullis exited with {self.proc.returncode} before listening on "
                    f"{self.host}:{self.port}\ncmd: {self.cmd}\nstderr:\n{self.stderr.text()[-4000:]}")
            if try_connect(self.host, self.port, 0.5) == "ok":
                return self
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"portcullis not accepting on {self.host}:{self.port} after {timeout}s\n"
                    f"cmd: {self.cmd}\nstderr:\n{self.stderr.text()[-4000:]}")
            time.sleep(0.02)

    def conn(self, timeout: float = DEFAULT_TIMEOUT, source: str | None = None) -> RawConn:
        return RawConn(self.host, self.port, timeout, source)

    def _status_kib(self, field: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/PID/status")

    def vm_hwm_kib(self) -> int:
        """Peak resident memory."""
        return self._status_kib("VmHWM")

    def vm_rss_kib(self) -> int:
        """Resident memory now."""
        return self._status_kib("VmRSS")

    def running(self) -> bool:
        return self.proc.poll() is None

    def send_signal(self, sig=_signal.SIGTERM):
        self.proc.send_signal(sig)

    def stop(self, sig=_signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal and wait; returns the exit code (kills after timeout and fails)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"portcullis did not exit within {timeout}s of {sig!r}")
        self.stdout.wait_closed(5)
        self.stderr.wait_closed(5)
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.stdout.wait_closed(2)
        self.stderr.wait_closed(2)


def clean_env(home: Path, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_ENV_VARS}
    env["HOME"] = str(home)
    env["XDG_DATA_HOME"] = str(home / "xdg-data")
    env.pop("XDG_CONFIG_HOME", None)
    if extra:
        for k, v in extra.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
    return env


# --------------------------------------------------------------------------- curl

def run_curl(args: list, timeout: float = 30.0, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run curl with no config file and no proxy variables; stdout is bytes."""
    cenv = {k: v for k, v in os.environ.items() if k not in PROXY_ENV_VARS}
    if env:
        cenv.update(env)
    cmd = ["curl", "-q", "-sS", "--max-time", str(int(timeout - 2))] + args
    return subprocess.run(cmd, capture_output=True, timeout=timeout, env=cenv)


# --------------------------------------------------------------------------- htpasswd

def htpasswd_line(user: str, password: str, flag: str = "-B", extra: list | None = None) -> str:
    """One 'user:hash' line made by Apache's htpasswd (-B bcrypt, -m apr1, -s SHA, -d crypt, -2/-5)."""
    cmd = ["htpasswd", "-nb" + flag.lstrip("-")] + (extra or []) + [user, password]
    out = subprocess.run(cmd, capture_output=True, timeout=30, check=True).stdout.decode()
    line = out.strip().splitlines()[0]
    assert line.startswith(user + ":"), line
    return line


def mkpasswd_hash(password: str, method: str, extra: list | None = None) -> str:
    cmd = ["mkpasswd", "-m", method] + (extra or []) + ["--stdin"]
    out = subprocess.run(cmd, input=password.encode(), capture_output=True, timeout=30, check=True).stdout
    return out.decode().strip()
