"""The client interoperability matrix (issue 26): a framework that runs one scenario set against
real clients and keeps docs/CLIENTS.md, the published client x scenario table, true.

API (the client modules test_clients_*.py import this; it is not a test module itself)
======================================================================================

Scenarios (``SCENARIOS``: ordered id -> column title; ``SCENARIO_HELP``: id -> what it proves)::

    basic-http        GET http://origin via the proxy, Basic; 200 and the body checked
    basic-connect     GET https://origin through CONNECT, Basic
    wrong-password    Basic with a wrong password, https target through CONNECT: the client ends within
                      WRONG_PASSWORD_BOUND s with the 407 (or an error naming proxy authentication),
                      the proxy saw at most MAX_REFUSED 407s (no request loop)
    digest-http       a proxy offering only Digest, plain http
    digest-connect    a proxy offering only Digest, https through CONNECT
    special-password  Basic, plain http, user SPECIAL_USER whose password is SPECIAL_PASSWORD
                      ("p@ss:w%rd/é": '@' ':' '%' '/' and a non-ASCII letter)
    keepalive-407     the client configured to wait for the challenge where it can (curl
                      --proxy-anyauth…); its first request answered 407, then the retry: pass when
                      the whole exchange used ONE TCP connection (counted by a relay in front of the
                      proxy); a client that sends Basic pre-emptively gets ``preemptive``
    ntlm              a proxy offering only NTLM
    negotiate         a proxy offering only Negotiate (Kerberos, the test KDC of
                      scripts/kdc-test-server.sh; proxy named ``localhost``: SPN HTTP/localhost)
    https-proxy       TLS to the proxy (--listen-tls, certificate of the test CA), Basic, CONNECT
                      to the https origin inside it

Cell values (``VALUES``: word -> meaning): pass, fail, n/a (the client has no such feature: it was
run anyway and failed cleanly), tunnels, preemptive, reconnects, retries, slow, hang, flaky, hidden,
bypass.
Every non-pass cell carries a note (the client's limit and the workaround), shown in the doc.

The environment (module-scoped fixture ``client_matrix_env``)
-------------------------------------------------------------
Import it into the test module so pytest finds it (no conftest change)::

    from client_matrix import client_matrix_env  # noqa: F401  (the fixture)
    from client_matrix import Attempt, Client, Result, run_cell, require_tool

It yields a ``MatrixEnv`` with (one set per module; proxies, origins and relay killed at teardown):

    env.origin_http, env.origin_https  base URLs, http://origin.portcullis.test:PORT and https://…
                     (ORIGIN_HOST: a name the clients do NOT bypass the proxy for; the proxies
                     run in a mount namespace whose resolv.conf names the matrix's own DNS server,
                     MatrixDNS on 127.0.53.x:53, which answers ORIGIN_HOST -> 127.0.0.1 and
                     NXDOMAIN to everything else: nothing leaves the machine, and it does not
                     compete with the suite's NXDOMAIN server for 127.0.0.1:53)
    env.docroot      Path served by both origins (put repositories, indexes, files there);
                     GET /text answers EXPECTED_TEXT
    env.ca_file      PEM of the test CA: it signed the origin's and the TLS proxy's certificate
                     (SANs: origin.portcullis.test, localhost, 127.0.0.1)
    env.proxy_urls   {'basic', 'digest', 'ntlm', 'negotiate' (None without a KDC),
                      'tls-basic' (https://127.0.0.1:PORT), 'relay' (counting relay -> basic)}
                     all without credentials; one SQLite users store (env.store) with MATRIX_USER
                     and SPECIAL_USER, both enrolled for Basic, Digest and NTLM
    env.relay        the counting relay: .connections (accepted so far)
    env.krb_env      {'KRB5CCNAME', 'KRB5_CONFIG'} with a ticket for the KDC's user, or None
    env.client_env(extra) a minimal environment (PATH, LANG… only: no proxy, CA-bundle or config
                     variables of this machine), HOME = a private empty home, then `extra`
    env.sandboxed(argv)   argv prefixed with that same DNS sandbox, so a client that resolves
                     origin.portcullis.test itself stays on loopback (and is caught as ``bypass``)
    env.tmp          a private temporary directory of the module

Running a cell (``Client`` fields: ``lacks`` scenario -> note for features the client lacks,
``notes`` scenario -> note for other non-pass values, ``workarounds`` scenarios whose workaround the
driver implements and run_cell proves, ``flaky`` documented races, ``remarks`` extra sentences,
``hard_timeout``; ``run_client(env, argv, a, extra_env=…)`` runs a command in the sandbox with the
minimal environment and the attempt's bound)::

    client = Client("curl", "curl", version="7.88.1", lacks={"…": "note"}, notes={"scenario": "note"})
    def driver(a: Attempt) -> Result: ...        # run the client once, bounded by a.timeout
    run_cell(env, client, "basic-http", driver)  # classifies, records, fails on a changed cell

``Attempt`` (built by run_cell per scenario) tells the driver what to do: ``url`` (target, http
or https; ``a.origin_base`` to build another path), ``proxy_url`` (no credentials),
``proxy_url_with_credentials()`` (percent-encoded UTF-8), ``scheme`` (basic|digest|ntlm|negotiate),
``user``/``password`` (None for negotiate), ``challenge_first`` (keepalive-407: use the client's
wait-for-the-challenge mode if it has one), ``workaround`` (True: apply the workaround the note
describes; only for scenarios in ``client.workarounds``), ``ca_file``, ``timeout`` (hard bound: end the client
before it), ``extra_env`` (Kerberos variables), ``check_body(bytes)``. The driver returns
``Result(ok, status=None, error="", detail="")``: ok only when the client reported success AND the
driver checked the content (``a.check_body`` for /text); status the HTTP status the client saw
if it exposes one (407…); error the client's message/exit text as the user would see it. Raise
nothing for a client failure; subprocess.TimeoutExpired/TimeoutError from the driver means hang.

run_cell then decides the value from the Result AND the proxy's JSON access log (a success must
appear there as a 200 of the right kind, else ``bypass``), the relay's connection count and the
elapsed time; scenarios listed in ``client.lacks`` that fail cleanly become ``n/a``.
``record(client, scenario, value, note=None, detail="")`` is the lower-level call (run_cell
uses it); call it directly for a cell you classify yourself.

The published table
-------------------
docs/CLIENTS.md is generated: the table, the notes and, at its end, one JSON line per client
(read back by the suite). Without PORTCULLIS_CLIENTS_WRITE, every recorded cell is compared with
it: a changed cell fails its test at once, and the module's teardown fails naming every changed
cell and any stale note. With PORTCULLIS_CLIENTS_WRITE=1 the recorded clients' cells, versions
and notes are written into it instead (other clients' rows kept). Versions are shown, never
compared. With PORTCULLIS_REQUIRE_CLIENTS=1 (CI) a client that is not installed fails
(``require_tool``); otherwise its tests skip naming it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import http.server
import json
import os
import re
import select
import shutil
import socket
import socketserver
import ssl
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import quote, urlsplit

import pytest

from portcullis_helpers import PORTCULLIS_BIN, REPO_ROOT, free_port, try_connect, wait_until

# ----------------------------------------------------------------------------------- constants

SCENARIOS: dict[str, str] = {
    "basic-http": "Basic, http",
    "basic-connect": "Basic, CONNECT",
    "wrong-password": "wrong password",
    "digest-http": "Digest, http",
    "digest-connect": "Digest, CONNECT",
    "special-password": "password `p@ss:w%rd/é`",
    "keepalive-407": "keep-alive after 407",
    "ntlm": "NTLM",
    "negotiate": "Negotiate",
    "https-proxy": "https:// proxy",
}

SCENARIO_HELP: dict[str, str] = {
    "basic-http": "`GET http://origin/…` through a proxy offering Basic; 200 and the body checked, "
                  "and the proxy's access log shows the request as the user's",
    "basic-connect": "`GET https://origin/…` through a CONNECT tunnel, Basic",
    "wrong-password": "a wrong password (Basic, https through CONNECT, where most traffic goes and where "
                      "clients are the least forthcoming): the client must end within {bound} s "
                      "with the 407 or an error naming proxy authentication, after at most "
                      "{max_refused} refused requests",
    "digest-http": "a proxy offering only Digest (SHA-256 and MD5 in one field, the default), plain http",
    "digest-connect": "the same Digest-only proxy, https through CONNECT",
    "special-password": "Basic, plain http, a password with `@ : % /` and `é` "
                        "(given to the client the way it documents; percent-encoded UTF-8 in URLs); Basic only, "
                        "one cell per client",
    "keepalive-407": "the client left to wait for the challenge where it can: its first request gets "
                     "the 407 and the retry must use the same TCP connection (connections counted by "
                     "a relay in front of the proxy)",
    "ntlm": "a proxy offering only NTLM (NTLMv2)",
    "negotiate": "a proxy offering only Negotiate, Kerberos ticket from the test KDC",
    "https-proxy": "TLS to the proxy (`--listen-tls`, a test CA), Basic, then CONNECT to the https origin",
}

VALUES: dict[str, str] = {
    "pass": "works as the scenario says",
    "fail": "does not work although the client has the feature (see the note)",
    "n/a": "the client has no such feature; run anyway, it ended cleanly without success",
    "tunnels": "works, but through a CONNECT tunnel even for an `http://` URL, so the origin's port must be in "
               "`--connect-ports` (only 443 by default)",
    "preemptive": "sends Basic credentials with the first request: no 407 to recover from",
    "reconnects": "after the 407 the retry opens a new TCP connection",
    "retries": "a refused credential is sent again and again (more than the bound) before giving up",
    "slow": "ends, but only after the bound (a timeout of its own)",
    "hang": "does not end by itself within the hard bound (killed by the suite)",
    "flaky": "a race in the client: some runs work, others hang (the suite accepts either, nothing else)",
    "hidden": "ends with the 407 but does not tell the user it was one",
    "bypass": "succeeded without going through the proxy",
}

# Clients in the order of the table; clients not listed follow in alphabetical order.
CLIENT_ORDER = [
    "curl", "wget", "git", "pip", "apt",
    "python-requests", "python-urllib", "python-httpx", "python-aiohttp",
    "node-http", "node-undici", "node-fetch",
    "java-httpclient", "java-httpurlconnection", "go-nethttp", "chromium",
]

ORIGIN_HOST = "origin.portcullis.test"
EXPECTED_TEXT = b"hello from the matrix origin\n"

MATRIX_USER, MATRIX_PASSWORD = "matrix", "mx-Pa55-4711"
SPECIAL_USER, SPECIAL_PASSWORD = "special", "p@ss:w%rd/é"
WRONG_PASSWORD = "Wr0ng-matrix-pw"

WRONG_PASSWORD_BOUND = 5.0   # seconds: a wrong password must end the client within this
HARD_TIMEOUT = 30.0          # seconds: a client still running after this is killed: hang
MAX_REFUSED = 2              # 407s the proxy may send for one wrong-password attempt

DOC_PATH = REPO_ROOT / "docs" / "CLIENTS.md"
WRITE = os.environ.get("PORTCULLIS_CLIENTS_WRITE") == "1"
REQUIRE = os.environ.get("PORTCULLIS_REQUIRE_CLIENTS") == "1"
REQUIRE_KDC = os.environ.get("PORTCULLIS_REQUIRE_KDC") == "1"

REGENERATE = ("PORTCULLIS_CLIENTS_WRITE=1 PORTCULLIS_BIN=… bash scripts/kdc-test-server.sh run "
              "python3 -m pytest -q -p no:cacheprovider Tests/integration/test_clients_*.py")

# ------------------------------------------------------------------------------- secrets

_SECRETS: set[str] = set()


def _register_secret(secret: str, user: str | None = None):
    forms = {secret, quote(secret, safe=""), quote(secret, safe="").lower()}
    if user is not None:
        for enc in ("utf-8", "latin-1"):
            with contextlib.suppress(UnicodeEncodeError):
                token = base64.b64encode(f"{user}:{secret}".encode(enc)).decode()
                forms |= {token, token.rstrip("=")}
    _SECRETS.update(f for f in forms if len(f) >= 6)
    try:  # the suite's end-of-run scan of every proxy log looks for them too
        from conftest import EXTRA_SECRETS
        EXTRA_SECRETS.update(f for f in forms if len(f) >= 6)
    except ImportError:
        pass


def redact(text: str) -> str:
    """Text with every password of the matrix (raw, percent-encoded, inside Basic tokens) as ***."""
    for s in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(s, "***")
    return text


# ------------------------------------------------------------------------------ tools, skips

def require_tool(client_id: str, available: bool, what: str):
    """Skip (or, with PORTCULLIS_REQUIRE_CLIENTS=1, fail) when a client is not installed."""
    if available:
        return
    msg = f"client {client_id} not available: {what}"
    if REQUIRE:
        pytest.fail(msg + " (PORTCULLIS_REQUIRE_CLIENTS=1: every client must be installed)")
    pytest.skip(msg)


def tool_version(argv: list[str], pattern: str = r"(\d+(?:\.\d+)+)", timeout: float = 30) -> str:
    """The first version-looking string a `--version` command prints ('?' if none)."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(1) if m else "?"


# ------------------------------------------------------------------------------------- origins

class _MatrixHandler(http.server.BaseHTTPRequestHandler):
    """GET/HEAD /text -> EXPECTED_TEXT; other paths: files under server.docroot ('/' -> index.html)."""

    protocol_version = "HTTP/1.1"
    server_version = "MatrixOrigin/1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        with self.server.lock:
            self.server.requests.append((self.command, self.path, self.headers.get("Host")))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = urlsplit(self.path).path
        if path == "/text":
            body, ctype = EXPECTED_TEXT, "text/plain"
        else:
            rel = path.lstrip("/")
            target = (self.server.docroot / rel).resolve()
            if path.endswith("/"):
                target = target / "index.html"
            if not str(target).startswith(str(self.server.docroot.resolve())) or not target.is_file():
                body, ctype = b"no such file\n", None
            else:
                body, ctype = target.read_bytes(), "application/octet-stream"
                if target.suffix == ".html":
                    ctype = "text/html"
        status = 200 if ctype else 404
        self.send_response(status)
        self.send_header("Content-Type", ctype or "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_POST = do_GET


class MatrixOrigin(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """The matrix's origin on 127.0.0.1 (TLS when given a context), named ORIGIN_HOST by clients."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, docroot: Path, tls: ssl.SSLContext | None = None):
        super().__init__(("127.0.0.1", 0), _MatrixHandler)
        self.docroot, self.tls = docroot, tls
        self.lock = threading.Lock()
        self.requests: list[tuple] = []
        self.port = self.server_address[1]
        self.base = f"{'https' if tls else 'http'}://{ORIGIN_HOST}:{self.port}"
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def get_request(self):
        sock, addr = super().get_request()
        sock.settimeout(15)
        return sock, addr

    def finish_request(self, request, client_address):
        if self.tls is None:
            return super().finish_request(request, client_address)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            conn.close()

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.shutdown()
        self.server_close()


# -------------------------------------------------------------------------------- the relay

class CountingRelay:
    """A TCP relay on 127.0.0.1 in front of a proxy that counts the connections clients open."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.lsock.settimeout(0.2)
        self.port = self.lsock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self.lock = threading.Lock()
        self.socks: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                client, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self.socks.append(client)
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket):
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        with self.lock:
            self.socks.append(upstream)
        peers = {client: upstream, upstream: client}
        try:
            while not self.stopping.is_set():
                ready, _, _ = select.select(list(peers), [], [], 0.5)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    peers[s].sendall(data)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def stop(self):
        self.stopping.set()
        self.lsock.close()
        with self.lock:
            for s in self.socks:
                with contextlib.suppress(OSError):
                    s.close()
        self.thread.join(2)


# ------------------------------------------------------------------------------ access logs

class AccessLog:
    """A proxy's JSON access log, read from a mark."""

    def __init__(self, path: Path):
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def records_since(self, mark: int, settle: float = 0.25, timeout: float = 5.0) -> list[dict]:
        """Records written after `mark`, once the file has stopped growing for `settle` s."""
        deadline = time.monotonic() + timeout
        last, stable_since = -1, time.monotonic()
        while True:
            size = self.mark()
            now = time.monotonic()
            if size != last:
                last, stable_since = size, now
            elif now - stable_since >= settle or now >= deadline:
                break
            time.sleep(0.05)
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(mark)
            data = f.read()
        return [json.loads(line) for line in data.decode("utf-8", "replace").splitlines() if line.strip()]


# ------------------------------------------------------------------------------------- DNS

class MatrixDNS:
    """A UDP DNS server on 127.0.53.x:53: A records for `hosts` (empty NOERROR for their other
    types), NXDOMAIN for every other name."""

    def __init__(self, hosts: dict[str, str]):
        self.hosts = {k.lower(): v for k, v in hosts.items()}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for last in range(1, 255):
            try:
                self.sock.bind((f"127.0.53.{last}", 53))
                break
            except OSError:
                continue
        else:
            self.sock.close()
            raise OSError("no free 127.0.53.x:53")
        self.address = self.sock.getsockname()[0]
        self.sock.settimeout(0.2)
        self.queries: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        while not self.stopping.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with contextlib.suppress(Exception):
                self.sock.sendto(self._answer(data), addr)

    def _answer(self, data: bytes) -> bytes:
        qid, flags, qd = struct.unpack("!HHH", data[:6])
        i, labels = 12, []
        while data[i] != 0:
            labels.append(data[i + 1:i + 1 + data[i]])
            i += data[i] + 1
        qtype = struct.unpack("!H", data[i + 1:i + 3])[0]
        i += 5
        name = b".".join(labels).decode("ascii", "replace").lower()
        self.queries.append(name)
        rd = flags & 0x0100
        address = self.hosts.get(name) if qd == 1 else None
        if address is None:
            return struct.pack("!HHHHHH", qid, 0x8000 | rd | 0x0080 | 3, qd, 0, 0, 0) + data[12:i]
        answer = b""
        if qtype == 1:  # A: the question's name (pointer), class IN, TTL 5 s
            answer = struct.pack("!HHHIH", 0xC00C, 1, 1, 5, 4) + socket.inet_aton(address)
        return (struct.pack("!HHHHHH", qid, 0x8000 | 0x0400 | rd | 0x0080, 1, 1 if answer else 0, 0, 0)
                + data[12:i] + answer)

    def stop(self):
        self.stopping.set()
        self.thread.join(2)
        self.sock.close()


def _dns_sandbox(tmp: Path):
    """(MatrixDNS, wrapper argv) or (None, None): the wrapper runs a command with /etc/resolv.conf
    bind-mounted to one that names the MatrixDNS."""
    try:
        dns = MatrixDNS({ORIGIN_HOST: "127.0.0.1"}).start()
    except OSError:
        return None, None
    resolv = tmp / "resolv.conf"
    resolv.write_text(f"nameserver {dns.address}\noptions timeout:1 attempts:1\n")
    wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv)]
    try:
        probe = subprocess.run(wrapper + ["getent", "hosts", ORIGIN_HOST], capture_output=True, timeout=10)
        ok = probe.returncode == 0 and probe.stdout.startswith(b"127.0.0.1")
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        dns.stop()
        return None, None
    return dns, wrapper


# ----------------------------------------------------------------------------- environment

def _openssl(*args, cwd: Path):
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and one leaf for origin.portcullis.test, localhost and 127.0.0.1:
    returns (ca.pem, leaf.pem, leaf.key)."""
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
             "-keyout", ca_key, "-out", ca, "-subj", "/CN=Portcullis client matrix CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=directory)
    leaf, key, csr, ext = (directory / n for n in ("leaf.pem", "leaf.key", "leaf.csr", "leaf.ext"))
    ext.write_text(f"subjectAltName=DNS:{ORIGIN_HOST},DNS:localhost,IP:127.0.0.1\n"
                   "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
             "-out", csr, "-subj", f"/CN={ORIGIN_HOST}", cwd=directory)
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-set_serial", "4711", "-days", "2",
             "-extfile", ext, "-out", leaf, cwd=directory)
    return ca, leaf, key


def _users(store: Path, *args: str, stdin: str | None = None):
    cmd = [PORTCULLIS_BIN, "users", *args, "--store", f"sqlite:{store}"]
    out = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"portcullis users {args[0]} failed:\n{redact(out.stdout + out.stderr)}"


@dataclass
class ProxyInfo:
    url: str
    process: object
    log: AccessLog


CLIENT_ENV_KEEP = {"PATH", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "USER", "LOGNAME", "SHELL", "TZ",
                   "JAVA_HOME", "GOROOT"}


class MatrixEnv:
    """What client_matrix_env yields (see the module docstring)."""

    def __init__(self):
        self.proxies: dict[str, ProxyInfo] = {}
        self.proxy_urls: dict[str, str | None] = {}
        self.krb_env: dict | None = None
        self.wrapper: list[str] | None = None
        self.recorded: dict[tuple[str, str], dict] = {}
        self.clients: dict[str, "Client"] = {}

    def client_env(self, extra: dict | None = None) -> dict:
        """A minimal environment for a client: only CLIENT_ENV_KEEP from os.environ (no proxy, CA
        bundle or config variables this machine may set: GIT_SSL_CAINFO, PIP_CERT, SSL_CERT_FILE…
        would override the clients' own options and differ from CI), HOME = a private empty home,
        then `extra` (None removes a key)."""
        env = {k: v for k, v in os.environ.items() if k in CLIENT_ENV_KEEP}
        env["HOME"] = str(self.home)
        env["XDG_CONFIG_HOME"] = str(self.home / ".config")
        env.setdefault("LANG", "C.UTF-8")
        for k, v in (extra or {}).items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env

    def sandboxed(self, argv: list[str]) -> list[str]:
        return list(self.wrapper or []) + [str(a) for a in argv]


_CURRENT: list[MatrixEnv] = []


def _kerberos(env: MatrixEnv, tmp: Path):
    keytab = os.environ.get("PORTCULLIS_TEST_KRB5_KEYTAB")
    if not keytab:
        return None
    krb = {"KRB5CCNAME": f"FILE:{tmp / 'ccache'}", "KRB5_CONFIG": os.environ["KRB5_CONFIG"]}
    subprocess.run(["kinit", os.environ["PORTCULLIS_TEST_KRB5_USER"]],
                   input=os.environ["PORTCULLIS_TEST_KRB5_PASSWORD"].encode(), check=True,
                   capture_output=True, timeout=30, env={**os.environ, **krb})
    _register_secret(os.environ["PORTCULLIS_TEST_KRB5_PASSWORD"])
    return krb


@pytest.fixture(scope="module")
def client_matrix_env(tmp_path_factory):
    """One environment per client module: origins, CA, DNS, proxies (basic + TLS listener, digest,
    ntlm, negotiate), the counting relay, a private home. At teardown the recorded cells are
    checked against (or, PORTCULLIS_CLIENTS_WRITE=1, written into) docs/CLIENTS.md."""
    from conftest import ProxyLauncher  # the suite's launcher: processes killed, logs scanned for secrets
    for user, pw in ((MATRIX_USER, MATRIX_PASSWORD), (SPECIAL_USER, SPECIAL_PASSWORD), (MATRIX_USER, WRONG_PASSWORD)):
        _register_secret(pw, user)
    tmp = tmp_path_factory.mktemp("matrix")
    dns, wrapper = _dns_sandbox(tmp)
    if wrapper is None:
        msg = ("the client matrix needs a private mount namespace (unshare, mount: root or user namespaces) "
               f"and a free UDP port 53 on some 127.0.53.x, so the proxies resolve {ORIGIN_HOST} on loopback")
        if REQUIRE:
            pytest.fail(msg)
        pytest.skip(msg)
    launcher = ProxyLauncher(tmp_path_factory, None, wrapper)
    env = MatrixEnv()
    env.wrapper, env.dns, env.tmp = wrapper, dns, tmp
    stoppers: list = [dns.stop, launcher.cleanup]
    try:
        env.home = tmp / "home"
        env.home.mkdir()
        env.docroot = tmp / "docroot"
        env.docroot.mkdir()
        env.ca_file, env.cert_file, env.key_file = make_ca(tmp)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(env.cert_file), str(env.key_file))
        env.http_origin = MatrixOrigin(env.docroot).start()
        stoppers.append(env.http_origin.stop)
        env.https_origin = MatrixOrigin(env.docroot, ctx).start()
        stoppers.append(env.https_origin.stop)
        env.origin_http, env.origin_https = env.http_origin.base, env.https_origin.base

        env.store = tmp / "users.db"
        for user, pw in ((MATRIX_USER, MATRIX_PASSWORD), (SPECIAL_USER, SPECIAL_PASSWORD)):
            _users(env.store, "add", user, "--password-stdin", "--digest", "--ntlm", "--cost", "4",
                   stdin=pw + "\n")
        # CONNECT to the origins' ports (undici tunnels http:// URLs too) and to 443.
        connect_ports = f"443,{env.https_origin.port},{env.http_origin.port}"
        common = ["--store", f"sqlite:{env.store}", "--connect-ports", connect_ports, "--access-log-format", "json"]

        def start(name: str, *extra, listen_host="127.0.0.1", **kw):
            port = free_port()
            log = tmp / f"access-{name}.jsonl"
            p = launcher.start(*common, "--access-log", log, *extra, htpasswd=None,
                               listen=[f"127.0.0.1:{port}"], **kw)
            info = ProxyInfo(f"http://{listen_host}:{port}", p, AccessLog(log))
            env.proxies[name] = info
            env.proxy_urls[name] = info.url
            return info

        tls_port = free_port()
        basic = start("basic", "--auth", "basic", "--listen-tls", f"127.0.0.1:{tls_port}",
                      "--tls-cert", env.cert_file, "--tls-key", env.key_file)
        wait_until(lambda: try_connect("127.0.0.1", tls_port, 0.5) == "ok", 10, what="the TLS listener")
        env.proxies["tls-basic"] = ProxyInfo(f"https://127.0.0.1:{tls_port}", basic.process, basic.log)
        env.proxy_urls["tls-basic"] = env.proxies["tls-basic"].url
        start("digest", "--auth", "digest")
        start("ntlm", "--auth", "ntlm")
        env.krb_env = _kerberos(env, tmp)
        if env.krb_env:
            # Named localhost: the KDC's service principal is HTTP/localhost.
            start("negotiate", "--auth", "negotiate", "--keytab", os.environ["PORTCULLIS_TEST_KRB5_KEYTAB"],
                  listen_host="localhost", env={"KRB5_CONFIG": os.environ["KRB5_CONFIG"]})
        else:
            env.proxy_urls["negotiate"] = None
        env.relay = CountingRelay(("127.0.0.1", int(basic.url.rsplit(":", 1)[1]))).start()
        stoppers.append(env.relay.stop)
        env.proxies["relay"] = ProxyInfo(env.relay.url, basic.process, basic.log)
        env.proxy_urls["relay"] = env.relay.url
        _CURRENT.append(env)
        try:
            yield env
        finally:
            _CURRENT.remove(env)
        _finish_module(env)
    finally:
        for stop in reversed(stoppers):
            with contextlib.suppress(Exception):
                stop()


# --------------------------------------------------------------------------------- clients

@dataclass
class Client:
    """A row of the table. `lacks`: scenario -> note for features the client does not have (the
    cell is n/a when the run fails cleanly); `notes`: scenario -> note for any other non-pass
    value (the client's limit and the workaround). `workarounds`: scenarios whose note's workaround
    the driver implements when Attempt.workaround is True: run_cell then runs it too and it must
    pass (the note says so). `remarks`: sentences about the client shown under its notes whatever
    its cells (prove each in a test of its own). `title` may contain Markdown."""
    id: str
    title: str
    version: str = "?"
    lacks: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    workarounds: set[str] = field(default_factory=set)
    remarks: list[str] = field(default_factory=list)
    flaky: set[str] = field(default_factory=set)
    hard_timeout: float = HARD_TIMEOUT


@dataclass
class Attempt:
    scenario: str
    url: str
    origin_base: str
    proxy_url: str
    scheme: str
    user: str | None
    password: str | None = field(repr=False)  # never in a traceback's argument display
    ca_file: str = ""
    timeout: float = HARD_TIMEOUT
    challenge_first: bool = False
    https_target: bool = False
    workaround: bool = False
    extra_env: dict = field(default_factory=dict)

    def proxy_url_with_credentials(self) -> str:
        """The proxy URL with user and password percent-encoded (UTF-8) in it."""
        if self.user is None:
            return self.proxy_url
        scheme, rest = self.proxy_url.split("://", 1)
        return f"{scheme}://{quote(self.user, safe='')}:{quote(self.password or '', safe='')}@{rest}"

    @staticmethod
    def check_body(body: bytes | str | None) -> bool:
        if isinstance(body, str):
            body = body.encode()
        return body == EXPECTED_TEXT


@dataclass
class Result:
    ok: bool
    status: int | None = None
    error: str = ""
    detail: str = ""


def attempt_for(env: MatrixEnv, scenario: str, path: str = "/text") -> Attempt:
    """The Attempt run_cell gives the driver for `scenario` (path: the origin path for url)."""
    https = scenario in ("basic-connect", "digest-connect", "https-proxy", "wrong-password")
    base = env.origin_https if https else env.origin_http
    proxy = {"digest-http": "digest", "digest-connect": "digest", "ntlm": "ntlm", "negotiate": "negotiate",
             "https-proxy": "tls-basic", "keepalive-407": "relay"}.get(scenario, "basic")
    scheme = {"digest": "digest", "ntlm": "ntlm", "negotiate": "negotiate"}.get(proxy, "basic")
    user, password = MATRIX_USER, MATRIX_PASSWORD
    if scenario == "special-password":
        user, password = SPECIAL_USER, SPECIAL_PASSWORD
    elif scenario == "wrong-password":
        password = WRONG_PASSWORD
    elif scenario == "negotiate":
        user = password = None
    extra_env = dict(env.krb_env or {}) if scenario == "negotiate" else {}
    return Attempt(scenario=scenario, url=base + path, origin_base=base, proxy_url=env.proxy_urls[proxy] or "",
                   scheme=scheme, user=user, password=password, ca_file=str(env.ca_file),
                   timeout=HARD_TIMEOUT, challenge_first=scenario == "keepalive-407", https_target=https,
                   extra_env=extra_env)


def _proxy_of(env: MatrixEnv, a: Attempt) -> ProxyInfo:
    for info in env.proxies.values():
        if info.url == a.proxy_url:
            return info
    raise AssertionError(f"no proxy {a.proxy_url}")


def run_cell(env: MatrixEnv, client: Client, scenario: str, driver: Callable[[Attempt], Result],
             path: str = "/text") -> str:
    """Run `driver` once for `scenario`, classify the outcome, record it (failing the test when
    the cell differs from docs/CLIENTS.md). Returns the value."""
    assert scenario in SCENARIOS, scenario
    env.clients[client.id] = client
    if scenario == "negotiate" and not env.krb_env:
        msg = "no test KDC (run under scripts/kdc-test-server.sh)"
        if REQUIRE_KDC or REQUIRE:
            pytest.fail(msg)
        pytest.skip(msg)
    a = attempt_for(env, scenario, path)
    a.timeout = client.hard_timeout
    value, summary = _run_once(env, client, a, driver)
    if scenario in client.flaky and value in ("pass", "hang", "slow"):
        summary += f"\n(a documented race: {value} recorded as flaky)"
        value = "flaky"
    note = client.lacks.get(scenario) if value == "n/a" else client.notes.get(scenario)
    if value != "pass" and scenario in client.workarounds:
        a2 = attempt_for(env, scenario, path)
        a2.workaround, a2.timeout = True, client.hard_timeout
        value2, summary2 = _run_once(env, client, a2, driver)
        summary += f"\nwith the workaround: {summary2}"
        if value2 != "pass":
            print(redact(summary))
            raise AssertionError(f"the workaround documented for {client.id} x {scenario} does not work:\n"
                                 + redact(summary))
        note = (note or "") + " (The suite checks this workaround.)"
    record(client, scenario, value, note=note, detail=summary)
    return value


def _run_once(env: MatrixEnv, client: Client, a: Attempt, driver) -> tuple[str, str]:
    proxy = _proxy_of(env, a)
    mark = proxy.log.mark()
    conns_before = env.relay.connections
    t0 = time.monotonic()
    timed_out = False
    try:
        res = driver(a)
    except (subprocess.TimeoutExpired, TimeoutError) as e:
        said = b"".join(x for x in (getattr(e, "stdout", None), getattr(e, "stderr", None)) if isinstance(x, bytes))
        timed_out, res = True, Result(False, error=f"killed after {a.timeout:.0f} s: {type(e).__name__}; "
                                                   f"it had said: {said.decode('utf-8', 'replace')[-600:]}")
    elapsed = time.monotonic() - t0
    records = proxy.log.records_since(mark)
    conns = env.relay.connections - conns_before
    value, why = classify(a, res, records, elapsed, timed_out, conns)
    if value not in ("pass", "bypass") and a.scenario in client.lacks and not res.ok and not timed_out:
        value = "n/a"
    summary = (f"{client.id} x {a.scenario}{' (workaround)' if a.workaround else ''}: {value} ({why}); "
               f"{elapsed:.1f} s; status {res.status}; proxy saw {[_brief(r) for r in records]}; "
               f"relay connections {conns}; error: {res.error[-600:]!r}; {res.detail}")
    return value, redact(summary)


def _brief(r: dict) -> str:
    return f"{r.get('method')} {r.get('status')} {r.get('user') or '-'}"


def classify(a: Attempt, res: Result, records: list[dict], elapsed: float, timed_out: bool,
             connections: int) -> tuple[str, str]:
    """The cell value for one run and the reason, from what the client said and the proxy saw."""
    refused = [r for r in records if r.get("status") == 407]
    if timed_out:
        return "hang", f"still running after {a.timeout:.0f} s"
    if a.scenario == "wrong-password":
        if res.ok and not records:
            return "bypass", "the client succeeded and the proxy saw nothing"
        if res.ok:
            return "fail", "succeeded with a wrong password?!"
        if len(refused) > MAX_REFUSED:
            return "retries", f"{len(refused)} requests refused with 407"
        if elapsed > WRONG_PASSWORD_BOUND:
            return "slow", f"ended after {elapsed:.1f} s"
        if not refused:
            return "fail", "the proxy refused nothing: the client never asked it"
        told = res.status == 407 or re.search(r"407|proxy.?auth", res.error, re.I)
        if not told:
            return "hidden", "ended without naming the 407"
        return "pass", f"{len(refused)} refused, ended in {elapsed:.1f} s"
    if not res.ok:
        return "fail", "the client did not succeed"
    good = [r for r in records if r.get("status") == 200 and
            (r.get("method") == "CONNECT" or ORIGIN_HOST in str(r.get("target", "")))]
    if a.user is not None:
        good = [r for r in good if r.get("user") == a.user]
    if not good:
        return "bypass", "the client succeeded but the proxy logged no authenticated 200 for it"
    if not a.https_target and all(r.get("method") == "CONNECT" for r in good) and a.scenario != "keepalive-407":
        return "tunnels", "an http:// URL fetched through CONNECT"
    if a.scenario == "keepalive-407":
        if not refused:
            return "preemptive", "no 407: credentials sent with the first request"
        if connections > 1:
            return "reconnects", f"{connections} TCP connections for {len(refused)} 407(s) and the retry"
        return "pass", f"{len(refused)} 407(s) and the retry on {connections} connection"
    return "pass", "ok"


# ---------------------------------------------------------------------------- recording

def record(client: Client | str, scenario: str, value: str, note: str | None = None, detail: str = ""):
    """Record one cell of the current module's environment. Without PORTCULLIS_CLIENTS_WRITE the
    value is compared with docs/CLIENTS.md at once (AssertionError naming the cell)."""
    assert scenario in SCENARIOS, f"unknown scenario {scenario!r}"
    assert value in VALUES, f"unknown cell value {value!r} (one of {', '.join(VALUES)})"
    if isinstance(client, str):
        client = Client(client, client)
    env = _CURRENT[-1]
    env.clients.setdefault(client.id, client)
    detail = redact(detail)
    print(detail or f"{client.id} x {scenario}: {value}")
    if value != "pass":
        assert note, f"{client.id} x {scenario} is {value!r}: it needs a note (client limit + workaround)\n{detail}"
    env.recorded[(client.id, scenario)] = {"value": value, "note": note if value != "pass" else None}
    if WRITE:
        return
    doc = load_doc()
    row = doc.get(client.id)
    expected = row["cells"].get(scenario, {}).get("value") if row else None
    if expected != value:
        raise AssertionError(
            f"client matrix cell {client.id} x {scenario} changed: docs/CLIENTS.md says {expected or 'nothing'}, "
            f"observed {value}.\n{detail}\nIf this is intended, regenerate the doc: {REGENERATE}")


# ---------------------------------------------------------------------------------- the doc

_DATA_START = "<!-- client-matrix-data (one JSON line per client; generated, read back by the suite)"
_DATA_END = "-->"


def load_doc(path: Path = DOC_PATH) -> dict[str, dict]:
    """{client id: {"title", "version", "cells": {scenario: {"value", "note"}}}} from the doc."""
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    start = text.find(_DATA_START)
    if start < 0:
        return {}
    rows = {}
    for line in text[start + len(_DATA_START):].splitlines():
        line = line.strip()
        if line == _DATA_END:
            break
        if line:
            row = json.loads(line)
            rows[row["id"]] = row
    return rows


def _order(ids) -> list[str]:
    known = [c for c in CLIENT_ORDER if c in ids]
    return known + sorted(c for c in ids if c not in CLIENT_ORDER)


def _anchor(client: str, scenario: str) -> str:
    return f"{client}--{scenario}"


def render_doc(rows: dict[str, dict]) -> str:
    scen = list(SCENARIOS)
    out = [
        "# Clients: what works with which client",
        "",
        "<!-- Generated by the client matrix tests (Tests/integration/client_matrix.py and test_clients_*.py);",
        "     do not edit. Regenerate with:",
        f"     {REGENERATE}",
        "     Without PORTCULLIS_CLIENTS_WRITE=1 the same run fails when a cell differs from this file. -->",
        "",
        "Every cell below was measured by the test suite against the real client, talking to a real",
        "Portcullis on loopback (origins `http://` and `https://` with a test CA, named",
        f"`{ORIGIN_HOST}` so that no client bypasses the proxy for a loopback name). CI runs it and",
        "fails when a cell changes. Versions are those of the last regeneration (Debian 12 packages,",
        "PyPI for the Python libraries); they are shown, not compared.",
        "",
        "| Client | Version | " + " | ".join(SCENARIOS[s] for s in scen) + " |",
        "| --- | --- | " + " | ".join("---" for _ in scen) + " |",
    ]
    for cid in _order(rows):
        row = rows[cid]
        cells = []
        for s in scen:
            c = row["cells"].get(s)
            if c is None:
                cells.append("")
            elif c["value"] == "pass":
                cells.append("pass")
            else:
                cells.append(f"[{c['value']}](#{_anchor(cid, s)})")
        out.append(f"| {row['title']} | {row['version']} | " + " | ".join(cells) + " |")
    out += ["", "## Scenarios", ""]
    for s in scen:
        out.append(f"- **{SCENARIOS[s]}** (`{s}`): " +
                   SCENARIO_HELP[s].format(bound=f"{WRONG_PASSWORD_BOUND:.0f}", max_refused=MAX_REFUSED) + ".")
    out += ["", "Cell values:", ""]
    out += [f"- `{v}`: {meaning}." for v, meaning in VALUES.items()]
    out += ["", "## Notes: each client's limits and their workarounds", ""]
    for cid in _order(rows):
        row = rows[cid]
        notes = [(s, row["cells"][s]) for s in scen if s in row["cells"] and row["cells"][s]["value"] != "pass"]
        remarks = row.get("remarks") or []
        if not notes and not remarks:
            continue
        out += [f"### {row['title']}", ""]
        for s, c in notes:
            out.append(f'- <a id="{_anchor(cid, s)}"></a>**{SCENARIOS[s]}: `{c["value"]}`.** {c["note"]}')
        out += [f"- {r}" for r in remarks]
        out.append("")
    out += [_DATA_START]
    for cid in _order(rows):
        out.append(json.dumps(rows[cid], ensure_ascii=False, sort_keys=True))
    out += [_DATA_END, ""]
    return "\n".join(out)


@contextlib.contextmanager
def _doc_lock():
    with open(os.path.join(os.environ.get("TMPDIR", "/tmp"), "portcullis-clients-doc.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _merged(env: MatrixEnv, rows: dict[str, dict], keep_versions: bool) -> dict[str, dict]:
    rows = json.loads(json.dumps(rows))
    for (cid, s), cell in env.recorded.items():
        client = env.clients[cid]
        row = rows.setdefault(cid, {"id": cid, "title": client.title, "version": client.version, "cells": {}})
        row["title"] = client.title
        row["remarks"] = list(client.remarks)
        if not keep_versions or row.get("version") in (None, "?"):
            row["version"] = client.version
        row["cells"][s] = {"value": cell["value"], "note": cell["note"]}
    return rows


def _finish_module(env: MatrixEnv):
    if not env.recorded:
        return
    if WRITE:
        with _doc_lock():
            rows = _merged(env, load_doc(), keep_versions=False)
            DOC_PATH.write_text(render_doc(rows), encoding="utf-8")
        return
    rows = load_doc()
    changed = []
    for (cid, s), cell in sorted(env.recorded.items()):
        old = rows.get(cid, {}).get("cells", {}).get(s)
        if old is None:
            changed.append(f"{cid} x {s}: not in the doc, observed {cell['value']}")
        elif old["value"] != cell["value"]:
            changed.append(f"{cid} x {s}: {old['value']} -> {cell['value']}")
        elif (old.get("note") or None) != cell["note"]:
            changed.append(f"{cid} x {s}: the note in the doc is not the one in the code")
    for cid in {c for c, _ in env.recorded}:
        if cid in rows and rows[cid].get("title") != env.clients[cid].title:
            changed.append(f"{cid}: title changed")
        if cid in rows and (rows[cid].get("remarks") or []) != list(env.clients[cid].remarks):
            changed.append(f"{cid}: the remarks in the doc are not the ones in the code")
    if DOC_PATH.exists() and not changed and render_doc(rows) != DOC_PATH.read_text(encoding="utf-8"):
        changed.append("docs/CLIENTS.md is not what the generator writes from its own data (edited by hand?)")
    if changed:
        raise AssertionError("the client matrix differs from docs/CLIENTS.md:\n  " + "\n  ".join(changed) +
                             f"\nIf intended, regenerate it: {REGENERATE}")


# ------------------------------------------------------------------------ driver helpers

def run_client(env: MatrixEnv, argv: list[str], a: Attempt, extra_env: dict | None = None,
               sandbox: bool = True, cwd: Path | None = None, input: bytes | None = None
               ) -> subprocess.CompletedProcess:
    """Run a client command (in the DNS sandbox unless told not to) with the private home, no
    proxy variables, the attempt's extra variables, and the attempt's hard timeout (raises
    subprocess.TimeoutExpired: a hang). stdout/stderr are bytes."""
    cmd = env.sandboxed(argv) if sandbox else [str(x) for x in argv]
    return subprocess.run(cmd, capture_output=True, timeout=a.timeout, cwd=cwd,
                          env=env.client_env({**a.extra_env, **(extra_env or {})}),
                          input=input, stdin=None if input is not None else subprocess.DEVNULL)


def which(name: str) -> str | None:
    return shutil.which(name)
