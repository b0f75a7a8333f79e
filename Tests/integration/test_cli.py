"""The command line: help/version, open-proxy refusal, the embedded users file, the YAML
config file, IPv6 listeners and graceful shutdown on SIGTERM."""

from __future__ import annotations

import re
import resource
import signal
import subprocess
import threading
import time

import pytest

from portcullis_helpers import (
    PASSWORD, PORTCULLIS_BIN, USER, ProxyProcess, basic, clean_env, free_port, ipv6_loopback_available,
    try_connect, wait_until,
)

AUTH = ("Proxy-Authorization", basic())


def run_bin(args, tmp_path, timeout=20):
    return subprocess.run([PORTCULLIS_BIN] + args, capture_output=True, timeout=timeout,
                          env=clean_env(tmp_path), stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["serve", "--help"]])
def test_help_and_version_exit_zero(tmp_path, args):
    r = run_bin(args, tmp_path)
    assert r.returncode == 0, r
    assert r.stdout.strip(), f"{args} printed nothing on stdout"


def test_serve_help_lists_the_options(tmp_path):
    out = run_bin(["serve", "--help"], tmp_path).stdout.decode()
    for opt in ("--listen", "--htpasswd", "--realm", "--auth", "--config", "--allow-private-destinations",
                "--connect-ports", "--allow-open-proxy", "--log-level", "--data-dir",
                "--upstream-connect-timeout", "--upstream-response-timeout", "--tunnel-idle-timeout",
                "--client-idle-timeout", "--shutdown-grace"):
        assert opt in out, f"{opt} missing from serve --help"


def test_version_looks_like_a_version(tmp_path):
    out = run_bin(["--version"], tmp_path).stdout.decode().strip()
    assert re.search(r"\d+\.\d+", out), out


# ----------------------------------------------------------------- open proxy

def test_auth_none_on_non_loopback_listener_refuses_to_start(tmp_path, users_file):
    port = free_port("0.0.0.0")
    r = run_bin(["serve", "--auth", "none", "--listen", f"0.0.0.0:{port}"], tmp_path)
    assert r.returncode != 0, f"started an open proxy: {r}"
    assert "--allow-open-proxy" in r.stderr.decode(), r.stderr
    assert try_connect("127.0.0.1", port) == "refused"


def test_auth_none_with_allow_open_proxy_starts(launcher, origin):
    p = launcher.start("--auth", "none", "--allow-open-proxy", listen=[f"0.0.0.0:{free_port('0.0.0.0')}"],
                       htpasswd=None)
    assert (p.host, p.running()) == ("127.0.0.1", True)
    with p.conn() as c:
        r = c.request("GET", f"{origin.base}/text")  # no credentials needed
    assert r.status == 200, r.describe()
    assert r.body == b"hello from origin\n"


def test_auth_none_on_loopback_needs_no_flag(launcher, origin):
    p = launcher.start("--auth", "none", htpasswd=None)
    with p.conn() as c:
        r = c.request("GET", f"{origin.base}/text")
    assert r.status == 200, r.describe()


# ----------------------------------------------------------------- embedded users file

CURL_LINE = r"^curl -x http://admin:(?P<pw>.+)@127\.0\.0\.1:{port} https://example\.com"


def _first_run_password(p, port) -> str:
    m = p.stdout.wait_for(CURL_LINE.format(port=port), timeout=10)
    pw_line = p.stdout.wait_for(r"password:\s*(?P<pw>\S+)", timeout=1)
    assert pw_line.group("pw") == m.group("pw"), p.stdout.text()
    return m.group("pw")


def _get_with(p, origin, user, pw):
    with p.conn() as c:
        return c.request("GET", f"{origin.base}/text", [("Proxy-Authorization", basic(user, pw))])


def test_embedded_users_file_first_and_second_run(launcher, origin, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    p1, p2 = free_port(), free_port()
    # two listeners: the printed curl line names the first
    p = launcher.start(listen=[f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"], htpasswd=None, home=home)
    # stdout is a pipe: the lines must arrive while the process runs (flushed at once)
    pw = _first_run_password(p, p1)
    db = home / "xdg-data" / "portcullis" / "portcullis.db"
    assert db.is_file(), f"no user database at {db}"
    assert oct(db.stat().st_mode & 0o777) == "0o600"
    content = db.read_bytes()
    assert content.startswith(b"SQLite format 3"), content[:16]
    assert pw.encode() not in content, "plain password stored in the database"

    r = _get_with(p, origin, "admin", pw)
    assert r.status == 200, r.describe()
    assert r.body == b"hello from origin\n"
    assert _get_with(p, origin, "admin", pw + "x").status == 407
    assert p.stop() == 0

    # second run, same data dir: same database, no password printed, old password still works
    again = launcher.start(listen=[f"127.0.0.1:{free_port()}"], htpasswd=None, home=home)
    assert _get_with(again, origin, "admin", pw).status == 200
    assert again.stop() == 0
    out = again.stdout.text()
    assert "password:" not in out and pw not in out, out


def test_a_users_file_of_an_earlier_version_is_imported(launcher, origin, tmp_path_factory, users_file):
    home = tmp_path_factory.mktemp("home")
    data_dir = home / "xdg-data" / "portcullis"
    data_dir.mkdir(parents=True)
    (data_dir / "users.htpasswd").write_bytes(users_file.read_bytes())
    p = launcher.start(listen=[f"127.0.0.1:{free_port()}"], htpasswd=None, home=home)
    assert (data_dir / "portcullis.db").is_file()
    assert _get_with(p, origin, USER, PASSWORD).status == 200
    out = p.stdout.text()
    assert "users.htpasswd" in out and "password:" not in out, out


def test_embedded_users_file_in_data_dir(launcher, origin, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    data_dir = tmp_path_factory.mktemp("datadir") / "nested" / "portcullis-data"
    port = free_port()
    p = launcher.start("--data-dir", data_dir, listen=[f"127.0.0.1:{port}"], htpasswd=None, home=home)
    pw = _first_run_password(p, port)
    assert (data_dir / "portcullis.db").is_file()
    assert not (home / "xdg-data" / "portcullis" / "portcullis.db").exists(), "--data-dir ignored"
    assert _get_with(p, origin, "admin", pw).status == 200


def test_embedded_users_file_falls_back_to_home(launcher, origin, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    port = free_port()
    p = launcher.start(listen=[f"127.0.0.1:{port}"], htpasswd=None, home=home,
                       env={"XDG_DATA_HOME": None})
    pw = _first_run_password(p, port)
    assert (home / ".local" / "share" / "portcullis" / "portcullis.db").is_file()
    assert _get_with(p, origin, "admin", pw).status == 200


# ----------------------------------------------------------------- config file

def _write_config(path, listen_port, users_file):
    path.write_text(
        "# portcullis test config\n"
        f'listen: ["127.0.0.1:{listen_port}"]\n'
        f"htpasswd: {users_file}\n"
        "allow-private-destinations: true\n")
    return path


def test_config_file_supplies_listen_htpasswd_and_private(launcher, origin, tmp_path, users_file):
    port = free_port()
    cfg = _write_config(tmp_path / "portcullis.yaml", port, users_file)
    p = launcher.start("--config", cfg, listen=[], htpasswd=None, private=False,
                       connect=("127.0.0.1", port))
    with p.conn() as c:
        r = c.request("GET", f"{origin.base}/text", [AUTH])  # 403 if the file's flag were ignored
    assert r.status == 200, r.describe()
    with p.conn() as c:
        assert c.request("GET", f"{origin.base}/text").status == 407


def test_listen_flag_overrides_config_file(launcher, origin, tmp_path, users_file):
    file_port, flag_port = free_port(), free_port()
    cfg = _write_config(tmp_path / "portcullis.yaml", file_port, users_file)
    p = launcher.start("--config", cfg, listen=[f"127.0.0.1:{flag_port}"], htpasswd=None, private=False)
    with p.conn() as c:
        r = c.request("GET", f"{origin.base}/text", [AUTH])
    assert r.status == 200, r.describe()
    assert try_connect("127.0.0.1", file_port) == "refused", "the file's listen was used too"


def test_realm_flag_overrides_config_file(launcher, origin, tmp_path, users_file):
    port = free_port()
    cfg = _write_config(tmp_path / "portcullis.yaml", port, users_file)
    with open(cfg, "a") as f:
        f.write("realm: From the file\n")
    p = launcher.start("--config", cfg, "--realm", "From the flag", listen=[], htpasswd=None,
                       private=False, connect=("127.0.0.1", port))
    with p.conn() as c:
        r = c.request("GET", f"{origin.base}/text")
    assert r.status == 407
    assert r.header("Proxy-Authenticate") == 'Basic realm="From the flag", charset="UTF-8"', r.describe()


# ----------------------------------------------------------------- IPv6

needs_v6 = pytest.mark.skipif(not ipv6_loopback_available(), reason="::1 not available")


@needs_v6
def test_ipv6_listener(launcher, origin):
    port = free_port("::1")
    p = launcher.start(listen=[f"[::1]:{port}"])
    assert p.host == "::1"
    with p.conn() as c:
        r = c.request("GET", f"{origin.base}/text", [AUTH])
    assert r.status == 200, r.describe()


@needs_v6
def test_ipv4_and_ipv6_listeners_together(launcher, origin):
    p4, p6 = free_port(), free_port("::1")
    p = launcher.start(listen=[f"127.0.0.1:{p4}", f"[::1]:{p6}"])
    from portcullis_helpers import RawConn
    # The launcher waits for the first listener only; the second binds just after it.
    wait_until(lambda: try_connect("::1", p6, 0.5) == "ok", timeout=10, what="the [::1] listener")
    for host, port in (("127.0.0.1", p4), ("::1", p6)):
        with RawConn(host, port) as c:
            r = c.request("GET", f"{origin.base}/text", [AUTH])
            assert r.status == 200, f"{host}: {r.describe()}"
    assert p.running()


@needs_v6
def test_sigterm_closes_every_listener_and_exits_cleanly(launcher, origin):
    p4, p6 = free_port(), free_port("::1")
    p = launcher.start(listen=[f"127.0.0.1:{p4}", f"[::1]:{p6}"])
    from portcullis_helpers import RawConn
    # The launcher waits for the first listener only; the second binds just after it.
    wait_until(lambda: try_connect("::1", p6, 0.5) == "ok", timeout=10, what="the [::1] listener")
    with RawConn("::1", p6) as idle6:  # a keep-alive client on the second listener
        assert idle6.request("GET", f"{origin.base}/text", [AUTH]).status == 200
        p.send_signal(signal.SIGTERM)
        for host, port in (("127.0.0.1", p4), ("::1", p6)):
            wait_until(lambda: try_connect(host, port, 0.5) == "refused", timeout=3,
                       what=f"listener {host}:{port} to close after SIGTERM")
        assert idle6.wait_eof(5) == b"", "idle client on the second listener was not closed"
    assert p.proc.wait(timeout=8) == 0
    p.stderr.wait_closed(2)
    assert "ERROR" not in p.stderr.text() and "Fatal" not in p.stderr.text(), p.stderr.text()


# ----------------------------------------------------------------- SIGTERM

def test_sigterm_drains_in_flight_request_and_exits_zero(launcher, origin):
    p = launcher.start()
    result = {}

    def slow_request():
        try:
            with p.conn(timeout=15) as c:
                result["resp"] = c.request("GET", f"{origin.base}/delay/2", [AUTH])
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e

    t = threading.Thread(target=slow_request, daemon=True)
    t.start()
    assert origin.delay_started.wait(10), "the slow request never reached the origin"
    p.send_signal(signal.SIGTERM)
    sent = time.monotonic()

    # new connections are refused once the listener is closed
    wait_until(lambda: try_connect(p.host, p.port, 0.5) == "refused", timeout=3,
               what="the listener to close after SIGTERM")
    assert t.is_alive() or "resp" in result, result

    t.join(10)
    assert not t.is_alive(), "in-flight request did not finish"
    assert "error" not in result, f"in-flight request failed: {result.get('error')!r}"
    r = result["resp"]
    assert r.status == 200 and r.body == b"slept\n", r.describe()

    try:
        code = p.proc.wait(timeout=max(0.1, sent + 6 - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail("portcullis still running 6 s after SIGTERM with nothing in flight")
    assert code == 0, f"exit code {code}"


def test_a_second_sigterm_while_draining_closes_what_is_open_and_exits_at_once(launcher, origin):
    p = launcher.start("--shutdown-grace", "30")
    result = {}

    def slow_request():
        try:
            with p.conn(timeout=30) as c:
                result["resp"] = c.request("GET", f"{origin.base}/delay/10", [AUTH])
        except Exception as e:  # noqa: BLE001 - the connection is expected to be cut
            result["error"] = e

    t = threading.Thread(target=slow_request, daemon=True)
    t.start()
    assert origin.delay_started.wait(10), "the slow request never reached the origin"
    p.send_signal(signal.SIGTERM)
    p.stderr.wait_for("shutting down", 5)
    wait_until(lambda: try_connect(p.host, p.port, 0.5) == "refused", timeout=3,
               what="the listener to close after SIGTERM")
    assert p.running(), "exited before the in-flight request finished or the grace ran out"

    second = time.monotonic()
    p.send_signal(signal.SIGTERM)
    try:
        code = p.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail("portcullis still draining 5 s after a second SIGTERM")
    assert time.monotonic() - second < 3
    assert code == 143, f"exit code {code}: 128 + SIGTERM expected"
    t.join(5)
    assert not t.is_alive(), "the in-flight request was not cut off"
    assert "resp" not in result or result["resp"].status != 200, "the request finished anyway"
    p.stderr.wait_closed(2)
    log = p.stderr.text()
    assert "second signal: closing every connection now" in log, log
    assert " critical " not in log, "a forced shutdown is not an error"


def test_sigterm_idle_exits_promptly(launcher):
    p = launcher.start()
    with p.conn() as idle:  # an idle keep-alive client must not hold the exit for the grace period
        started = time.monotonic()
        p.send_signal(signal.SIGTERM)
        code = p.proc.wait(timeout=8)
        assert code == 0
        assert time.monotonic() - started < 5
        assert idle.wait_eof(2) == b""


def _nofile_limits(pid: int) -> tuple[int, int]:
    for line in open(f"/proc/{pid}/limits"):
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no Max open files line")


def _start_with_nofile(launcher, users_file, tmp_path, soft: int, hard: int) -> ProxyProcess:
    """Starts the proxy under `prlimit` with the given descriptor limits."""
    port = free_port()
    p = ProxyProcess(["serve", "--listen", f"127.0.0.1:{port}", "--htpasswd", str(users_file),
                      "--allow-private-destinations"], clean_env(tmp_path), ("127.0.0.1", port),
                     ["prlimit", f"--nofile={soft}:{hard}", "--"])
    launcher.procs.append(p)  # stopped and its log shown by the fixture
    return p.wait_ready()


def test_serve_raises_its_descriptor_soft_limit_to_the_hard_one(launcher, origin, users_file, tmp_path):
    # Debian's default soft limit (1 024) would hold ~500 proxied connections: two descriptors each.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard <= 1100:
        pytest.skip(f"hard descriptor limit {hard}: nothing to raise")
    p = _start_with_nofile(launcher, users_file, tmp_path, 1024, hard)
    wanted = min(hard, 1 << 20)
    assert _nofile_limits(p.pid) == (wanted, hard)
    # Logged with "listening", which may follow the first accepted connection by a moment.
    wait_until(lambda: f"max_open_files={wanted}" in p.stderr.text(), 5, what="max_open_files in the log")
    assert "few descriptors" not in p.stderr.text()
    with p.conn() as c:
        assert c.request("GET", f"{origin.base}/text", [AUTH]).status == 200


def test_serve_warns_when_the_hard_descriptor_limit_is_low(launcher, users_file, tmp_path):
    p = _start_with_nofile(launcher, users_file, tmp_path, 512, 1000)
    assert _nofile_limits(p.pid) == (1000, 1000)
    wait_until(lambda: "few descriptors allowed: at most 437 connections at once" in p.stderr.text(), 5)


def test_logs_go_to_stderr_not_stdout(launcher, origin):
    p = launcher.start("--log-level", "debug")
    with p.conn() as c:
        assert c.request("GET", f"{origin.base}/text", [AUTH]).status == 200
        assert c.request("GET", f"{origin.base}/text").status == 407
    assert p.stop() == 0
    assert p.stdout.text() == "", f"stdout: {p.stdout.text()!r}"
    assert p.stderr.text().strip(), "nothing logged on stderr"


def test_config_file_is_reloaded_on_change_and_sighup_and_a_bad_one_changes_nothing(
        launcher, origin, echo_origin, tmp_path, users_file):
    cfg = tmp_path / "portcullis.yaml"
    cfg.write_text(f"htpasswd: {users_file}\nallow-private-destinations: true\nconnect-ports: [443]\n")
    p = launcher.start("--config", cfg, htpasswd=None, private=False)
    connect = (f"CONNECT 127.0.0.1:{echo_origin.port} HTTP/1.1\r\nHost: 127.0.0.1:{echo_origin.port}\r\n"
               f"Proxy-Authorization: {basic()}\r\n\r\n").encode()

    def connect_status():
        with p.conn() as c:
            c.send(connect)
            return c.read_response_head("CONNECT").status

    assert connect_status() == 403
    # A file that does not parse: reported, and the settings in force stay.
    cfg.write_text("connect-ports: [443\n")
    p.stderr.wait_for("config file not reloaded", 10)
    assert connect_status() == 403
    # A good file: new connections get the new CONNECT ports; a realm change needs a restart.
    cfg.write_text(f"htpasswd: {users_file}\nallow-private-destinations: true\n"
                   f"connect-ports: [443, {echo_origin.port}]\nrealm: Elsewhere\n")
    p.stderr.wait_for(r"applied=connect-ports .*needs_restart=realm.* config file reloaded", 10)
    assert connect_status() == 200
    # SIGHUP re-reads it even when unchanged; taking the private destinations away works live.
    cfg.write_text(f"htpasswd: {users_file}\nallow-private-destinations: false\nconnect-ports: [443]\n")
    p.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: connect_status() == 403, 10, what="the reloaded settings")
    with p.conn() as c:
        assert c.request("GET", f"{origin.base}/text", [AUTH]).status == 403  # a private destination now
