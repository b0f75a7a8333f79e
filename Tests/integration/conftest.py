"""Fixtures for the Portcullis black-box integration tests.

The proxy under test is the real binary ($PORTCULLIS_BIN, default .build/debug/portcullis),
started as a subprocess per test (or per module where noted) and always killed at teardown.
Origins are threads in the test process on 127.0.0.1. Only loopback is ever contacted: the
proxy runs in a private mount namespace whose /etc/resolv.conf names 127.0.0.1 (where a tiny
NXDOMAIN server answers), so even a lookup of does-not-exist.invalid never leaves the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from origins import HTTPOrigin, NXDomainDNS, TCPOrigin, TLSOrigin
from portcullis_helpers import (
    PASSWORD, PORTCULLIS_BIN, USER, ProxyProcess, clean_env, free_port, htpasswd_line,
)

# Users of the suite's default users file: name -> password. Passwords exercise the
# characters the contract names (':' after the first colon, '@', '%', spaces, UTF-8).
SPECIAL_USERS = {
    "colon": "pa:ss:wo:rd",
    "at": "p@ss@word",
    # no valid %XX escape inside: curl 7.88 percent-decodes --proxy-user values
    "percent": "100%sure%zz%",
    "space": "with  spaces in it",
    "utf8": "pässwörd",          # Latin-1 representable: requests can send it
    "cyrillic": "пароль€",        # beyond Latin-1: curl only
}

_DEFAULT = object()

# The stderr (logs) of every proxy the suite started, checked for secrets when the run ends.
_ALL_PROXY_LOGS: list[tuple[str, str]] = []

# Secrets that tests add at run time (the PostgreSQL test server's password, raw and as it is
# percent-encoded in the --store URL): no log may contain them either.
EXTRA_SECRETS: set[str] = set()


def _known_secrets() -> list[str]:
    import base64
    passwords = [PASSWORD, "wrong-password", "not-the-password", *SPECIAL_USERS.values()]
    users = [USER, *SPECIAL_USERS]
    secrets = set(passwords) | EXTRA_SECRETS
    db_password = os.environ.get("PORTCULLIS_TEST_POSTGRES_PASSWORD")
    if db_password:
        from urllib.parse import quote
        secrets.update({db_password, quote(db_password, safe="")})
    for user in users:
        for pw in passwords:
            token = base64.b64encode(f"{user}:{pw}".encode()).decode()
            secrets.update({token, token.rstrip("=")})
    return sorted(s for s in secrets if len(s) >= 6)


def pytest_sessionfinish(session, exitstatus):
    """No password and no Proxy-Authorization token may appear in any log of the whole run
    (issue 7): every proxy's stderr, at every log level the tests used, is searched."""
    leaks = []
    for name, text in _ALL_PROXY_LOGS:
        for secret in _known_secrets():
            if secret in text:
                leaks.append(f"{secret!r} in the log of {name}")
    if leaks:
        print("\nSECRETS IN LOGS:\n" + "\n".join(sorted(set(leaks))[:50]))
        session.exitstatus = 1


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long tests (1 GiB streams, the soak, the store faults)")


@pytest.fixture(scope="session", autouse=True)
def _binary_present():
    if not (os.path.isfile(PORTCULLIS_BIN) and os.access(PORTCULLIS_BIN, os.X_OK)):
        pytest.exit(f"portcullis binary not found at {PORTCULLIS_BIN} (set PORTCULLIS_BIN)", returncode=2)


@pytest.fixture(scope="session")
def users_file(tmp_path_factory) -> Path:
    """An htpasswd file (bcrypt, cost 4 to keep tests fast) with alice and the SPECIAL_USERS."""
    if not shutil.which("htpasswd"):
        pytest.fail("htpasswd (apache2-utils) is required")
    d = tmp_path_factory.mktemp("users")
    lines = [htpasswd_line(USER, PASSWORD, "-B", ["-C", "4"])]
    for user, pw in SPECIAL_USERS.items():
        lines.append(htpasswd_line(user, pw, "-B", ["-C", "4"]))
    path = d / "users.htpasswd"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def dns_sandbox(tmp_path_factory):
    """A command prefix that runs the proxy with /etc/resolv.conf -> 127.0.0.1 (None if this
    machine cannot make a private mount namespace). Yields (wrapper, dns_server_or_None)."""
    d = tmp_path_factory.mktemp("dns")
    resolv = d / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv)]
    try:
        probe = subprocess.run(wrapper + ["cat", "/etc/resolv.conf"], capture_output=True, timeout=10)
        ok = probe.returncode == 0 and b"nameserver 127.0.0.1" in probe.stdout
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        yield None, None
        return
    try:
        server = NXDomainDNS().start()
    except OSError:
        server = None  # port 53 taken: lookups still go to 127.0.0.1 only and fail
    yield wrapper, server
    if server:
        server.stop()


class ProxyLauncher:
    def __init__(self, tmp_path_factory, users_file: Path, wrapper):
        self.tmp_path_factory = tmp_path_factory
        self.users_file = users_file
        self.wrapper = wrapper
        self.procs: list[ProxyProcess] = []

    def start(self, *extra, htpasswd=_DEFAULT, private: bool = True, listen=None, env=None,
              ready: bool = True, connect=None, home: Path | None = None) -> ProxyProcess:
        """Start `portcullis serve` with the suite's defaults:
        --listen 127.0.0.1:<free> --htpasswd <users file> --allow-private-destinations.
        listen=[] passes no --listen (give connect=(host, port) then); htpasswd=None none."""
        args = ["serve"]
        if listen is None:
            listen = [f"127.0.0.1:{free_port()}"]
        for addr in listen:
            args += ["--listen", addr]
        if htpasswd is _DEFAULT:
            htpasswd = self.users_file
        if htpasswd is not None:
            args += ["--htpasswd", str(htpasswd)]
        if private:
            args.append("--allow-private-destinations")
        if "--lockout-threshold" not in [str(a) for a in extra]:
            # Most tests fail logins on purpose, many times, from 127.0.0.1: keep the lockout
            # (and its backoff, which starts halfway to it) out of their way. test_abuse.py
            # sets its own thresholds.
            args += ["--lockout-threshold", "1000000"]
        args += [str(a) for a in extra]
        if connect is None:
            assert listen, "give connect=(host, port) when no --listen is passed"
            host, _, port = listen[0].rpartition(":")
            host = host.strip("[]")
            if host in ("0.0.0.0", ""):
                host = "127.0.0.1"
            elif host == "::":
                host = "::1"
            connect = (host, int(port))
        if home is None:
            home = self.tmp_path_factory.mktemp("home")
        p = ProxyProcess(args, clean_env(home, env), connect, self.wrapper)
        self.procs.append(p)
        if ready:
            p.wait_ready()
        return p

    def cleanup(self):
        for p in self.procs:
            p.kill()
            err = p.stderr.text()
            _ALL_PROXY_LOGS.append((" ".join(map(str, p.cmd[:3])), err))
            if err:
                print(f"--- portcullis stderr (pid {p.pid}, exit {p.proc.returncode}) ---")
                print(err[:3000] + ("\n…\n" + err[-3000:] if len(err) > 6000 else err[3000:]))


@pytest.fixture
def launcher(tmp_path_factory, users_file, dns_sandbox):
    lz = ProxyLauncher(tmp_path_factory, users_file, dns_sandbox[0])
    yield lz
    lz.cleanup()


@pytest.fixture
def proxy(launcher) -> ProxyProcess:
    """A proxy on a free loopback port with the suite's users file and private destinations allowed."""
    return launcher.start()


@pytest.fixture(scope="module")
def module_launcher(tmp_path_factory, users_file, dns_sandbox):
    lz = ProxyLauncher(tmp_path_factory, users_file, dns_sandbox[0])
    yield lz
    lz.cleanup()


@pytest.fixture
def origin():
    o = HTTPOrigin().start()
    yield o
    o.stop()


@pytest.fixture(scope="module")
def module_origin():
    o = HTTPOrigin().start()
    yield o
    o.stop()


@pytest.fixture
def echo_origin():
    o = TCPOrigin("echo").start()
    yield o
    o.stop()


@pytest.fixture
def silent_origin():
    o = TCPOrigin("silent").start()
    yield o
    o.stop()


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


@pytest.fixture
def tls_origin(tls_cert):
    o = TLSOrigin(*tls_cert).start()
    yield o
    o.stop()
