"""`portcullis client-config`: the settings it prints, installed in a throwaway HOME, make the
real tools — curl, wget, git, pip, npm — go through an authenticating Portcullis with a
password full of `@ : % / #` and spaces; and every format's escaping, checked on its own."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from portcullis_helpers import PORTCULLIS_BIN, htpasswd_line

USER = "cfg-user"
PASSWORD = "p@ss: w%rd/#x y"


def generate(proxy_url: str, tool: str, no_proxy: str | None = None) -> str:
    args = [PORTCULLIS_BIN, "client-config", "--proxy", proxy_url, "--user", USER, "--password-env", "CFG_PASSWORD",
            "--for", tool]
    if no_proxy:
        args += ["--no-proxy", no_proxy]
    out = subprocess.run(args, capture_output=True, text=True, timeout=30,
                         env={"PATH": os.environ["PATH"], "CFG_PASSWORD": PASSWORD})
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def served(launcher, tmp_path):
    users = tmp_path / "users.htpasswd"
    users.write_text(htpasswd_line(USER, PASSWORD) + "\n")
    return launcher.start(htpasswd=users)


def home_with(tmp_path: Path, files: dict[str, str]) -> tuple[Path, dict]:
    home = tmp_path / "home"
    for name, text in files.items():
        path = home / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}
    return home, env


def reached(origin, path: str) -> bool:
    """The origin saw `path` through Portcullis (its Via), not straight from the tool."""
    return any(p.startswith(path) and any(k.lower() == "via" and "portcullis" in v for k, v in headers)
               for _, p, headers in origin.requests)


def run(cmd, env, cwd=None):
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_curl(served, origin, tmp_path):
    _, env = home_with(tmp_path, {".curlrc": generate(served.url, "curl")})
    out = run(["curl", "-s", "-o", "-", "-w", "%{http_code}", f"{origin.base}/text"], env)
    assert out.stdout.endswith("200") and "hello from origin" in out.stdout, out
    assert reached(origin, "/text")


def test_wget(served, origin, tmp_path):
    _, env = home_with(tmp_path, {".wgetrc": generate(served.url, "wget")})
    out = run(["wget", "-q", "-O", "-", f"{origin.base}/text"], env)
    assert out.returncode == 0 and "hello from origin" in out.stdout, out
    assert reached(origin, "/text")


def test_git(served, origin, tmp_path):
    _, env = home_with(tmp_path, {".gitconfig": generate(served.url, "git")})
    out = run(["git", "ls-remote", f"{origin.base}/repo.git"], env)
    # The origin is no git server (404), but the request reached it through the proxy.
    assert reached(origin, "/repo.git/info/refs"), out
    assert "407" not in out.stderr, out


def test_pip(served, origin, tmp_path):
    _, env = home_with(tmp_path, {".config/pip/pip.conf": generate(served.url, "pip")})
    out = run(["python3", "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--retries", "0", "-d",
               str(tmp_path / "dl"), "--index-url", f"{origin.base}/simple/", "no-such-package"], env)
    assert reached(origin, "/simple/no-such-package"), out
    assert "407" not in out.stdout + out.stderr, out


def test_npm(served, origin, tmp_path):
    _, env = home_with(tmp_path, {".npmrc": generate(served.url, "npm")})
    out = run(["npm", "view", "no-such-package", "--registry", f"{origin.base}/", "--fetch-retries", "0"], env,
              cwd=tmp_path)
    assert reached(origin, "/no-such-package"), out
    assert "407" not in out.stdout + out.stderr, out


def test_the_password_is_escaped_for_each_format(served):
    encoded = "p%40ss%3A%20w%25rd%2F%23x%20y"
    env = generate(served.url, "env", no_proxy="localhost,.corp")
    assert f"export HTTPS_PROXY='http://{USER}:{encoded}@" in env and "export no_proxy='localhost,.corp'" in env
    docker = generate(served.url, "docker")
    # systemd reads % as a specifier.
    assert encoded.replace("%", "%%") in docker
    config = json.loads(docker[docker.index("{"):])
    assert config["proxies"]["default"]["httpsProxy"].endswith(f":{encoded}@{served.host}:{served.port}")
    maven = generate(served.url, "maven", no_proxy=".corp")
    assert "<password>p@ss: w%rd/#x y</password>" in maven and "<nonProxyHosts>*.corp</nonProxyHosts>" in maven
    gradle = generate(served.url, "gradle")
    assert "systemProp.https.proxyPassword=p@ss\\: w%rd/\\#x y" in gradle
    assert "systemProp.jdk.http.auth.tunneling.disabledSchemes=" in gradle
    java = generate(served.url, "java")
    assert "-Djdk.http.auth.tunneling.disabledSchemes=" in java
    apt = generate(served.url, "apt")
    assert f'Acquire::https::Proxy "http://{USER}:{encoded}@' in apt
    everything = subprocess.run([PORTCULLIS_BIN, "client-config", "--proxy", served.url, "--for", "all"],
                                capture_output=True, text=True, timeout=30).stdout
    assert everything.count("# ---- ") == 12


@pytest.mark.parametrize("args, message", [
    (["--proxy", "http://u:p@h:1", "--for", "curl"], "--password-env"),
    (["--proxy", "socks5://h:1", "--for", "curl"], "SOCKS"),
    (["--proxy", "http://h:1", "--for", "emacs"], "emacs"),
    (["--proxy", "http://h:1", "--password-env", "X", "--for", "curl"], "--user"),
])
def test_bad_arguments(args, message):
    out = subprocess.run([PORTCULLIS_BIN, "client-config", *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 64 and message in out.stderr, out


# ------------------------------------------------------------------ doctor --clients

def doctor_clients(home: Path, env_extra: dict, target: str, as_json: bool = True):
    env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent", **env_extra}
    args = [PORTCULLIS_BIN, "doctor", "--clients", "--home", str(home), "--target", target, "--timeout", "3"]
    if as_json:
        args.append("--json")
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)


def test_doctor_clients_finds_the_stale_password_the_bad_encoding_and_the_stray_proxy(served, origin, tmp_path):
    right = f"http://{USER}:p%40ss%3A%20w%25rd%2F%23x%20y@{served.host}:{served.port}"
    stray = free_port_here()
    home, _ = home_with(tmp_path, {
        ".npmrc": f"proxy=http://{USER}:old-password@{served.host}:{served.port}/\n",
        ".gitconfig": f"[http]\n\tproxy = http://{served.host}:{stray}\n",
        ".curlrc": f'proxy = "http://{served.host}:{served.port}"\nproxy-user = "{USER}:{PASSWORD}"\n',
        ".config/pip/pip.conf": f"[global]\nproxy = {right}\n",
    })
    # HTTPS_PROXY with the "@" of the password not encoded: curl reads it, others do not.
    unencoded = f"http://{USER}:p@ss:%20w%25rd%2F%23x%20y@{served.host}:{served.port}"
    out = doctor_clients(home, {"HTTPS_PROXY": unencoded}, f"{origin.base}/text")
    assert out.returncode == 2, out
    lines = {line["tool"]: line for line in json.loads(out.stdout)["clients"]}
    assert lines["npm"]["check"] == "refused" and "credentials refused" in lines["npm"]["detail"], lines["npm"]
    assert lines["npm"]["source"] == "~/.npmrc proxy"
    assert any("unencoded \"@\"" in p for p in lines["env"]["problems"]), lines["env"]
    assert any(f"points at {served.host}:{stray}" in p for p in lines["git"]["problems"]), lines["git"]
    assert lines["git"]["check"] == "unreachable", lines["git"]
    assert lines["curl"]["check"] == "accepted" and lines["pip"]["check"] == "accepted", (lines["curl"], lines["pip"])
    assert lines["maven"]["check"] == "none" and any("ignores HTTPS_PROXY" in n for n in lines["maven"]["notes"])
    # Never a password in the output.
    for secret in (PASSWORD, "old-password", "p%40ss"):
        assert secret not in out.stdout + out.stderr
    text = doctor_clients(home, {"HTTPS_PROXY": unencoded}, f"{origin.base}/text", as_json=False).stdout
    assert text.startswith("portcullis doctor --clients: 1 of 11 tools would get a 407, 1 would not reach their proxy")


def test_doctor_clients_on_a_clean_home(served, origin, tmp_path):
    home, _ = home_with(tmp_path, {".npmrc": generate(served.url, "npm")})
    out = doctor_clients(home, {}, f"{origin.base}/text")
    assert out.returncode == 0, out
    lines = {line["tool"]: line for line in json.loads(out.stdout)["clients"]}
    assert lines["npm"]["check"] == "accepted" and lines["npm"]["credentials"] is True
    assert lines["env"]["check"] == "none"


def free_port_here() -> int:
    from portcullis_helpers import free_port
    return free_port()
