"""`portcullis doctor` (docs/DOCTOR.md) against a real Portcullis, Squid (Basic and Digest) and
tinyproxy, all on 127.0.0.1: verdicts, exit codes, authentication outcomes, the key phrases of
the messages, the text and --startup-check outputs, and that no password is ever printed.

Every run gets a clean environment (PATH, HOME, LANG and only the proxy variables the test
sets), --timeout 3 and local targets only.
"""

from __future__ import annotations

import base64
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from conftest import SPECIAL_USERS
from peers import (  # noqa: F401 - fixtures used by name
    module_peers, peers, proxy_url, squid_basic, squid_digest, tinyproxy_basic,
)
from portcullis_helpers import PASSWORD, PORTCULLIS_BIN, USER, free_port, try_connect

WRONG_PASSWORD = "wr0ng-Pa55word"
STEP_TIMEOUT = "3"
RUN_TIMEOUT = 60  # a whole doctor run: seven steps of at most 3 s each, with room to spare
STEP_NAMES = ["configuration", "reachability", "challenge", "scheme", "authentication", "http", "tunnel"]
EXIT = {"ok": 0, "config-error": 1, "proxy-unreachable": 1, "auth-failed": 2, "denied": 3, "target-failed": 4}


# --------------------------------------------------------------------------- running doctor

@dataclass
class DoctorRun:
    args: list
    env: dict
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        shown_env = {k: v for k, v in self.env.items() if k not in ("PATH", "HOME", "LANG")}
        return (f"cmd: {self.args}\nenv: {shown_env}\nexit: {self.returncode}\n"
                f"--- stdout ---\n{self.stdout[-6000:]}\n--- stderr ---\n{self.stderr[-3000:]}")

    @property
    def report(self) -> dict:
        """The --json report, parsed, with the schema-1 invariants checked."""
        try:
            report = json.loads(self.stdout)
        except ValueError as e:
            raise AssertionError(f"doctor --json printed no JSON ({e})\n{self.describe()}") from None
        assert isinstance(report, dict), self.describe()
        assert report.get("schema") == 1, f"schema is not 1\n{self.describe()}"
        assert report.get("exit_code") == self.returncode, f"exit_code differs from the exit status\n{self.describe()}"
        assert EXIT.get(report.get("verdict")) == self.returncode, \
            f"verdict {report.get('verdict')!r} does not go with exit {self.returncode}\n{self.describe()}"
        names = [s.get("name") for s in report.get("steps", [])]
        # "pac" steps come first with --pac (test_pac_doctor.py), "client" ones with --client
        # (test_doctor_clients.py).
        assert names and all(n in STEP_NAMES or n in ("pac", "client") for n in names), \
            f"unexpected steps {names}\n{self.describe()}"
        return report

    def step(self, name: str) -> dict:
        for s in self.report["steps"]:
            if s["name"] == name:
                return s
        raise AssertionError(f"no {name!r} step\n{self.describe()}")


def secret_forms(*user_secret: str) -> list[str]:
    """A password as it could leak: itself, percent-encoded, and inside a Basic token.
    Takes (password) for the suite's USER or (user, password)."""
    user, secret = user_secret if len(user_secret) == 2 else (USER, user_secret[0])
    forms = {secret, quote(secret, safe=""),
             base64.b64encode(f"{user}:{secret}".encode()).decode().rstrip("=")}
    return [f for f in forms if len(f) >= 4]


def run_doctor(*args, env_vars: dict | None = None, stdin: str | None = None, as_json: bool = True,
               secrets=(), home: Path | None = None) -> DoctorRun:
    """Run `portcullis doctor ARGS --timeout 3 [--json]` with a clean environment and check that
    no password (PASSWORD, WRONG_PASSWORD, `secrets`: passwords of USER or (user, password)
    pairs) appears in stdout or stderr, plain, percent-encoded or in a Basic token."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": str(home or Path("/nonexistent")), "LANG": "C.UTF-8"}
    env.update(env_vars or {})
    cmd = [PORTCULLIS_BIN, "doctor", *[str(a) for a in args], "--timeout", STEP_TIMEOUT]
    if as_json:
        cmd.append("--json")
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, timeout=RUN_TIMEOUT,
                              input=(stdin or "").encode(), cwd=str(home) if home else None)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"doctor did not finish within {RUN_TIMEOUT}s: {cmd}\n"
                             f"stdout so far: {e.stdout!r}\nstderr so far: {e.stderr!r}") from None
    run = DoctorRun(cmd, env, proc.returncode, proc.stdout.decode("utf-8", "replace"),
                    proc.stderr.decode("utf-8", "replace"))
    leaks = set()
    for secret in (PASSWORD, WRONG_PASSWORD, *secrets):
        leaks.update(secret_forms(*secret) if isinstance(secret, tuple) else secret_forms(secret))
    for form in sorted(leaks):
        assert form not in run.stdout, f"a password ({form!r}) is in stdout\n{run.describe()}"
        assert form not in run.stderr, f"a password ({form!r}) is in stderr\n{run.describe()}"
    return run


@pytest.fixture
def home(tmp_path) -> Path:
    d = tmp_path / "home"
    d.mkdir()
    return d


def proxy_env(url: str, lower: bool = False, **extra) -> dict:
    """HTTP_PROXY and HTTPS_PROXY (or the lower-case names) set to url, plus extra variables."""
    names = ("http_proxy", "https_proxy") if lower else ("HTTP_PROXY", "HTTPS_PROXY")
    env = {n: url for n in names}
    env.update(extra)
    return env


def outcome(report: dict):
    return (report.get("authentication") or {}).get("outcome")


def assert_result(run: DoctorRun, verdict: str, exit_code: int, auth_outcome):
    report = run.report
    assert (report["verdict"], run.returncode, outcome(report)) == (verdict, exit_code, auth_outcome), \
        f"expected verdict {verdict}, exit {exit_code}, authentication {auth_outcome}\n{run.describe()}"
    return report


def assert_in(phrase: str, text: str, run: DoctorRun, where: str):
    assert phrase.lower() in (text or "").lower(), f"{where} lacks {phrase!r}: {text!r}\n{run.describe()}"


def tls_args(tls_cert) -> list:
    return ["--cacert", tls_cert[0]]


def targets(origin, tls_origin=None, path: str = "/text") -> list:
    args = ["--target", f"{origin.base}{path}"]
    if tls_origin is not None:
        args += ["--target", f"https://127.0.0.1:{tls_origin.port}/"]
    return args


# --------------------------------------------------------------------------- peers

class PortcullisPeer:
    """A Portcullis from the launcher, with the url() of the peer fixtures."""

    def __init__(self, proc):
        self.proc = proc
        self.port = proc.port

    def url(self, user=None, password=None) -> str:
        return proxy_url(self.port, user, password)


@pytest.fixture
def portcullis_peer(launcher, tls_origin) -> PortcullisPeer:
    """Portcullis with the suite's users, private destinations allowed, CONNECT to the TLS origin."""
    return PortcullisPeer(launcher.start("--connect-ports", tls_origin.port))


PEERS = ["portcullis_peer", "squid_basic", "squid_digest", "tinyproxy_basic"]
SCHEME = {"portcullis_peer": "Basic", "squid_basic": "Basic", "squid_digest": "Digest", "tinyproxy_basic": "Basic"}


# --------------------------------------------------------------------------- every peer

@pytest.mark.parametrize("peer_name", PEERS)
def test_ok_with_credentials_from_the_environment(request, peer_name, origin, tls_origin, tls_cert, home):
    peer = request.getfixturevalue(peer_name)
    lower = peer_name != "portcullis_peer"  # lower-case names for the peers, upper-case for Portcullis
    run = run_doctor(*targets(origin, tls_origin), *tls_args(tls_cert),
                     env_vars=proxy_env(peer.url(USER, PASSWORD), lower=lower), home=home)
    report = assert_result(run, "ok", 0, "accepted")
    assert report["authentication"]["scheme"] == SCHEME[peer_name], run.describe()
    assert report["proxy"] == f"http://{USER}:***@127.0.0.1:{peer.port}", run.describe()
    assert report["proxy_source"] == ("http_proxy" if lower else "HTTP_PROXY"), run.describe()
    statuses = {s["name"]: s["status"] for s in report["steps"]}
    assert all(statuses.get(n) == "pass" for n in STEP_NAMES), f"not every step passed: {statuses}\n{run.describe()}"
    by_url = {t["url"]: t for t in report["targets"]}
    http_t = by_url.get(f"{origin.base}/text")
    tls_t = by_url.get(f"https://127.0.0.1:{tls_origin.port}/")
    assert http_t and http_t["via_proxy"] is True and http_t["status"] == "pass" and http_t["http_status"] == 200, \
        run.describe()
    assert tls_t and tls_t["via_proxy"] is True and tls_t["status"] == "pass", run.describe()
    assert origin.requests, "the http target was never fetched"
    assert tls_origin.connections_accepted >= 1, "no TLS handshake reached the TLS origin"
    if peer_name == "squid_digest":
        digest = [c for c in report["challenges"] if c["scheme"].lower() == "digest"]
        assert digest and digest[0]["realm"] == "portcullis-test", run.describe()
        assert digest[0]["params"].get("qop") == "auth", run.describe()
        assert digest[0]["field"] == "Proxy-Authenticate", run.describe()


@pytest.mark.parametrize("peer_name", PEERS)
def test_wrong_password_is_rejected(request, peer_name, origin, home):
    peer = request.getfixturevalue(peer_name)
    run = run_doctor(*targets(origin), env_vars=proxy_env(peer.url(USER, WRONG_PASSWORD)), home=home)
    report = assert_result(run, "auth-failed", 2, "rejected")
    assert report["authentication"]["scheme"] == SCHEME[peer_name], run.describe()
    auth = run.step("authentication")
    assert auth["status"] == "fail", run.describe()
    assert_in("rejected the credentials", auth["message"], run, "the authentication step")
    assert auth["fix"], f"a failed step without a fix\n{run.describe()}"
    if peer_name == "portcullis_peer":
        assert report["authentication"]["proxy_reason"] == "invalid-credentials", run.describe()
        assert report["authentication"]["status"] == 407, run.describe()
    assert not origin.requests, "the target was fetched although the credentials are wrong"


# --------------------------------------------------------------------------- Portcullis

@pytest.mark.parametrize("source", ["stdin", "env"])
def test_portcullis_ok_with_user_option(launcher, origin, home, source):
    p = launcher.start()
    args = ["--proxy", p.url, "--user", USER, *targets(origin)]
    env_vars, stdin = {}, None
    if source == "stdin":
        args.append("--password-stdin")
        stdin = PASSWORD + "\n"
    else:
        args += ["--password-env", "DOCTOR_TEST_PASSWORD"]
        env_vars["DOCTOR_TEST_PASSWORD"] = PASSWORD
    run = run_doctor(*args, env_vars=env_vars, stdin=stdin, home=home)
    report = assert_result(run, "ok", 0, "accepted")
    assert report["authentication"]["scheme"] == "Basic", run.describe()
    assert_in(f'"{USER}"', run.step("authentication")["message"], run, "the authentication step")


def test_portcullis_without_credentials(proxy, origin, home):
    run = run_doctor(*targets(origin), env_vars=proxy_env(proxy.url), home=home)
    assert_result(run, "auth-failed", 2, "no-credentials")
    auth = run.step("authentication")
    assert auth["status"] == "fail", run.describe()
    assert_in("USER:PASSWORD@", auth["fix"], run, "the authentication step's fix")
    assert not origin.requests


def test_proxy_down_is_unreachable(origin, home):
    port = free_port()
    assert try_connect("127.0.0.1", port) == "refused"
    run = run_doctor(*targets(origin), env_vars=proxy_env(proxy_url(port, USER, PASSWORD)), home=home)
    assert_result(run, "proxy-unreachable", 1, None)
    reach = run.step("reachability")
    assert reach["status"] == "fail", run.describe()
    assert_in("connection refused", reach["message"], run, "the reachability step")
    assert reach["fix"], run.describe()


def test_portcullis_policy_403_is_denied(launcher, origin, home):
    p = launcher.start(private=False)  # 127.0.0.1 is then a forbidden destination
    run = run_doctor(*targets(origin), env_vars=proxy_env(proxy_url(p.port, USER, PASSWORD)), home=home)
    assert_result(run, "denied", 3, "denied")
    auth = run.step("authentication")
    assert auth["status"] == "fail", run.describe()
    assert_in("not a password problem", auth["message"], run, "the authentication step")
    assert not origin.requests


def test_squid_policy_403_is_denied(squid_basic, origin, home):
    run = run_doctor(*targets(origin, path="/forbidden"),
                     env_vars=proxy_env(squid_basic.url(USER, PASSWORD)), home=home)
    assert_result(run, "denied", 3, "denied")
    assert_in("not a password problem", run.step("authentication")["message"], run, "the authentication step")
    assert not origin.requests


@pytest.mark.parametrize("peer_kind", ["portcullis", "squid", "tinyproxy"])
def test_connect_port_not_allowed_is_denied(peer_kind, launcher, peers, origin, tls_origin, tls_cert, home):
    if peer_kind == "portcullis":
        url = proxy_url(launcher.start("--connect-ports", 443).port, USER, PASSWORD)
    elif peer_kind == "squid":
        url = peers.squid("basic", deny_ports=[tls_origin.port]).url(USER, PASSWORD)
    else:
        url = peers.tinyproxy(connect_ports=[443]).url(USER, PASSWORD)
    run = run_doctor(*targets(origin, tls_origin), *tls_args(tls_cert), env_vars=proxy_env(url), home=home)
    assert_result(run, "denied", 3, "accepted")
    tunnel = run.step("tunnel")
    assert tunnel["status"] == "fail", run.describe()
    assert_in("refused CONNECT", tunnel["message"], run, "the tunnel step")
    tls_t = [t for t in run.report["targets"] if t["url"].startswith("https://")]
    assert tls_t and tls_t[0]["status"] == "fail" and tls_t[0]["http_status"] == 403, run.describe()
    assert run.step("http")["status"] == "pass", run.describe()
    assert tls_origin.connections_accepted == 0


def test_malformed_percent_encoding_is_a_config_error(proxy, origin, home):
    url = f"http://{USER}:bad%zz@127.0.0.1:{proxy.port}"
    run = run_doctor(*targets(origin), env_vars=proxy_env(url), home=home, secrets=["bad%zz"])
    assert_result(run, "config-error", 1, None)
    conf = run.step("configuration")
    assert conf["status"] == "fail", run.describe()
    assert_in("percent", conf["message"], run, "the configuration step")
    assert all(s["status"] == "skip" for s in run.report["steps"] if s["name"] != "configuration"), run.describe()


def test_unencoded_at_in_password_works_with_a_warning(proxy, origin, home):
    user, password = "at", SPECIAL_USERS["at"]
    assert "@" in password
    url = f"http://{user}:{password}@127.0.0.1:{proxy.port}"  # not percent-encoded, as people write it
    run = run_doctor(*targets(origin), env_vars=proxy_env(url), home=home,
                     secrets=[(user, password), password.split("@", 1)[1]])
    report = assert_result(run, "ok", 0, "accepted")
    conf = run.step("configuration")
    assert conf["status"] == "warn", run.describe()
    assert_in("%40", conf["message"] + " " + (conf["fix"] or ""), run, "the configuration step")
    assert report["proxy"] == f"http://{user}:***@127.0.0.1:{proxy.port}", run.describe()


def test_no_proxy_bypasses_a_target(proxy, origin, home):
    bypassed = f"http://localhost:{origin.port}/text"
    through = f"{origin.base}/text"
    run = run_doctor("--target", bypassed, "--target", through, home=home,
                     env_vars=proxy_env(proxy_url(proxy.port, USER, PASSWORD), NO_PROXY="localhost"))
    report = assert_result(run, "ok", 0, "accepted")
    by_url = {t["url"]: t for t in report["targets"]}
    assert by_url.get(bypassed, {}).get("via_proxy") is False, run.describe()
    assert_in("NO_PROXY", by_url[bypassed]["message"], run, "the bypassed target")
    assert by_url.get(through, {}).get("via_proxy") is True, run.describe()
    assert by_url[through]["status"] == "pass", run.describe()
    assert len(origin.requests) == 1, f"the origin saw {origin.requests}"


def test_startup_check_is_silent_on_success(proxy, origin, home):
    run = run_doctor("--startup-check", *targets(origin), as_json=False, home=home,
                     env_vars=proxy_env(proxy_url(proxy.port, USER, PASSWORD)))
    assert run.returncode == 0, run.describe()
    assert run.stdout == "" and run.stderr == "", run.describe()


def test_startup_check_prints_one_line_on_failure(proxy, origin, home):
    run = run_doctor("--startup-check", *targets(origin), as_json=False, home=home,
                     env_vars=proxy_env(proxy_url(proxy.port, USER, WRONG_PASSWORD)))
    assert run.returncode == 2, run.describe()
    assert run.stderr == "", run.describe()
    lines = run.stdout.splitlines()
    assert len(lines) == 1, run.describe()
    assert lines[0].startswith("portcullis doctor:") and "exit 2" in lines[0], run.describe()


def test_text_output_of_a_rejection(proxy, origin, home):
    run = run_doctor(*targets(origin), as_json=False, home=home,
                     env_vars=proxy_env(proxy_url(proxy.port, USER, WRONG_PASSWORD)))
    assert run.returncode == 2, run.describe()
    lines = run.stdout.splitlines()
    assert lines and lines[0].startswith("portcullis doctor:"), run.describe()
    assert "exit 2" in lines[0], run.describe()
    step_lines = {line.split()[1]: line.split()[0] for line in lines[1:]
                  if len(line.split()) > 1 and line.split()[1] in STEP_NAMES}
    assert step_lines.get("authentication") == "fail", run.describe()
    assert step_lines.get("configuration") == "pass", run.describe()
    assert any(line.strip().startswith("fix:") for line in lines), run.describe()


# --------------------------------------------------------------------------- Squid Digest

def test_squid_digest_with_scheme_basic_is_a_mismatch(squid_digest, origin, home):
    run = run_doctor("--scheme", "basic", *targets(origin),
                     env_vars=proxy_env(squid_digest.url(USER, PASSWORD)), home=home)
    assert_result(run, "auth-failed", 2, "scheme-mismatch")
    messages = " | ".join(s["message"] for s in run.report["steps"] if s["status"] == "fail")
    assert_in("will never work here", messages, run, "the failing step")
    assert not origin.requests


# --------------------------------------------------------------------------- tinyproxy

def test_tinyproxy_rejection_names_the_nonconformant_401(tinyproxy_basic, origin, home):
    run = run_doctor(*targets(origin), env_vars=proxy_env(tinyproxy_basic.url(USER, WRONG_PASSWORD)), home=home)
    report = assert_result(run, "auth-failed", 2, "rejected")
    flagged = [s for s in report["steps"] if (s.get("details") or {}).get("nonconformant_401") is True]
    assert flagged, f"no step has details.nonconformant_401 = true\n{run.describe()}"
    assert any("407" in s["message"] for s in flagged), \
        f"no step with nonconformant_401 mentions 407\n{run.describe()}"
    assert not origin.requests
