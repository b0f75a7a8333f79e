"""`portcullis users` against a real SQLite store while a real proxy serves from it: changes
reach the running proxy, rotation grace, disable/enable, expiry, the 407 body and reason for a
credential that is no longer valid, list/import/export, the audit trail, NTLM enrolment, errors
that leave the store untouched, and reloads that never fail a request."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import threading

import pytest

from portcullis_helpers import (
    PASSWORD, PORTCULLIS_BIN, USER, assert_proxy_status, basic, htpasswd_line, wait_until,
)


def users(db, *args, stdin: str | None = None, check: bool = True):
    """Run `portcullis users ARGS --store sqlite:DB`."""
    cmd = [PORTCULLIS_BIN, "users", *[str(a) for a in args], "--store", f"sqlite:{db}"]
    out = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
    if check:
        assert out.returncode == 0, f"{cmd}\n{out.stdout}\n{out.stderr}"
    return out


def status(proxy, origin, user, password):
    with proxy.conn() as c:
        return c.request("GET", f"{origin.base}/text", [("Proxy-Authorization", basic(user, password))])


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "users.db"
    users(path, "add", "carol", "--password-stdin", "--cost", "4", stdin="first-secret\n")
    return path


@pytest.fixture
def served(launcher, db):
    return launcher.start("--store", f"sqlite:{db}", htpasswd=None)


def test_a_user_added_while_running_can_log_in(served, db, origin):
    out = users(db, "add", "dave", "--cost", "4", "--json")
    password = json.loads(out.stdout)["password"]
    assert len(password) >= 20
    wait_until(lambda: status(served, origin, "dave", password).status == 200, 10, what="dave accepted")


def test_rotation_keeps_the_old_secret_for_the_grace_then_says_it_is_no_longer_valid(served, db, origin):
    assert status(served, origin, "carol", "first-secret").status == 200
    out = users(db, "rotate", "carol", "--grace", "3s", "--cost", "4")
    new = out.stdout.strip()
    assert "\n" not in new and len(new) >= 20, out.stdout  # the new secret alone on its line
    wait_until(lambda: status(served, origin, "carol", new).status == 200, 10, what="the new secret accepted")
    assert status(served, origin, "carol", "first-secret").status == 200, "the old secret failed within the grace"
    wait_until(lambda: status(served, origin, "carol", "first-secret").status == 407, 15, what="the grace to end")
    r = status(served, origin, "carol", "first-secret")
    assert_proxy_status(r, details="credentials-no-longer-valid")
    assert b"no longer valid" in r.body and b"ask for a new one" in r.body
    assert b"rotated-out" not in r.body  # which of expired/disabled/rotated stays in the operator's log
    served.stderr.wait_for("detail=rotated-out", 5)


def test_disable_enable_and_expire(served, db, origin):
    assert status(served, origin, "carol", "first-secret").status == 200
    users(db, "disable", "carol")
    wait_until(lambda: status(served, origin, "carol", "first-secret").status == 407, 10, what="disabled")
    assert_proxy_status(status(served, origin, "carol", "first-secret"), details="credentials-no-longer-valid")
    # A wrong password of a disabled user is just a wrong password: nothing is revealed.
    assert_proxy_status(status(served, origin, "carol", "guess"), details="invalid-credentials")
    users(db, "enable", "carol")
    wait_until(lambda: status(served, origin, "carol", "first-secret").status == 200, 10, what="enabled")
    users(db, "expire", "carol", "--at", "2020-01-01T00:00:00Z")
    wait_until(lambda: status(served, origin, "carol", "first-secret").status == 407, 10, what="expired")
    served.stderr.wait_for("detail=expired", 5)


def test_list_export_and_audit_hold_no_secret(db, tmp_path):
    audit = tmp_path / "audit.jsonl"
    users(db, "add", "erin", "--password-stdin", "--groups", "ops,dev", "--cost", "4", "--audit-log", audit,
          stdin="erin-pass-123\n")
    users(db, "rotate", "erin", "--grace", "1h", "--cost", "4", "--audit-log", audit)
    listed = json.loads(users(db, "list", "--json").stdout)
    erin = next(u for u in listed if u["name"] == "erin")
    assert erin["groups"] == ["ops", "dev"] and erin["state"] == "rotating" and erin["previous_valid_until"]
    assert not any("hash" in key for u in listed for key in u)
    human = users(db, "list").stdout
    assert "erin" in human and "$2" not in human
    exported = users(db, "export", "--htpasswd").stdout.splitlines()
    assert {line.split(":")[0] for line in exported} == {"carol", "erin"}
    assert all(line.split(":", 1)[1].startswith("$2y$") for line in exported)
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [e["action"] for e in entries] == ["add", "rotate"]
    assert all(e["name"] == "erin" and e["actor"] and e["host"] for e in entries)
    assert "erin-pass-123" not in audit.read_text() and "$2" not in audit.read_text()


def test_ntlm_enrolment_is_listed_and_the_nt_hash_is_in_no_output_nor_the_audit(db, tmp_path):
    audit = tmp_path / "audit.jsonl"
    outputs = [
        users(db, "add", "nina", "--ntlm", "--password-stdin", "--cost", "4", "--audit-log", audit,
              stdin="nina-pass-1\n"),
        # Enrolled once, the NT hash follows the password without --ntlm; the old one is kept for the grace.
        users(db, "rotate", "nina", "--grace", "1h", "--password-stdin", "--cost", "4", "--audit-log", audit,
              "--json", stdin="nina-pass-2\n"),
        users(db, "list", "--json"),
        users(db, "list"),
        users(db, "export", "--htpasswd"),
    ]
    listed = {u["name"]: u for u in json.loads(outputs[2].stdout)}
    assert listed["nina"]["ntlm"] is True and listed["nina"]["digest"] is False
    assert listed["carol"]["ntlm"] is False
    header, *rows = outputs[3].stdout.splitlines()
    assert " DIGEST NTLM GROUPS" in header
    assert next(r for r in rows if r.startswith("nina ")).split()[-3:] == ["no", "yes", "-"]
    assert next(r for r in rows if r.startswith("carol ")).split()[-3:] == ["no", "no", "-"]
    with sqlite3.connect(db) as conn:
        hashes = conn.execute("SELECT nt_hash, previous_nt_hash FROM ntlm WHERE name = 'nina'").fetchone()
        audit_table = repr(conn.execute("SELECT * FROM audit").fetchall())
    assert all(h and len(h) == 32 for h in hashes) and hashes[0] != hashes[1]
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(e["action"], e["detail"]) for e in entries] == [("add", "ntlm"), ("rotate", "grace=3600s")]
    seen = "".join(o.stdout + o.stderr for o in outputs) + audit.read_text() + audit_table
    for h in hashes:
        assert h.lower() not in seen.lower(), "an NT hash is in the output or the audit trail"


def test_import_from_htpasswd(db, tmp_path):
    file = tmp_path / "import.htpasswd"
    file.write_text(htpasswd_line("frank", "frank-pw", "-B", ["-C", "4"]) + "\n"
                    + htpasswd_line("carol", "other", "-B", ["-C", "4"]) + "\nplain:notahash\n")
    out = users(db, "import", "--htpasswd", file)
    assert "imported 1 users" in out.stdout and "kept existing: carol" in out.stdout and "lines skipped: 1" in out.stdout


@pytest.mark.parametrize("args,message", [
    (["passwd", "nobody", "--password-stdin"], "no user nobody"),
    (["add", "carol", "--password-stdin"], "user carol already exists"),
    (["expire", "carol", "--at", "next tuesday"], "is not an ISO 8601 time"),
    (["rotate", "carol", "--grace", "soon"], "is not a duration"),
    (["add", "a:b", "--password-stdin"], "without ':'"),
])
def test_bad_input_is_one_clear_line_and_leaves_the_store_untouched(db, args, message):
    before = db.read_bytes()
    out = users(db, *args, stdin="pw\n", check=False)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
    assert db.read_bytes() == before


def test_an_unwritable_store_is_a_clear_error(tmp_path):
    # /proc takes no new files, whoever runs the test (root ignores file modes).
    cmd = [PORTCULLIS_BIN, "users", "add", "x", "--password-stdin", "--store", "sqlite:/proc/portcullis-test.db"]
    out = subprocess.run(cmd, input="pw\n", capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and out.stderr.startswith("portcullis users: "), out.stderr
    assert out.stderr.count("\n") == 1


def test_a_missing_default_database_says_how_to_get_one(tmp_path):
    out = subprocess.run([PORTCULLIS_BIN, "users", "list", "--data-dir", tmp_path / "none"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "run portcullis serve once" in out.stderr


def _client_loop(proxy, origin, user, password, stop: threading.Event, results: list):
    while not stop.is_set():
        try:
            results.append(status(proxy, origin, user, password).status)
        except OSError as e:  # a failed connection is a failed request too
            results.append(repr(e))


def test_no_request_fails_while_the_users_file_is_rewritten_100_times(launcher, origin, tmp_path):
    path = tmp_path / "users.htpasswd"
    alice = htpasswd_line(USER, PASSWORD, "-B", ["-C", "4"])
    path.write_text(alice + "\n")
    proxy = launcher.start(htpasswd=path)
    stop, results = threading.Event(), []
    client = threading.Thread(target=_client_loop, args=(proxy, origin, USER, PASSWORD, stop, results))
    client.start()
    try:
        for i in range(100):
            tmp = path.with_suffix(f".tmp{i}")
            tmp.write_text(alice + "\n" + htpasswd_line(f"extra{i}", "x", "-B", ["-C", "4"]) + "\n")
            tmp.replace(path)
    finally:
        stop.set()
        client.join(30)
    assert results and all(r == 200 for r in results), [r for r in results if r != 200][:5]


def test_no_request_fails_while_a_user_is_rotated_with_grace(served, db, origin):
    stop, results = threading.Event(), []
    client = threading.Thread(target=_client_loop, args=(served, origin, "carol", "first-secret", stop, results))
    client.start()
    try:
        users(db, "rotate", "carol", "--grace", "1h", "--cost", "4")
        wait_until(lambda: len(results) > 50, 30, what="requests after the rotation")
    finally:
        stop.set()
        client.join(30)
    assert all(r == 200 for r in results), [r for r in results if r != 200][:5]
