"""`doctor --pac`: the PAC file's choice for each target comes first in the report — DIRECT
(bypasses the authenticating proxy), another proxy than the one configured, a PAC that fails —
then doctor's usual steps run against the proxy the PAC chose."""

from __future__ import annotations

from pathlib import Path

from portcullis_helpers import PASSWORD, USER, free_port
from test_doctor import assert_result, home, proxy_env, run_doctor  # noqa: F401 - home is a fixture

PAC_DIR = Path(__file__).parent / "pac"


def write_pac(tmp_path: Path, proxy_port: int, other_port: int | None = None) -> Path:
    """/direct… goes DIRECT, /other… to another proxy, everything else to the proxy under test."""
    other = f'"PROXY 127.0.0.1:{other_port}"' if other_port else '"DIRECT"'
    path = tmp_path / "corp.pac"
    path.write_text(
        "function FindProxyForURL(url, host) {\n"
        '    if (shExpMatch(url, "*/direct*")) return "DIRECT";\n'
        f'    if (shExpMatch(url, "*/other*")) return {other};\n'
        f'    return "PROXY 127.0.0.1:{proxy_port}; DIRECT";\n'
        "}\n")
    return path


def credentials_url(port: int) -> str:
    return f"http://{USER}:{PASSWORD}@127.0.0.1:{port}"


def pac_steps(report: dict) -> list[dict]:
    return [s for s in report["steps"] if s["name"] == "pac"]


def test_the_pacs_proxy_is_tested_with_the_configured_credentials(launcher, origin, home, tmp_path):
    p = launcher.start()
    pac = write_pac(tmp_path, p.port)
    run = run_doctor("--pac", pac, "--target", f"{origin.base}/text", env_vars=proxy_env(credentials_url(p.port)),
                     home=home)
    report = assert_result(run, "ok", 0, "accepted")
    steps = pac_steps(report)
    assert [s["status"] for s in steps] == ["pass"], run.describe()
    assert f"PROXY 127.0.0.1:{p.port}; DIRECT" in steps[0]["message"], run.describe()
    assert report["proxy_source"] == f"the PAC file {pac}", run.describe()
    # The PAC's steps come first, then the usual ones.
    assert report["steps"][0]["name"] == "pac", run.describe()
    assert run.step("authentication")["status"] == "pass", run.describe()
    assert len(origin.requests) >= 1


def test_a_target_sent_direct_is_said_to_bypass_the_proxy(launcher, origin, home, tmp_path):
    p = launcher.start()
    pac = write_pac(tmp_path, p.port)
    run = run_doctor("--pac", pac, "--target", f"{origin.base}/direct/x", "--target", f"{origin.base}/text",
                     env_vars=proxy_env(credentials_url(p.port)), home=home)
    report = assert_result(run, "ok", 0, "accepted")
    steps = pac_steps(report)
    assert [s["status"] for s in steps] == ["warn", "pass"], run.describe()
    assert "bypasses the authenticating proxy" in steps[0]["message"], run.describe()
    assert "pac explain" in steps[0]["fix"], run.describe()
    direct = [t for t in report["targets"] if t["url"].endswith("/direct/x")]
    assert direct and direct[0]["via_proxy"] is False and direct[0]["status"] == "skip", run.describe()


def test_every_target_direct_runs_no_proxy_step(home, tmp_path, origin):
    pac = write_pac(tmp_path, free_port())
    run = run_doctor("--pac", pac, "--target", f"{origin.base}/direct", home=home)
    report = run.report
    assert (report["verdict"], run.returncode) == ("ok", 0), run.describe()
    assert report["summary"] == "the PAC file sends no target to an HTTP proxy", run.describe()
    assert [s["name"] for s in report["steps"]] == ["pac"], run.describe()


def test_another_proxy_than_the_configured_one_is_flagged_and_tested(launcher, origin, home, tmp_path):
    configured = launcher.start()
    other = launcher.start()
    pac = write_pac(tmp_path, configured.port, other.port)
    run = run_doctor("--pac", pac, "--target", f"{origin.base}/other", "--user", USER, "--password-stdin",
                     stdin=PASSWORD + "\n", env_vars=proxy_env(f"http://127.0.0.1:{configured.port}"), home=home)
    report = assert_result(run, "ok", 0, "accepted")
    step = pac_steps(report)[0]
    assert step["status"] == "warn", run.describe()
    assert f"another proxy than http://127.0.0.1:{configured.port}" in step["message"], run.describe()
    assert report["proxy"].endswith(f"127.0.0.1:{other.port}"), run.describe()


def test_the_chosen_proxy_refusing_the_credentials_is_the_verdict(launcher, origin, home, tmp_path):
    p = launcher.start()
    pac = write_pac(tmp_path, p.port)
    run = run_doctor("--pac", pac, "--target", f"{origin.base}/text",
                     env_vars=proxy_env(f"http://{USER}:wrong@127.0.0.1:{p.port}"), home=home, secrets=("wrong",))
    assert_result(run, "auth-failed", 2, "rejected")


def test_a_failing_pac_is_a_configuration_error(home, tmp_path, origin):
    for name, phrase in [("throws.pac", "proxy table is broken"), ("syntax_error.pac", "line 3, column 9"),
                         ("infinite_loop.pac", "CPU-time limit")]:
        run = run_doctor("--pac", PAC_DIR / "hostile" / name, "--target", f"{origin.base}/text", home=home)
        report = run.report
        assert (report["verdict"], run.returncode) == ("config-error", 1), run.describe()
        step = pac_steps(report)[0]
        assert step["status"] == "fail" and phrase in step["message"], run.describe()
        assert "portcullis pac" in step["fix"], run.describe()
    run = run_doctor("--pac", tmp_path / "missing.pac", "--target", f"{origin.base}/text", home=home)
    assert (run.report["verdict"], run.returncode) == ("config-error", 1), run.describe()
    assert "cannot read" in pac_steps(run.report)[0]["message"], run.describe()


def test_text_output_puts_the_pac_first(launcher, origin, home, tmp_path):
    p = launcher.start()
    pac = write_pac(tmp_path, p.port)
    run = run_doctor("--pac", pac, "--target", f"{origin.base}/direct", "--target", f"{origin.base}/text",
                     env_vars=proxy_env(credentials_url(p.port)), home=home, as_json=False)
    lines = run.stdout.splitlines()
    assert lines[0].startswith("portcullis doctor: OK (exit 0)"), run.describe()
    assert lines[1].lstrip().startswith("warn") and " pac " in lines[1], run.describe()
    assert "fix:" in lines[2] and lines[3].lstrip().startswith("pass"), run.describe()
