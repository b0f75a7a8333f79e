"""The client matrix (issue 26) for Go's net/http (Debian's golang-go): every scenario, run by a
small program (Tests/clients/go/proxyclient.go) built ONCE per module into a temporary directory
(GOCACHE, GOPATH and HOME there: nothing written to the real home; stdlib only, GOTOOLCHAIN=local).

The program sets Transport.Proxy explicitly (http.ProxyFromEnvironment never proxies requests to
localhost or loopback addresses), puts the credentials in the proxy URL (Go's only proxy scheme is
Basic, sent pre-emptively) and keeps http.DefaultTransport's HTTP/2 settings, as programs that
clone it do. Each cell is classified by client_matrix.run_cell from the program's own result and
the proxy's access log, and compared with docs/CLIENTS.md; the workaround the https:// proxy note
names (GODEBUG=http2client=0) is run too and must pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from client_matrix import (  # noqa: F401  (client_matrix_env is the fixture)
    SCENARIOS, Attempt, Client, Result, client_matrix_env, require_tool, run_cell, run_client,
)
from portcullis_helpers import REPO_ROOT

SOURCE = REPO_ROOT / "Tests" / "clients" / "go" / "proxyclient.go"

GO = Client(
    "go-nethttp", "Go `net/http`",
    lacks={
        "digest-http": "Go's `net/http` has no Digest for proxies: it sends the proxy URL's credentials as "
                       "Basic and returns the 407. Workaround: offer Basic too (`--auth digest,basic`), over "
                       "`--listen-tls` when the network is not trusted.",
        "digest-connect": "No Digest for proxies (see above): the CONNECT is refused and `Get` fails with "
                          "`Proxy Authentication Required`. Workaround: offer Basic too.",
        "ntlm": "No NTLM in `net/http`: the 407 is returned as is. Workaround: offer Basic too, or put a "
                "local Portcullis with `--parent` (which answers NTLM) between Go and the NTLM proxy.",
        "negotiate": "No Negotiate in `net/http`: the 407 is returned as is. Workaround: offer Basic too, or "
                     "a local Portcullis with `--parent` and `--parent-keytab` in between.",
    },
    notes={
        "keepalive-407": "Go sends the proxy URL's credentials as Basic with the first request (plain requests "
                         "and CONNECT alike): there is no 407 to recover from.",
        "https-proxy": "Go (1.19, and golang/go#26479 is still open) offers `h2` in ALPN to an `https://` proxy "
                       "when HTTP/2 is enabled (`http.DefaultTransport` and its clones), then writes an HTTP/1.1 "
                       "`CONNECT` (or, for `http://` URLs, fails with `http2: unsupported scheme`) on a connection "
                       "where the proxy chose HTTP/2. Workarounds: `GODEBUG=http2client=0` in the program's "
                       "environment, or a `Transport` whose `TLSNextProto` is a non-nil empty map (both also "
                       "turn off HTTP/2 to origins), or `--no-http2` on the proxy.",
    },
    workarounds={"https-proxy"},
)


@pytest.fixture(scope="module")
def go_binary(client_matrix_env) -> Path:
    """proxyclient built once for the module; the build time is printed (-s shows it)."""
    require_tool(GO.id, shutil.which("go") is not None, "go (Debian golang-go)")
    tmp = client_matrix_env.tmp / "go"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GO")}
    env.update(GOCACHE=str(tmp / "cache"), GOPATH=str(tmp / "path"), HOME=str(tmp), GOTOOLCHAIN="local",
               GOFLAGS="", GO111MODULE="on")
    out = tmp / "proxyclient"
    t0 = time.monotonic()
    build = subprocess.run(["go", "build", "-o", str(out), str(SOURCE)], capture_output=True, text=True,
                           timeout=300, cwd=tmp, env=env)
    assert build.returncode == 0, f"go build failed:\n{build.stdout}{build.stderr}"
    print(f"go build of {SOURCE.name}: {time.monotonic() - t0:.2f} s")
    version = subprocess.run(["go", "version"], capture_output=True, text=True, timeout=30, env=env).stdout
    GO.version = version.split()[2].removeprefix("go") if len(version.split()) > 2 else "?"
    return out


def go_driver(env, binary: Path):
    def drive(a: Attempt) -> Result:
        # The https:// proxy note's workaround: HTTP/1.1 only to the proxy.
        extra_env = {"GODEBUG": "http2client=0"} if a.workaround else None
        argv = [binary, "--proxy", a.proxy_url, "--url", a.url, "--cacert", a.ca_file, "--timeout", "5"]
        if a.user is not None:
            argv += ["--user", a.user, "--password", a.password or ""]
        cp = run_client(env, argv, a, extra_env=extra_env)
        assert cp.returncode == 0, f"the Go driver broke (exit {cp.returncode}): {cp.stderr.decode()[-2000:]}"
        out = json.loads(cp.stdout.decode().strip().splitlines()[-1])
        ok = out["status"] == 200 and out["error"] is None and a.check_body(out["body"])
        return Result(ok, status=out["status"], error=out["error"] or "",
                      detail=f"{out['client_version']}, {out['connections']} connection(s)")
    return drive


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_go(client_matrix_env, go_binary, scenario):
    run_cell(client_matrix_env, GO, scenario, go_driver(client_matrix_env, go_binary))

