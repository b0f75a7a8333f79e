"""The client matrix (issue 26) for the light clients: curl, wget, git, pip, apt, Python's
requests, urllib, httpx and aiohttp, Node's http module (proxying done by hand: it has none),
undici's ProxyAgent, and Node's built-in fetch with NODE_USE_ENV_PROXY=1.

Each test runs one client x scenario cell through client_matrix.run_cell, which decides the value
from the client's own result AND the proxy's access log (a success the proxy did not log as the
user's 200 is `bypass`), the relay's connection count and the time taken, and fails when the cell
differs from docs/CLIENTS.md (PORTCULLIS_CLIENTS_WRITE=1 rewrites it). One environment (origins,
proxies, relay) for the whole module; every client runs as a subprocess in the DNS sandbox, bounded
by client_matrix.HARD_TIMEOUT. The Python and Node drivers are Tests/clients/{python,node}/.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from client_matrix import (  # noqa: F401  (client_matrix_env is the fixture)
    EXPECTED_TEXT, ORIGIN_HOST, SCENARIOS, Attempt, Client, Result, client_matrix_env, require_tool, run_cell, run_client, tool_version,
)
from portcullis_helpers import REPO_ROOT

CLIENTS_DIR = REPO_ROOT / "Tests" / "clients"
NODE_PATH = "/usr/share/nodejs"  # Debian's node-* packages (node-undici)


def _text(cp: subprocess.CompletedProcess) -> str:
    return (cp.stdout.decode("utf-8", "replace") + "\n" + cp.stderr.decode("utf-8", "replace")).strip()


def _status_in(text: str) -> int | None:
    m = re.search(r"\b(407|200|401|403|502|503)\b", text)
    return int(m.group(1)) if m else None


# ================================================================================ the clients

NO_NTLM = "{c} has no NTLM for proxies. Use Basic over TLS (`--listen-tls`) or Digest where it has it."
NO_NEGOTIATE = ("{c} has no Negotiate (Kerberos) for proxies. Offer Basic beside Negotiate (`--auth negotiate,basic`), "
                "preferably on a TLS listener.")
NO_DIGEST = ("{c} answers no Digest challenge from a proxy. Offer Basic (`--auth digest,basic` or `basic`), "
             "preferably on a TLS listener (`--listen-tls`) so the password is not sent in clear.")
NO_TLS_PROXY = ("{c} cannot speak TLS to the proxy (no `https://` proxy URLs). Use the plain listener, or put "
                "`stunnel` in front.")
PREEMPTIVE = ("{c} sends Basic credentials with the first request, so there is no 407 to recover from; the "
              "connection count does not apply.")

QUICK = 15.0  # hard bound for git and apt: their runs take under a second, 7 s with apt's retries

GNUTLS_ADVICE = ("Clients with OpenSSL (curl, Python) do not have this race. Give this client an `http://` proxy URL "
                 "(TLS to the origin stays end to end inside the tunnel).")
CURL_PERCENT = ("curl 7.88 percent-decodes `--proxy-user`: a valid escape in the password is sent decoded "
                "(`a%41b` goes out as `aAb`), an invalid one as it is (`%rd`, so the matrix's `p@ss:w%rd/é` passes). "
                "Write a literal `%` followed by two hex digits as `%25`.")
UNDICI_TUNNELS = ("undici's `ProxyAgent` tunnels every request with CONNECT, `http://` URLs included (undici 5.15 "
                  "reads no credentials from the proxy URI: pass `token: 'Basic …'`). An origin on port 80 therefore "
                  "needs `--connect-ports 443,80`; Portcullis allows CONNECT to 443 only by default.")
NODE_FETCH = ("This Node's built-in `fetch` ignores `HTTP_PROXY`/`HTTPS_PROXY` even with `NODE_USE_ENV_PROXY=1` "
              "(honoured from Node 24; Debian 12's Node 18 and Node 20 do not) and connects to the origin directly "
              "(the proxy saw nothing). Pass a dispatcher: `fetch(url, {dispatcher: new ProxyAgent(…)})` with undici "
              "(the `node-undici` row), or use Node 24 with `NODE_USE_ENV_PROXY=1`.")


def _lacks(name: str, *scenarios: str) -> dict[str, str]:
    text = {"digest-http": NO_DIGEST, "digest-connect": NO_DIGEST, "ntlm": NO_NTLM, "negotiate": NO_NEGOTIATE,
            "https-proxy": NO_TLS_PROXY}
    return {s: text[s].format(c=name) for s in scenarios}


CLIENTS: dict[str, Client] = {c.id: c for c in [
    Client("curl", "curl", remarks=[CURL_PERCENT]),
    Client("wget", "GNU Wget",
           lacks=_lacks("Wget", "digest-http", "digest-connect", "ntlm", "negotiate", "https-proxy"),
           notes={"keepalive-407": PREEMPTIVE.format(c="Wget (`--proxy-user`/`--proxy-password`)")}),
    Client("git", "git (libcurl)", workarounds={"negotiate"}, flaky={"https-proxy"}, hard_timeout=QUICK, notes={
        "https-proxy": "git uses Debian's libcurl-gnutls. Through an `https://` proxy the origin's answer sometimes "
                       "stays unread inside the two TLS layers and the clone hangs (6 of 40 clones here, more under "
                       "load; curl with OpenSSL: 60 of 60 through the same listener). " + GNUTLS_ADVICE,
        "negotiate": "git sends no Negotiate answer when the proxy URL names no user "
                     "(`http.proxyAuthMethod=negotiate` alone ends with the 407): put an empty user and password in "
                     "it, `http.proxy=http://:@proxy.example:3128` (curl's `-U :`)."}),
    Client("pip", "pip",
           lacks=_lacks("pip", "digest-http", "digest-connect", "ntlm", "negotiate"),
           workarounds={"wrong-password"},
           notes={
               "keepalive-407": PREEMPTIVE.format(c="pip (credentials in `--proxy`)"),
               "wrong-password": "pip retries a refused CONNECT 5 times with back-off (`--retries`, 5 by default: "
                                 "6 requests and about 8 s) and ends with `ERROR: Could not find a version that "
                                 "satisfies the requirement`; the 407 is only in the `WARNING: Retrying … Tunnel "
                                 "connection failed: 407` lines above it. `--retries 1` ends at once with one such "
                                 "warning; `--retries 0` hides the 407 completely (the `ERROR` alone; only `-vv` "
                                 "shows `Tunnel connection failed: 407`).",
           }),
    Client("apt", "apt (`apt-get`)",
           lacks=_lacks("apt's http method", "digest-http", "digest-connect", "ntlm", "negotiate"),
           workarounds={"wrong-password"}, flaky={"https-proxy"}, hard_timeout=QUICK,
           notes={
               "keepalive-407": PREEMPTIVE.format(c="apt (credentials in `Acquire::http::Proxy`)"),
               "wrong-password": "`apt-get update` retries each index file (`Acquire::Retries`, 3 by default, with "
                                 "a delay: 4 refused CONNECTs and about 7 s here) and then exits 0 with only "
                                 "`W: Failed to fetch … 407 Proxy Authentication Required` warnings; the failure "
                                 "shows later as `Unable to locate package`. `-o Acquire::Retries=0` ends at once; "
                                 "add `--error-on=any` to make `update` fail.",
               "https-proxy": "With an `https://` proxy in `Acquire::https::Proxy`, apt 2.6 (GnuTLS) gets its "
                              "CONNECT answered and the origin's answer through the tunnel (the proxy's log shows the "
                              "bytes), but often reads it only when the connection closes: each file then waits for "
                              "the origin's idle timeout (or `Acquire::https::Timeout`, 120 s). It hung in every "
                              "run here (12 of 12 by hand, and every matrix run) but is a race like git's. "
                              + GNUTLS_ADVICE,
           }),
    Client("python-requests", "Python requests",
           lacks=_lacks("requests", "digest-http", "digest-connect", "ntlm", "negotiate"),
           notes={"keepalive-407": PREEMPTIVE.format(c="requests (credentials in the proxy URL)")}),
    Client("python-urllib", "Python urllib",
           lacks=_lacks("urllib", "ntlm", "negotiate", "https-proxy"),
           workarounds={"digest-http"},
           notes={
               "digest-http": "`ProxyDigestAuthHandler` looks the password up by the request's target URL, not the "
                              "proxy's, so `add_password(None, proxy_url, user, password)` (as for "
                              "`ProxyBasicAuthHandler`) is never found and the 407 stays. Also register it for the "
                              "targets: `add_password(None, 'http://origin.example/', user, password)`.",
               "digest-connect": "urllib's auth handlers never see the 407 to a CONNECT (http.client raises "
                                 "`Tunnel connection failed: 407`), so no Digest through tunnels. For https targets put "
                                 "Basic credentials in the proxy URL (`http://user:password@proxy:3128`).",
               "keepalive-407": "urllib sends `Connection: close` with every request, so `ProxyBasicAuthHandler`'s "
                                "retry after the 407 opens a new connection (2 connections per request); harmless, "
                                "but credentials in the proxy URL (sent at once) save the round trip.",
           }),
    Client("python-httpx", "Python httpx",
           lacks=_lacks("httpx", "digest-http", "digest-connect", "ntlm", "negotiate"),
           workarounds={"https-proxy"},
           notes={
               "keepalive-407": PREEMPTIVE.format(c="httpx (credentials in the proxy URL)"),
               "https-proxy": "httpx checks an `https://` proxy's certificate against its default CA bundle, not "
                              "the `verify=` given to the client, so a proxy certificate from a private CA fails "
                              "(`CERTIFICATE_VERIFY_FAILED`). Give the proxy its own context: "
                              "`proxy=httpx.Proxy(url, ssl_context=ctx)`.",
           }),
    Client("python-aiohttp", "Python aiohttp",
           lacks=_lacks("aiohttp", "digest-http", "digest-connect", "ntlm", "negotiate"),
           notes={"keepalive-407": PREEMPTIVE.format(c="aiohttp (credentials in the proxy URL)")}),
    Client("node-http", "Node `http` (proxy by hand)",
           lacks=_lacks("Node's http module (the proxying is the application's own code)",
                        "digest-http", "digest-connect", "ntlm", "negotiate")),
    Client("node-undici", "Node undici `ProxyAgent`",
           lacks=_lacks("undici's ProxyAgent", "digest-http", "digest-connect", "ntlm", "negotiate"),
           notes={
               **{s: UNDICI_TUNNELS for s in ("basic-http", "special-password")},
               "keepalive-407": PREEMPTIVE.format(c="undici (`token` of `ProxyAgent`)"),
               "wrong-password": "undici 5.15 reports a refused CONNECT as `UND_ERR_ABORTED: Proxy response !== 200 "
                                 "when HTTP Tunneling`, without the status: a wrong password looks like any other "
                                 "refusal. The proxy's log, or `portcullis doctor`, names the reason.",
           }),
    Client("node-fetch", "Node `fetch` + `NODE_USE_ENV_PROXY=1`",
           notes={s: NODE_FETCH for s in SCENARIOS}),
]}


# ======================================================================== content on the origins

def _git_repo(env) -> str:
    """A bare repository served over dumb HTTP at /repo.git; returns its HEAD commit."""
    work = env.tmp / "git-work"
    genv = env.client_env({"GIT_CONFIG_NOSYSTEM": "1"})
    run = lambda *args, cwd=None: subprocess.run(["git", *args], cwd=cwd, env=genv, check=True,  # noqa: E731
                                                 capture_output=True, timeout=30)
    run("init", "-q", "-b", "main", str(work))
    (work / "README").write_text("matrix\n")
    run("add", "README", cwd=work)
    run("-c", "user.name=matrix", "-c", "user.email=matrix@portcullis.test", "commit", "-q", "-m", "matrix", cwd=work)
    run("clone", "-q", "--bare", str(work), str(env.docroot / "repo.git"))
    run("update-server-info", cwd=env.docroot / "repo.git")
    return run("rev-parse", "HEAD", cwd=work).stdout.decode().strip()


def _wheel(env) -> str:
    """tinypkg 1.0 as a wheel under /files and a simple index under /simple; returns its sha256."""
    files = {
        "tinypkg/__init__.py": b"VALUE = 1\n",
        "tinypkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
        "tinypkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: matrix\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for name, data in files.items()) + "tinypkg-1.0.dist-info/RECORD,,\n"
    files["tinypkg-1.0.dist-info/RECORD"] = record.encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    wheel = buf.getvalue()
    digest = hashlib.sha256(wheel).hexdigest()
    (env.docroot / "files").mkdir()
    (env.docroot / "files" / "tinypkg-1.0-py3-none-any.whl").write_bytes(wheel)
    (env.docroot / "simple" / "tinypkg").mkdir(parents=True)
    (env.docroot / "simple" / "tinypkg" / "index.html").write_text(
        f'<!DOCTYPE html><html><body><a href="../../files/tinypkg-1.0-py3-none-any.whl#sha256={digest}">'
        "tinypkg-1.0-py3-none-any.whl</a></body></html>\n")
    return digest


def _apt_repo(env) -> str:
    """A flat apt repository under /apt with one tiny .deb (dpkg-deb); returns the .deb's sha256."""
    pkg = env.tmp / "deb-root"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "usr" / "share" / "doc" / "matrix-tiny").mkdir(parents=True)
    (pkg / "usr" / "share" / "doc" / "matrix-tiny" / "README").write_text("matrix\n")
    (pkg / "DEBIAN" / "control").write_text(
        "Package: matrix-tiny\nVersion: 1.0\nArchitecture: all\nMaintainer: Portcullis tests <t@portcullis.test>\n"
        "Description: a tiny package for the client matrix\n")
    repo = env.docroot / "apt"
    repo.mkdir()
    deb = repo / "matrix-tiny_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(pkg), str(deb)],
                   check=True, capture_output=True, timeout=60)
    data = deb.read_bytes()
    control = (pkg / "DEBIAN" / "control").read_text()
    packages = (control + f"Filename: ./{deb.name}\nSize: {len(data)}\n"
                f"MD5sum: {hashlib.md5(data).hexdigest()}\nSHA256: {hashlib.sha256(data).hexdigest()}\n\n").encode()
    (repo / "Packages").write_bytes(packages)
    (repo / "Release").write_text(
        f"Origin: matrix\nLabel: matrix\nSuite: matrix\nCodename: matrix\nDate: {email.utils.formatdate(usegmt=True)}\n"
        f"Architectures: all amd64\nSHA256:\n {hashlib.sha256(packages).hexdigest()} {len(packages)} Packages\n")
    return hashlib.sha256(data).hexdigest()


# ============================================================================ the drivers

_CURL_SCHEME = {"basic": "--proxy-basic", "digest": "--proxy-digest", "ntlm": "--proxy-ntlm",
                "negotiate": "--proxy-negotiate"}


def curl_driver(env):
    CLIENTS["curl"].version = tool_version(["curl", "--version"], r"curl (\S+)")

    def drive(a: Attempt) -> Result:
        # The URL twice: the second request reuses the connection (Digest's next nc, the identity
        # NTLM and Negotiate bound to the connection). Once for a wrong password.
        urls = [a.url] if a.scenario == "wrong-password" else [a.url, a.url]
        args = ["curl", "-q", "-sS", "--max-time", "20", "-w", "\n%{http_code}\n",
                "-x", a.proxy_url, "--cacert", a.ca_file, "--proxy-cacert", a.ca_file,
                "--proxy-anyauth" if a.challenge_first else _CURL_SCHEME[a.scheme],
                # curl's documented form: USER:PASSWORD, split at the first colon (':' for Kerberos)
                "--proxy-user", f"{a.user}:{a.password}" if a.user is not None else ":", *urls]
        cp = run_client(env, args, a)
        out = cp.stdout.decode("utf-8", "replace")
        parts = out.split("\n")
        codes = [int(c) for c in parts if c.isdigit() and len(c) == 3 and c != "000"]
        ok = cp.returncode == 0 and codes == [200] * len(urls) and out.count(EXPECTED_TEXT.decode()) == len(urls)
        return Result(ok, codes[-1] if codes else None, _text(cp)[-800:], detail=f"statuses {codes}")
    return drive


def wget_driver(env):
    CLIENTS["wget"].version = tool_version(["wget", "--version"], r"Wget (\S+)")

    def drive(a: Attempt) -> Result:
        args = ["wget", "--no-config", "-O", "-", "--tries=1", "--timeout=20", "--ca-certificate", a.ca_file,
                "-e", "use_proxy=on", "-e", f"http_proxy={a.proxy_url}", "-e", f"https_proxy={a.proxy_url}"]
        if a.user is not None:
            args += [f"--proxy-user={a.user}", f"--proxy-password={a.password}"]
        cp = run_client(env, args + [a.url], a)
        err = cp.stderr.decode("utf-8", "replace")
        return Result(cp.returncode == 0 and a.check_body(cp.stdout), _status_in(err), err[-800:])
    return drive


def git_driver(env):
    CLIENTS["git"].version = tool_version(["git", "--version"])
    head = _git_repo(env)
    n = [0]

    def drive(a: Attempt) -> Result:
        n[0] += 1
        dest = env.tmp / f"git-{n[0]}.git"
        method = "anyauth" if a.challenge_first else a.scheme
        proxy = a.proxy_url_with_credentials()
        if a.workaround and a.scenario == "negotiate":  # an empty user and password, as curl's -U :
            proxy = proxy.replace("://", "://:@", 1)
        genv = {"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", "GIT_ASKPASS": None, "SSH_ASKPASS": None}
        args = ["git", "-c", f"http.proxy={proxy}", "-c", f"http.proxyAuthMethod={method}",
                "-c", f"http.sslCAInfo={a.ca_file}", "-c", f"http.proxySSLCAInfo={a.ca_file}",
                "-c", "credential.helper=", "clone", "--bare", f"{a.origin_base}/repo.git", str(dest)]
        cp = run_client(env, args, a, extra_env=genv)
        text = _text(cp)
        got = ""
        if cp.returncode == 0:
            rp = run_client(env, ["git", "--git-dir", str(dest), "rev-parse", "--verify", "-q", "HEAD"], a, extra_env=genv)
            got = rp.stdout.decode().strip()
            text += f"\nHEAD of the clone: {got or 'none'}"
        return Result(cp.returncode == 0 and got == head, _status_in(cp.stderr.decode("utf-8", "replace")), text[-800:])
    return drive


def pip_driver(env):
    CLIENTS["pip"].version = tool_version([sys.executable, "-m", "pip", "--version"], r"pip (\S+)")
    digest = _wheel(env)
    n = [0]

    def drive(a: Attempt) -> Result:
        n[0] += 1
        dest = env.tmp / f"pip-{n[0]}"
        args = [sys.executable, "-m", "pip", "download", "--isolated", "--no-cache-dir", "--disable-pip-version-check",
                "--no-deps", "--index-url", f"{a.origin_base}/simple/", "--cert", a.ca_file,
                # pip ignores an http:// index unless told to trust its host
                "--trusted-host", f"{ORIGIN_HOST}:{a.origin_base.rsplit(':', 1)[1]}",
                "--proxy", a.proxy_url_with_credentials(), "-d", str(dest), "tinypkg"]
        if a.workaround:  # wrong-password: one retry only, whose warning names the 407
            args[4:4] = ["--retries", "1"]
        cp = run_client(env, args, a)
        wheel = dest / "tinypkg-1.0-py3-none-any.whl"
        ok = cp.returncode == 0 and wheel.is_file() and hashlib.sha256(wheel.read_bytes()).hexdigest() == digest
        # What the user is told: the ERROR/WARNING lines and any line naming the 407 (-v is long).
        told = [ln for ln in _text(cp).splitlines() if re.search(r"ERROR|WARNING|407", ln)]
        return Result(ok, _status_in(_text(cp)), "\n".join(told)[-1500:])
    return drive


def apt_driver(env):
    CLIENTS["apt"].version = tool_version(["apt-get", "--version"], r"apt (\S+)")
    digest = _apt_repo(env)
    n = [0]

    def drive(a: Attempt) -> Result:
        n[0] += 1
        d = env.tmp / f"apt-{n[0]}"
        for sub in ("state/lists/partial", "cache/archives/partial", "parts", "log", "work"):
            (d / sub).mkdir(parents=True)
        (d / "state" / "status").write_text("")
        (d / "sources.list").write_text(f"deb [trusted=yes] {a.origin_base}/apt/ ./\n")
        proxy = a.proxy_url_with_credentials()
        # Everything private: APT_CONFIG is read before /etc/apt/apt.conf.d, whose place it moves.
        conf = {
            "Dir::State": d / "state", "Dir::State::status": d / "state" / "status", "Dir::Cache": d / "cache",
            "Dir::Etc::SourceList": d / "sources.list", "Dir::Etc::SourceParts": d / "parts",
            "Dir::Etc::Parts": d / "parts", "Dir::Etc::Main": d / "none.conf", "Dir::Etc::Preferences": d / "none.pref",
            "Dir::Etc::PreferencesParts": d / "parts", "Dir::Etc::TrustedParts": d / "parts",
            "Dir::Etc::Trusted": d / "none.gpg", "Dir::Log": d / "log", "APT::Sandbox::User": "root",
            "Debug::NoLocking": "true", "Acquire::Languages": "none",
            "Acquire::http::Proxy": proxy, "Acquire::https::Proxy": proxy, "Acquire::https::CAInfo": a.ca_file,
        }
        if a.workaround:  # wrong-password: no retries of refused files
            conf["Acquire::Retries"] = "0"
        (d / "apt.conf").write_text("".join(f'{k} "{v}";\n' for k, v in conf.items()))
        aenv = {"APT_CONFIG": str(d / "apt.conf"), "LC_ALL": "C"}
        up = run_client(env, ["apt-get", "-q", "update"], a, extra_env=aenv, cwd=d / "work")
        text = _text(up)
        ok = False
        if up.returncode == 0 and "Err:" not in text:
            dl = run_client(env, ["apt-get", "-q", "download", "matrix-tiny"], a, extra_env=aenv, cwd=d / "work")
            text += "\n" + _text(dl)
            deb = d / "work" / "matrix-tiny_1.0_all.deb"
            ok = dl.returncode == 0 and deb.is_file() and hashlib.sha256(deb.read_bytes()).hexdigest() == digest
        return Result(ok, _status_in(text), text[-1500:])
    return drive


def _json_driver(env, argv: list[str], extra_env: dict | None = None):
    def drive(a: Attempt) -> Result:
        attempt = {"url": a.url, "proxy_url": a.proxy_url, "proxy_url_with_credentials": a.proxy_url_with_credentials(),
                   "scheme": a.scheme, "user": a.user, "password": a.password, "ca_file": a.ca_file,
                   "challenge_first": a.challenge_first, "timeout": a.timeout, "scenario": a.scenario,
                   "workaround": a.workaround}
        extra = dict(extra_env or {})
        if "{proxy}" in json.dumps(extra):  # node-fetch: the proxy in the environment
            extra = {k: v.replace("{proxy}", a.proxy_url_with_credentials()) for k, v in extra.items()}
        cp = run_client(env, argv, a, extra_env=extra, input=json.dumps(attempt).encode())
        lines = cp.stdout.decode("utf-8", "replace").strip().splitlines()
        try:
            r = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            return Result(False, None, f"exit {cp.returncode}: {_text(cp)[-800:]}")
        ok = bool(r["ok"]) and a.check_body(r["body"])
        return Result(ok, r["status"], r["error"], detail=cp.stderr.decode("utf-8", "replace")[-300:])
    return drive


def _py_version(module: str) -> str:
    return tool_version([sys.executable, "-c", f"import {module}; print({module}.__version__)"])


def python_driver(lib: str):
    def make(env):
        if lib == "urllib":
            CLIENTS["python-urllib"].version = tool_version([sys.executable, "--version"], r"Python (\S+)")
        else:
            CLIENTS[f"python-{lib}"].version = _py_version(lib)
        return _json_driver(env, [sys.executable, str(CLIENTS_DIR / "python" / "matrix_client.py"), lib])
    return make


def node_driver(kind: str):
    def make(env):
        node = tool_version(["node", "--version"], r"v(\S+)")
        if kind == "undici":
            pkg = Path(NODE_PATH) / "undici" / "package.json"
            CLIENTS["node-undici"].version = f"{json.loads(pkg.read_text())['version']} (Node {node})"
        else:
            CLIENTS[f"node-{kind}"].version = node
        extra = {"NODE_PATH": NODE_PATH, "NODE_EXTRA_CA_CERTS": str(env.ca_file)}
        if kind == "fetch":
            extra.update({"NODE_USE_ENV_PROXY": "1", "HTTP_PROXY": "{proxy}", "HTTPS_PROXY": "{proxy}"})
        return _json_driver(env, ["node", str(CLIENTS_DIR / "node" / "matrix_client.js"), kind], extra)
    return make


def _has_py(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, timeout=30).returncode == 0


# id -> (is it installed?, what to install, driver factory)
SETUP = {
    "curl": (lambda: shutil.which("curl"), "Debian curl", curl_driver),
    "wget": (lambda: shutil.which("wget"), "Debian wget", wget_driver),
    "git": (lambda: shutil.which("git"), "Debian git", git_driver),
    "pip": (lambda: _has_py("pip"), "Debian python3-pip", pip_driver),
    "apt": (lambda: shutil.which("apt-get") and shutil.which("dpkg-deb"), "apt and dpkg (Debian)", apt_driver),
    "python-requests": (lambda: _has_py("requests"), "PyPI requests", python_driver("requests")),
    "python-urllib": (lambda: True, "Python 3", python_driver("urllib")),
    "python-httpx": (lambda: _has_py("httpx"), "PyPI httpx", python_driver("httpx")),
    "python-aiohttp": (lambda: _has_py("aiohttp"), "PyPI aiohttp", python_driver("aiohttp")),
    "node-http": (lambda: shutil.which("node"), "Debian nodejs", node_driver("http")),
    "node-undici": (lambda: shutil.which("node") and (Path(NODE_PATH) / "undici" / "package.json").is_file(),
                    "Debian nodejs and node-undici", node_driver("undici")),
    "node-fetch": (lambda: shutil.which("node"), "Debian nodejs", node_driver("fetch")),
}


@pytest.fixture(scope="module")
def drivers(client_matrix_env):
    """Each client's driver, made (versions read, content put on the origins) on first use."""
    made: dict = {}

    def get(cid: str):
        installed, what, factory = SETUP[cid]
        require_tool(cid, bool(installed()), what)
        if cid not in made:
            made[cid] = factory(client_matrix_env)
        return made[cid]
    return get


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("cid", list(CLIENTS))
def test_client_cell(client_matrix_env, drivers, cid, scenario):
    """One cell: the client runs the scenario once; the value must be the one in docs/CLIENTS.md."""
    run_cell(client_matrix_env, CLIENTS[cid], scenario, drivers(cid))


def test_curl_percent_decodes_proxy_user(client_matrix_env):
    """The curl remark in docs/CLIENTS.md: what curl puts in Proxy-Authorization for a password with a
    valid and an invalid percent escape, captured by a socket of our own."""
    require_tool("curl", shutil.which("curl") is not None, "Debian curl")
    import socket
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(10)
    seen: list[bytes] = []

    def accept():
        try:
            conn, _ = srv.accept()
            conn.settimeout(10)
            seen.append(conn.recv(65536))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            conn.close()
        except OSError:
            pass
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        subprocess.run(["curl", "-q", "-sS", "--max-time", "10", "-x", f"http://127.0.0.1:{srv.getsockname()[1]}",
                        "--proxy-user", "u:a%41b%rd", "http://x.invalid/"], capture_output=True, timeout=20,
                       env=client_matrix_env.client_env())
        t.join(10)
    finally:
        srv.close()
    m = re.search(rb"Proxy-Authorization: Basic (\S+)", seen[0] if seen else b"")
    assert m, seen
    assert base64.b64decode(m.group(1)) == b"u:aAb%rd"
