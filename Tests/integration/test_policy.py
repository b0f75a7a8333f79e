"""Access rules (--policy): first match wins, default deny once rules exist, 403 naming the
rule (never 407), groups, CONNECT as a method, and reloads on change and on SIGHUP with a bad
file keeping the previous rules."""

from __future__ import annotations

import signal

from conftest import SPECIAL_USERS
from portcullis_helpers import assert_proxy_status, basic, wait_until

ALICE = ("Proxy-Authorization", basic())
OTHER = ("Proxy-Authorization", basic("at", SPECIAL_USERS["at"]))


def write_policy(path, text: str):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # atomic, as editors and config management do


def status(proxy, origin, auth, method="GET", path="/text"):
    with proxy.conn() as c:
        return c.request(method, f"{origin.base}{path}", [auth], b"x" if method == "POST" else b"")


def test_rules_first_match_default_deny_and_403_naming_the_rule(launcher, origin, tmp_path):
    policy = tmp_path / "policy.yaml"
    write_policy(policy, f"""
groups:
  readers: [alice]
rules:
  - name: no-downloads
    action: deny
    hosts: ["127.0.0.1"]
    ports: [{origin.port}]
    methods: [PUT]
  - name: readers-get
    action: allow
    groups: [readers]
    methods: [GET, HEAD]
""")
    proxy = launcher.start("--policy", policy)
    assert status(proxy, origin, ALICE).status == 200
    r = status(proxy, origin, ALICE, "POST", "/upload")
    assert r.status == 403, r.describe()
    assert_proxy_status(r, error="http_request_denied", details="policy: no rule allows this request")
    r = status(proxy, origin, OTHER)
    assert r.status == 403, r.describe()
    assert "user \"at\"" in r.body.decode()
    r = status(proxy, origin, ALICE, "PUT", "/upload")
    assert r.status == 403
    assert_proxy_status(r, details="policy: rule no-downloads")
    # Without credentials it is still a 407: the policy applies to authenticated users.
    with proxy.conn() as c:
        assert c.request("GET", f"{origin.base}/text").status == 407


def test_connect_is_a_method_of_its_own(launcher, origin, tls_origin, tmp_path):
    policy = tmp_path / "policy.yaml"
    write_policy(policy, """
rules:
  - name: web-only
    action: allow
    methods: [GET]
""")
    proxy = launcher.start("--policy", policy, "--connect-ports", tls_origin.port)
    with proxy.conn() as c:
        c.send(f"CONNECT 127.0.0.1:{tls_origin.port} HTTP/1.1\r\nHost: x\r\n{ALICE[0]}: {ALICE[1]}\r\n\r\n".encode())
        r = c.read_response("CONNECT")
        assert r.status == 403, r.describe()
        assert_proxy_status(r, details="policy: no rule allows this request")


def test_policy_reloads_on_change_and_on_sighup_and_a_bad_file_keeps_the_old_rules(launcher, origin, tmp_path):
    policy = tmp_path / "policy.yaml"
    write_policy(policy, "rules:\n  - name: alice-only\n    action: allow\n    users: [alice]\n")
    proxy = launcher.start("--policy", policy)
    assert status(proxy, origin, OTHER).status == 403
    # A change on disk is picked up within the 2 s poll.
    write_policy(policy, "rules:\n  - name: everyone\n    action: allow\n")
    wait_until(lambda: status(proxy, origin, OTHER).status == 200, 10, what="the new policy in force")
    # A broken file: reported, and the previous rules stay in force.
    write_policy(policy, "rules:\n  - name: typo\n    acton: allow\n")
    proxy.send_signal(signal.SIGHUP)
    proxy.stderr.wait_for("policy reload failed", 10)
    assert status(proxy, origin, OTHER).status == 200
    # SIGHUP with a good file applies it at once.
    write_policy(policy, "rules:\n  - name: nobody\n    action: deny\n")
    proxy.send_signal(signal.SIGHUP)
    wait_until(lambda: status(proxy, origin, ALICE).status == 403, 10, what="the deny-all policy after SIGHUP")
    assert proxy.proc.poll() is None, "SIGHUP must not stop the proxy"


def test_a_bad_policy_file_stops_start_up_with_a_clear_error(launcher, tmp_path):
    policy = tmp_path / "policy.yaml"
    write_policy(policy, "rules:\n  - name: r\n    action: allow\n    groups: [ghosts]\n")
    p = launcher.start("--policy", policy, ready=False)
    assert p.proc.wait(timeout=20) != 0
    assert "group 'ghosts'" in p.stderr.text() + p.stdout.text()
