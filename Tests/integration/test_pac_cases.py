"""`portcullis pac test`: the PAC helpers, real-world PACs and hostile PACs.

- pac/helper_cases.tsv: several hundred helper expressions, each sent through pac/eval.pac as
  http://eval.test/?<percent-encoded expression>; one `pac test --expect` run per @now section.
- pac/corporate/NAME.pac with NAME.tsv: regression tables of URL -> PAC result.
- pac/hostile/*.pac: each must fail (exit 1) within 2 seconds, and the output must say why
  (first line of each file: "// expect: ...").

Table format (see pac/helper_cases.tsv): "KEY<TAB>EXPECTED" rows, "#" comments, and directives
"@now ISO8601" (clock for the rows after it), "@resolve HOST=IP[,IP]" and "@my-ip IP" (whole
file). Every run uses --no-dns, so only @resolve names resolve.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

from portcullis_helpers import PORTCULLIS_BIN, clean_env

PAC_DIR = Path(__file__).parent / "pac"
EVAL_PAC = PAC_DIR / "eval.pac"
HELPER_TABLE = PAC_DIR / "helper_cases.tsv"
CORPORATE = sorted((PAC_DIR / "corporate").glob("*.pac"))
HOSTILE = sorted((PAC_DIR / "hostile").glob("*.pac"))

HOSTILE_WALL_LIMIT = 2.0


@dataclass
class Section:
    now: str | None
    line: int
    rows: list[tuple[int, str, str]] = field(default_factory=list)  # (line, key, expected)


@dataclass
class Table:
    path: Path
    resolve: list[str] = field(default_factory=list)
    my_ips: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    @property
    def rows(self):
        return [r for s in self.sections for r in s.rows]


def parse_table(path: Path) -> Table:
    table = Table(path)
    current = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("@"):
            directive, _, value = line[1:].partition(" ")
            value = value.strip()
            assert value, f"{path.name}:{number}: {directive} without a value"
            if directive == "now":
                current = Section(value, number)
                table.sections.append(current)
            elif directive == "resolve":
                assert "=" in value, f"{path.name}:{number}: @resolve HOST=IP[,IP]"
                table.resolve.append(value)
            elif directive == "my-ip":
                table.my_ips.append(value)
            else:
                raise AssertionError(f"{path.name}:{number}: unknown directive @{directive}")
            continue
        key, tab, expected = line.partition("\t")
        assert tab and "\t" not in expected, f"{path.name}:{number}: want exactly one TAB"
        assert key and expected, f"{path.name}:{number}: empty key or expected value"
        if current is None:
            current = Section(None, number)
            table.sections.append(current)
        current.rows.append((number, key, expected))
    return table


def eval_url(expression: str) -> str:
    return "http://eval.test/?" + quote(expression, safe="")


def run_pac_test(tmp_path: Path, pac: Path, rows: list[tuple[str, str]], table: Table | None = None,
                 now: str | None = None, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    """Runs `portcullis pac test --pac PAC --expect TABLE --no-dns ...`; returns (result, seconds)."""
    expect = tmp_path / "expect.tsv"
    expect.write_text("".join(f"{url}\t{expected}\n" for url, expected in rows), encoding="utf-8")
    args = ["pac", "test", "--pac", str(pac), "--expect", str(expect), "--no-dns"]
    if table is not None:
        for ip in table.my_ips:
            args += ["--my-ip", ip]
        for mapping in table.resolve:
            args += ["--resolve", mapping]
    if now is not None:
        args += ["--now", now]
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    started = time.monotonic()
    try:
        result = subprocess.run([PORTCULLIS_BIN] + args, capture_output=True, timeout=timeout,
                                env=clean_env(home), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"`pac test` still running after {timeout} s: {' '.join(args)}\n"
                    f"stdout: {(e.stdout or b'')[-3000:]!r}\nstderr: {(e.stderr or b'')[-3000:]!r}")
    return result, time.monotonic() - started


def output_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout.decode("utf-8", "replace") + result.stderr.decode("utf-8", "replace")


def explain(result: subprocess.CompletedProcess, context: str) -> str:
    out = output_of(result)
    if len(out) > 20000:
        out = out[:10000] + "\n…\n" + out[-10000:]
    return f"{context}\nexit {result.returncode}\n{out}"


# ------------------------------------------------------------------ the helper table

HELPERS = parse_table(HELPER_TABLE)


def test_helper_table_is_well_formed():
    assert len(HELPERS.rows) >= 350, len(HELPERS.rows)
    assert all(s.now for s in HELPERS.sections), "every helper row needs an @now before it"
    keys = [(s.now, key) for s in HELPERS.sections for _, key, _ in s.rows]
    duplicates = {k for k in keys if keys.count(k) > 1}
    assert not duplicates, f"rows repeated in one @now section: {sorted(duplicates)[:10]}"


@pytest.mark.parametrize("section", HELPERS.sections, ids=lambda s: f"line{s.line}-{s.now}")
def test_pac_helpers(tmp_path, section):
    rows = [(eval_url(key), expected) for _, key, expected in section.rows]
    result, _ = run_pac_test(tmp_path, EVAL_PAC, rows, HELPERS, section.now)
    if result.returncode != 0:
        listing = "\n".join(f"  line {n}: {key}  ->  {expected}" for n, key, expected in section.rows)
        pytest.fail(explain(result, f"helper_cases.tsv @now {section.now} (line {section.line}); "
                                    f"rows of this section:\n{listing}"))


def test_mismatches_exit_2_and_are_each_reported(tmp_path):
    wrong = [(eval_url("1 + 1"), "3"), (eval_url('typeof dnsResolve("nx.invalid")'), "string")]
    right = [(eval_url('dnsDomainIs("www.example.com", ".example.com")'), "true")]
    result, _ = run_pac_test(tmp_path, EVAL_PAC, right + wrong, HELPERS, "2026-03-13T14:20:30+01:00")
    assert result.returncode == 2, explain(result, "two wrong rows out of three")
    out = output_of(result)
    for url, _ in wrong:
        assert url in out, explain(result, f"the mismatch of {url} is not reported")
    assert "object" in out, explain(result, "the actual value of the second wrong row is not shown")


# ------------------------------------------------------------------ corporate PACs

CORPORATE_CASES = []
for _pac in CORPORATE:
    _table = parse_table(_pac.with_suffix(".tsv"))
    for _section in _table.sections:
        CORPORATE_CASES.append(pytest.param(_pac, _table, _section, id=f"{_pac.stem}-line{_section.line}"))


def test_corporate_tables_are_there():
    assert len(CORPORATE) >= 4, CORPORATE
    for pac in CORPORATE:
        rows = parse_table(pac.with_suffix(".tsv")).rows
        assert 15 <= len(rows) <= 30, f"{pac.name}: {len(rows)} rows"


@pytest.mark.parametrize("pac, table, section", CORPORATE_CASES)
def test_corporate_pac(tmp_path, pac, table, section):
    rows = [(url, expected) for _, url, expected in section.rows]
    result, _ = run_pac_test(tmp_path, pac, rows, table, section.now)
    if result.returncode != 0:
        listing = "\n".join(f"  line {n}: {url}  ->  {expected}" for n, url, expected in section.rows)
        pytest.fail(explain(result, f"{table.path.name} @now {section.now} (line {section.line}):\n{listing}"))


# ------------------------------------------------------------------ hostile PACs

FAILURE_KINDS = {
    "time limit": r"time ?limit|timed? ?out|time-?out|took too long",
    "memory limit": r"memory|out of mem|alloc",
    "time or memory limit": r"time ?limit|timed? ?out|time-?out|took too long|memory|alloc",
    "stack overflow": r"RangeError|stack|recursion|call ?stack",
    "non-string result": r"string",
}


def expectation(pac: Path) -> str:
    first = pac.read_text(encoding="utf-8").splitlines()[0]
    m = re.match(r"//\s*expect:\s*(.+?)\s*$", first)
    assert m, f"{pac.name}: line 1 must be '// expect: ...'"
    return m.group(1)


def check_failure_named(pac: Path, want: str, out: str):
    syntax = re.fullmatch(r"syntax error at line (\d+), column (\d+)", want)
    exception = re.fullmatch(r'exception "(.+)"', want)
    if syntax:
        line, column = syntax.groups()
        assert re.search(r"syntax", out, re.I), f"{pac.name}: no 'syntax error' in:\n{out}"
        position = (rf"line\D{{0,3}}{line}\b.{{0,40}}col(umn)?\D{{0,3}}{column}\b"
                    rf"|:{line}:{column}\b|\({line}\s*,\s*{column}\)")
        assert re.search(position, out, re.I), f"{pac.name}: line {line}, column {column} not named in:\n{out}"
    elif exception:
        assert exception.group(1) in out, f"{pac.name}: the exception's message is not shown:\n{out}"
        assert re.search(r"exception|error|threw|thrown", out, re.I), f"{pac.name}: not called an exception:\n{out}"
    elif want == "missing FindProxyForURL":
        assert "FindProxyForURL" in out, f"{pac.name}: FindProxyForURL not named:\n{out}"
        assert re.search(r"missing|not defined|undefined|not a function|no function|does not define|not found",
                         out, re.I), f"{pac.name}: not said to be missing:\n{out}"
    else:
        assert want in FAILURE_KINDS, f"{pac.name}: unknown expectation {want!r}"
        assert re.search(FAILURE_KINDS[want], out, re.I), f"{pac.name}: expected a {want} failure in:\n{out}"


@pytest.mark.parametrize("pac", HOSTILE, ids=lambda p: p.stem)
def test_hostile_pac_fails_fast_and_says_why(tmp_path, pac):
    want = expectation(pac)
    result, seconds = run_pac_test(tmp_path, pac, [("http://www.example.com/", "DIRECT")],
                                   now="2026-03-13T14:20:30+01:00", timeout=30)
    assert result.returncode == 1, explain(result, f"{pac.name} ({want}): want exit 1")
    assert seconds < HOSTILE_WALL_LIMIT, explain(result, f"{pac.name} took {seconds:.2f} s")
    check_failure_named(pac, want, output_of(result))


def test_hostile_set_is_complete():
    wants = {expectation(p) for p in HOSTILE}
    for kind in ("time limit", "memory limit", "stack overflow", "non-string result", "missing FindProxyForURL"):
        assert kind in wants, kind
    assert any(w.startswith("syntax error at line") for w in wants)
    assert any(w.startswith("exception ") for w in wants)
