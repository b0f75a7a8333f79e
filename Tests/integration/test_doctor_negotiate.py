"""`portcullis doctor --scheme negotiate|ntlm` against the real Portcullis: NTLM with users
enrolled with --ntlm, and Negotiate under the throwaway KDC of scripts/kdc-test-server.sh (the
proxy's principal is HTTP/localhost, so a working proxy URL names localhost). Each failure is
checked for the words of its message and fix, and no password may be printed.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from portcullis_helpers import free_port
from test_doctor import STEP_NAMES, assert_in, assert_result, home, run_doctor, targets, tls_args  # noqa: F401
from test_negotiate_ntlm import (  # noqa: F401 - kerberos_env is a fixture
    NTLM_PASSWORD, NTLM_USER, add_user, kerberos_env, needs_kdc, negotiate_proxy,
)

NON_ASCII_USER, NON_ASCII_PASSWORD = "dora", "Pässwörd-ÿ"


@pytest.fixture
def ntlm_proxy(launcher, tmp_path, tls_origin):
    data = tmp_path / "data"
    add_user(data, NTLM_USER, NTLM_PASSWORD, "--ntlm")
    add_user(data, NON_ASCII_USER, NON_ASCII_PASSWORD, "--ntlm")
    add_user(data, "carol", "only-basic-here")  # no NT hash: not enrolled for NTLM
    return launcher.start("--auth", "ntlm,basic", "--data-dir", data, "--connect-ports", tls_origin.port,
                          htpasswd=None)


def ntlm_doctor(proxy, user: str, password: str, *extra, home: Path):
    return run_doctor("--proxy", proxy.url, "--user", user, "--password-stdin", *extra,
                      stdin=password + "\n", secrets=[(user, password)], home=home)


# ----------------------------------------------------------------------------------- NTLM

@pytest.mark.parametrize("scheme", ["ntlm", "auto"])
def test_ntlm_enrolled_user_passes_every_step(ntlm_proxy, origin, tls_origin, tls_cert, home, scheme):
    run = ntlm_doctor(ntlm_proxy, NTLM_USER, NTLM_PASSWORD, "--scheme", scheme,
                      *targets(origin, tls_origin), *tls_args(tls_cert), home=home)
    report = assert_result(run, "ok", 0, "accepted")
    # auto: NTLM is stronger than the Basic the proxy offers too.
    assert report["authentication"]["scheme"] == "NTLM", run.describe()
    statuses = {s["name"]: s["status"] for s in report["steps"]}
    assert all(statuses.get(n) == "pass" for n in STEP_NAMES), f"not every step passed: {statuses}\n{run.describe()}"
    assert_in("2 legs on one connection", run.step("authentication")["message"], run, "the authentication step")
    assert origin.requests, "the http target was never fetched"
    assert tls_origin.connections_accepted >= 1, "no TLS handshake through the NTLM-authenticated tunnel"


@pytest.mark.parametrize("user, password", [(NTLM_USER, "not-the-password"), ("carol", "only-basic-here")],
                         ids=["wrong-password", "not-enrolled"])
def test_ntlm_refusal_names_the_reason_and_the_fix(ntlm_proxy, origin, home, user, password):
    run = ntlm_doctor(ntlm_proxy, user, password, "--scheme", "ntlm", *targets(origin), home=home)
    report = assert_result(run, "auth-failed", 2, "rejected")
    assert report["authentication"]["scheme"] == "NTLM", run.describe()
    assert report["authentication"]["proxy_reason"] == "invalid-credentials", run.describe()
    auth = run.step("authentication")
    assert_in(f'user "{user}"', auth["message"], run, "the authentication step")
    assert_in("no NTLM password", auth["message"], run, "the authentication step")
    assert_in("users passwd NAME --ntlm", auth["fix"], run, "the authentication step's fix")
    assert not origin.requests


def test_ntlm_non_ascii_password_passes_with_a_curl_warning(ntlm_proxy, origin, home):
    run = ntlm_doctor(ntlm_proxy, NON_ASCII_USER, NON_ASCII_PASSWORD, "--scheme", "ntlm", *targets(origin), home=home)
    assert_result(run, "ok", 0, "accepted")
    auth = run.step("authentication")
    assert auth["status"] == "warn", run.describe()
    assert_in("curl", auth["message"], run, "the authentication step")
    assert_in("UTF-16", auth["message"], run, "the authentication step")
    assert_in("ASCII password", auth["fix"], run, "the authentication step's fix")


def test_ntlm_without_a_user_says_pass_user(ntlm_proxy, origin, home):
    run = run_doctor("--proxy", ntlm_proxy.url, "--scheme", "ntlm", *targets(origin), home=home)
    assert_result(run, "auth-failed", 2, "no-credentials")
    assert_in("--user", run.step("authentication")["fix"], run, "the authentication step's fix")


def test_negotiate_not_offered_says_what_is(ntlm_proxy, origin, home):
    run = run_doctor("--proxy", ntlm_proxy.url, "--scheme", "negotiate", *targets(origin), home=home)
    assert_result(run, "auth-failed", 2, "scheme-mismatch")
    assert_in("offers only NTLM, Basic; Negotiate credentials will never work here",
              run.step("scheme")["message"], run, "the scheme step")


# ------------------------------------------------------------------------------ Negotiate

def kerberos_vars(cache: Path | str, config: str | None = None) -> dict:
    return {"KRB5CCNAME": f"FILE:{cache}" if isinstance(cache, Path) else cache,
            "KRB5_CONFIG": config or os.environ["KRB5_CONFIG"]}


@needs_kdc
@pytest.mark.parametrize("scheme", ["negotiate", "auto"])
def test_negotiate_with_a_ticket_passes_every_step(launcher, tmp_path, origin, tls_origin, tls_cert, kerberos_env,
                                                   home, scheme):
    p = negotiate_proxy(launcher, tmp_path, "--connect-ports", str(tls_origin.port))
    run = run_doctor("--proxy", p.negotiate_url, "--scheme", scheme, *targets(origin, tls_origin), *tls_args(tls_cert),
                     env_vars=kerberos_env, home=home)
    report = assert_result(run, "ok", 0, "accepted")
    assert report["authentication"]["scheme"] == "Negotiate", run.describe()
    statuses = {s["name"]: s["status"] for s in report["steps"]}
    assert all(statuses.get(n) == "pass" for n in STEP_NAMES), f"not every step passed: {statuses}\n{run.describe()}"
    principal = f"{os.environ['PORTCULLIS_TEST_KRB5_USER']}@{os.environ['PORTCULLIS_TEST_KRB5_REALM']}"
    auth = run.step("authentication")
    assert_in(f'user "{principal}"', auth["message"], run, "the authentication step")
    assert_in("final token verified", auth["message"], run, "the authentication step")
    assert auth["details"].get("mutual_authentication") is True, run.describe()
    assert tls_origin.connections_accepted >= 1, "no TLS handshake through the Negotiate-authenticated tunnel"


@needs_kdc
def test_negotiate_without_a_ticket_says_kinit(launcher, tmp_path, origin, home):
    p = negotiate_proxy(launcher, tmp_path)
    run = run_doctor("--proxy", p.negotiate_url, *targets(origin),
                     env_vars=kerberos_vars(tmp_path / "no-such-ccache"), home=home)
    report = assert_result(run, "auth-failed", 2, "no-credentials")
    assert report["authentication"]["client_reason"] == "no-ticket", run.describe()
    auth = run.step("authentication")
    assert_in("no Kerberos ticket", auth["message"], run, "the authentication step")
    assert_in("kinit", auth["fix"], run, "the authentication step's fix")
    assert not origin.requests


@needs_kdc
def test_negotiate_to_the_proxy_named_by_address_says_use_the_host_name(launcher, tmp_path, origin, kerberos_env,
                                                                        home):
    p = negotiate_proxy(launcher, tmp_path)
    by_address = p.negotiate_url.replace("localhost", "127.0.0.1")
    run = run_doctor("--proxy", by_address, "--scheme", "negotiate", *targets(origin), env_vars=kerberos_env,
                     home=home)
    report = assert_result(run, "auth-failed", 2, "kerberos-failed")
    assert report["authentication"]["client_reason"] == "no-service-principal", run.describe()
    auth = run.step("authentication")
    assert_in("named by its IP address 127.0.0.1", auth["message"], run, "the authentication step")
    assert_in("HTTP/127.0.0.1", auth["message"], run, "the authentication step")  # GSSAPI's own words
    assert_in("host name", auth["fix"], run, "the authentication step's fix")


@needs_kdc
def test_negotiate_to_a_proxy_with_a_wrong_keytab_names_the_proxys_keytab(launcher, tmp_path, origin, kerberos_env,
                                                                          home):
    p = negotiate_proxy(launcher, tmp_path, keytab=os.environ["PORTCULLIS_TEST_KRB5_WRONG_KEYTAB"])
    run = run_doctor("--proxy", p.negotiate_url, *targets(origin), env_vars=kerberos_env, home=home)
    report = assert_result(run, "auth-failed", 2, "rejected")
    assert report["authentication"]["proxy_reason"] == "no-keytab-key", run.describe()
    auth = run.step("authentication")
    assert_in("keytab", auth["message"], run, "the authentication step")
    assert_in("proxy's administrator", auth["fix"], run, "the authentication step's fix")
    assert_in("--keytab", auth["fix"], run, "the authentication step's fix")


@needs_kdc
def test_negotiate_with_an_expired_ticket_says_kinit_again(launcher, tmp_path, origin, home):
    cache = tmp_path / "short-ccache"
    env = {**os.environ, **kerberos_vars(cache)}
    subprocess.run(["kinit", "-l", "1s", os.environ["PORTCULLIS_TEST_KRB5_USER"]],
                   input=os.environ["PORTCULLIS_TEST_KRB5_PASSWORD"].encode(), check=True,
                   capture_output=True, timeout=30, env=env)
    # The event is the ticket's end: klist -s fails once no ticket in the cache is valid.
    deadline = time.monotonic() + 15
    while subprocess.run(["klist", "-s"], env=env, timeout=10).returncode == 0:
        assert time.monotonic() < deadline, "the one-second ticket did not expire"
        time.sleep(0.1)
    p = negotiate_proxy(launcher, tmp_path)
    run = run_doctor("--proxy", p.negotiate_url, "--scheme", "negotiate", *targets(origin),
                     env_vars=kerberos_vars(cache), home=home)
    report = assert_result(run, "auth-failed", 2, "kerberos-failed")
    assert report["authentication"]["client_reason"] == "ticket-expired", run.describe()
    assert_in("has expired", run.step("authentication")["message"], run, "the authentication step")
    assert_in("kinit", run.step("authentication")["fix"], run, "the authentication step's fix")


@needs_kdc
def test_negotiate_with_the_kdc_unreachable_says_so(launcher, tmp_path, origin, kerberos_env, home):
    p = negotiate_proxy(launcher, tmp_path)
    # The ticket-granting ticket is there, but the service ticket needs a KDC, and this
    # krb5.conf sends the client to a port where none listens.
    dead = tmp_path / "krb5-dead-kdc.conf"
    dead.write_text(re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{free_port()}",
                           Path(os.environ["KRB5_CONFIG"]).read_text()))
    run = run_doctor("--proxy", p.negotiate_url, *targets(origin),
                     env_vars={**kerberos_env, "KRB5_CONFIG": str(dead)}, home=home)
    report = assert_result(run, "auth-failed", 2, "kerberos-failed")
    assert report["authentication"]["client_reason"] == "kdc-unreachable", run.describe()
    assert_in("no KDC of the realm answers", run.step("authentication")["message"], run, "the authentication step")
    assert_in("krb5.conf", run.step("authentication")["fix"], run, "the authentication step's fix")
