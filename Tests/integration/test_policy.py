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
    # A change on disk is picked up once two 2 s polls saw the same file (a save has settled).
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


# Findings of the policy review (issues 4-7): each rule holds for every spelling of what it
# names, and a file caught mid-save is never taken for "no rules".

LOOPBACK_SPELLINGS = ["127.1", "2130706433", "0x7f000001", "0177.0.0.1", "017700000001", "0x7f.1", "127.0.0.1."]


def deny_then_allow(hosts=None, methods=None, name="blocked"):
    lines = ["rules:", f"  - name: {name}", "    action: deny"]
    if hosts:
        lines.append("    hosts: [" + ", ".join(f'"{h}"' for h in hosts) + "]")
    if methods:
        lines.append("    methods: [" + ", ".join(methods) + "]")
    lines += ["  - name: everyone", "    action: allow", ""]
    return "\n".join(lines)


def connect_status(proxy, authority, auth=ALICE):
    with proxy.conn() as c:
        c.send(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{auth[0]}: {auth[1]}\r\n\r\n".encode())
        return c.read_response("CONNECT")


def test_a_cidr_rule_holds_for_every_spelling_of_an_ipv4_address(launcher, origin, tmp_path):
    """getaddrinfo reads 127.1, 2130706433, 0x7f000001... as 127.0.0.1 (inet_aton): so must the rules."""
    policy = tmp_path / "policy.yaml"
    write_policy(policy, deny_then_allow(hosts=["127.0.0.0/8"], name="no-loopback"))
    proxy = launcher.start("--policy", policy, "--connect-ports", origin.port)
    for spelling in LOOPBACK_SPELLINGS:
        with proxy.conn() as c:
            r = c.request("GET", f"http://{spelling}:{origin.port}/text", [ALICE])
        assert r.status == 403, f"GET via {spelling}: {r.describe()}"
        assert_proxy_status(r, error="http_request_denied", details="policy: rule no-loopback")
        r = connect_status(proxy, f"{spelling}:{origin.port}")
        assert r.status == 403, f"CONNECT {spelling}: {r.describe()}"
        assert_proxy_status(r, details="policy: rule no-loopback")
    assert origin.requests == []
    # A name that ends in a number but is no address is refused, not sent to DNS.
    with proxy.conn() as c:
        assert c.request("GET", f"http://1.2.3.4.5:{origin.port}/text", [ALICE]).status == 400


def test_a_name_resolving_into_a_denied_network_is_denied(launcher, origin, tmp_path):
    """Network rules hold on the address connected to: localhost is 127.0.0.1 (/etc/hosts)."""
    policy = tmp_path / "policy.yaml"
    write_policy(policy, deny_then_allow(hosts=["127.0.0.0/8", "::1"], name="no-loopback"))
    proxy = launcher.start("--policy", policy, "--connect-ports", origin.port)
    with proxy.conn() as c:
        r = c.request("GET", f"http://localhost:{origin.port}/text", [ALICE])
    assert r.status == 403, r.describe()
    assert_proxy_status(r, error="destination_ip_prohibited", details="policy: rule no-loopback")
    r = connect_status(proxy, f"localhost:{origin.port}")
    assert r.status == 403, r.describe()
    assert_proxy_status(r, error="destination_ip_prohibited", details="policy: rule no-loopback")
    assert origin.requests == []
    proxy.stderr.wait_for(r"^(?=.*request denied by policy)(?=.*no-loopback)", 10)


def test_an_allow_network_rule_admits_names_resolving_into_it(launcher, origin, tmp_path):
    policy = tmp_path / "policy.yaml"
    write_policy(policy, 'rules:\n  - name: loopback-lab\n    action: allow\n    hosts: ["127.0.0.0/8"]\n')
    proxy = launcher.start("--policy", policy)
    with proxy.conn() as c:
        r = c.request("GET", f"http://localhost:{origin.port}/text", [ALICE])
    assert r.status == 200, r.describe()


def test_a_pooled_connection_is_not_reused_where_the_rules_deny_its_address(launcher, origin, tmp_path):
    """alice's keep-alive connection to localhost (127.0.0.1) must not carry another user's
    request there: the pooled connection's address is checked against that user's rules."""
    policy = tmp_path / "policy.yaml"
    write_policy(policy, """
rules:
  - name: alice-loopback
    action: allow
    users: [alice]
    hosts: ["127.0.0.0/8"]
  - name: others-not-loopback
    action: deny
    hosts: ["127.0.0.0/8"]
  - name: everyone
    action: allow
""")
    proxy = launcher.start("--policy", policy)
    with proxy.conn() as c:
        first = c.request("GET", f"http://localhost:{origin.port}/text", [ALICE])
        assert first.status == 200, first.describe()
        second = c.request("GET", f"http://localhost:{origin.port}/text", [OTHER])
        assert second.status == 403, second.describe()
        assert_proxy_status(second, details="policy: rule others-not-loopback")
    assert len(origin.requests) == 1


def test_host_rules_hold_with_a_trailing_dot(launcher, origin, tmp_path):
    policy = tmp_path / "policy.yaml"
    write_policy(policy, deny_then_allow(hosts=["localhost", "*.denied.example."], name="no-localhost"))
    proxy = launcher.start("--policy", policy, "--connect-ports", origin.port)
    for host in ["localhost.", "LocalHost.", "a.denied.example.", "a.denied.example"]:
        with proxy.conn() as c:
            r = c.request("GET", f"http://{host}:{origin.port}/text", [ALICE])
        assert r.status == 403, f"{host}: {r.describe()}"
        assert_proxy_status(r, error="http_request_denied", details="policy: rule no-localhost")
        r = connect_status(proxy, f"{host}:{origin.port}")
        assert r.status == 403, f"CONNECT {host}: {r.describe()}"


def test_method_rules_hold_for_every_spelling_of_the_method(launcher, origin, tmp_path):
    policy = tmp_path / "policy.yaml"
    write_policy(policy, deny_then_allow(methods=["POST"], name="no-post"))
    proxy = launcher.start("--policy", policy)
    for method in ["POST", "post", "Post"]:
        with proxy.conn() as c:
            r = c.request(method, f"{origin.base}/upload", [ALICE], b"x")
        assert r.status == 403, f"{method}: {r.describe()}"
        assert_proxy_status(r, details="policy: rule no-post")
    assert origin.requests == []


def test_an_empty_or_cut_short_policy_file_keeps_the_previous_rules(launcher, origin, tmp_path):
    """A save that is not atomic truncates the file first: that must not mean 'no rules'."""
    policy = tmp_path / "policy.yaml"
    write_policy(policy, "rules:\n  - name: alice-only\n    action: allow\n    users: [alice]\n")
    proxy = launcher.start("--policy", policy)
    assert status(proxy, origin, OTHER).status == 403
    policy.write_text("")  # truncated in place, as a non-atomic save does first
    proxy.stderr.wait_for(r"^(?=.*policy reload failed)(?=.*is empty)", 10)
    assert status(proxy, origin, OTHER).status == 403
    assert status(proxy, origin, ALICE).status == 200
    policy.write_text("groups:\n  readers: [alice]\n")  # cut before 'rules'
    proxy.stderr.wait_for(r"^(?=.*policy reload failed)(?=.*has no 'rules')", 10)
    assert status(proxy, origin, OTHER).status == 403
    # Clearing the rules takes an explicit empty list.
    policy.write_text("rules: []\n")
    wait_until(lambda: status(proxy, origin, OTHER).status == 200, 10, what="the empty rule list in force")


def test_an_empty_policy_file_stops_start_up(launcher, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("\n")
    p = launcher.start("--policy", policy, ready=False)
    assert p.proc.wait(timeout=20) != 0
    assert "is empty" in p.stderr.text() + p.stdout.text()
