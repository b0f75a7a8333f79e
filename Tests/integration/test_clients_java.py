"""The client matrix (issue 26) for Java 17's two HTTP clients, `java.net.http.HttpClient` and
`HttpURLConnection`: every scenario, each run by Tests/clients/java/ProxyClient.java in
source-file mode (`java ProxyClient.java`), configured as Java programs are: the proxy from the
standard http(s).proxyHost/Port properties, credentials from a `java.net.Authenticator`, the JDK
defaults for everything else (notably `jdk.http.auth.tunneling.disabledSchemes=Basic`). The https
origins' CA is in a PKCS12 trust store made once per module with keytool and passed with
-Djavax.net.ssl.trustStore. For Negotiate the JVM gets what the JDK documents for a ticket cache:
-Djavax.security.auth.useSubjectCredsOnly=false and -Djava.security.krb5.conf.

Each cell is classified by client_matrix.run_cell from the program's own result and the proxy's
access log, and compared with docs/CLIENTS.md; the workaround the Basic-over-CONNECT note names (an
empty jdk.http.auth.tunneling.disabledSchemes) is run too and must pass. Beside the matrix:
HttpURLConnection's Digest with a password holding `é` (it hashes the ISO-8859-1 bytes) is run
against the proxy's Latin-1 Digest secrets."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter

import pytest

from client_matrix import (  # noqa: F401  (client_matrix_env is the fixture)
    SCENARIOS, SPECIAL_PASSWORD, SPECIAL_USER, Attempt, Client, Result, attempt_for, client_matrix_env,
    require_tool, run_cell, run_client,
)
from portcullis_helpers import REPO_ROOT

SOURCE = REPO_ROOT / "Tests" / "clients" / "java" / "ProxyClient.java"

_TUNNEL_BASIC = (
    "Java refuses Basic for CONNECT tunnels by default (`jdk.http.auth.tunneling.disabledSchemes=Basic` in "
    "`net.properties`, since 8u111): the Authenticator is never asked and the https request ends with the "
    "CONNECT's 407. Workaround: `-Djdk.http.auth.tunneling.disabledSchemes=` (e.g. in `JAVA_TOOL_OPTIONS`; "
    "`portcullis doctor --client java` names it), or Digest, which Java allows for tunnels "
    "(`HttpURLConnection` only).")

HTTPCLIENT = Client(
    "java-httpclient", "Java `HttpClient`",
    lacks={
        "digest-http": "`java.net.http.HttpClient` authenticates with Basic only: against a Digest-only proxy "
                       "the Authenticator is not asked and the 407 is returned. Workaround: offer Basic too, "
                       "or use `HttpURLConnection`, which has Digest.",
        "digest-connect": "Basic only (see above), and Basic is refused for tunnels by default: the CONNECT's "
                          "407 is returned as the response. Workaround: offer Basic too and lift "
                          "`jdk.http.auth.tunneling.disabledSchemes`.",
        "ntlm": "`HttpClient` has no NTLM: the 407 is returned. Workaround: `HttpURLConnection` (which has "
                "NTLM), offering Basic too, or a local Portcullis with `--parent` in between.",
        "negotiate": "`HttpClient` has no Negotiate: the 407 is returned. Workaround: `HttpURLConnection` "
                     "(Negotiate with `-Djavax.security.auth.useSubjectCredsOnly=false`), or offering Basic too.",
        "https-proxy": "Java has no TLS to the proxy: given the TLS port in `https.proxyHost/Port` it speaks "
                       "plain HTTP to it and gets Portcullis' 400 (`use https://`). Workaround: a plain "
                       "`--listen` for Java clients, on loopback or a trusted network.",
    },
    notes={
        "basic-connect": _TUNNEL_BASIC,
    },
    workarounds={"basic-connect"},
)

URLCONNECTION = Client(
    "java-httpurlconnection", "Java `HttpURLConnection`",
    lacks={
        "https-proxy": HTTPCLIENT.lacks["https-proxy"],
    },
    notes={
        "basic-connect": _TUNNEL_BASIC,
        "keepalive-407": "`HttpURLConnection` closes its connection on a 407 (before answering a Basic or Digest "
                         "challenge it disconnects, only NTLM's second leg stays on the connection) and sends the "
                         "credentials on a new one: one extra TCP connection per login, nothing to configure.",
    },
    workarounds={"basic-connect"},
)

CLIENTS = {"httpclient": HTTPCLIENT, "urlconnection": URLCONNECTION}
TRUSTSTORE_PASSWORD = "matrix-truststore"


@pytest.fixture(scope="module")
def java(client_matrix_env) -> dict:
    """The JVM options every run gets: the test CA in a PKCS12 trust store, made once here with
    keytool (the Negotiate cells add their Kerberos options in the driver)."""
    require_tool(HTTPCLIENT.id, shutil.which("java") is not None and shutil.which("keytool") is not None,
                 "java and keytool 17 (Debian openjdk-17-jre-headless)")
    env = client_matrix_env
    out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=60)
    m = re.search(r'version "([^"]+)"', out.stderr)
    for client in CLIENTS.values():
        client.version = m.group(1) if m else "?"
    store = env.tmp / "java-truststore.p12"
    subprocess.run(["keytool", "-importcert", "-noprompt", "-alias", "matrix-ca", "-file", str(env.ca_file),
                    "-keystore", str(store), "-storetype", "PKCS12", "-storepass", TRUSTSTORE_PASSWORD],
                   check=True, capture_output=True, timeout=60)
    options = [f"-Djavax.net.ssl.trustStore={store}", "-Djavax.net.ssl.trustStoreType=PKCS12",
               f"-Djavax.net.ssl.trustStorePassword={TRUSTSTORE_PASSWORD}"]
    return {"options": options}


def java_driver(env, java_setup: dict, api: str):
    def drive(a: Attempt) -> Result:
        options = list(java_setup["options"])
        if a.workaround:  # the Basic-over-CONNECT note's workaround
            options.append("-Djdk.http.auth.tunneling.disabledSchemes=")
        if a.scenario == "negotiate" and a.extra_env.get("KRB5_CONFIG"):
            options += ["-Djavax.security.auth.useSubjectCredsOnly=false",
                        f"-Djava.security.krb5.conf={a.extra_env['KRB5_CONFIG']}"]
        argv = ["java", *options, SOURCE, "--api", api, "--proxy", a.proxy_url, "--url", a.url, "--timeout", "10"]
        if a.user is not None:
            argv += ["--user", a.user, "--password", a.password or ""]
        cp = run_client(env, argv, a)
        assert cp.returncode == 0, f"the Java driver broke (exit {cp.returncode}): {cp.stderr.decode()[-2000:]}"
        out = json.loads(cp.stdout.decode().strip().splitlines()[-1])
        ok = out["status"] == 200 and out["error"] is None and a.check_body(out["body"])
        return Result(ok, status=out["status"], error=out["error"] or "", detail=out["client_version"])
    return drive


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("api", list(CLIENTS))
def test_java(client_matrix_env, java, api, scenario):
    run_cell(client_matrix_env, CLIENTS[api], scenario, java_driver(client_matrix_env, java, api))


def test_java_urlconnection_digest_with_a_latin1_password(client_matrix_env, java):
    """HttpURLConnection computes Digest over the ISO-8859-1 bytes of the password whatever the
    challenge's charset says: with SPECIAL_PASSWORD (`é`) that is only accepted when the proxy
    also keeps the Latin-1 HA1 of a Latin-1-representable password (issue 26)."""
    env = client_matrix_env
    a = attempt_for(env, "digest-http")
    a.user, a.password = SPECIAL_USER, SPECIAL_PASSWORD
    log = env.proxies["digest"].log
    mark = log.mark()
    res = java_driver(env, java, "urlconnection")(a)
    seen = [(r["method"], r["status"], r["user"], r.get("auth_result")) for r in log.records_since(mark)]
    outcomes = Counter(f"{status} {why}" for _, status, _, why in seen)
    assert res.ok, f"{res}; the proxy answered {len(seen)} requests: {dict(outcomes)}"
    assert seen[-1][:3] == ("GET", 200, SPECIAL_USER), seen
