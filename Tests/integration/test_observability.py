"""Observability through the real binary: /metrics moves exactly with scripted traffic (and
parses as Prometheus exposition), /healthz and /readyz, the Squid-format and JSON access logs,
reopening the log on SIGUSR1, challenge-loop detection, and `portcullis status`."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import SPECIAL_USERS
from portcullis_helpers import PASSWORD, PORTCULLIS_BIN, USER, basic, free_port, wait_until

GOOD = ("Proxy-Authorization", basic())
WRONG = ("Proxy-Authorization", basic(USER, "wrong-password"))
MALFORMED = ("Proxy-Authorization", "Basic !!!not-base64")

# Squid's native access.log line: %ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt
SQUID_LINE = re.compile(
    r"^(?P<time>\d+\.\d{3}) +(?P<elapsed>\d+) (?P<client>\S+) (?P<code>[A-Z_]+)/(?P<status>\d{3}) "
    r"(?P<bytes>\d+) (?P<method>\S+) (?P<url>\S+) (?P<user>\S+) (?P<hier>[A-Z_]+)/(?P<peer>\S+) (?P<type>\S+)$"
)


def scrape(port: int) -> dict:
    """Every sample of /metrics, parsed by prometheus_client: {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def delta(before: dict, after: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0) - before.get(key, 0)


def get(proxy, origin, headers, method="GET", path="/text"):
    with proxy.conn() as c:
        return c.request(method, f"{origin.base}{path}", headers)


@pytest.fixture
def observed(launcher, tmp_path):
    admin = free_port()
    log = tmp_path / "access.log"
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - name: no-delete\n    action: deny\n    methods: [DELETE]\n"
                      "  - name: rest\n    action: allow\n")
    proxy = launcher.start("--admin", f"127.0.0.1:{admin}", "--access-log", log, "--policy", policy)
    return proxy, admin, log


def test_metrics_move_exactly_with_scripted_traffic(observed, origin):
    proxy, admin, _ = observed
    before = scrape(admin)
    with proxy.conn() as c:  # two successes on one connection: one verification, one cache hit
        assert c.request("GET", f"{origin.base}/text", [GOOD]).status == 200
        assert c.request("GET", f"{origin.base}/text", [GOOD]).status == 200
    assert get(proxy, origin, []).status == 407
    assert get(proxy, origin, [MALFORMED]).status == 407
    assert get(proxy, origin, [WRONG]).status == 407
    assert get(proxy, origin, [GOOD], "DELETE").status == 403
    after = scrape(admin)
    expected = [
        ("portcullis_auth_outcomes_total", dict(scheme="basic", outcome="accepted", reason="ok"), 3),
        ("portcullis_auth_outcomes_total", dict(scheme="none", outcome="rejected", reason="missing-credentials"), 1),
        ("portcullis_auth_outcomes_total", dict(scheme="basic", outcome="rejected", reason="malformed-credentials"), 1),
        ("portcullis_auth_outcomes_total", dict(scheme="basic", outcome="rejected", reason="invalid-credentials"), 1),
        ("portcullis_proxy_auth_challenges_total", {}, 3),
        ("portcullis_requests_total", dict(kind="http", status_class="2xx"), 2),
        ("portcullis_requests_total", dict(kind="http", status_class="4xx"), 4),
        ("portcullis_refusals_total", dict(reason="policy"), 1),
        ("portcullis_credential_cache_total", dict(result="hit"), 2),
        ("portcullis_credential_cache_total", dict(result="miss"), 3),  # the malformed one is looked up too
        ("portcullis_challenge_loops_total", {}, 0),
        ("portcullis_lockouts_total", {}, 0),
    ]
    for name, labels, want in expected:
        got = delta(before, after, name, **labels)
        assert got == want, f"{name}{labels}: moved by {got}, expected {want}"
    assert delta(before, after, "portcullis_request_duration_seconds_count") == 6
    assert delta(before, after, "portcullis_added_latency_seconds_count") == 2
    assert delta(before, after, "portcullis_bytes_total", direction="to_clients") > 0
    # No label value may carry a user name or a host.
    for (name, labels), _ in after.items():
        for _, value in labels:
            assert USER not in value and "127.0.0.1" not in value, (name, labels)


def test_health_and_readiness(observed):
    _, admin, _ = observed
    for path, body in (("/healthz", b"ok\n"), ("/readyz", b"ready\n")):
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=5) as r:
            assert (r.status, r.read()) == (200, body)


def test_readiness_follows_the_users_store(launcher, users_file, tmp_path):
    """/readyz reports the 2-second check of the users store (made off the event loops)."""
    users = tmp_path / "users.htpasswd"
    users.write_bytes(users_file.read_bytes())
    admin = free_port()
    launcher.start("--admin", f"127.0.0.1:{admin}", htpasswd=users)

    def readyz() -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    # The first check runs shortly after start: wait for it rather than race it.
    wait_until(lambda: readyz() == 200, 10, interval=0.2, what="/readyz ready after start")
    users.rename(tmp_path / "moved-away")
    wait_until(lambda: readyz() == 503, 10, interval=0.2, what="/readyz to say not ready")
    (tmp_path / "moved-away").rename(users)
    wait_until(lambda: readyz() == 200, 10, interval=0.2, what="/readyz ready again")


def test_a_non_loopback_admin_listener_needs_consent(launcher):
    p = launcher.start("--admin", f"0.0.0.0:{free_port()}", ready=False)
    assert p.proc.wait(timeout=20) != 0
    assert "--allow-remote-admin" in p.stderr.text() + p.stdout.text()


def test_squid_format_access_log(observed, origin, tls_origin):
    proxy, _, log = observed
    assert get(proxy, origin, [GOOD]).status == 200
    assert get(proxy, origin, [WRONG]).status == 407
    with proxy.conn() as c:  # a CONNECT that is refused: CONNECT port policy (443 only)
        c.send(f"CONNECT 127.0.0.1:{tls_origin.port} HTTP/1.1\r\nHost: x\r\n{GOOD[0]}: {GOOD[1]}\r\n\r\n".encode())
        assert c.read_response("CONNECT").status == 403
    wait_until(lambda: len(log.read_text().splitlines()) >= 3, 5, what="three access-log lines")
    lines = log.read_text().splitlines()
    parsed = [SQUID_LINE.match(line) for line in lines]
    assert all(parsed), lines
    ok, denied, connect = parsed[:3]
    assert (ok["code"], ok["status"], ok["method"], ok["user"], ok["hier"]) == ("TCP_MISS", "200", "GET", USER, "HIER_DIRECT")
    assert ok["url"] == f"{origin.base}/text" and ok["type"].startswith("text/plain")
    assert (denied["code"], denied["status"], denied["user"], denied["hier"]) == ("TCP_DENIED", "407", "-", "HIER_NONE")
    assert (connect["method"], connect["status"]) == ("CONNECT", "403")
    text = log.read_text()
    for secret in (PASSWORD, "wrong-password", GOOD[1].split()[1], WRONG[1].split()[1]):
        assert secret not in text


def test_json_access_log_and_tunnel_bytes(launcher, origin, tls_origin, tmp_path):
    log = tmp_path / "access.jsonl"
    proxy = launcher.start("--access-log", log, "--access-log-format", "json", "--connect-ports", tls_origin.port)
    assert get(proxy, origin, [GOOD]).status == 200
    with proxy.conn() as c:
        c.send(f"CONNECT 127.0.0.1:{tls_origin.port} HTTP/1.1\r\nHost: x\r\n{GOOD[0]}: {GOOD[1]}\r\n\r\n".encode())
        assert c.read_response("CONNECT").status == 200
        c.send(b"\x16\x03\x01\x00\x05hello")  # some bytes into the tunnel, then close both ways
    wait_until(lambda: len(log.read_text().splitlines()) >= 2, 10, what="a line for the request and the tunnel")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    get_record, tunnel = records[0], records[1]
    assert get_record["method"] == "GET" and get_record["status"] == 200 and get_record["user"] == USER
    assert get_record["auth_scheme"] == "basic" and get_record["auth_result"] == "ok"
    assert get_record["upstream"] == "127.0.0.1" and get_record["bytes_to_client"] > 0
    assert tunnel["tunnel"] is True and tunnel["method"] == "CONNECT" and tunnel["status"] == 200
    assert tunnel["bytes_from_client"] >= 10
    assert set(get_record) >= {"time", "duration_ms", "client", "target", "bytes_from_client", "proxy_status"}


def test_access_log_is_reopened_on_sigusr1(observed, origin):
    proxy, _, log = observed
    assert get(proxy, origin, [GOOD]).status == 200
    wait_until(lambda: log.exists() and log.read_text().strip(), 5, what="the first line")
    rotated = log.with_name("access.log.1")
    log.rename(rotated)  # what logrotate does
    proxy.send_signal(signal.SIGUSR1)
    wait_until(lambda: log.exists(), 5, what="the log reopened under its name")
    assert get(proxy, origin, [GOOD]).status == 200
    wait_until(lambda: log.read_text().strip(), 5, what="a line in the new file")
    assert len(rotated.read_text().splitlines()) == 1
    assert proxy.proc.poll() is None


def test_a_challenge_loop_is_flagged_once_with_its_cause(observed, origin):
    proxy, admin, _ = observed
    before = scrape(admin)
    bearer = ("Proxy-Authorization", "Bearer abc.def.ghi")
    for _ in range(7):
        assert get(proxy, origin, [bearer, ("User-Agent", "loopy/1.0")]).status == 407
    proxy.stderr.wait_for("challenge loop", 5)
    text = proxy.stderr.text()
    assert text.count("challenge loop") == 1, text
    assert "client keeps sending bearer; proxy offers only Basic" in text
    assert "abc.def.ghi" not in text
    assert delta(before, scrape(admin), "portcullis_challenge_loops_total") == 1


def test_status_command_summarizes_the_metrics(observed, origin):
    proxy, admin, _ = observed
    assert get(proxy, origin, [GOOD]).status == 200
    assert get(proxy, origin, [WRONG]).status == 407
    out = subprocess.run([PORTCULLIS_BIN, "status", "--admin", f"http://127.0.0.1:{admin}"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "requests     http: 2xx 1, 4xx 1" in out.stdout
    assert "refused: invalid-credentials 1" in out.stdout
    down = subprocess.run([PORTCULLIS_BIN, "status", "--admin", f"127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=30)
    assert down.returncode == 1 and "cannot read" in down.stdout
