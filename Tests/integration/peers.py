"""Other proxies to point `portcullis doctor` at: Squid (Basic or Digest) and tinyproxy (Basic).

Each peer runs as a child process on a free 127.0.0.1 port with a private config in its own
temporary directory, and is stopped (with any helper processes it started) at teardown.
Run as root, Squid drops to the `proxy` user and tinyproxy to `nobody`, so their directory
is made world-readable and lives outside pytest's 0700 tmp tree.

Facts these fixtures rely on (Debian 12: Squid 5.7, tinyproxy 1.11.1):
- Squid Basic: `basic_ncsa_auth FILE` checks an htpasswd file (bcrypt, apr1, DES crypt).
- Squid Digest: `digest_file_auth -c FILE` reads `user:realm:HA1` lines, HA1 = MD5(user:realm:password).
- Squid answers every credential failure with 407 + Proxy-Authenticate; a request its
  `http_access` rules deny after authentication gets 403.
- tinyproxy answers a request without credentials with 407 + Proxy-Authenticate, but wrong
  credentials with 401 + WWW-Authenticate (not what RFC 9110 asks of a proxy).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

import pytest

from portcullis_helpers import PASSWORD, USER, RawConn, free_port, htpasswd_line, wait_until

SQUID_HELPERS = Path("/usr/lib/squid")
DIGEST_REALM = "portcullis-test"
BASIC_REALM = "portcullis-test"
STARTUP_TIMEOUT = 20.0


def find_program(name: str) -> str:
    """The path of a server program (also looked for in /usr/sbin, often not on PATH);
    fails the test with an install hint when it is missing (never skips)."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)
    if not path:
        pytest.fail(f"{name} is required for the doctor peer tests: apt-get install -y {name} "
                    f"(scripts/test.sh installs it)", pytrace=False)
    return path


def proxy_url(port: int, user: str | None = None, password: str | None = None,
              host: str = "127.0.0.1") -> str:
    """http://[user[:password]@]host:port with user and password percent-encoded."""
    cred = ""
    if user is not None:
        cred = quote(user, safe="")
        if password is not None:
            cred += ":" + quote(password, safe="")
        cred += "@"
    return f"http://{cred}{host}:{port}"


def _helper(name: str) -> str:
    path = SQUID_HELPERS / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: apt-get install -y squid", pytrace=False)
    return str(path)


def _is_root() -> bool:
    return os.geteuid() == 0


def _children(pid: int) -> list[int]:
    """Direct children of pid (read from /proc)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("latin-1")
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces and parentheses
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and fields[1] == str(pid):
            kids.append(int(entry))
    return kids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("latin-1")
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] not in ("Z", "X")


class PeerProxy:
    """A running peer proxy. `url()` is its proxy URL, with percent-encoded credentials when given."""

    def __init__(self, name: str, cmd: list, workdir: Path, port: int, log_path: Path,
                 realm: str | None, scheme: str):
        self.name = name
        self.cmd = cmd
        self.workdir = workdir
        self.port = port
        self.host = "127.0.0.1"
        self.realm = realm
        self.scheme = scheme  # "Basic" or "Digest": what the peer offers
        self.log_path = log_path
        self._out = open(workdir / "stdout-stderr.log", "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT, cwd=str(workdir),
                                     start_new_session=True)
        self.helpers: set[int] = set()

    def __repr__(self):
        return f"<{self.name} on 127.0.0.1:{self.port}>"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, user: str | None = None, password: str | None = None) -> str:
        return proxy_url(self.port, user, password)

    def logs(self) -> str:
        out = []
        for p in (self.workdir / "stdout-stderr.log", self.log_path):
            try:
                out.append(f"--- {p.name} ---\n" + p.read_text("utf-8", "replace")[-4000:])
            except OSError:
                pass
        return "\n".join(out)

    def _probe(self) -> int | None:
        """Status of a GET without credentials (the peer answers it itself: 407), or None."""
        try:
            with RawConn(self.host, self.port, timeout=2.0) as c:
                r = c.request("GET", "http://127.0.0.1:9/peer-probe", [])
                return r.status
        except (OSError, EOFError, AssertionError, ValueError):
            return None

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode} during startup\n"
                                     f"cmd: {self.cmd}\n{self.logs()}")
            return self._probe() == 407

        try:
            wait_until(ready, timeout, interval=0.05, what=f"{self.name} to answer 407 on port {self.port}")
        except TimeoutError as e:
            self.stop()
            raise AssertionError(f"{e}\ncmd: {self.cmd}\n{self.logs()}") from None
        return self

    def _remember_helpers(self):
        if self.proc.poll() is None:
            self.helpers.update(_children(self.proc.pid))

    def stop(self, timeout: float = 10.0):
        self._remember_helpers()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        # Helpers (Squid's auth programs) see EOF on stdin and exit; make sure of it.
        left = [p for p in self.helpers if _alive(p)]
        if left:
            try:
                wait_until(lambda: not any(_alive(p) for p in left), 5.0, what="helpers to exit")
            except TimeoutError:
                for p in left:
                    if _alive(p):
                        try:
                            os.kill(p, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
        self._out.close()


class PeerLauncher:
    """Starts peers; every peer started is stopped by cleanup()."""

    def __init__(self):
        self.peers: list[PeerProxy] = []
        self.dirs: list[Path] = []

    def _workdir(self, prefix: str) -> Path:
        d = Path(tempfile.mkdtemp(prefix=f"portcullis-{prefix}-"))
        self.dirs.append(d)
        os.chmod(d, 0o755)  # the peer's unprivileged user reads its files in here
        return d

    # -- Squid
    def squid(self, auth: str = "basic", users: dict | None = None, realm: str | None = None,
              deny_ports=(), deny_path_regex: str = "^/forbidden") -> PeerProxy:
        """Squid 5 forward proxy with one auth scheme ("basic" or "digest"); users maps name ->
        password (default the suite's USER/PASSWORD). Authenticated requests are allowed to any
        destination and any CONNECT port except: requests (any method, CONNECT too) to a port in
        deny_ports and requests whose URL path matches deny_path_regex get Squid's 403."""
        squid_bin = find_program("squid")
        users = users or {USER: PASSWORD}
        d = self._workdir(f"squid-{auth}")
        port = free_port()
        lines = [
            f"http_port 127.0.0.1:{port}",
            f"pid_filename {d}/squid.pid",
            f"cache_log {d}/cache.log",
            f"coredump_dir {d}",
            "access_log none",
            "cache_store_log none",
            "netdb_filename none",
            "cache deny all",
            "shutdown_lifetime 0 seconds",
            "pinger_enable off",
            "dns_nameservers 127.0.0.1",
            "forwarded_for delete",
            "visible_hostname portcullis-test-squid",
        ]
        if _is_root():
            lines.append("cache_effective_user proxy")
        if auth == "basic":
            realm = realm or BASIC_REALM
            pwfile = d / "users.htpasswd"
            # bcrypt cost 4: basic_ncsa_auth verifies it through crypt(3), quickly
            pwfile.write_text("".join(htpasswd_line(u, p, "-B", ["-C", "4"]) + "\n"
                                      for u, p in users.items()), encoding="utf-8")
            lines += [
                f"auth_param basic program {_helper('basic_ncsa_auth')} {pwfile}",
                "auth_param basic children 5 startup=1 idle=1",
                f"auth_param basic realm {realm}",
                "auth_param basic credentialsttl 2 hours",
            ]
            scheme = "Basic"
        elif auth == "digest":
            realm = realm or DIGEST_REALM
            pwfile = d / "users.digest"
            # -c: lines are user:realm:HA1 with HA1 = MD5(user:realm:password)
            pwfile.write_text("".join(
                f"{u}:{realm}:{hashlib.md5(f'{u}:{realm}:{p}'.encode()).hexdigest()}\n"
                for u, p in users.items()), encoding="utf-8")
            lines += [
                f"auth_param digest program {_helper('digest_file_auth')} -c {pwfile}",
                "auth_param digest children 5 startup=1 idle=1",
                f"auth_param digest realm {realm}",
                "auth_param digest nonce_garbage_interval 5 minutes",
                "auth_param digest nonce_max_duration 30 minutes",
                "auth_param digest nonce_max_count 50",
            ]
            scheme = "Digest"
        else:
            raise ValueError(f"auth must be basic or digest, not {auth!r}")
        lines.append("acl authenticated proxy_auth REQUIRED")
        lines.append("http_access deny !authenticated")
        if deny_ports:
            lines.append("acl denied_ports port " + " ".join(str(p) for p in deny_ports))
            lines.append("http_access deny denied_ports")
        if deny_path_regex:
            lines.append(f"acl denied_paths urlpath_regex {deny_path_regex}")
            lines.append("http_access deny denied_paths")
        lines += ["http_access allow authenticated", "http_access deny all"]
        conf = d / "squid.conf"
        conf.write_text("\n".join(lines) + "\n")
        for f in d.iterdir():
            os.chmod(f, 0o644)
        if _is_root():
            shutil.chown(d, "proxy")
        peer = PeerProxy(f"squid-{auth}", [squid_bin, "-N", "-f", str(conf)], d, port,
                         d / "cache.log", realm, scheme)
        self.peers.append(peer)
        return peer.wait_ready()

    # -- tinyproxy
    def tinyproxy(self, user: str = USER, password: str = PASSWORD, connect_ports=()) -> PeerProxy:
        """tinyproxy 1.11 with BasicAuth (one user). Without connect_ports, CONNECT is allowed
        to every port (tinyproxy's rule when no ConnectPort line is present)."""
        tp_bin = find_program("tinyproxy")
        if any(c.isspace() for c in user + password):
            raise ValueError("tinyproxy's BasicAuth takes no whitespace in user or password")
        d = self._workdir("tinyproxy")
        port = free_port()
        lines = [
            f"Port {port}",
            "Listen 127.0.0.1",
            "Timeout 30",
            "MaxClients 50",
            "LogLevel Info",
            f"LogFile \"{d}/tinyproxy.log\"",
            "Allow 127.0.0.1",
            f"BasicAuth {user} {password}",
        ]
        lines += [f"ConnectPort {p}" for p in connect_ports]
        if _is_root():
            lines += ["User nobody", "Group nogroup"]
        conf = d / "tinyproxy.conf"
        conf.write_text("\n".join(lines) + "\n")
        os.chmod(conf, 0o644)
        log = d / "tinyproxy.log"
        log.touch()
        os.chmod(log, 0o666)
        peer = PeerProxy("tinyproxy", [tp_bin, "-d", "-c", str(conf)], d, port, log, "Tinyproxy", "Basic")
        self.peers.append(peer)
        return peer.wait_ready()

    def cleanup(self):
        for p in self.peers:
            try:
                p.stop()
            except Exception as e:  # noqa: BLE001 - keep stopping the others
                print(f"stopping {p}: {e!r}")
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def peers():
    """A factory: peers.squid(auth="basic"|"digest", deny_ports=...), peers.tinyproxy()."""
    lz = PeerLauncher()
    yield lz
    lz.cleanup()


@pytest.fixture(scope="module")
def module_peers():
    lz = PeerLauncher()
    yield lz
    lz.cleanup()


@pytest.fixture(scope="module")
def squid_basic(module_peers) -> PeerProxy:
    """Squid with Basic (basic_ncsa_auth on a bcrypt htpasswd with USER/PASSWORD); paths
    matching ^/forbidden are denied (403) to authenticated users."""
    return module_peers.squid("basic")


@pytest.fixture(scope="module")
def squid_digest(module_peers) -> PeerProxy:
    """Squid offering only Digest (digest_file_auth -c, realm "portcullis-test")."""
    return module_peers.squid("digest")


@pytest.fixture(scope="module")
def tinyproxy_basic(module_peers) -> PeerProxy:
    """tinyproxy with BasicAuth USER PASSWORD, CONNECT to any port."""
    return module_peers.tinyproxy()
