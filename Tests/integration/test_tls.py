"""The TLS listener (--listen-tls): curl and Python requests with an https:// proxy URL, Basic
and Digest inside TLS, plain requests and CONNECT; the certificate replaced while running (new
connections see the new serial, a bad pair keeps the old one); a key that does not match refused
at start-up; plain HTTP sent to the TLS port answered with a 400 it can read; --basic-requires-tls.
The CA and the certificates are made here with openssl."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import requests
from urllib3.exceptions import InsecureRequestWarning
from cryptography import x509

from portcullis_helpers import (PASSWORD, PORTCULLIS_BIN, USER, basic, clean_env, free_port, run_curl, try_connect,
                                wait_until)


def openssl(*args, cwd: Path):
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=60)


class CA:
    """A throwaway CA and the leaf certificates it signs (localhost and 127.0.0.1)."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.cert = directory / "ca.pem"
        self.key = directory / "ca.key"
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                "-keyout", self.key, "-out", self.cert, "-subj", "/CN=Portcullis test CA", cwd=directory)
        self.serial = 0x1000

    def leaf(self, name: str, client: bool = False) -> tuple[Path, Path, str]:
        """A certificate and key for the proxy (or, `client`, for a client named `name`);
        returns (cert, key, serial in hex)."""
        self.serial += 1
        cert, key, csr = self.dir / f"{name}.pem", self.dir / f"{name}.key", self.dir / f"{name}.csr"
        ext = self.dir / f"{name}.ext"
        ext.write_text(f"subjectAltName=email:{name}@example.org\nextendedKeyUsage=clientAuth\n" if client
                       else "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
                "-out", csr, "-subj", f"/CN={name}", cwd=self.dir)
        openssl("x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key, "-set_serial",
                str(self.serial), "-days", "2", "-extfile", ext, "-out", cert, cwd=self.dir)
        return cert, key, f"{self.serial:x}"


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return CA(tmp_path_factory.mktemp("ca"))


def install(source: Path, target: Path):
    """Replaced as deployment tools do: written beside it, then renamed over it."""
    staging = target.with_name(target.name + ".new")
    staging.write_bytes(source.read_bytes())
    staging.replace(target)


def tls_proxy(launcher, tmp_path, cert, key, *extra, **options):
    port = free_port()
    p = launcher.start("--listen-tls", f"127.0.0.1:{port}", "--tls-cert", cert, "--tls-key", key,
                       "--access-log", tmp_path / "access.log", "--access-log-format", "json", *extra, **options)
    # Ready means the plain listener accepts; the TLS one is bound just after it.
    wait_until(lambda: try_connect("127.0.0.1", port, 0.5) == "ok", 10, what="the TLS listener")
    p.tls_port = port
    p.https_url = f"https://localhost:{port}"
    p.access_log = tmp_path / "access.log"
    return p


def served_serial(port: int, ca: CA) -> str:
    context = ssl.create_default_context(cafile=str(ca.cert))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    return f"{x509.load_der_x509_certificate(der).serial_number:x}"


def access_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_curl_through_an_https_proxy_plain_and_connect_with_basic(launcher, tmp_path, ca, origin, tls_origin):
    cert, key, _ = ca.leaf("proxy")
    p = tls_proxy(launcher, tmp_path, cert, key, "--connect-ports", tls_origin.port)
    common = ["-o", "/dev/null", "-w", "%{http_code}", "--proxy", p.https_url, "--proxy-cacert", ca.cert,
              "--proxy-user", f"{USER}:{PASSWORD}"]
    res = run_curl(common + [origin.base + "/text"])
    assert res.stdout == b"200", res.stderr
    res = run_curl(common + ["-k", f"https://127.0.0.1:{tls_origin.port}/tls"])
    assert res.stdout == b"200", res.stderr
    # Without credentials: the 407 comes back inside TLS too.
    res = run_curl(["-o", "/dev/null", "-w", "%{http_code}", "--proxy", p.https_url, "--proxy-cacert", ca.cert,
                    origin.base + "/text"])
    assert res.stdout == b"407", res.stderr
    wait_until(lambda: len(access_records(p.access_log)) >= 3, 5, what="access log lines")
    records = access_records(p.access_log)
    assert {r["listener"] for r in records} == {"tls"}
    assert sorted(r["status"] for r in records) == [200, 200, 407]
    assert "CONNECT" in {r["method"] for r in records}


def test_the_plain_listener_beside_it_still_works_and_is_named_tcp(launcher, tmp_path, ca, origin):
    cert, key, _ = ca.leaf("proxy")
    p = tls_proxy(launcher, tmp_path, cert, key)
    res = run_curl(["-o", "/dev/null", "-w", "%{http_code}", "--proxy", p.url, "--proxy-user", f"{USER}:{PASSWORD}",
                    origin.base + "/text"])
    assert res.stdout == b"200", res.stderr
    wait_until(lambda: access_records(p.access_log), 5, what="access log line")
    assert access_records(p.access_log)[-1]["listener"] == "tcp"


def test_digest_inside_tls(launcher, tmp_path, ca, origin):
    db = tmp_path / "users.db"
    subprocess.run([PORTCULLIS_BIN, "users", "add", "dora", "--store", f"sqlite:{db}", "--password-stdin",
                    "--digest", "--cost", "4"],
                   input=b"d1gest-pass\n", check=True, capture_output=True, timeout=60,
                   env=clean_env(tmp_path))
    cert, key, _ = ca.leaf("proxy")
    port = free_port()
    p = launcher.start("--listen-tls", f"127.0.0.1:{port}", "--tls-cert", cert, "--tls-key", key,
                       "--store", f"sqlite:{db}", "--auth", "digest", htpasswd=None)
    res = run_curl(["-o", "/dev/null", "-w", "%{http_code}", "--proxy", f"https://localhost:{port}",
                    "--proxy-cacert", ca.cert, "--proxy-digest", "--proxy-user", "dora:d1gest-pass",
                    origin.base + "/text"])
    assert res.stdout == b"200", res.stderr
    assert p.running()


def test_python_requests_with_an_https_proxy(launcher, tmp_path, ca, origin):
    cert, key, _ = ca.leaf("proxy")
    p = tls_proxy(launcher, tmp_path, cert, key)
    url = f"https://{USER}:{PASSWORD}@localhost:{p.tls_port}"
    # requests 2.31 / urllib3 2 do not check an https:// proxy's certificate for http:// targets
    # (they warn that the request is unverified): a client limit, not checked here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureRequestWarning)
        r = requests.get(origin.base + "/text", proxies={"http": url}, timeout=10)
        assert r.status_code == 200
        r = requests.get(origin.base + "/text", proxies={"http": p.https_url}, timeout=10)
        assert r.status_code == 407


def test_a_replaced_certificate_is_served_to_new_connections_and_a_bad_one_is_refused(launcher, tmp_path, ca):
    first_cert, first_key, first_serial = ca.leaf("first")
    second_cert, second_key, second_serial = ca.leaf("second")
    cert, key = tmp_path / "proxy.pem", tmp_path / "proxy.key"
    install(first_cert, cert)
    install(first_key, key)
    p = tls_proxy(launcher, tmp_path, cert, key)
    assert served_serial(p.tls_port, ca) == first_serial
    # An open connection keeps its certificate; new ones get the new pair once both files settle.
    context = ssl.create_default_context(cafile=str(ca.cert))
    held = context.wrap_socket(socket.create_connection(("127.0.0.1", p.tls_port), timeout=5),
                               server_hostname="localhost")
    install(second_key, key)
    install(second_cert, cert)
    wait_until(lambda: served_serial(p.tls_port, ca) == second_serial, 15, interval=0.5, what="the new certificate")
    p.stderr.wait_for("TLS certificate reloaded", 5)
    held.sendall(b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n")
    assert held.recv(64).startswith(b"HTTP/1.1 407")
    held.close()
    # A key that is not the certificate's: logged, and the pair in force stays.
    install(first_key, key)
    p.stderr.wait_for("TLS certificate reload failed", 15)
    assert served_serial(p.tls_port, ca) == second_serial
    # SIGHUP reads the files at once: put the matching pair back.
    install(first_cert, cert)
    p.send_signal(signal.SIGHUP)
    wait_until(lambda: served_serial(p.tls_port, ca) == first_serial, 10, interval=0.2, what="the SIGHUP reload")


@pytest.mark.parametrize("case", ["mismatch", "missing-key", "not-pem", "cert-without-listener"])
def test_serve_refuses_a_certificate_it_cannot_serve(tmp_path, ca, case):
    cert, key, _ = ca.leaf("proxy")
    _, other_key, _ = ca.leaf("other")
    args = ["--listen-tls", f"127.0.0.1:{free_port()}", "--tls-cert", cert, "--tls-key", key]
    expect = ""
    if case == "mismatch":
        args[-1] = other_key
        expect = "does not go with"
    elif case == "missing-key":
        args[-1] = tmp_path / "nope.key"
        expect = "no such file"
    elif case == "not-pem":
        garbage = tmp_path / "garbage.pem"
        garbage.write_text("not a certificate\n")
        args[3] = garbage
        expect = "--tls-cert"
    else:
        args = ["--listen", f"127.0.0.1:{free_port()}", "--tls-cert", cert, "--tls-key", key]
        expect = "--listen-tls"
    res = subprocess.run([PORTCULLIS_BIN, "serve", "--data-dir", tmp_path / "data", *map(str, args)],
                         capture_output=True, timeout=60, env=clean_env(tmp_path))
    assert res.returncode != 0
    assert expect in res.stderr.decode(), res.stderr.decode()


def test_plain_http_sent_to_the_tls_port_gets_a_readable_400_and_the_listener_serves_on(launcher, tmp_path, ca, origin):
    cert, key, _ = ca.leaf("proxy")
    p = tls_proxy(launcher, tmp_path, cert, key)
    with socket.create_connection(("127.0.0.1", p.tls_port), timeout=5) as s:
        s.sendall(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"https://" in answer
    # curl given an http:// URL for the TLS port sees the same answer.
    res = run_curl(["-s", "--proxy", f"http://127.0.0.1:{p.tls_port}", origin.base + "/text"])
    assert b"speaks TLS" in res.stdout
    res = run_curl(["-o", "/dev/null", "-w", "%{http_code}", "--proxy", p.https_url, "--proxy-cacert", ca.cert,
                    "--proxy-user", f"{USER}:{PASSWORD}", origin.base + "/text"])
    assert res.stdout == b"200", res.stderr


def test_basic_requires_tls(launcher, tmp_path, ca, origin):
    db = tmp_path / "users.db"
    subprocess.run([PORTCULLIS_BIN, "users", "add", "dora", "--store", f"sqlite:{db}", "--password-stdin",
                    "--digest", "--cost", "4"],
                   input=b"both-ways\n", check=True, capture_output=True, timeout=60, env=clean_env(tmp_path))
    cert, key, _ = ca.leaf("proxy")
    p = tls_proxy(launcher, tmp_path, cert, key, "--store", f"sqlite:{db}", "--auth", "digest,basic",
                  "--basic-requires-tls", htpasswd=None)
    # Inside TLS: Basic works (and its check is cached).
    res = run_curl(["-o", "/dev/null", "-w", "%{http_code}", "--proxy", p.https_url, "--proxy-cacert", ca.cert,
                    "--proxy-user", "dora:both-ways", origin.base + "/text"])
    assert res.stdout == b"200", res.stderr
    # Plain text: Digest only is offered, and a Basic answer is refused unchecked (the cached
    # check from the TLS connection included), naming the https:// address.
    with p.conn() as c:
        r = c.request("GET", origin.base + "/text", [("Proxy-Authorization", basic("dora", "both-ways"))])
        assert r.status == 407
        challenges = r.header_all("Proxy-Authenticate")
        assert challenges and all(v.startswith("Digest") for v in challenges), challenges
        assert "https://" in r.text
        assert "basic-requires-tls" in r.header("Proxy-Status", "")
    # Digest over plain text still works.
    res = run_curl(["-o", "/dev/null", "-w", "%{http_code}", "--proxy", p.url, "--proxy-digest",
                    "--proxy-user", "dora:both-ways", origin.base + "/text"])
    assert res.stdout == b"200", res.stderr


# ------------------------------------------------------------------------------ client certificates

def add_user(db: Path, name: str, home: Path, *flags: str):
    subprocess.run([PORTCULLIS_BIN, "users", "add", name, "--store", f"sqlite:{db}", "--password-stdin",
                    "--cost", "4", *flags], input=b"pw-of-" + name.encode() + b"\n", check=True,
                   capture_output=True, timeout=60, env=clean_env(home))


def curl_code(p, ca: CA, origin, *args) -> subprocess.CompletedProcess:
    return run_curl(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--proxy", p.https_url, "--proxy-cacert", ca.cert,
                     *map(str, args), origin.base + "/text"])


def test_client_certificates_name_the_user(launcher, tmp_path, ca, origin):
    db = tmp_path / "users.db"
    add_user(db, "carol", tmp_path)
    add_user(db, "dave", tmp_path)
    subprocess.run([PORTCULLIS_BIN, "users", "disable", "dave", "--store", f"sqlite:{db}"], check=True,
                   capture_output=True, timeout=60, env=clean_env(tmp_path))
    cert, key, _ = ca.leaf("proxy")
    carol_cert, carol_key, _ = ca.leaf("carol", client=True)
    dave_cert, dave_key, _ = ca.leaf("dave", client=True)
    erin_cert, erin_key, _ = ca.leaf("erin", client=True)
    stranger = CA(tmp_path)
    mallory_cert, mallory_key, _ = stranger.leaf("carol", client=True)
    p = tls_proxy(launcher, tmp_path, cert, key, "--tls-client-ca", ca.cert, "--store", f"sqlite:{db}",
                  "--auth", "certificate,basic", htpasswd=None)

    res = curl_code(p, ca, origin, "--proxy-cert", carol_cert, "--proxy-key", carol_key)
    assert res.stdout == b"200", res.stderr
    wait_until(lambda: access_records(p.access_log), 5, what="access log line")
    record = access_records(p.access_log)[-1]
    assert (record["user"], record["auth_scheme"], record["listener"]) == ("carol", "certificate", "tls")
    # No certificate: Basic still works (and is what the 407 asks for).
    assert curl_code(p, ca, origin).stdout == b"407"
    assert curl_code(p, ca, origin, "--proxy-user", "carol:pw-of-carol").stdout == b"200"
    # A disabled user's certificate: 407, no longer valid. A user the store lacks: 407.
    assert curl_code(p, ca, origin, "--proxy-cert", dave_cert, "--proxy-key", dave_key).stdout == b"407"
    assert curl_code(p, ca, origin, "--proxy-cert", erin_cert, "--proxy-key", erin_key).stdout == b"407"
    wait_until(lambda: len(access_records(p.access_log)) >= 5, 5, what="access log lines")
    results = [r["auth_result"] for r in access_records(p.access_log)]
    assert "disabled" in results and "invalid-credentials" in results
    # Another CA's certificate, even for carol: the handshake is refused.
    res = curl_code(p, ca, origin, "--proxy-cert", mallory_cert, "--proxy-key", mallory_key)
    assert res.returncode != 0 and res.stdout in (b"000", b""), (res.returncode, res.stdout)
    assert p.running()


def test_certificate_alone_requires_one_in_the_handshake_and_can_name_users_by_email(launcher, tmp_path, ca, origin):
    cert, key, _ = ca.leaf("proxy")
    carol_cert, carol_key, _ = ca.leaf("carol", client=True)
    port = free_port()
    p = launcher.start("--listen-tls", f"127.0.0.1:{port}", "--tls-cert", cert, "--tls-key", key,
                       "--tls-client-ca", ca.cert, "--auth", "certificate", "--cert-user-from", "san-email",
                       "--cert-users-implicit", "--access-log", tmp_path / "access.log", "--access-log-format", "json",
                       listen=[], connect=("127.0.0.1", port), htpasswd=None)
    p.https_url = f"https://localhost:{port}"
    res = curl_code(p, ca, origin)
    assert res.returncode != 0, res
    res = curl_code(p, ca, origin, "--proxy-cert", carol_cert, "--proxy-key", carol_key)
    assert res.stdout == b"200", res.stderr
    wait_until(lambda: access_records(tmp_path / "access.log"), 5, what="access log line")
    assert access_records(tmp_path / "access.log")[-1]["user"] == "carol@example.org"


def test_tls_sent_to_the_plain_port_is_refused_at_once(launcher, tmp_path, ca, origin):
    cert, key, _ = ca.leaf("proxy")
    p = tls_proxy(launcher, tmp_path, cert, key)
    started = time.monotonic()
    res = run_curl(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--proxy", f"https://127.0.0.1:{p.port}",
                    "--proxy-insecure", origin.base + "/text"], timeout=20)
    assert res.returncode != 0, res
    assert time.monotonic() - started < 5, "the plain port waited for a head deadline"
    # And it serves on.
    res = run_curl(["-o", "/dev/null", "-w", "%{http_code}", "--proxy", p.url, "--proxy-user", f"{USER}:{PASSWORD}",
                    origin.base + "/text"])
    assert res.stdout == b"200", res.stderr
