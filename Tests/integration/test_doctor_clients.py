"""`doctor --client KIND`: the known limits of a real client that end in a 407 come first in
the report — Java's Basic refused for CONNECT tunnels before anything else, Go and curl facing
a proxy without Basic, Node ignoring HTTP_PROXY — and a client seen in the environment
(`JAVA_TOOL_OPTIONS`) counts as named."""

from __future__ import annotations

from portcullis_helpers import PASSWORD, USER
from test_doctor import home, proxy_env, run_doctor, targets, tls_args  # noqa: F401 - home is a fixture


def credentials_env(proxy, **extra):
    return proxy_env(f"http://{USER}:{PASSWORD}@127.0.0.1:{proxy.port}", **extra)


def test_java_against_a_basic_only_proxy_for_https_names_the_tunnelling_setting_first(
        launcher, origin, tls_origin, tls_cert, home):
    proxy = launcher.start("--connect-ports", tls_origin.port)
    run = run_doctor("--client", "java", *targets(origin, tls_origin), *tls_args(tls_cert),
                     env_vars=credentials_env(proxy), home=home)
    report = run.report
    first = report["steps"][0]
    assert first["name"] == "client" and first["status"] == "fail", run.describe()
    assert "jdk.http.auth.tunneling.disabledSchemes" in first["message"] + first["fix"], run.describe()
    # doctor itself got through; Java will not: a configuration error naming it.
    assert (report["verdict"], run.returncode) == ("config-error", 1), run.describe()
    assert report["summary"].startswith("java: Java refuses Basic for CONNECT tunnels"), run.describe()
    assert run.step("tunnel")["status"] == "pass", run.describe()


def test_java_seen_in_the_environment_with_the_fix_in_place_is_fine(launcher, origin, tls_origin, tls_cert, home):
    proxy = launcher.start("--connect-ports", tls_origin.port)
    fixed = "-Djdk.http.auth.tunneling.disabledSchemes= -Dhttps.proxyHost=127.0.0.1"
    run = run_doctor(*targets(origin, tls_origin), *tls_args(tls_cert),
                     env_vars=credentials_env(proxy, JAVA_TOOL_OPTIONS=fixed), home=home)
    assert (run.report["verdict"], run.returncode) == ("ok", 0), run.describe()
    assert all(s["name"] != "client" for s in run.report["steps"]), run.describe()
    # Without the fix, the environment alone is enough for doctor to say so.
    run = run_doctor(*targets(origin, tls_origin), *tls_args(tls_cert),
                     env_vars=credentials_env(proxy, JAVA_TOOL_OPTIONS="-Xmx256m"), home=home)
    assert run.report["steps"][0]["name"] == "client" and run.returncode == 1, run.describe()


def test_plain_http_targets_leave_java_alone(proxy, origin, home):
    run = run_doctor("--client", "java", *targets(origin), env_vars=credentials_env(proxy), home=home)
    assert (run.report["verdict"], run.returncode) == ("ok", 0), run.describe()


def test_go_and_curl_against_a_digest_only_proxy(launcher, origin, home):
    p = launcher.start("--auth", "digest")
    run = run_doctor("--client", "go", *targets(origin), env_vars=credentials_env(p), home=home)
    first = run.report["steps"][0]
    assert first["name"] == "client" and first["status"] == "fail" and "Go's net/http" in first["message"], \
        run.describe()
    # (doctor's own Digest answer is refused too: these users have no Digest secrets.)
    assert run.returncode != 0, run.describe()
    run = run_doctor("--client", "curl", *targets(origin), env_vars=credentials_env(p), home=home)
    first = run.report["steps"][0]
    assert first["name"] == "client" and first["status"] == "warn" and "--proxy-anyauth" in first["fix"], \
        run.describe()


def test_node_without_its_proxy_variable(proxy, origin, home):
    run = run_doctor("--client", "node", *targets(origin), env_vars=credentials_env(proxy), home=home)
    messages = [s["message"] for s in run.report["steps"] if s["name"] == "client"]
    assert any("NODE_USE_ENV_PROXY" in m for m in messages), run.describe()
    assert any("CONNECT to port 80" in m for m in messages), run.describe()
    assert run.returncode == 0, run.describe()


def test_an_unknown_client_is_a_usage_error(home):
    run = run_doctor("--client", "emacs", as_json=False, home=home)
    assert run.returncode == 64 and "emacs" in run.stderr, run.describe()
