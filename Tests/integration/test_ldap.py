"""Directory users: Basic checked against a real OpenLDAP (slapd, started here on loopback with
StartTLS and the suite's test certificate), by a search as a service account and a bind as the
user found; injection attempts in the user name; the directory down means 503, never 407."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from portcullis_helpers import (
    USER, PASSWORD, assert_proxy_status, basic, build_request, free_port, wait_until,
)

BASE = "dc=example,dc=test"
READER_DN = f"cn=reader,{BASE}"
READER_PASSWORD = "reader-pw"
DIR_USER, DIR_PASSWORD = "dora", "dir-pa$$word é"
OTHER_USER, OTHER_PASSWORD = "oscar", "oscar-pw"
ADMIN_PASSWORD = "admin-pw"


def _program(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if not path:
        pytest.fail(f"{name} is missing: apt-get install -y slapd", pytrace=False)
    return path


class Slapd:
    """slapd on 127.0.0.1 with an mdb database loaded by slapadd: people (dora, oscar, and
    'star*' whose name is a filter metacharacter), a service account that may search."""

    def __init__(self, workdir: Path, cert: str, key: str):
        self.dir = workdir
        self.port = free_port()
        (workdir / "db").mkdir()
        people = [(DIR_USER, DIR_PASSWORD), (OTHER_USER, OTHER_PASSWORD), ("star*", "star-pw"), ("pat", "pat-old-pw")]
        ldif = [
            f"dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: example\ndc: example\n",
            f"dn: ou=people,{BASE}\nobjectClass: organizationalUnit\nou: people\n",
            f"dn: {READER_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: reader\n"
            f"userPassword: {READER_PASSWORD}\n",
        ]
        for uid, password in people:
            escaped = uid.replace("*", "\\2a")
            # Groups in departmentNumber (slapadd bypasses the memberOf overlay, so the tests
            # name another attribute with --ldap-group-attribute; the mechanism is the same).
            groups = f"departmentNumber: cn=staff,ou=groups,{BASE}\n" if uid == DIR_USER else ""
            ldif.append(f"dn: uid={escaped},ou=people,{BASE}\nobjectClass: inetOrgPerson\nuid: {uid}\n"
                        f"cn: {uid}\nsn: {uid}\n{groups}"
                        f"userPassword:: {__import__('base64').b64encode(password.encode()).decode()}\n")
        ldif.append(f"dn: ou=groups,{BASE}\nobjectClass: organizationalUnit\nou: groups\n")
        ldif.append(f"dn: cn=ops,ou=groups,{BASE}\nobjectClass: groupOfNames\ncn: ops\n"
                    f"member: uid={OTHER_USER},ou=people,{BASE}\n")
        (workdir / "data.ldif").write_text("\n".join(ldif))
        (workdir / "slapd.conf").write_text(f"""include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {workdir}/slapd.pid
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
database mdb
maxsize 10485760
suffix "{BASE}"
rootdn "cn=admin,{BASE}"
rootpw {ADMIN_PASSWORD}
directory {workdir}/db
access to attrs=userPassword by anonymous auth by self write by * none
access to * by dn.exact="{READER_DN}" read by * none
""")
        subprocess.run([_program("slapadd"), "-f", str(workdir / "slapd.conf"), "-l", str(workdir / "data.ldif")],
                       check=True, capture_output=True, timeout=60)
        self.log = open(workdir / "slapd.log", "wb")
        self.start()

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    def start(self):
        self.proc = subprocess.Popen([_program("slapd"), "-f", str(self.dir / "slapd.conf"), "-h", self.url + "/",
                                      "-d", "0"], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                __import__("socket").create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("slapd did not start: " + (self.dir / "slapd.log").read_text(errors="replace")[-2000:])

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture(scope="module")
def slapd(tmp_path_factory, tls_cert):
    server = Slapd(tmp_path_factory.mktemp("slapd"), *tls_cert)
    yield server
    server.stop()


def ldap_args(slapd, tls_cert, tmp_path) -> list:
    """--ldap and its companions for the test slapd, the service account's password in a file."""
    secret = tmp_path / "reader-password"
    secret.write_text(READER_PASSWORD + "\n")
    return ["--ldap", slapd.url, "--ldap-base", BASE, "--ldap-bind-dn", READER_DN, "--ldap-bind-password-file", secret,
            "--ldap-ca", tls_cert[0]]


@pytest.fixture
def ldap_proxy(launcher, slapd, tls_cert, tmp_path):
    return launcher.start(*ldap_args(slapd, tls_cert, tmp_path))


def get(p, url: str, user: str, password: str):
    with p.conn() as c:
        c.send(build_request("GET", url, [("Proxy-Authorization", basic(user, password))]))
        return c.read_response("GET")


def test_a_directory_user_gets_in_and_local_users_still_do(ldap_proxy, origin):
    r = get(ldap_proxy, f"{origin.base}/text", DIR_USER, DIR_PASSWORD)
    assert r.status == 200 and r.body == b"hello from origin\n", r.describe()
    r = get(ldap_proxy, f"{origin.base}/text", USER, PASSWORD)  # the htpasswd user, first in line
    assert r.status == 200, r.describe()
    # The log names the directory as dora's source (and only hers), never a password.
    ldap_proxy.stderr.wait_for("login accepted by the directory", 5)
    lines = [line for line in ldap_proxy.stderr.text().splitlines() if "login accepted by the directory" in line]
    assert len(lines) == 1 and f"user={DIR_USER}" in lines[0] and f"uid={DIR_USER},ou=people" in lines[0], lines
    assert DIR_PASSWORD not in ldap_proxy.stderr.text()


def test_a_wrong_password_and_an_unknown_user_get_the_same_407(ldap_proxy, origin):
    for user, password in [(DIR_USER, "wrong-password"), ("nobody-here", "whatever-pw"), (DIR_USER, "")]:
        r = get(ldap_proxy, f"{origin.base}/text", user, password)
        assert r.status == 407, (user, r.describe())
        assert_proxy_status(r, details="invalid-credentials")


@pytest.mark.parametrize("name", [
    "*", "d*", "*a", "dora)(uid=*", "dora)(|(uid=*", "*)(uid=*))(|(uid=*", "dora\\", "dora\x00", "dora,ou=people",
    "uid=dora", "dora+cn=x", "#dora", "(uid=dora)", "star\\2a",
])
def test_injected_names_match_no_one_else(ldap_proxy, origin, name):
    """With the right password of dora (or of the user literally named star*), a name carrying
    filter or DN syntax never authenticates: it matches no entry, or exactly its own."""
    for password in (DIR_PASSWORD, "star-pw", OTHER_PASSWORD):
        r = get(ldap_proxy, f"{origin.base}/text", name, password)
        assert r.status == 407, (name, password, r.describe())


def test_spellings_the_directory_matches_are_one_user_in_the_log(launcher, slapd, tls_cert, tmp_path, origin):
    """LDAP's matching ignores case and surrounding spaces: `DORA` and ` dora ` are dora, and
    logged as dora (one person, one user for policy, limits and lockout)."""
    log = tmp_path / "access.log"
    p = launcher.start(*ldap_args(slapd, tls_cert, tmp_path), "--access-log", log)
    for name in ("DORA", " dora", "dora "):
        assert get(p, f"{origin.base}/text", name, DIR_PASSWORD).status == 200
    wait_until(lambda: len(log.read_text().splitlines()) >= 3, 5, what="three access-log lines")
    assert {line.split()[7] for line in log.read_text().splitlines()} == {DIR_USER}


def test_a_name_with_a_star_is_a_literal_star(ldap_proxy, origin):
    r = get(ldap_proxy, f"{origin.base}/text", "star*", "star-pw")
    assert r.status == 200, r.describe()


def test_the_directory_down_is_a_503_not_a_407_and_recovery_needs_no_restart(launcher, slapd, tls_cert, tmp_path,
                                                                               origin):
    admin = free_port()
    p = launcher.start(*ldap_args(slapd, tls_cert, tmp_path), "--credential-cache-ttl", "0.05",
                       "--admin", f"127.0.0.1:{admin}")

    def readyz() -> int:
        import urllib.error
        import urllib.request
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    assert get(p, f"{origin.base}/text", OTHER_USER, OTHER_PASSWORD).status == 200
    wait_until(lambda: readyz() == 200, 10, what="/readyz ready")
    slapd.stop()
    time.sleep(0.1)  # the cached success (50 ms) is gone
    try:
        r = get(p, f"{origin.base}/text", OTHER_USER, OTHER_PASSWORD)
        assert r.status == 503, r.describe()
        assert_proxy_status(r, details="store-unavailable")
        wait_until(lambda: readyz() == 503, 10, what="/readyz to report the directory down")
    finally:
        slapd.start()
    wait_until(lambda: get(p, f"{origin.base}/text", OTHER_USER, OTHER_PASSWORD).status == 200, 15,
               what="the directory back")
    wait_until(lambda: readyz() == 200, 10, what="/readyz ready again")
    log = p.stderr.text()
    assert log.count("directory unreachable") == 1 and log.count("directory reachable again") == 1, log


def test_starttls_is_required_and_an_untrusted_directory_is_unavailable(launcher, slapd, tmp_path, origin):
    """Without --ldap-ca the directory's self-signed certificate is not trusted: StartTLS fails,
    and that is the directory being unusable (503), never a wrong password (407)."""
    secret = tmp_path / "reader-password"
    secret.write_text(READER_PASSWORD + "\n")
    p = launcher.start("--ldap", slapd.url, "--ldap-base", BASE, "--ldap-bind-dn", READER_DN,
                       "--ldap-bind-password-file", secret)
    r = get(p, f"{origin.base}/text", DIR_USER, DIR_PASSWORD)
    assert r.status == 503, r.describe()


def test_ldap_test_prints_each_step_and_never_the_password(slapd, tls_cert, tmp_path):
    from portcullis_helpers import PORTCULLIS_BIN
    secret = tmp_path / "reader-password"
    secret.write_text(READER_PASSWORD + "\n")
    args = [PORTCULLIS_BIN, "ldap", "test", "--ldap", slapd.url, "--ldap-base", BASE, "--ldap-bind-dn", READER_DN,
            "--ldap-bind-password-file", str(secret), "--ldap-ca", tls_cert[0]]

    def run(user: str, password: str):
        return subprocess.run(args + ["--user", user], input=(password + "\n").encode(), capture_output=True,
                              timeout=60)

    ok = run("DORA", DIR_PASSWORD)
    out = ok.stdout.decode()
    assert ok.returncode == 0, out + ok.stderr.decode()
    assert f"entry:   uid={DIR_USER},ou=people,{BASE}" in out and f"ok, as {DIR_USER}" in out, out
    assert "(&(objectClass=person)(uid=DORA))" in out, out
    wrong = run(DIR_USER, "wrong-password")
    assert wrong.returncode == 1 and "refused" in wrong.stdout.decode(), wrong.stdout.decode()
    injected = run("*", DIR_PASSWORD)
    assert injected.returncode == 1 and "uid=\\2a" in injected.stdout.decode(), injected.stdout.decode()
    for result in (ok, wrong, injected):
        text = result.stdout.decode() + result.stderr.decode()
        assert DIR_PASSWORD not in text and READER_PASSWORD not in text, text
    down = subprocess.run([PORTCULLIS_BIN, "ldap", "test", "--ldap", f"ldap://127.0.0.1:{free_port()}",
                           "--ldap-base", BASE, "--user", DIR_USER], input=b"x\n", capture_output=True, timeout=60)
    assert down.returncode == 2 and "unavailable" in down.stdout.decode(), down.stdout.decode()


def test_directory_groups_decide_the_access_rules(launcher, slapd, tls_cert, tmp_path, origin):
    """A policy rule for the group `staff`, which the policy file does not define: dora (in it
    per the directory) is let through, oscar (not in it) gets the 403 naming no rule."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - name: staff-only\n    action: allow\n    groups: [staff]\n")
    p = launcher.start(*ldap_args(slapd, tls_cert, tmp_path),
                       "--ldap-group-attribute", "departmentNumber", "--policy", policy)
    r = get(p, f"{origin.base}/text", DIR_USER, DIR_PASSWORD)
    assert r.status == 200, r.describe()
    # Cached now: the groups still count on the next request.
    assert get(p, f"{origin.base}/text", DIR_USER, DIR_PASSWORD).status == 200
    r = get(p, f"{origin.base}/text", OTHER_USER, OTHER_PASSWORD)
    assert r.status == 403, r.describe()
    assert_proxy_status(r, error="http_request_denied")


def test_a_password_changed_in_the_directory_counts_after_the_cache_ttl(launcher, slapd, tls_cert, tmp_path, origin):
    p = launcher.start(*ldap_args(slapd, tls_cert, tmp_path), "--credential-cache-ttl", "1")
    assert get(p, f"{origin.base}/text", "pat", "pat-old-pw").status == 200
    changed = subprocess.run([shutil.which("ldappasswd") or "/usr/bin/ldappasswd", "-x", "-H", slapd.url,
                              "-D", f"cn=admin,{BASE}", "-w", ADMIN_PASSWORD, "-s", "pat-new-pw",
                              f"uid=pat,ou=people,{BASE}"], capture_output=True, text=True, timeout=30)
    assert changed.returncode == 0, changed.stdout + changed.stderr
    # The old password is still the cached success for at most the TTL, then refused.
    wait_until(lambda: get(p, f"{origin.base}/text", "pat", "pat-old-pw").status == 407, 10,
               what="the old password refused")
    assert get(p, f"{origin.base}/text", "pat", "pat-new-pw").status == 200


def test_an_ntlm_users_groups_come_from_the_directory(launcher, slapd, tls_cert, tmp_path, origin):
    """NTLM proves the user without the directory (local NT hashes): the gate looks the user's
    groups up by name before the access rules decide — dora (staff) in, oscar out."""
    from portcullis_helpers import run_curl
    from test_negotiate_ntlm import add_user
    data = tmp_path / "data"
    for user in (DIR_USER, OTHER_USER):
        add_user(data, user, "Ntlm-pa$$word 1", "--ntlm")
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - name: staff-only\n    action: allow\n    groups: [staff]\n")
    p = launcher.start("--auth", "ntlm", "--data-dir", data, *ldap_args(slapd, tls_cert, tmp_path),
                       "--ldap-group-attribute", "departmentNumber", "--policy", policy, htpasswd=None)

    def status(user: str) -> bytes:
        return run_curl(["-o", "/dev/null", "-w", "%{http_code}", "--proxy-ntlm", "-U", f"{user}:Ntlm-pa$$word 1",
                         "-x", p.url, f"{origin.base}/text"]).stdout

    assert status(DIR_USER) == b"200"
    assert status(OTHER_USER) == b"403"


def test_the_directory_stopped_under_load_gives_503_never_407_and_cached_users_go_on(launcher, slapd, tls_cert,
                                                                                   tmp_path, origin):
    """Four clients keep sending while slapd stops and comes back: a user already checked keeps
    getting 200 from the cache; a user not yet checked gets 503 while it is down and 200 after;
    no response is ever a 407."""
    import threading
    p = launcher.start(*ldap_args(slapd, tls_cert, tmp_path))
    assert get(p, f"{origin.base}/text", DIR_USER, DIR_PASSWORD).status == 200  # cached from here on
    statuses = {DIR_USER: [], OTHER_USER: []}
    stop = threading.Event()

    def client(user: str, password: str):
        while not stop.is_set():
            statuses[user].append(get(p, f"{origin.base}/text", user, password).status)
            time.sleep(0.02)

    threads = [threading.Thread(target=client, args=(u, pw), daemon=True)
               for u, pw in ((DIR_USER, DIR_PASSWORD), (DIR_USER, DIR_PASSWORD), (OTHER_USER, OTHER_PASSWORD))]
    slapd.stop()
    for t in threads:
        t.start()
    time.sleep(1.5)
    slapd.start()
    wait_until(lambda: statuses[OTHER_USER] and statuses[OTHER_USER][-1] == 200, 15, what="oscar in again")
    stop.set()
    for t in threads:
        t.join(10)
    assert set(statuses[DIR_USER]) == {200}, statuses[DIR_USER]
    assert 503 in statuses[OTHER_USER] and 407 not in statuses[OTHER_USER], statuses[OTHER_USER]
    assert set(statuses[OTHER_USER]) <= {200, 503}, statuses[OTHER_USER]


def test_groups_found_by_membership_with_a_group_filter(launcher, slapd, tls_cert, tmp_path, origin):
    """groupOfNames entries that list their members (no memberOf on the user): --ldap-group-filter
    finds oscar's group `ops` by his DN, and curl gets through an ops-only rule as him."""
    from portcullis_helpers import run_curl
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - name: ops-only\n    action: allow\n    groups: [ops]\n")
    p = launcher.start(*ldap_args(slapd, tls_cert, tmp_path),
                       "--ldap-group-filter", "(&(objectClass=groupOfNames)(member=%d))", "--policy", policy)

    def curl(user: str, password: str) -> bytes:
        return run_curl(["-o", "/dev/null", "-w", "%{http_code}", "-x", p.url, "--proxy-user", f"{user}:{password}",
                         f"{origin.base}/text"]).stdout

    assert curl(OTHER_USER, OTHER_PASSWORD) == b"200"
    assert curl(DIR_USER, DIR_PASSWORD) == b"403"
    assert curl(OTHER_USER, "wrong-password") == b"407"
