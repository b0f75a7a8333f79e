"""The CI versions of issue 27's reliability scenarios (bench/reliability/), run on the binary
under test (PORTCULLIS_BIN: the debug build in CI), each as a subprocess with a deadline, its
figures printed (`-s` or `-rA` to see them on success):

- the 3-minute soak (`soak.py --ci`): keep-alive GETs, CONNECT tunnels, new connections, wrong
  passwords and Digest at a fixed rate — no failed request, RSS and descriptors growing by less
  than 5 % after the warm-up;
- the store faults (`store_faults.py --ci`): PostgreSQL killed with SIGKILL and restarted under
  load (already verified users keep getting 200, new logins 503 and never 407, /readyz follows,
  the same proxy recovers), and `users add/passwd/disable` on a read-only and on a full SQLite
  store (non-zero exit naming the cause, the database intact and unchanged).

The store faults need PostgreSQL 15 (/usr/lib/postgresql/15/bin) and a private mount namespace
(unshare): without PostgreSQL they skip, except in CI or with PORTCULLIS_REQUIRE_POSTGRES=1,
where that is a failure."""

from __future__ import annotations

import faulthandler
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from portcullis_helpers import PORTCULLIS_BIN, REPO_ROOT

SCENARIOS = REPO_ROOT / "bench" / "reliability"
REQUIRED = bool(os.environ.get("CI")) or os.environ.get("PORTCULLIS_REQUIRE_POSTGRES") == "1"


def run_scenario(script: str, *args: str, timeout: float) -> str:
    """Runs a scenario; its output is printed, and it must end with exit 0 and a PASS line."""
    # The suite dumps every thread's stack after faulthandler_timeout (180 s) of one test; the
    # 3-minute soak is meant to take that long: its own deadline (`timeout`) bounds it.
    faulthandler.cancel_dump_traceback_later()
    faulthandler.dump_traceback_later(timeout + 30, exit=False)
    started = time.monotonic()
    child = subprocess.Popen([sys.executable, str(SCENARIOS / script), "--bin", PORTCULLIS_BIN, *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except BaseException:
        # Past its deadline or interrupted: SIGINT lets the scenario stop what it started (its
        # proxy, origin, PostgreSQL cluster); SIGKILL only if it does not end within 30 s.
        child.send_signal(signal.SIGINT)
        try:
            child.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
        raise
    out = subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)
    print(f"--- {script} {' '.join(args)} ({time.monotonic() - started:.0f} s, exit {out.returncode})")
    print(out.stdout)
    if out.stderr.strip():
        print(out.stderr[-4000:])
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and lines and lines[-1].startswith("PASS"), \
        f"{script}: {lines[-1] if lines else 'no output'}\n" + "\n".join(l for l in lines if "problem:" in l)
    return out.stdout


@pytest.mark.slow
def test_soak_three_minutes_of_mixed_load_no_failed_request_and_no_growth():
    out = run_scenario("soak.py", "--ci", timeout=600)
    assert "- keep-alive GETs:" in out and "- Digest:" in out and "- RSS:" in out


@pytest.mark.slow
def test_store_faults_postgres_killed_and_sqlite_unwritable():
    if not Path("/usr/lib/postgresql/15/bin/initdb").exists():
        message = "PostgreSQL 15 is not installed (apt-get install postgresql)"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    out = run_scenario("store_faults.py", "--ci", timeout=600)
    assert "## PostgreSQL killed" in out and "## SQLite unwritable" in out
