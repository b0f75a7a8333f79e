"""Every reliability scenario of issue 27 with one command: each script in bench/reliability
(all but this one and rellib.py, in the order below, then any other in name order), one after
the other, each bounded in time, its output shown as it comes and kept in
`bench/out/reliability.md`; then a summary of their PASS/FAIL lines. Exit 1 if any failed.

    python3 bench/reliability/all.py [--bin PATH] [--quick] [--soak-minutes 30] [--only a,b]

`--quick`: the CI versions where a scenario has one (`--ci`: a 3-minute soak, one database
kill, …) — about 6 minutes in all; else about 40 minutes, 30 of them the soak.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import rellib as r  # noqa: E402

FIRST = ["changes", "store_faults", "descriptors", "slow_peers", "restart"]
LAST = ["soak"]


def has_ci_mode(name: str) -> bool:
    """Whether the scenario takes `--ci` (a shorter version for CI)."""
    return '"--ci"' in (HERE / f"{name}.py").read_text()


def scenarios() -> list[str]:
    found = sorted(p.stem for p in HERE.glob("*.py") if p.stem not in ("all", "rellib") and not p.stem.startswith("_"))
    return [s for s in FIRST if s in found] + [s for s in found if s not in FIRST + LAST] + \
        [s for s in LAST if s in found]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    r.binary_argument(ap)
    ap.add_argument("--quick", action="store_true", help="the CI versions (--ci) where there is one")
    ap.add_argument("--soak-minutes", type=float, default=30)
    ap.add_argument("--only", help="comma-separated scenario names")
    args = ap.parse_args()
    r.check_binary(args.bin)
    r.exit_on_sigterm()
    names = scenarios()
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    out_dir = r.ROOT / "bench" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    report = [f"# Reliability scenarios ({r.now_utc()}, {os.cpu_count()} CPUs, {Path(args.bin).name})", ""]
    summary = []
    for name in names:
        cmd = [sys.executable, str(HERE / f"{name}.py"), "--bin", args.bin]
        timeout = 900
        if name == "soak":
            minutes = 3 if args.quick else args.soak_minutes
            cmd += ["--ci"] if args.quick else ["--minutes", str(minutes)]
            timeout = int(minutes * 60) + 600
        elif args.quick and has_ci_mode(name):
            cmd.append("--ci")
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        started = time.monotonic()
        lines: list[str] = []
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
        # A scenario that overruns its bound gets SIGINT (its finally blocks stop what it
        # started), and 30 s later its process group SIGKILL.
        overran = threading.Event()

        def signal_group(number: int):
            try:
                os.killpg(process.pid, number)
            except ProcessLookupError:
                pass

        def stop_it():
            overran.set()
            signal_group(signal.SIGINT)
            threading.Timer(30, signal_group, args=(signal.SIGKILL,)).start()

        watchdog = threading.Timer(timeout, stop_it)
        watchdog.start()
        try:
            for line in process.stdout:
                print(line, end="", flush=True)
                lines.append(line.rstrip("\n"))
            process.wait()
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM): the scenario, in a session of its own, stops too.
            signal_group(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                signal_group(signal.SIGKILL)
            raise
        finally:
            watchdog.cancel()
        if overran.is_set():
            lines.append(f"FAIL: {name} stopped after {timeout} s")
        seconds = time.monotonic() - started
        verdict = next((line for line in reversed(lines) if line.startswith(("PASS", "FAIL"))), None)
        passed = process.returncode == 0 and verdict is not None and verdict.startswith("PASS")
        summary.append((name, passed, seconds, verdict or f"no verdict (exit {process.returncode})"))
        report += [f"## {name} ({seconds:.0f} s)", "", "```", *lines, "```", ""]
    report += ["## Summary", "", "| scenario | result | time |", "| --- | --- | ---: |"]
    report += [f"| {n} | {'PASS' if ok else 'FAIL'} | {s:.0f} s |" for n, ok, s, _ in summary]
    (out_dir / "reliability.md").write_text("\n".join(report) + "\n")
    print("\n# Summary")
    for name, ok, seconds, verdict in summary:
        print(f"- {name}: {'PASS' if ok else 'FAIL'} in {seconds:.0f} s — {verdict}")
    failed = [n for n, ok, _, _ in summary if not ok]
    print(f"{'PASS' if not failed else 'FAIL'}: {len(summary) - len(failed)} of {len(summary)} scenarios passed"
          + (f" (failed: {', '.join(failed)})" if failed else ""))
    sys.exit(0 if not failed else 1)


if __name__ == "__main__":
    main()
