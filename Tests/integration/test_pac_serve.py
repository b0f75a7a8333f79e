"""`serve --pac FILE`: the PAC file served at /proxy.pac and /wpad.dat on the proxy's listener
without credentials (content type, ETag, 304, HEAD), every other answer unchanged, the file
re-read on change and SIGHUP, a file that fails (hostile, broken) refused with the previous one
kept, and a start-up with a failing file refused."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from portcullis_helpers import PORTCULLIS_BIN, USER, PASSWORD, clean_env, free_port, wait_until

PAC_DIR = Path(__file__).parent / "pac"
GOOD = PAC_DIR / "corporate" / "acme_bypass.pac"
HOSTILE = PAC_DIR / "hostile"

SECOND = 'function FindProxyForURL(url, host) { return "PROXY second.example:3128"; }\n'


def curl(proxy, path: str, *extra: str) -> tuple[int, dict, bytes]:
    """GET (or what `extra` says) http://127.0.0.1:PORT/PATH straight at the proxy's listener,
    without credentials; returns (status, headers lower-cased, body)."""
    result = subprocess.run(
        ["curl", "-s", "-D", "-", "--noproxy", "*", "-m", "10", *extra, f"http://{proxy.host}:{proxy.port}{path}"],
        capture_output=True, timeout=20,
    )
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


@pytest.fixture
def pac_file(tmp_path) -> Path:
    path = tmp_path / "proxy.pac"
    path.write_bytes(GOOD.read_bytes())
    return path


def test_the_file_is_served_without_credentials_with_its_type_and_tag(launcher, pac_file):
    proxy = launcher.start("--pac", pac_file)
    for path in ("/proxy.pac", "/wpad.dat"):
        status, headers, body = curl(proxy, path)
        assert status == 200, (path, status, body)
        assert headers["content-type"] == "application/x-ns-proxy-autoconfig"
        assert body == GOOD.read_bytes()
        assert headers["content-length"] == str(len(body))
        assert headers["etag"].startswith('"') and headers["etag"].endswith('"')
        assert "proxy-authenticate" not in headers
    # The same tag on both paths; 304 for it, the file again for another.
    tag = curl(proxy, "/proxy.pac")[1]["etag"]
    assert curl(proxy, "/wpad.dat")[1]["etag"] == tag
    status, headers, body = curl(proxy, "/proxy.pac", "-H", f"If-None-Match: {tag}")
    assert (status, body, headers["etag"]) == (304, b"", tag)
    assert curl(proxy, "/proxy.pac", "-H", 'If-None-Match: "stale"')[0] == 200
    # HEAD: the headers of the GET, no body.
    status, headers, body = curl(proxy, "/proxy.pac", "-I")
    assert status == 200 and headers["content-length"] == str(len(GOOD.read_bytes()))


def test_the_proxys_other_answers_are_unchanged(launcher, pac_file, origin):
    proxy = launcher.start("--pac", pac_file)
    # Another origin-form path: the 400 of a forward proxy.
    status, _, body = curl(proxy, "/other.pac")
    assert status == 400, body
    assert curl(proxy, "/proxy.pac", "-X", "POST", "-d", "x")[0] == 400
    # Proxied requests still need credentials: 407 without, 200 with.
    target = f"http://127.0.0.1:{origin.port}/text"
    without = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-x", proxy.url, target],
                             capture_output=True, timeout=20)
    assert without.stdout == b"407"
    with_credentials = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-x", proxy.url, "-U", f"{USER}:{PASSWORD}", target],
        capture_output=True, timeout=20)
    assert with_credentials.stdout == b"200"


def test_without_pac_the_paths_are_not_served(proxy):
    assert curl(proxy, "/proxy.pac")[0] == 400


def test_a_changed_file_is_served_and_a_failing_one_refused(launcher, pac_file):
    proxy = launcher.start("--pac", pac_file)
    first = curl(proxy, "/proxy.pac")[1]["etag"]
    pac_file.write_text(SECOND)
    wait_until(lambda: curl(proxy, "/proxy.pac")[2] == SECOND.encode(), 15, what="the changed PAC served")
    second = curl(proxy, "/proxy.pac")[1]["etag"]
    assert second != first
    proxy.stderr.wait_for(r"PAC file reloaded", 5)
    # Every hostile file is refused with its reason logged; the second file stays served.
    for name, reason in [("infinite_loop.pac", r"CPU-time limit"), ("syntax_error.pac", r"syntax error at line 3, column 9"),
                         ("no_function.pac", r"no function FindProxyForURL"), ("string_doubling.pac", r"memory")]:
        pac_file.write_bytes((HOSTILE / name).read_bytes())
        proxy.send_signal(signal.SIGHUP)
        proxy.stderr.wait_for(rf"PAC file refused; serving the previous one.*{reason}|{reason}.*PAC file refused", 15)
        status, headers, body = curl(proxy, "/proxy.pac")
        assert (status, body, headers["etag"]) == (200, SECOND.encode(), second), name
    # A good file again is served at the next SIGHUP.
    pac_file.write_bytes(GOOD.read_bytes())
    proxy.send_signal(signal.SIGHUP)
    wait_until(lambda: curl(proxy, "/proxy.pac")[1]["etag"] == first, 15, what="the first file back after SIGHUP")


@pytest.mark.parametrize("name", ["infinite_loop.pac", "throws.pac", "returns_number.pac"])
def test_start_up_refuses_a_failing_file(tmp_path, name):
    result = subprocess.run(
        [PORTCULLIS_BIN, "serve", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "data"),
         "--pac", str(HOSTILE / name)],
        capture_output=True, timeout=30, env=clean_env(tmp_path), stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0
    err = result.stderr.decode()
    assert "PAC file" in err and name in err, err
