"""`portcullis doctor` with a proxy reached over TLS (docs/DOCTOR.md, "TLS to the proxy"): the
real Portcullis with --listen-tls for success, an unknown CA, a certificate for another name, an
expired one, and the wrong URL scheme on either port; a Python `ssl` server that requires client
certificates (Portcullis' own --tls-client-ca is not needed to test doctor's side) for a
certificate required, refused and accepted, in TLS 1.3 and 1.2.

Certificates are made here with `cryptography`, which sets any validity dates (OpenSSL 3.0's
`x509 -req` has no -not_before)."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from portcullis_helpers import PASSWORD, USER
from test_doctor import assert_in, assert_result, home, outcome, run_doctor  # noqa: F401 - home is a fixture
from test_doctor_quirks import ScriptedProxy, scripted  # noqa: F401 - scripted is a fixture

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


class CA:
    """A throwaway CA writing PEM files: leaves with any names, dates and key usage."""

    def __init__(self, directory: Path, name: str):
        self.dir = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(NOW - DAY).not_valid_after(NOW + 2 * DAY)
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = directory / f"{name.replace(' ', '-')}.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def leaf(self, label: str, dns=("localhost",), ips=("127.0.0.1",), start=None, end=None,
             client=False) -> tuple[str, str]:
        import ipaddress
        key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)]))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(start or NOW - DAY).not_valid_after(end or NOW + DAY)
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.dir / f"{label}.pem", self.dir / f"{label}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    return {"proxy": CA(d, "Doctor Proxy CA"), "clients": CA(d, "Doctor Client CA"),
            "stranger": CA(d, "Stranger CA"), "dir": d}


def tls_proxy(launcher, cert: str, key: str, *extra):
    from portcullis_helpers import free_port
    port = free_port()
    p = launcher.start("--listen-tls", f"127.0.0.1:{port}", "--tls-cert", cert, "--tls-key", key, *extra)
    p.tls_port = port
    return p


def https_url(port: int, host: str = "127.0.0.1") -> str:
    return f"https://{USER}:{PASSWORD}@{host}:{port}"


def finding(run, step: str):
    return run.step(step)["details"].get("finding")


def assert_finding(run, step: str, finding_id: str):
    assert finding(run, step) == finding_id, f"{step} finding is not {finding_id}\n{run.describe()}"
    assert run.step(step)["status"] == "fail", run.describe()
    return run.step(step)


def key_lines(key_path: str) -> list[str]:
    """The base64 lines of a PEM private key: none may ever be printed."""
    return [l for l in Path(key_path).read_text().splitlines() if l and not l.startswith("-----")]


def assert_no_key(run, *key_paths: str):
    for path in key_paths:
        for line in key_lines(path):
            assert line not in run.stdout and line not in run.stderr, f"key material printed\n{run.describe()}"


# --------------------------------------------------------------------------- the real proxy

def test_basic_through_an_https_proxy_with_its_ca(launcher, pki, origin, tls_origin, tls_cert, home):
    cert, key = pki["proxy"].leaf("proxy-ok")
    p = tls_proxy(launcher, cert, key, "--connect-ports", tls_origin.port)
    run = run_doctor("--proxy", https_url(p.tls_port), "--proxy-cacert", pki["proxy"].pem,
                     "--cacert", tls_cert[0], "--target", f"{origin.base}/text",
                     "--target", f"https://127.0.0.1:{tls_origin.port}/", home=home)
    report = assert_result(run, "ok", 0, "accepted")
    assert report["authentication"]["scheme"] == "Basic", run.describe()
    assert report["proxy"] == f"https://{USER}:***@127.0.0.1:{p.tls_port}", run.describe()
    assert "tls_ms" in run.step("reachability")["details"], run.describe()
    details = run.step("configuration")["details"]
    assert details.get("proxy_cacert") == str(pki["proxy"].pem) and details.get("cacert") == tls_cert[0], \
        run.describe()
    assert [t["status"] for t in report["targets"]] == ["pass", "pass"], run.describe()
    # The same run by the host name of the certificate, in text.
    text = run_doctor("--proxy", https_url(p.tls_port, "localhost"), "--proxy-cacert", pki["proxy"].pem,
                      "--target", f"{origin.base}/text", as_json=False, home=home)
    assert text.returncode == 0 and "TLS" in text.stdout, text.describe()


def test_an_unknown_ca_says_to_pass_proxy_cacert(launcher, pki, origin, tls_cert, home):
    cert, key = pki["proxy"].leaf("proxy-unknown")
    p = tls_proxy(launcher, cert, key)
    # --cacert trusts targets only: it is named as the wrong option.
    run = run_doctor("--proxy", https_url(p.tls_port), "--cacert", pki["proxy"].pem,
                     "--target", f"{origin.base}/text", home=home)
    assert_result(run, "proxy-unreachable", 1, None)
    step = assert_finding(run, "reachability", "proxy-tls-unknown-ca")
    assert_in('issued by "Doctor Proxy CA", a CA not trusted here', step["message"], run, "message")
    assert_in("--proxy-cacert FILE", step["fix"], run, "fix")
    assert_in("--cacert is for the targets", step["fix"], run, "fix")
    # The wrong CA in --proxy-cacert: the issuer to pass instead is named.
    run = run_doctor("--proxy", https_url(p.tls_port), "--proxy-cacert", pki["stranger"].pem,
                     "--target", f"{origin.base}/text", home=home)
    step = assert_finding(run, "reachability", "proxy-tls-unknown-ca")
    assert_in('did not sign it: pass the certificate of the CA "Doctor Proxy CA"', step["fix"], run, "fix")


def test_a_certificate_for_another_name_is_a_name_mismatch(launcher, pki, origin, home):
    cert, key = pki["proxy"].leaf("proxy-other-name", dns=("proxy.other.test",), ips=())
    p = tls_proxy(launcher, cert, key)
    for host in ("127.0.0.1", "localhost"):
        run = run_doctor("--proxy", https_url(p.tls_port, host), "--proxy-cacert", pki["proxy"].pem,
                         "--target", f"{origin.base}/text", home=home)
        assert_result(run, "proxy-unreachable", 1, None)
        step = assert_finding(run, "reachability", "proxy-tls-name-mismatch")
        assert_in(f"is for proxy.other.test, not for {host}", step["message"], run, "message")
        assert_in(f"https://proxy.other.test:{p.tls_port}", step["fix"], run, "fix")
        assert step["details"]["certificate_names"] == ["proxy.other.test"], run.describe()


def test_an_expired_certificate_gives_its_dates(launcher, pki, origin, home):
    start, end = NOW - 10 * DAY, NOW - 2 * DAY
    cert, key = pki["proxy"].leaf("proxy-expired", start=start, end=end)
    p = tls_proxy(launcher, cert, key)
    run = run_doctor("--proxy", https_url(p.tls_port), "--proxy-cacert", pki["proxy"].pem,
                     "--target", f"{origin.base}/text", home=home)
    assert_result(run, "proxy-unreachable", 1, None)
    step = assert_finding(run, "reachability", "proxy-tls-expired")
    assert_in(f"expired on {end.strftime('%Y-%m-%dT%H:%M:%SZ')}", step["message"], run, "message")
    assert_in(f"valid from {start.strftime('%Y-%m-%dT%H:%M:%SZ')}", step["message"], run, "message")
    assert_in("renew", step["fix"], run, "fix")


def test_a_certificate_not_yet_valid_says_so(launcher, pki, origin, home):
    cert, key = pki["proxy"].leaf("proxy-future", start=NOW + DAY, end=NOW + 10 * DAY)
    p = tls_proxy(launcher, cert, key)
    run = run_doctor("--proxy", https_url(p.tls_port), "--proxy-cacert", pki["proxy"].pem,
                     "--target", f"{origin.base}/text", home=home)
    assert_result(run, "proxy-unreachable", 1, None)
    assert_finding(run, "reachability", "proxy-tls-not-yet-valid")


def test_plain_http_to_the_tls_port_says_use_https(launcher, pki, origin, home):
    cert, key = pki["proxy"].leaf("proxy-plain-to-tls")
    p = tls_proxy(launcher, cert, key)
    run = run_doctor("--proxy", f"http://{USER}:{PASSWORD}@127.0.0.1:{p.tls_port}",
                     "--target", f"{origin.base}/text", home=home)
    assert_result(run, "config-error", 1, None)
    step = assert_finding(run, "challenge", "proxy-speaks-tls")
    assert_in("plain HTTP on a TLS port", step["message"], run, "message")
    assert_in(f"use https://127.0.0.1:{p.tls_port}", step["fix"], run, "fix")


def test_tls_to_the_plain_port_says_use_http(launcher, pki, origin, home):
    cert, key = pki["proxy"].leaf("proxy-tls-to-plain")
    p = tls_proxy(launcher, cert, key)
    run = run_doctor("--proxy", https_url(p.port), "--proxy-cacert", pki["proxy"].pem,
                     "--target", f"{origin.base}/text", home=home)
    assert_result(run, "config-error", 1, None)
    step = assert_finding(run, "reachability", "proxy-speaks-plain-http")
    # Portcullis' plain port answers a ClientHello at once with a plain-text 400.
    assert_in("answered the TLS handshake in plain HTTP", step["message"], run, "message")
    assert_in(f"use http://127.0.0.1:{p.port}", step["fix"], run, "fix")


# --------------------------------------------------------------------------- client certificates

def client_cert_server(scripted, pki, tls12=False):  # noqa: F811 - scripted is the fixture's maker
    server_cert, server_key = pki["proxy"].leaf("mtls-server")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(server_cert, server_key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(str(pki["clients"].pem))
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    # Behind the certificate it lets everything through: a 200 proves the certificate was sent.
    return scripted(lambda method, target, auth, count: (200, [("Via", "1.1 mtls")], b"ok"), tls_context=ctx)


@pytest.mark.parametrize("tls12", [False, True], ids=["tls1.3", "tls1.2"])
def test_a_required_client_certificate_says_to_pass_proxy_cert(scripted, pki, home, tls12):  # noqa: F811
    p = client_cert_server(scripted, pki, tls12)
    run = run_doctor("--proxy", https_url(p.port), "--proxy-cacert", pki["proxy"].pem,
                     "--target", "http://origin.test/x", home=home)
    report = assert_result(run, "auth-failed", 2, "no-credentials")
    # TLS 1.3 finishes the client's handshake before the proxy judges it: the first request
    # fails. TLS 1.2 shows the proxy's CertificateRequest before the handshake fails.
    step = assert_finding(run, "reachability" if tls12 else "challenge", "proxy-tls-client-certificate-required")
    assert_in("requires a TLS client certificate", step["message"], run, "message")
    assert_in("--proxy-cert FILE --proxy-key FILE", step["fix"], run, "fix")
    assert report["authentication"]["proxy_reason"] == ("handshake_failure" if tls12 else "certificate_required"), \
        run.describe()
    if tls12:
        assert_in("asked for one", step["message"], run, "message")
    assert p.seen == [], "no request may reach the proxy without the certificate"


@pytest.mark.parametrize("tls12", [False, True], ids=["tls1.3", "tls1.2"])
def test_a_client_certificate_from_another_ca_is_refused(scripted, pki, home, tls12):  # noqa: F811
    p = client_cert_server(scripted, pki, tls12)
    cert, key = pki["stranger"].leaf("stranger-client", dns=(), ips=(), client=True)
    run = run_doctor("--proxy", https_url(p.port), "--proxy-cacert", pki["proxy"].pem,
                     "--proxy-cert", cert, "--proxy-key", key, "--target", "http://origin.test/x", home=home)
    report = assert_result(run, "auth-failed", 2, "rejected")
    step = assert_finding(run, "reachability" if tls12 else "challenge", "proxy-tls-client-certificate-refused")
    assert_in(f"refused this client's certificate (--proxy-cert {cert})", step["message"], run, "message")
    assert report["authentication"]["proxy_reason"] == "unknown_ca", run.describe()
    assert_in("does not trust the CA", step["message"], run, "message")
    assert_no_key(run, key)


def test_an_accepted_client_certificate_lets_doctor_through(scripted, pki, home):  # noqa: F811
    p = client_cert_server(scripted, pki)
    cert, key = pki["clients"].leaf("good-client", dns=(), ips=(), client=True)
    run = run_doctor("--proxy", https_url(p.port), "--proxy-cacert", pki["proxy"].pem,
                     "--proxy-cert", cert, "--proxy-key", key, "--target", "http://origin.test/x", home=home)
    assert_result(run, "ok", 0, "not-required")
    assert run.step("configuration")["details"]["proxy_key"] == key, run.describe()
    assert p.seen, run.describe()
    assert_no_key(run, key)
    # The text output neither.
    text = run_doctor("--proxy", https_url(p.port), "--proxy-cacert", pki["proxy"].pem,
                      "--proxy-cert", cert, "--proxy-key", key, "--target", "http://origin.test/x",
                      as_json=False, home=home)
    assert text.returncode == 0, text.describe()
    assert_no_key(text, key)


def test_a_key_that_is_not_the_certificates_is_a_configuration_error(scripted, pki, home):  # noqa: F811
    p = client_cert_server(scripted, pki)
    cert, _ = pki["clients"].leaf("client-a", dns=(), ips=(), client=True)
    _, other_key = pki["clients"].leaf("client-b", dns=(), ips=(), client=True)
    run = run_doctor("--proxy", https_url(p.port), "--proxy-cacert", pki["proxy"].pem,
                     "--proxy-cert", cert, "--proxy-key", other_key, "--target", "http://origin.test/x", home=home)
    assert_result(run, "config-error", 1, None)
    assert_in("is not the key of the certificate", run.step("reachability")["message"], run, "message")
    assert_no_key(run, other_key)
    assert p.seen == [], run.describe()


# --------------------------------------------------------------------------- other servers

@pytest.fixture
def answers_400_at_once():
    """A plain server that answers whatever arrives with a 400 at once, as many HTTP servers do."""
    import socket
    import threading
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    lsock.settimeout(0.2)
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except OSError:
                continue
            with conn:
                try:
                    conn.settimeout(2)
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield lsock.getsockname()[1]
    stop.set()
    lsock.close()
    thread.join(2)


def test_a_clienthello_answered_with_http_text_says_use_http(answers_400_at_once, pki, home):
    run = run_doctor("--proxy", https_url(answers_400_at_once), "--proxy-cacert", pki["proxy"].pem,
                     "--target", "http://origin.test/x", home=home)
    assert_result(run, "config-error", 1, None)
    step = assert_finding(run, "reachability", "proxy-speaks-plain-http")
    assert_in('answered the TLS handshake in plain HTTP ("HTTP/1.1 400 Bad Request")', step["message"], run,
              "message")
    assert step["details"]["peer_first_line"] == "HTTP/1.1 400 Bad Request", run.describe()


def test_plain_http_to_another_tls_server_says_use_https(scripted, pki, home):  # noqa: F811
    server_cert, server_key = pki["proxy"].leaf("plain-to-openssl")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(server_cert, server_key)
    p = scripted(lambda method, target, auth, count: (200, [], b"ok"), tls_context=ctx)
    run = run_doctor("--proxy", f"http://{USER}:{PASSWORD}@127.0.0.1:{p.port}",
                     "--target", "http://origin.test/x", home=home)
    assert_result(run, "config-error", 1, None)
    step = assert_finding(run, "challenge", "proxy-speaks-tls")
    # OpenSSL resets a connection that starts with "GET": the TLS handshake on a second one is
    # the evidence.
    assert_in("answered a TLS handshake on a second connection", step["message"], run, "message")
    assert_in(f"use https://127.0.0.1:{p.port}", step["fix"], run, "fix")
