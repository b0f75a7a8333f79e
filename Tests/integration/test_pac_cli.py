"""The `portcullis pac` command line beyond the helper tables of test_pac_cases.py:

- `pac explain`, as text and as JSON: every helper call in order with its arguments and answer,
  alerts, the 1,000-call trace limit, PACs without calls, PACs that throw;
- `pac test --json`: plain URLs, `--expect` with a mismatch, a file that does not compile;
- PAC files fetched from a local http:// and https:// server (404, more than 8 MiB, a
  certificate the fetch does not trust), and no password of a PAC URL in any output;
- usage errors (exit 64, the option named);
- the options that make a result independent of the machine: --my-ip, --resolve, --no-dns,
  --now;
- `pac generate` from a YAML file and from the command line, the generated PAC checked by
  evaluating it with `pac test`.

Every run passes --no-dns (or names no host at all), so nothing but 127.0.0.1 is contacted.
"""

from __future__ import annotations

import http.server
import json
import socketserver
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from portcullis_helpers import PORTCULLIS_BIN, clean_env, free_port

USAGE_EXIT = 64  # ArgumentParser's ValidationError (EX_USAGE)
MAX_PAC_BYTES = 8 << 20


@dataclass
class Run:
    args: list
    code: int
    out: str
    err: str

    def describe(self) -> str:
        return (f"$ portcullis {' '.join(self.args)}\nexit {self.code}\n"
                f"--- stdout\n{self.out[-6000:]}\n--- stderr\n{self.err[-6000:]}")

    def json(self):
        try:
            return json.loads(self.out)
        except ValueError as e:
            raise AssertionError(f"stdout is not JSON ({e}):\n{self.describe()}") from None


def portcullis(tmp_path: Path, *args, timeout: float = 30) -> Run:
    args = [str(a) for a in args]
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    try:
        r = subprocess.run([PORTCULLIS_BIN] + args, capture_output=True, timeout=timeout,
                           env=clean_env(home), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"`portcullis {' '.join(args)}` still running after {timeout} s\n"
                    f"stdout: {(e.stdout or b'')[-2000:]!r}\nstderr: {(e.stderr or b'')[-2000:]!r}")
    return Run(args, r.returncode, r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace"))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ PAC files used below

CORP_PAC = """\
function FindProxyForURL(url, host) {
    if (isPlainHostName(host)) return "DIRECT";
    if (dnsDomainIs(host, ".corp.example") && isInNet(host, "10.0.0.0", "255.0.0.0")) {
        alert("internal " + host);
        if (shExpMatch(url, "*/admin/*")) return "PROXY admin.corp.example:8080";
        return "DIRECT";
    }
    return "PROXY fallback.example:3128; DIRECT";
}
"""

THROWING_PAC = """\
function FindProxyForURL(url, host) {
    if (isPlainHostName(host)) return "DIRECT";
    if (host == "bad.test") throw new Error("boom for " + host);
    return "PROXY p.example:1";
}
"""

LOOP_PAC = """\
function FindProxyForURL(url, host) {
    var plain = 0;
    for (var i = 0; i < 1234; i++) { if (isPlainHostName("h" + i)) plain++; }
    return "PROXY p" + plain + ".example:1";
}
"""

# Does not compile: "var" without a name, line 2, column 9.
SYNTAX_ERROR_PAC = """\
function FindProxyForURL(url, host) {
    var = "DIRECT";
}
"""
SYNTAX_ERROR = "syntax error at line 2, column 9: SyntaxError: invalid variable declaration"

SIMPLE_PAC = 'function FindProxyForURL(url, host) { return host == "in.test" ? "DIRECT" : "PROXY p.example:1"; }\n'


# ------------------------------------------------------------------ pac explain (text)

EXPLAIN_CASES = {
    "internal-admin": (
        ["--resolve", "api.corp.example=10.1.2.3"], "http://api.corp.example/admin/users",
        "url:     http://api.corp.example/admin/users\n"
        "host:    api.corp.example\n"
        "result:  PROXY admin.corp.example:8080\n"
        "calls:\n"
        '  1  isPlainHostName("api.corp.example") → false\n'
        '  2  dnsDomainIs("api.corp.example", ".corp.example") → true\n'
        '  3  isInNet("api.corp.example", "10.0.0.0", "255.0.0.0") → true\n'
        '  4  alert("internal api.corp.example") → undefined\n'
        '  5  shExpMatch("http://api.corp.example/admin/users", "*/admin/*") → true\n'
        "alert:   internal api.corp.example\n"),
    "internal-other": (
        ["--resolve", "API.Corp.Example=10.200.0.1"], "http://API.corp.example:8080/index.html",
        "url:     http://API.corp.example:8080/index.html\n"
        "host:    api.corp.example\n"
        "result:  DIRECT\n"
        "calls:\n"
        '  1  isPlainHostName("api.corp.example") → false\n'
        '  2  dnsDomainIs("api.corp.example", ".corp.example") → true\n'
        '  3  isInNet("api.corp.example", "10.0.0.0", "255.0.0.0") → true\n'
        '  4  alert("internal api.corp.example") → undefined\n'
        '  5  shExpMatch("http://API.corp.example:8080/index.html", "*/admin/*") → false\n'
        "alert:   internal api.corp.example\n"),
    "corp-name-outside-the-network": (
        ["--resolve", "dmz.corp.example=192.0.2.10"], "http://dmz.corp.example/admin/",
        "url:     http://dmz.corp.example/admin/\n"
        "host:    dmz.corp.example\n"
        "result:  PROXY fallback.example:3128; DIRECT\n"
        "calls:\n"
        '  1  isPlainHostName("dmz.corp.example") → false\n'
        '  2  dnsDomainIs("dmz.corp.example", ".corp.example") → true\n'
        '  3  isInNet("dmz.corp.example", "10.0.0.0", "255.0.0.0") → false\n'),
    "unresolvable-corp-name": (
        [], "http://gone.corp.example/",
        "url:     http://gone.corp.example/\n"
        "host:    gone.corp.example\n"
        "result:  PROXY fallback.example:3128; DIRECT\n"
        "calls:\n"
        '  1  isPlainHostName("gone.corp.example") → false\n'
        '  2  dnsDomainIs("gone.corp.example", ".corp.example") → true\n'
        '  3  isInNet("gone.corp.example", "10.0.0.0", "255.0.0.0") → false\n'),
    "plain-host": (
        [], "http://intranet/",
        "url:     http://intranet/\n"
        "host:    intranet\n"
        "result:  DIRECT\n"
        "calls:\n"
        '  1  isPlainHostName("intranet") → true\n'),
}


@pytest.mark.parametrize("case", EXPLAIN_CASES, ids=str)
def test_explain_lists_the_helper_calls_in_order(tmp_path, case):
    options, url, expected = EXPLAIN_CASES[case]
    pac = write(tmp_path, "corp.pac", CORP_PAC)
    r = portcullis(tmp_path, "pac", "explain", "--pac", pac, "--no-dns", *options, url)
    assert r.code == 0, r.describe()
    assert r.out == expected, r.describe()
    assert r.err == "", r.describe()


def test_explain_says_when_no_helper_was_called(tmp_path):
    pac = write(tmp_path, "const.pac", 'function FindProxyForURL(url, host) { return "PROXY a.example:1"; }\n')
    r = portcullis(tmp_path, "pac", "explain", "--pac", pac, "--no-dns", "https://www.example.com/")
    assert r.code == 0, r.describe()
    assert r.out == ("url:     https://www.example.com/\n"
                     "host:    www.example.com\n"
                     "result:  PROXY a.example:1\n"
                     "calls:   none (the answer does not depend on any helper)\n"), r.describe()


def test_explain_of_a_pac_that_throws_exits_1_with_the_error(tmp_path):
    pac = write(tmp_path, "throws.pac", THROWING_PAC)
    r = portcullis(tmp_path, "pac", "explain", "--pac", pac, "--no-dns", "http://bad.test/x")
    assert r.code == 1, r.describe()
    assert r.out == ("url:     http://bad.test/x\n"
                     "host:    bad.test\n"
                     "error:   the script threw Error: boom for bad.test (line 3)\n"
                     "calls before it:\n"
                     "  1  isPlainHostName(\"bad.test\") → false\n"), r.describe()
    # The same file answers for other hosts.
    r = portcullis(tmp_path, "pac", "explain", "--pac", pac, "--no-dns", "http://good.test/")
    assert r.code == 0, r.describe()
    assert "result:  PROXY p.example:1\n" in r.out, r.describe()


def test_explain_of_a_file_that_does_not_compile_exits_1(tmp_path):
    pac = write(tmp_path, "syntax.pac", SYNTAX_ERROR_PAC)
    r = portcullis(tmp_path, "pac", "explain", "--pac", pac, "--no-dns", "http://x.test/")
    assert r.code == 1, r.describe()
    assert r.out == f"url:     http://x.test/\nhost:    x.test\nerror:   {SYNTAX_ERROR}\n", r.describe()


def test_explain_text_lists_1000_calls_then_counts_the_rest(tmp_path):
    pac = write(tmp_path, "loop.pac", LOOP_PAC)
    r = portcullis(tmp_path, "pac", "explain", "--pac", pac, "--no-dns", "http://x.test/")
    assert r.code == 0, r.describe()
    lines = r.out.splitlines()
    assert lines[:4] == ["url:     http://x.test/", "host:    x.test", "result:  PROXY p1234.example:1", "calls:"], \
        r.describe()
    calls = lines[4:-1]
    assert len(calls) == 1000, r.describe()
    # Numbers right-aligned to the widest (4 digits).
    assert calls[0] == '     1  isPlainHostName("h0") → true', r.describe()
    assert calls[9] == '    10  isPlainHostName("h9") → true', r.describe()
    assert calls[999] == '  1000  isPlainHostName("h999") → true', r.describe()
    assert lines[-1] == "  … and 234 more calls, not listed", r.describe()


# ------------------------------------------------------------------ pac explain --json

def test_explain_json_gives_calls_arguments_and_answers(tmp_path):
    pac = write(tmp_path, "corp.pac", CORP_PAC)
    r = portcullis(tmp_path, "pac", "explain", "--json", "--pac", pac, "--no-dns",
                   "--resolve", "api.corp.example=10.1.2.3", "http://api.corp.example/admin/users")
    assert r.code == 0, r.describe()
    assert r.json() == {
        "url": "http://api.corp.example/admin/users",
        "host": "api.corp.example",
        "result": "PROXY admin.corp.example:8080",
        "calls": [
            {"helper": "isPlainHostName", "arguments": ['"api.corp.example"'], "answer": "false"},
            {"helper": "dnsDomainIs", "arguments": ['"api.corp.example"', '".corp.example"'], "answer": "true"},
            {"helper": "isInNet", "arguments": ['"api.corp.example"', '"10.0.0.0"', '"255.0.0.0"'],
             "answer": "true"},
            {"helper": "alert", "arguments": ['"internal api.corp.example"'], "answer": "undefined"},
            {"helper": "shExpMatch", "arguments": ['"http://api.corp.example/admin/users"', '"*/admin/*"'],
             "answer": "true"},
        ],
        "alerts": ["internal api.corp.example"],
        "untraced_calls": 0,
    }, r.describe()


def test_explain_json_of_a_pac_that_throws(tmp_path):
    pac = write(tmp_path, "throws.pac", THROWING_PAC)
    r = portcullis(tmp_path, "pac", "explain", "--json", "--pac", pac, "--no-dns", "http://bad.test/")
    assert r.code == 1, r.describe()
    assert r.json() == {
        "url": "http://bad.test/",
        "host": "bad.test",
        "error": {"kind": "exception", "message": "the script threw Error: boom for bad.test (line 3)"},
        # The calls that led up to the exception.
        "calls": [{"helper": "isPlainHostName", "arguments": ['"bad.test"'], "answer": "false"}],
        "alerts": [],
        "untraced_calls": 0,
    }, r.describe()


def test_explain_json_lists_1000_calls_and_counts_the_rest(tmp_path):
    pac = write(tmp_path, "loop.pac", LOOP_PAC)
    r = portcullis(tmp_path, "pac", "explain", "--json", "--pac", pac, "--no-dns", "http://x.test/")
    assert r.code == 0, r.describe()
    doc = r.json()
    assert doc["result"] == "PROXY p1234.example:1", r.describe()
    assert len(doc["calls"]) == 1000, len(doc["calls"])
    assert doc["calls"] == [
        {"helper": "isPlainHostName", "arguments": [f'"h{i}"'], "answer": "true"} for i in range(1000)]
    assert doc["untraced_calls"] == 234, doc["untraced_calls"]
    assert doc["alerts"] == []


# ------------------------------------------------------------------ pac test --json

def test_pac_test_json_for_urls(tmp_path):
    pac = write(tmp_path, "throws.pac", THROWING_PAC)
    r = portcullis(tmp_path, "pac", "test", "--json", "--pac", pac, "--no-dns",
                   "http://intranet/", "https://www.example.com/")
    assert r.code == 0, r.describe()
    assert r.json() == {
        "pac": str(pac),
        "results": [
            {"url": "http://intranet/", "result": "DIRECT"},
            {"url": "https://www.example.com/", "result": "PROXY p.example:1"},
        ],
        "exit": 0,
    }, r.describe()


def test_pac_test_json_for_a_url_that_throws(tmp_path):
    pac = write(tmp_path, "throws.pac", THROWING_PAC)
    r = portcullis(tmp_path, "pac", "test", "--json", "--pac", pac, "--no-dns", "http://ok.test/", "http://bad.test/")
    assert r.code == 1, r.describe()
    assert r.json() == {
        "pac": str(pac),
        "results": [
            {"url": "http://ok.test/", "result": "PROXY p.example:1"},
            {"url": "http://bad.test/",
             "error": {"kind": "exception", "message": "the script threw Error: boom for bad.test (line 3)"}},
        ],
        "exit": 1,
    }, r.describe()
    # The text form: one line per URL, the failure named.
    r = portcullis(tmp_path, "pac", "test", "--pac", pac, "--no-dns", "http://ok.test/", "http://bad.test/")
    assert r.code == 1, r.describe()
    assert r.out == ("http://ok.test/\tPROXY p.example:1\n"
                     "http://bad.test/\terror: the script threw Error: boom for bad.test (line 3)\n"), r.describe()


def test_pac_test_json_with_expect_and_one_mismatch(tmp_path):
    pac = write(tmp_path, "corp.pac", CORP_PAC)
    table = write(tmp_path, "expect.tsv",
                  "# url\texpected\n"
                  "http://intranet/\tDIRECT\n"
                  "\n"
                  "http://api.corp.example/admin/\tPROXY admin.corp.example:8080\n"
                  "http://www.example.com/\tPROXY fallback.example:3128;DIRECT\n"   # equal entry by entry
                  "http://dmz.corp.example/\tDIRECT\n")                             # the mismatch
    args = ["--pac", pac, "--no-dns", "--resolve", "api.corp.example=10.1.2.3",
            "--resolve", "dmz.corp.example=192.0.2.10", "--expect", table]
    r = portcullis(tmp_path, "pac", "test", "--json", *args)
    assert r.code == 2, r.describe()
    assert r.json() == {
        "pac": str(pac),
        "results": [
            {"url": "http://intranet/", "result": "DIRECT", "expected": "DIRECT", "as_expected": True},
            {"url": "http://api.corp.example/admin/", "result": "PROXY admin.corp.example:8080",
             "expected": "PROXY admin.corp.example:8080", "as_expected": True},
            {"url": "http://www.example.com/", "result": "PROXY fallback.example:3128; DIRECT",
             "expected": "PROXY fallback.example:3128;DIRECT", "as_expected": True},
            {"url": "http://dmz.corp.example/", "result": "PROXY fallback.example:3128; DIRECT",
             "expected": "DIRECT", "as_expected": False},
        ],
        "exit": 2,
    }, r.describe()
    r = portcullis(tmp_path, "pac", "test", *args)
    assert r.code == 2, r.describe()
    assert r.out == ("mismatch  http://dmz.corp.example/\n"
                     "  expected  DIRECT\n"
                     "  actual    PROXY fallback.example:3128; DIRECT\n"
                     "4 URLs: 3 as expected, 1 mismatched\n"), r.describe()


def test_pac_test_json_for_a_file_that_does_not_compile(tmp_path):
    pac = write(tmp_path, "syntax.pac", SYNTAX_ERROR_PAC)
    r = portcullis(tmp_path, "pac", "test", "--json", "--pac", pac, "--no-dns", "http://x.test/", "http://y.test/")
    assert r.code == 1, r.describe()
    failure = {"kind": "syntax-error", "message": SYNTAX_ERROR}
    assert r.json() == {
        "pac": str(pac),
        "load_error": failure,
        "results": [{"url": "http://x.test/", "error": failure}, {"url": "http://y.test/", "error": failure}],
        "exit": 1,
    }, r.describe()
    r = portcullis(tmp_path, "pac", "test", "--pac", pac, "--no-dns", "http://x.test/")
    assert r.code == 1, r.describe()
    assert r.out == "", r.describe()
    assert r.err == f"portcullis pac: {pac}: {SYNTAX_ERROR}\n", r.describe()


def test_syntax_error_of_a_stray_closing_brace_names_its_line(tmp_path):
    """V8 (node --check) puts this error at line 4, column 1: the "}" that closes nothing.
    Blank lines after it must not move the reported position."""
    pac = write(tmp_path, "stray.pac",
                'function FindProxyForURL(url, host) {\n    return "DIRECT";\n}\n}\n\n\n')
    r = portcullis(tmp_path, "pac", "test", "--json", "--pac", pac, "--no-dns", "http://x.test/")
    assert r.code == 1, r.describe()
    load_error = r.json().get("load_error") or {}
    assert load_error.get("kind") == "syntax-error", r.describe()
    assert load_error.get("message", "").startswith("syntax error at line 4, column 1:"), r.describe()


# ------------------------------------------------------------------ PAC files over http(s)

class _PACHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        with self.server.lock:
            self.server.requests.append((self.path, dict(self.headers.items())))
        status, body = self.server.files.get(self.path.split("?")[0], (404, b"no such file\n"))
        self.send_response(status)
        self.send_header("Content-Type", "application/x-ns-proxy-autoconfig")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass  # the client stopped reading (a body past its limit)


class PACServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """Serves `files` (path -> (status, body)) on 127.0.0.1; over TLS when given a cert."""
    daemon_threads = True
    block_on_close = False

    def __init__(self, files: dict, cert: tuple[str, str] | None = None):
        self.files = files
        self.lock = threading.Lock()
        self.requests: list = []
        super().__init__(("127.0.0.1", 0), _PACHandler)
        self.port = self.server_address[1]
        self.ctx = None
        if cert:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(*cert)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def get_request(self):
        sock, addr = super().get_request()
        sock.settimeout(10)
        return sock, addr

    def finish_request(self, request, client_address):
        if self.ctx is None:
            return super().finish_request(request, client_address)
        try:  # the handshake in the handler thread, not in the accept loop
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()

    def url(self, path: str, userinfo: str = "") -> str:
        scheme = "https" if self.ctx else "http"
        return f"{scheme}://{userinfo}127.0.0.1:{self.port}{path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


def _padded_pac(size: int) -> bytes:
    """A working PAC file of exactly `size` bytes (a long comment, then SIMPLE_PAC)."""
    pac = SIMPLE_PAC.encode()
    return b"//" + b"x" * (size - len(pac) - 3) + b"\n" + pac


PAC_FILES = {
    "/proxy.pac": (200, SIMPLE_PAC.encode()),
    "/limit.pac": (200, _padded_pac(MAX_PAC_BYTES)),
    "/huge.pac": (200, _padded_pac(MAX_PAC_BYTES + 1)),
    "/gone.pac": (404, b"not here\n"),
}


@pytest.fixture(scope="module")
def pac_http():
    with PACServer(PAC_FILES) as server:
        yield server


@pytest.fixture(scope="module")
def pac_https(tls_cert):
    with PACServer(PAC_FILES, cert=tls_cert) as server:
        yield server


def test_pac_fetched_over_http(tmp_path, pac_http):
    url = pac_http.url("/proxy.pac")
    r = portcullis(tmp_path, "pac", "test", "--pac", url, "--no-dns", "http://in.test/", "http://out.test/")
    assert r.code == 0, r.describe()
    assert r.out == "http://in.test/\tDIRECT\nhttp://out.test/\tPROXY p.example:1\n", r.describe()
    path, headers = pac_http.requests[-1]
    assert path == "/proxy.pac"
    assert headers.get("Host") == f"127.0.0.1:{pac_http.port}", headers
    r = portcullis(tmp_path, "pac", "test", "--json", "--pac", url, "--no-dns", "http://in.test/")
    assert r.code == 0, r.describe()
    assert r.json() == {"pac": url, "results": [{"url": "http://in.test/", "result": "DIRECT"}], "exit": 0}


def test_pac_url_that_gives_404_exits_1_naming_the_status(tmp_path, pac_http):
    url = pac_http.url("/gone.pac")
    r = portcullis(tmp_path, "pac", "test", "--pac", url, "--no-dns", "http://in.test/")
    assert r.code == 1, r.describe()
    assert r.out == "", r.describe()
    assert r.err == f"portcullis pac: fetching {url} gave 404 Not Found, not 200\n", r.describe()
    r = portcullis(tmp_path, "pac", "test", "--json", "--pac", url, "--no-dns", "http://in.test/")
    assert r.code == 1, r.describe()
    assert r.json() == {
        "pac": url,
        "load_error": {"kind": "unreadable", "message": f"fetching {url} gave 404 Not Found, not 200"},
        "results": [],
        "exit": 1,
    }, r.describe()


def test_pac_body_of_8_mib_loads_and_one_byte_more_is_refused(tmp_path, pac_http):
    r = portcullis(tmp_path, "pac", "test", "--pac", pac_http.url("/limit.pac"), "--no-dns", "http://in.test/")
    assert r.code == 0, r.describe()
    assert r.out == "http://in.test/\tDIRECT\n", r.describe()
    r = portcullis(tmp_path, "pac", "test", "--json", "--pac", pac_http.url("/huge.pac"), "--no-dns",
                   "http://in.test/")
    assert r.code == 1, r.describe()
    load_error = r.json().get("load_error") or {}
    assert load_error.get("kind") == "too-large", r.describe()
    assert f"larger than the {MAX_PAC_BYTES} bytes a PAC file may have" in load_error.get("message", ""), r.describe()
    r = portcullis(tmp_path, "pac", "test", "--pac", pac_http.url("/huge.pac"), "--no-dns", "http://in.test/")
    assert r.code == 1, r.describe()
    assert r.out == "", r.describe()
    assert f"larger than the {MAX_PAC_BYTES} bytes a PAC file may have" in r.err, r.describe()


def test_pac_over_https_with_and_without_the_ca(tmp_path, pac_https, tls_cert):
    url = pac_https.url("/proxy.pac")
    r = portcullis(tmp_path, "pac", "test", "--pac", url, "--pac-cacert", tls_cert[0], "--no-dns",
                   "http://in.test/")
    assert r.code == 0, r.describe()
    assert r.out == "http://in.test/\tDIRECT\n", r.describe()
    r = portcullis(tmp_path, "pac", "test", "--pac", url, "--no-dns", "http://in.test/")
    assert r.code == 1, r.describe()
    assert r.out == "", r.describe()
    assert r.err.startswith(f"portcullis pac: cannot fetch {url}: "), r.describe()
    assert "certificate" in r.err and "not trusted" in r.err, r.describe()


# ------------------------------------------------------------------ no password in any output

PAC_PASSWORD = "Pac-Url-Pw-7f3a"
PAC_USERINFO = f"pacuser:{PAC_PASSWORD}@"


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("failure", ["404", "refused", "untrusted-certificate"])
def test_pac_url_password_is_not_shown_when_the_fetch_fails(tmp_path, pac_http, pac_https, failure, fmt):
    url = {
        "404": pac_http.url("/gone.pac", PAC_USERINFO),
        "refused": f"http://{PAC_USERINFO}127.0.0.1:{free_port()}/proxy.pac",
        "untrusted-certificate": pac_https.url("/proxy.pac", PAC_USERINFO),
    }[failure]
    r = portcullis(tmp_path, "pac", "test", *(["--json"] if fmt == "json" else []), "--pac", url, "--no-dns",
                   "http://in.test/")
    assert r.code == 1, r.describe()
    assert r.out or r.err, r.describe()
    assert PAC_PASSWORD not in r.out + r.err, f"the PAC URL's password is in the output:\n{r.describe()}"


def test_pac_url_password_is_not_shown_in_json_when_the_fetch_works(tmp_path, pac_http):
    url = pac_http.url("/proxy.pac", PAC_USERINFO)
    r = portcullis(tmp_path, "pac", "test", "--json", "--pac", url, "--no-dns", "http://in.test/")
    assert r.code == 0, r.describe()
    assert r.json()["results"] == [{"url": "http://in.test/", "result": "DIRECT"}], r.describe()
    assert PAC_PASSWORD not in r.out + r.err, f"the PAC URL's password is in the output:\n{r.describe()}"


# ------------------------------------------------------------------ usage errors

USAGE_CASES = {
    "now-without-offset": (["test", "--now", "2026-03-13T14:20:30", "http://x.test/"],
                           "Error: --now takes an ISO 8601 time with its offset"),
    "now-not-a-time": (["explain", "--now", "tomorrow", "http://x.test/"],
                       "Error: --now takes an ISO 8601 time with its offset"),
    "resolve-without-equals": (["test", "--resolve", "api.test", "http://x.test/"],
                               "Error: --resolve takes HOST=IP[,IP], not api.test"),
    "resolve-without-host": (["test", "--resolve", "=10.0.0.1", "http://x.test/"],
                             "Error: --resolve takes HOST=IP[,IP], not =10.0.0.1"),
    "resolve-bad-address": (["test", "--resolve", "api.test=10.0.0.1,10.0.0.999", "http://x.test/"],
                            "Error: --resolve api.test=10.0.0.1,10.0.0.999: 10.0.0.999 is not an IP address"),
    "my-ip-name": (["test", "--my-ip", "myhost.test", "http://x.test/"],
                   "Error: --my-ip myhost.test is not an IP address"),
    "my-ip-short": (["explain", "--my-ip", "10.0.0", "http://x.test/"],
                    "Error: --my-ip 10.0.0 is not an IP address"),
    "url-without-scheme": (["test", "www.example.com/"],
                           "Error: www.example.com/ is not a URL (scheme://host/…)"),
    "explain-url-without-scheme": (["explain", "intranet"], "Error: intranet is not a URL (scheme://host/…)"),
    "urls-and-expect": (["test", "--expect", "{table}", "http://x.test/"],
                        "Error: give URLs or --expect TABLE, not both"),
    "neither-urls-nor-expect": (["test"], "Error: give URLs, or --expect TABLE"),
    "time-limit-zero": (["test", "--time-limit", "0", "http://x.test/"], "Error: --time-limit takes 0 < seconds ≤ 60"),
}


@pytest.mark.parametrize("case", USAGE_CASES, ids=str)
def test_usage_errors_exit_64_and_name_the_option(tmp_path, case):
    args, message = USAGE_CASES[case]
    pac = write(tmp_path, "simple.pac", SIMPLE_PAC)
    table = write(tmp_path, "expect.tsv", "http://in.test/\tDIRECT\n")
    args = [a.replace("{table}", str(table)) for a in args]
    r = portcullis(tmp_path, "pac", args[0], "--pac", pac, "--no-dns", *args[1:])
    assert r.code == USAGE_EXIT, r.describe()
    assert r.out == "", r.describe()
    assert r.err.startswith(message), r.describe()


def test_url_without_scheme_in_an_expect_table_is_a_usage_error(tmp_path):
    pac = write(tmp_path, "simple.pac", SIMPLE_PAC)
    table = write(tmp_path, "expect.tsv", "http://in.test/\tDIRECT\nout.test\tPROXY p.example:1\n")
    r = portcullis(tmp_path, "pac", "test", "--pac", pac, "--no-dns", "--expect", table)
    assert r.code == USAGE_EXIT, r.describe()
    assert r.err.startswith("Error: out.test is not a URL"), r.describe()


# ------------------------------------------------------------------ reproducibility

ENV_PAC = """\
function FindProxyForURL(url, host) {
    myIpAddress(); myIpAddressEx();
    dnsResolve("Db.Corp.Test"); dnsResolveEx("db.corp.test");
    dnsResolve("unknown.test"); isResolvable("gone.test");
    dnsResolve("v6only.test"); dnsResolveEx("v6only.test");
    return "PROXY " + myIpAddress() + ":3128";
}
"""


def test_my_ip_resolve_and_no_dns_fix_every_answer(tmp_path):
    pac = write(tmp_path, "env.pac", ENV_PAC)
    args = ["pac", "explain", "--pac", pac, "--no-dns",
            "--my-ip", "2001:db8::7", "--my-ip", "192.0.2.7", "--my-ip", "198.51.100.9",
            "--resolve", "db.corp.test=10.1.2.3, 10.1.2.4", "--resolve", "gone.test=",
            "--resolve", "V6ONLY.test=2001:db8::42", "http://x.test/"]
    expected = ("url:     http://x.test/\n"
                "host:    x.test\n"
                "result:  PROXY 192.0.2.7:3128\n"
                "calls:\n"
                '  1  myIpAddress() → "192.0.2.7"\n'
                '  2  myIpAddressEx() → "2001:db8::7;192.0.2.7;198.51.100.9"\n'
                '  3  dnsResolve("Db.Corp.Test") → "10.1.2.3"\n'
                '  4  dnsResolveEx("db.corp.test") → "10.1.2.3;10.1.2.4"\n'
                '  5  dnsResolve("unknown.test") → null\n'
                '  6  isResolvable("gone.test") → false\n'
                '  7  dnsResolve("v6only.test") → null\n'
                '  8  dnsResolveEx("v6only.test") → "2001:db8::42"\n'
                '  9  myIpAddress() → "192.0.2.7"\n')
    first = portcullis(tmp_path, *args)
    assert first.code == 0, first.describe()
    assert first.out == expected, first.describe()
    second = portcullis(tmp_path, *args)
    assert second.out == first.out, second.describe()


def test_my_ip_ipv6_only_and_pac_test_agree(tmp_path):
    pac = write(tmp_path, "me.pac", 'function FindProxyForURL(url, host) {\n'
                                    '    return isInNet(myIpAddress(), "192.0.2.0", "255.255.255.0") ? "DIRECT" : '
                                    '"PROXY " + myIpAddressEx().replace(/:/g, "-") + ":1";\n}\n')
    r = portcullis(tmp_path, "pac", "test", "--pac", pac, "--no-dns", "--my-ip", "192.0.2.200", "http://x.test/")
    assert (r.code, r.out) == (0, "http://x.test/\tDIRECT\n"), r.describe()
    r = portcullis(tmp_path, "pac", "test", "--pac", pac, "--no-dns", "--my-ip", "198.51.100.1",
                   "--my-ip", "2001:db8::1", "http://x.test/")
    assert (r.code, r.out) == (0, "http://x.test/\tPROXY 198.51.100.1;2001-db8--1:1\n"), r.describe()


CLOCK_PAC = """\
function FindProxyForURL(url, host) {
    timeRange(14); timeRange(3); timeRange(8); timeRange(13, "GMT"); weekdayRange("SAT");
    return "PROXY t" + Date.now() + ".example:1";
}
"""


@pytest.mark.parametrize("now, local", [
    ("2026-03-13T14:20:30+01:00", {"14": "true", "3": "false", "8": "false", "SAT": "false"}),
    ("2026-03-14T03:20:30+14:00", {"14": "false", "3": "true", "8": "false", "SAT": "true"}),
    ("2026-03-13T08:20:30-05:00", {"14": "false", "3": "false", "8": "true", "SAT": "false"}),
    ("2026-03-13T13:20:30Z", {"14": "false", "3": "false", "8": "false", "SAT": "false"}),
])
def test_now_offset_is_the_local_time_zone(tmp_path, now, local):
    """Four spellings of one instant (13:20:30 UTC, a Friday): Date.now() and the GMT
    answers agree, the local hours and weekdays follow the offset."""
    pac = write(tmp_path, "clock.pac", CLOCK_PAC)
    r = portcullis(tmp_path, "pac", "explain", "--json", "--pac", pac, "--no-dns", "--now", now, "http://x.test/")
    assert r.code == 0, r.describe()
    doc = r.json()
    assert doc["result"] == "PROXY t1773408030000.example:1", r.describe()
    answers = [(c["helper"], c["arguments"], c["answer"]) for c in doc["calls"]]
    assert answers == [
        ("timeRange", ["14"], local["14"]),
        ("timeRange", ["3"], local["3"]),
        ("timeRange", ["8"], local["8"]),
        ("timeRange", ["13", '"GMT"'], "true"),
        ("weekdayRange", ['"SAT"'], local["SAT"]),
    ], r.describe()


# ------------------------------------------------------------------ pac generate

PROXY = "proxy.local:3128"
VIA_PROXY = f"PROXY {PROXY}"

GENERATE_YAML = """\
parent:
  - "http://p1.test:3128"
  - "http://p2.test:8080"
direct-for: "intranet, *.Corp.Example, 10.0.0.0/8, fd00::/8, 2001:db8::5"
routes:
  # via a parent: the client still goes to this proxy
  - "*.lab.example, 172.16.0.0/12, vault.corp.example=p1.test"
  - hosts: ["*.example.net", "build.lab.example", "192.168.0.0/16"]
    via: direct
  - hosts: "www.example.net, *.example.org"
    via: "p2.test:8080"
"""

# (url, expected, why)
GENERATE_TABLE = [
    ("http://intranet/", "DIRECT", "direct-for name"),
    ("http://INTRANET:8080/x", "DIRECT", "direct-for name, any case and port"),
    ("http://intranet.other.test/", VIA_PROXY, "a name matches that name only"),
    ("http://www.corp.example/", "DIRECT", "direct-for *.suffix (written in upper case)"),
    ("https://a.b.corp.example/", "DIRECT", "*.suffix, deeper subdomain"),
    ("http://corp.example/", VIA_PROXY, "*.suffix matches subdomains only"),
    ("http://notcorp.example/", VIA_PROXY, "*.suffix at a label boundary only"),
    ("http://vault.corp.example/", "DIRECT", "direct-for comes before every route"),
    ("http://10.1.2.3/", "DIRECT", "IPv4 literal in the direct-for CIDR"),
    ("http://10.255.255.255:8080/", "DIRECT", "last address of the CIDR"),
    ("http://11.0.0.1/", VIA_PROXY, "IPv4 literal outside the CIDR"),
    ("http://ten.test/", VIA_PROXY, "a name resolving into the CIDR: never resolved"),
    ("http://[fd00::1]/", "DIRECT", "IPv6 literal in the direct-for CIDR"),
    ("http://[FD12:3456::9]:8443/x", "DIRECT", "IPv6 literal in the CIDR, upper case, port"),
    ("http://[fe80::1]/", VIA_PROXY, "IPv6 literal outside the CIDR"),
    ("http://[2001:db8::5]/", "DIRECT", "a single IPv6 address"),
    ("http://[2001:db8::6]/", VIA_PROXY, "the next IPv6 address"),
    ("http://six.test/", VIA_PROXY, "a name resolving into the IPv6 CIDR: never resolved"),
    ("http://host.lab.example/", VIA_PROXY, "route via a parent"),
    ("http://172.20.0.1/", VIA_PROXY, "route via a parent, CIDR"),
    ("http://build.lab.example/", VIA_PROXY, "earlier route via a parent wins over a later direct route"),
    ("http://api.example.net/", "DIRECT", "route via direct, *.suffix"),
    ("http://www.example.net/", "DIRECT", "earlier direct route wins over a later parent route"),
    ("http://example.net/", VIA_PROXY, "route *.suffix matches subdomains only"),
    ("http://192.168.7.7/", "DIRECT", "route via direct, CIDR"),
    ("http://192.169.0.1/", VIA_PROXY, "just outside the route's CIDR"),
    ("http://www.example.org/", VIA_PROXY, "route via the other parent"),
    ("http://www.example.com/", VIA_PROXY, "no rule"),
]
GENERATE_RESOLVE = ["--resolve", "ten.test=10.1.2.3", "--resolve", "six.test=fd00::1",
                    "--resolve", "api.example.net=203.0.113.1"]


@pytest.fixture
def generated_pac(tmp_path) -> Path:
    config = write(tmp_path, "portcullis.yaml", GENERATE_YAML)
    r = portcullis(tmp_path, "pac", "generate", "--config", config, "--proxy", PROXY)
    assert r.code == 0, r.describe()
    assert r.err == "", r.describe()
    assert r.out.startswith("// Generated by portcullis pac generate"), r.describe()
    assert "function FindProxyForURL(url, host) {" in r.out, r.describe()
    return write(tmp_path, "generated.pac", r.out)


def check_table(tmp_path: Path, pac: Path, table: list, extra=()):
    expect = write(tmp_path, "expect.tsv", "".join(f"{url}\t{expected}\n" for url, expected, _ in table))
    r = portcullis(tmp_path, "pac", "test", "--json", "--pac", pac, "--no-dns", "--expect", expect, *extra)
    results = r.json()["results"]
    assert [x["url"] for x in results] == [url for url, _, _ in table], r.describe()
    wrong = [f"  {url}: want {expected} ({why}), got {x.get('result') or x.get('error')}"
             for (url, expected, why), x in zip(table, results) if x.get("as_expected") is not True]
    assert not wrong, "generated PAC:\n" + pac.read_text() + "\nwrong answers:\n" + "\n".join(wrong)
    assert r.code == 0, r.describe()


def test_generated_pac_follows_the_routing_rules(tmp_path, generated_pac):
    check_table(tmp_path, generated_pac, GENERATE_TABLE, GENERATE_RESOLVE)


@pytest.mark.parametrize("url", ["http://ten.test/", "http://six.test/"])
def test_generated_pac_never_resolves_a_name(tmp_path, generated_pac, url):
    r = portcullis(tmp_path, "pac", "explain", "--json", "--pac", generated_pac, "--no-dns", *GENERATE_RESOLVE, url)
    assert r.code == 0, r.describe()
    doc = r.json()
    assert doc["result"] == VIA_PROXY, r.describe()
    helpers = [c["helper"] for c in doc["calls"]]
    assert helpers, r.describe()
    resolving = {"isInNet", "dnsResolve", "dnsResolveEx", "isResolvable", "isResolvableEx"}
    assert not resolving & set(helpers), f"the generated PAC resolves {url}:\n{r.describe()}"


def test_generate_from_the_command_line_and_over_a_config(tmp_path):
    r = portcullis(tmp_path, "pac", "generate", "--proxy", PROXY, "--parent", "http://p1.test:3128",
                   "--direct-for", "*.corp.example,192.0.2.0/24",
                   "--routes", "*.lab.example=p1.test", "--routes", "*.example.net=direct")
    assert r.code == 0, r.describe()
    pac = write(tmp_path, "cli.pac", r.out)
    check_table(tmp_path, pac, [
        ("http://a.corp.example/", "DIRECT", "--direct-for *.suffix"),
        ("http://192.0.2.9/", "DIRECT", "--direct-for CIDR"),
        ("http://a.lab.example/", VIA_PROXY, "--routes via a parent"),
        ("http://a.example.net/", "DIRECT", "--routes via direct"),
        ("http://www.example.com/", VIA_PROXY, "no rule"),
    ])
    # Options on the command line replace the file's.
    config = write(tmp_path, "portcullis.yaml", GENERATE_YAML)
    r = portcullis(tmp_path, "pac", "generate", "--config", config, "--proxy", PROXY, "--direct-for", "only.test")
    assert r.code == 0, r.describe()
    pac = write(tmp_path, "layered.pac", r.out)
    check_table(tmp_path, pac, [
        ("http://only.test/", "DIRECT", "--direct-for from the command line"),
        ("http://intranet/", VIA_PROXY, "the file's direct-for is replaced"),
        ("http://api.example.net/", "DIRECT", "the file's routes stay"),
    ])


NO_RULES = "Error: the configuration has no direct-for or routes: every host would go to the proxy"


def test_generate_without_rules_fails(tmp_path):
    r = portcullis(tmp_path, "pac", "generate", "--proxy", PROXY)
    assert r.code == USAGE_EXIT, r.describe()
    assert r.out == "", r.describe()
    assert r.err.startswith(NO_RULES), r.describe()
    config = write(tmp_path, "portcullis.yaml", 'listen: ["127.0.0.1:3128"]\nparent: ["http://p1.test:3128"]\n')
    r = portcullis(tmp_path, "pac", "generate", "--config", config, "--proxy", PROXY)
    assert r.code == USAGE_EXIT, r.describe()
    assert r.out == "", r.describe()
    assert r.err.startswith(NO_RULES), r.describe()


@pytest.mark.parametrize("args, message", [
    (["--parent", "http://p1.test:3128", "--direct-for", "a.test,not a host!"],
     "Error: --direct-for: 'not a host!' is not a host name, *.suffix, IP address or CIDR block"),
    # As serve: a route's via names a --parent, and the rules need one.
    (["--parent", "http://p1.test:3128", "--routes", "*.x.test=drect"],
     "Error: --routes: 'drect' is neither direct nor a --parent (p1.test:3128)"),
    (["--direct-for", "a.test"], "Error: --parent-auth, --direct-for, --routes"),
    (["--direct-for", "a.test", "--proxy", "p.local:3128; DIRECT"], "Error: --proxy takes HOST:PORT"),
    (["--direct-for", "a.test", "--proxy", 'p.local:3128"'], "Error: --proxy takes HOST:PORT"),
])
def test_generate_refuses_bad_patterns_and_proxies(tmp_path, args, message):
    if "--proxy" not in args:
        args = args + ["--proxy", PROXY]
    r = portcullis(tmp_path, "pac", "generate", *args)
    assert r.code == USAGE_EXIT, r.describe()
    assert r.out == "", r.describe()
    assert r.err.startswith(message), r.describe()
