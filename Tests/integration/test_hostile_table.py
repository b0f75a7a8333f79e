"""A table of hostile and malformed requests (issue 6: at least 150), each sent over a raw
socket to the real binary on a fresh connection. For each: the expected status, whether the
connection must close, that nothing reached the origin when the request was refused, and that
a normal request on a fresh connection still works afterwards (the proxy is alive and sane).

Cases are generated from small lists so that every framing conflict is tried with several
methods and spellings; ids say what each case is.
"""

from __future__ import annotations

import itertools

import pytest

from portcullis_helpers import basic

AUTH = f"Proxy-Authorization: {basic()}\r\n"
CLOSE, KEEP = True, False

# (id, raw request with {o} = origin authority, expected status, connection must close)
CASES: list[tuple[str, str, int, bool]] = []


def case(name: str, raw: str, status: int, close: bool = CLOSE):
    CASES.append((name, raw, status, close))


def post(fields: str, body: str = "", method: str = "POST", version: str = "HTTP/1.1") -> str:
    return f"{method} http://{{o}}/upload {version}\r\nHost: {{o}}\r\n{AUTH}{fields}\r\n{body}"


# Framing conflicts (request smuggling): every method that may carry a body, several spellings.
conflicts = {
    "cl-te": "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
    "te-cl": "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
    "cl-TE-upper": "Content-Length: 4\r\nTRANSFER-ENCODING: CHUNKED\r\n",
    "cl-cl-differ": "Content-Length: 4\r\nContent-Length: 5\r\n",
    "cl-list-differ": "Content-Length: 4, 5\r\n",
    "cl-negative": "Content-Length: -4\r\n",
    "cl-plus": "Content-Length: +4\r\n",
    "cl-hex": "Content-Length: 0x4\r\n",
    "cl-space-inside": "Content-Length: 4 4\r\n",
    "cl-empty": "Content-Length: \r\n",
    "cl-huge": "Content-Length: 99999999999999999999999\r\n",
    "te-gzip-last": "Transfer-Encoding: chunked, gzip\r\n",
    "te-identity": "Transfer-Encoding: identity\r\n",
    "te-chunked-twice": "Transfer-Encoding: chunked, chunked\r\n",
    "te-two-lines": "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    "te-quoted": 'Transfer-Encoding: "chunked"\r\n',
    "te-empty": "Transfer-Encoding: \r\n",
    "te-vtab": "Transfer-Encoding: \x0bchunked\r\n",
    "te-space-before-colon": "Transfer-Encoding : chunked\r\n",
    "cl-space-before-colon": "Content-Length : 4\r\n",
    "te-obs-fold": "X-A: 1\r\n Transfer-Encoding: chunked\r\n",
    "te-tab-fold": "X-A: 1\r\n\tContent-Length: 4\r\n",
}
for (name, fields), method in itertools.product(conflicts.items(), ["POST", "PUT", "PATCH", "GET", "DELETE"]):
    case(f"framing-{name}-{method}", post(fields, "0\r\n\r\n", method), 400)

# Transfer-Encoding in HTTP/1.0 (RFC 9112 §6.1: faulty framing).
for method in ["POST", "PUT", "GET"]:
    case(f"te-in-http10-{method}", f"{method} http://{{o}}/upload HTTP/1.0\r\n{AUTH}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400)

# Header syntax.
bad_fields = {
    "nul-in-value": "X-A: a\x00b\r\n",
    "bare-cr-in-value": "X-A: a\rb\r\n",
    "bare-lf-line": "X-A: a\nX-B: b\r\n",
    "del-in-value": "X-A: a\x7fb\r\n",
    "esc-in-value": "X-A: a\x1bb\r\n",
    "empty-name": ": v\r\n",
    "space-in-name": "X A: v\r\n",
    "no-colon": "X-A v\r\n",
    "paren-in-name": "X(A): v\r\n",
    "at-in-name": "X@A: v\r\n",
    "slash-in-name": "X/A: v\r\n",
    "leading-space-line": " X-A: v\r\n",
    "two-hosts": "Host: evil.example\r\n",
}
for name, fields in bad_fields.items():
    for method in ["GET", "POST"]:
        case(f"header-{name}-{method}", post(fields, "", method), 400)

# Request lines.
lines = {
    "double-space-after-method": ("GET  http://{o}/ HTTP/1.1", 400),
    "double-space-before-version": ("GET http://{o}/  HTTP/1.1", 400),
    "tab-separator": ("GET\thttp://{o}/ HTTP/1.1", 400),
    "lowercase-version": ("GET http://{o}/ http/1.1", 400),
    "version-no-minor": ("GET http://{o}/ HTTP/1", 400),
    "version-junk": ("GET http://{o}/ HTTP/1.1x", 400),
    "trailing-space": ("GET http://{o}/ HTTP/1.1 ", 400),
    "http09": ("GET /", 400),
    "no-target": ("GET HTTP/1.1", 400),
    "method-with-slash": ("GE/T http://{o}/ HTTP/1.1", 400),
    "method-nul": ("G\x00T http://{o}/ HTTP/1.1", 400),
    "target-del": ("GET http://{o}/\x7f HTTP/1.1", 400),
    "target-nul": ("GET http://{o}/\x00 HTTP/1.1", 400),
    "http2-version": ("GET http://{o}/ HTTP/2.0", 505),
    "http12-version": ("GET http://{o}/ HTTP/1.2", 505),
    "http3-version": ("GET http://{o}/ HTTP/3.0", 505),
    "http0-version": ("GET http://{o}/ HTTP/0.9", 505),
    "pri-preface": ("PRI * HTTP/2.0", 505),
}
for name, (line, status) in lines.items():
    case(f"line-{name}", f"{line}\r\nHost: {{o}}\r\n{AUTH}\r\n", status)
    case(f"line-{name}-no-host", f"{line}\r\n{AUTH}\r\n", status)

# Targets a forward proxy must refuse (parsed fine, so the connection may stay open).
targets = {
    "origin-form": "/text",
    "asterisk": "*",
    "userinfo": "http://user:pw@{o}/",
    "https-scheme": "https://{o}/",
    "ftp-scheme": "ftp://{o}/",
    "no-host": "http:///x",
    "port-zero": "http://127.0.0.1:0/",
    "port-too-big": "http://127.0.0.1:65536/",
    "port-letters": "http://127.0.0.1:8a/",
    "relative-no-slash": "text",
}
for name, target in targets.items():
    for method in ["GET", "HEAD", "OPTIONS"]:
        case(f"target-{name}-{method}", f"{method} {target} HTTP/1.1\r\nHost: {{o}}\r\n{AUTH}\r\n", 400, KEEP)

# CONNECT targets.
for name, target in {"no-port": "{host}", "path": "{o}/x", "scheme": "http://{o}", "empty-port": "{host}:"}.items():
    case(f"connect-{name}", f"CONNECT {target} HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n", 400, KEEP)

# Bad chunked bodies after a good head.
chunk_bodies = {
    "size-not-hex": "zz\r\n",
    "size-negative": "-1\r\n",
    "size-overflow": "10000000000000000\r\n",
    "data-no-crlf": "3\r\nabcXY",
    "bare-lf-size": "3\nabc\r\n",
    "size-empty": "\r\n",
}
for name, body in chunk_bodies.items():
    for method in ["POST", "PUT"]:
        case(f"chunked-{name}-{method}", post("Transfer-Encoding: chunked\r\n", body, method), 400)

# Sizes.
case("head-too-large", f"GET http://{{o}}/text HTTP/1.1\r\nHost: {{o}}\r\n{AUTH}X-Big: {'a' * 70000}\r\n\r\n", 431)
case("too-many-fields", f"GET http://{{o}}/text HTTP/1.1\r\nHost: {{o}}\r\n{AUTH}" + "X-F: v\r\n" * 101 + "\r\n", 431)
case("line-too-long", "GET http://{o}/" + "a" * 20000 + " HTTP/1.1\r\nHost: {o}\r\n\r\n", 414)

# Credentials the gate refuses (407, connection kept).
for name, value in {
    "basic-bad-base64": "Basic !!!",
    "basic-no-colon": "Basic YWxpY2U=",
    "basic-padding-wrong": "Basic YWxpY2U6czNjcmV0==",
    "scheme-only": "Basic",
    "unknown-scheme": "Bearer abc",
    "nul-in-token": "Basic YWxp\x00Y2U=",
}.items():
    case(f"auth-{name}", f"GET http://{{o}}/text HTTP/1.1\r\nHost: {{o}}\r\nProxy-Authorization: {value}\r\n\r\n",
         400 if "\x00" in value else 407, CLOSE if "\x00" in value else KEEP)


def test_the_table_has_at_least_150_cases():
    assert len(CASES) >= 150, len(CASES)
    assert len({c[0] for c in CASES}) == len(CASES), "duplicate case ids"


@pytest.fixture(scope="module")
def table_proxy(module_launcher):
    return module_launcher.start("--lockout-threshold", "100000")


@pytest.mark.parametrize("name,raw,status,close", CASES, ids=[c[0] for c in CASES])
def test_hostile_request(table_proxy, module_origin, name, raw, status, close):
    authority = module_origin.authority
    data = raw.replace("{o}", authority).replace("{host}", authority.rsplit(":", 1)[0]).encode("latin-1")
    before = len(module_origin.requests)
    with table_proxy.conn(timeout=10) as c:
        c.send(data)
        r = c.read_response()
        assert r.status == status, f"{name}: {r.describe()}"
        assert r.header("Proxy-Status"), f"{name}: no Proxy-Status on a proxy-generated answer"
        if close:
            assert (r.header("Connection") or "").lower() == "close", f"{name}: {r.describe()}"
            c.wait_eof()
    assert len(module_origin.requests) == before, f"{name}: a refused request reached the origin"
    with table_proxy.conn() as c:
        ok = c.request("GET", f"{module_origin.base}/text", [("Proxy-Authorization", basic())])
        assert ok.status == 200, f"after {name}: {ok.describe()}"


def test_the_fuzz_corpus_replays_cleanly():
    """Every committed fuzz seed (and every crash once fixed) goes through the parsers in the
    ordinary suite too, via the replay mode of the portcullis-fuzz binary."""
    import os
    import subprocess
    from pathlib import Path
    from portcullis_helpers import PORTCULLIS_BIN
    replay = Path(PORTCULLIS_BIN).with_name("portcullis-fuzz")
    fuzz = Path(__file__).resolve().parents[2] / "Fuzz"
    assert replay.exists(), f"{replay} missing: `swift build` builds it"
    # The parser seeds, and the connection target's scripts (its folder name selects it).
    corpora = [fuzz / "corpus", fuzz / "connection-corpus"]
    out = subprocess.run([str(replay)] + [str(c) for c in corpora], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"replayed {sum(len(os.listdir(c)) for c in corpora)} inputs" in out.stdout
