"""Store faults (issue 27): the user database fails under a running proxy.

**PostgreSQL killed.** A throwaway PostgreSQL 15 cluster (scripts/postgres-test-server.sh
`start DIR`: a temporary directory, a loopback port, run as the `postgres` user when we are
root) behind one Portcullis, while clients of users the proxy has already verified send GETs
(keep-alive, from another process, and on new connections). The postmaster is killed with
SIGKILL, left down for `--outage` seconds and started again, `--kills` times. Pass: every
request of an already verified user gets 200 throughout (the credential cache); every login of
a user not seen before gets 503 while the database is down — never 407, which would make clients
ask for a password that is right — and quickly; /readyz says 503 while it is down and 200 after;
the same proxy process serves new logins again after the restart; the loss is logged once per
outage and the database password never.

**SQLite unwritable.** In a private mount namespace (`unshare --mount`, or `--map-root-user
--mount` when not root), the database lives on a tiny tmpfs. Twice — the directory remounted
read-only (a read-only bind mount: root ignores file modes, so chmod cannot show it), then the
tmpfs filled to the last byte — `portcullis users add`, `passwd` and `disable` must exit non-zero
with an error naming the cause, and once the fault is gone the database must be intact:
`PRAGMA integrity_check` ok, no change half-made (the old password still works through the
running proxy, the disabled user still logs in, the added user does not exist), and a change
made then works at once.

Loopback only, bounded (`--ci`: one kill, about 40 s; default: three, about 1½ minutes).
Prints its figures and a pass/fail line; exit 1 on fail.

    python3 bench/reliability/store_faults.py [--bin PATH] [--ci] [--kills 3] [--outage 8]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rellib as r  # noqa: E402
from rellib import b  # noqa: E402

SCRIPT = r.ROOT / "scripts" / "postgres-test-server.sh"
PROBES, PROBE_RATE = 4, 10
# Seconds for a 503 while the database is down: the store's query deadline (5 s), which the
# first logins after the loss wait out, and 1 s.
NEW_LOGIN_BOUND = 6.0
RECOVERY_BOUND = 15.0  # seconds from the database accepting again to /readyz 200 and a new login's 200


def until(predicate, timeout: float, interval: float = 0.1) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval)
    return None


# --------------------------------------------------------------------------- PostgreSQL

def parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


class Cluster:
    """A throwaway PostgreSQL 15 in `directory` (scripts/postgres-test-server.sh)."""

    def __init__(self, directory: Path):
        self.directory = directory
        out = self.script("start")
        values = {}
        for line in out.splitlines():
            if "=" in line:
                key, value = line.removeprefix("export ").split("=", 1)
                values[key] = value.strip("'")
        parts = urlsplit(values["PORTCULLIS_TEST_POSTGRES_URL"])
        self.password = unquote(parts.password or "")
        # The password goes in PGPASSWORD, not in a command line `ps` shows.
        netloc = f"{parts.username}@{parts.hostname}:{parts.port}"
        self.url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        self.env = {"PGPASSWORD": self.password}

    def script(self, action: str) -> str:
        out = subprocess.run(["bash", str(SCRIPT), action, str(self.directory)], capture_output=True, text=True,
                             timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"postgres-test-server.sh {action}: {out.stderr.strip()[-800:]}")
        return out.stdout

    def kill(self) -> float:
        """SIGKILL to the postmaster; returns the seconds until its backends, which notice and
        exit by themselves, are all gone too (until then one may still answer a query)."""
        pid = int((self.directory / "data" / "postmaster.pid").read_text().split("\n", 1)[0])
        children = [int(p) for p in os.listdir("/proc") if p.isdigit() and parent(int(p)) == pid]
        started = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        gone = until(lambda: not any(Path(f"/proc/{c}").exists() for c in [pid, *children]), 30, 0.005)
        if gone is None:
            raise RuntimeError("the killed PostgreSQL's processes did not go away")
        return time.monotonic() - started

    def restart(self) -> float:
        """Starts it again (retrying while the killed one's backends still hold its shared
        memory); seconds until it accepts connections."""
        started = time.monotonic()
        while True:
            try:
                self.script("start")
                return time.monotonic() - started
            except RuntimeError:
                if time.monotonic() - started > 60:
                    raise
                time.sleep(0.5)

    def stop(self):
        try:
            self.script("stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass


class NewConnections(threading.Thread):
    """GETs of an already verified user, each on a new connection, at a fixed rate."""

    def __init__(self, port: int, url: str, authorization: str, rate: float, stop: threading.Event):
        super().__init__(daemon=True)
        self.port, self.url, self.authorization, self.rate, self.stop = port, url, authorization, rate, stop
        self.ok, self.failed = 0, []

    def run(self):
        for _ in r.paced(self.rate, self.stop):
            status, _ = r.get(self.port, self.url, self.authorization)
            if status == 200:
                self.ok += 1
            else:
                self.failed.append(f"HTTP {status}" if status else "connection failed")


def postgres(args, work: Path, problems: list[str]):
    cluster_dir = Path(tempfile.mkdtemp(prefix="portcullis-pgfault."))
    cluster = None
    try:
        cluster = Cluster(cluster_dir)

        def users_add(name: str, password: str):
            out = subprocess.run([args.bin, "users", "add", name, "--store", cluster.url, "--password-stdin",
                                  "--cost", "4"], input=password + "\n", text=True, capture_output=True, timeout=60,
                                 env={**os.environ, **cluster.env})
            if out.returncode != 0:
                raise RuntimeError(f"users add {name}: {out.stderr.strip()}")

        seen = [(f"seen{i}", f"seen-secret-{i}") for i in range(PROBES + 1)]
        fresh = [[(f"new{k}-{i}", f"new-secret-{k}-{i}") for i in range(150)] for k in range(args.kills)]
        for name, password in seen + [u for batch in fresh for u in batch]:
            users_add(name, password)
        origin = r.Origin(work)
        url = origin.url("/1k")
        proxy = r.Proxy(args.bin, ["--store", cluster.url, "--log-level", "info"], work, name="pg-proxy",
                        env=cluster.env)
        pid = proxy.pid
        if until(lambda: proxy.readyz() == 200, 15) is None:
            raise RuntimeError("the proxy never became ready")
        for name, password in seen:
            assert r.get(proxy.port, url, r.basic(name, password))[0] == 200, proxy.log()[-2000:]
        probes = r.ProbeProcess(proxy.port, url, [r.basic(n, p) for n, p in seen[:PROBES]], PROBE_RATE)
        stop = threading.Event()
        walk_ins = NewConnections(proxy.port, url, r.basic(*seen[PROBES]), 5, stop)
        walk_ins.start()
        time.sleep(2)
        print(f"## PostgreSQL killed ({args.kills} × SIGKILL to the postmaster, down {args.outage:.0f} s each)")
        for k in range(args.kills):
            batch = iter(fresh[k])
            killed_at = time.monotonic()
            gone = cluster.kill()
            # From the kill on, a new user's login every 0.25 s and a look at /readyz; the
            # database stays down `--outage` seconds, and 2 s more than /readyz took to notice.
            down, statuses, times = None, [], []
            while time.monotonic() - killed_at < max(args.outage, (down or 30) + 2):
                if down is None and proxy.readyz() == 503:
                    down = time.monotonic() - killed_at
                name, password = next(batch)
                status, seconds = r.get(proxy.port, url, r.basic(name, password), timeout=30)
                statuses.append(status)
                times.append(seconds)
                time.sleep(0.25)
            slowest = max(times)
            back_after = cluster.restart()
            ready = until(lambda: proxy.readyz() == 200, 60)
            name, password = next(batch)
            login = until(lambda: r.get(proxy.port, url, r.basic(name, password))[0] == 200, 60, 0.2)
            counts = {s: statuses.count(s) for s in sorted(set(statuses))}
            slow = sum(1 for x in times if x > 1)
            print(f"- kill {k + 1}: its processes gone after {gone * 1000:.0f} ms; /readyz 503 after "
                  f"{down if down is None else round(down, 2)} s; "
                  f"{len(statuses)} logins of new users while down: "
                  + ", ".join(f"{n} × {s or 'no answer'}" for s, n in counts.items())
                  + f" (slowest answer {slowest:.2f} s, {slow} took over 1 s); database up again after "
                  f"{back_after:.1f} s, then "
                  f"/readyz 200 after {ready if ready is None else round(ready, 2)} s and a new user's first login "
                  f"200 after {login if login is None else round(login, 2)} s")
            if down is None:
                problems.append(f"kill {k + 1}: /readyz never said 503")
            if 407 in counts:
                problems.append(f"kill {k + 1}: {counts[407]} new logins got 407 while the database was down")
            if set(counts) != {503} or slowest > NEW_LOGIN_BOUND:
                problems.append(f"kill {k + 1}: new logins while down got {counts}, slowest {slowest:.2f} s "
                                f"(want 503 within {NEW_LOGIN_BOUND:.0f} s)")
            if ready is None or ready > RECOVERY_BOUND or login is None or login > RECOVERY_BOUND:
                problems.append(f"kill {k + 1}: no recovery within {RECOVERY_BOUND:.0f} s (readyz {ready}, "
                                f"login {login})")
            time.sleep(2)
        stop.set()
        walk_ins.join(15)
        probes.finish()
        failed = [f for _, f in probes.failures] + walk_ins.failed
        log = proxy.log()
        losses, regains = log.count("lost the user database"), log.count("user database reachable again")
        print(f"- already verified users: {len(probes.samples)} keep-alive requests ({PROBES} connections) and "
              f"{walk_ins.ok + len(walk_ins.failed)} on new connections, {len(failed)} failed"
              + (f" ({', '.join(sorted(set(failed)))})" if failed else ""))
        print(f"- the same proxy process throughout: {'yes' if proxy.alive() and proxy.pid == pid else 'NO'}; "
              f"log: 'lost the user database' {losses}×, 'reachable again' {regains}×; database password in the "
              f"log: {'YES' if cluster.password in log else 'no'}")
        if failed:
            problems.append(f"postgres: {len(failed)} requests of already verified users failed")
        if not proxy.alive():
            problems.append("postgres: the proxy died")
        if losses != args.kills or regains != args.kills:
            problems.append(f"postgres: the loss logged {losses}× and the recovery {regains}× for {args.kills} kills")
        if cluster.password in log:
            problems.append("postgres: the database password is in the proxy's log")
    finally:
        b.stop_all()
        b.CHILDREN.clear()
        if cluster:
            cluster.stop()
        shutil.rmtree(cluster_dir, ignore_errors=True)


# --------------------------------------------------------------------------- SQLite

def sqlite_in_namespace(args, problems: list[str]):
    """Runs the SQLite part in a private mount namespace (its mounts vanish with it)."""
    wrapper = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        wrapper = ["unshare", "--map-root-user", "--mount", "--propagation", "private"]
    cmd = [*wrapper, sys.executable, __file__, "--bin", args.bin, "--part", "sqlite-inside"]
    try:
        out = r.run_child(cmd, timeout=300)
    except subprocess.TimeoutExpired:
        problems.append("sqlite: timed out")
        return
    sys.stdout.write(out.stdout)
    if out.returncode != 0:
        tail = out.stderr.strip()[-1500:]
        problems.append("sqlite: " + (tail if "problem:" not in out.stdout else "see above"))


def sqlite_inside(args) -> int:
    """The SQLite part, already in its own mount namespace. Exit status 0 or 1."""
    problems: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="portcullis-sqlitefault-"))
    store = work / "store"
    store.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(store)], check=True,
                       capture_output=True, timeout=30)
        db = store / "users.db"
        users = [(f"user{i}", f"user-secret-{i}") for i in range(4)]
        r.sqlite_users(args.bin, db, users)
        origin = r.Origin(work)
        url = origin.url("/1k")
        proxy = r.Proxy(args.bin, ["--store", f"sqlite:{db}", "--log-level", "info"], work, name="sqlite-proxy")
        for name, password in users[:2]:
            assert r.get(proxy.port, url, r.basic(name, password))[0] == 200, proxy.log()[-2000:]
        print("## SQLite unwritable (`users add`, `passwd`, `disable` on a 1 MiB tmpfs in a private mount namespace)")

        def users_command(*words, stdin=None) -> tuple[int, str, float]:
            started = time.monotonic()
            out = subprocess.run([args.bin, "users", *words, "--store", f"sqlite:{db}"], input=stdin, text=True,
                                 capture_output=True, timeout=60)
            return out.returncode, (out.stderr.strip() or out.stdout.strip()), time.monotonic() - started

        def fault(name: str, make, clear, cause: str):
            make()
            results = {
                "add": users_command("add", "newcomer", "--password-stdin", "--cost", "4", stdin="newcomer-secret\n"),
                "passwd": users_command("passwd", users[0][0], "--password-stdin", "--cost", "4",
                                        stdin="changed-secret\n"),
                "disable": users_command("disable", users[1][0]),
            }
            # Logins while the fault lasts: one already verified, one first login (which also
            # tries to note the login in the database).
            during = (r.get(proxy.port, url, r.basic(*users[1]))[0], r.get(proxy.port, url, r.basic(*users[2]))[0])
            clear()
            journal = [p.name for p in store.iterdir() if p.name.endswith("-journal")]
            with contextlib.closing(sqlite3.connect(db)) as c:  # closed: the tmpfs must unmount
                integrity = c.execute("PRAGMA integrity_check").fetchone()[0]
            time.sleep(2.5)  # the proxy looks at the store every second: let it see any change
            after = {
                "old password": r.get(proxy.port, url, r.basic(*users[0]))[0],
                "new password": r.get(proxy.port, url, r.basic(users[0][0], "changed-secret"))[0],
                "not disabled": r.get(proxy.port, url, r.basic(*users[1]))[0],
                "not added": r.get(proxy.port, url, r.basic("newcomer", "newcomer-secret"))[0],
            }
            print(f"- {name}:")
            for command, (code, message, seconds) in results.items():
                print(f"  - `users {command}`: exit {code} in {seconds:.2f} s: {message[:160]}")
            print(f"  - through the proxy meanwhile: a verified user {during[0]}, a first login {during[1]}")
            print(f"  - afterwards: integrity_check {integrity}, journal left: {journal or 'none'}; through the proxy: "
                  + ", ".join(f"{k} {v}" for k, v in after.items()))
            for command, (code, message, _) in results.items():
                if code == 0 or cause not in message.lower():
                    problems.append(f"{name}: `users {command}` exit {code}: {message[:120]}")
            if during != (200, 200):
                problems.append(f"{name}: logins during the fault got {during}")
            if integrity != "ok" or journal:
                problems.append(f"{name}: integrity_check {integrity}, journal {journal}")
            if after != {"old password": 200, "new password": 407, "not disabled": 200, "not added": 407}:
                problems.append(f"{name}: a failed change left a trace: {after}")

        def remount_read_only():
            for options in (["--bind", str(store), str(store)], ["-o", "remount,bind,ro", str(store)]):
                subprocess.run(["mount", *options], check=True, capture_output=True, timeout=30)

        def remount_writable():
            subprocess.run(["umount", str(store)], check=True, capture_output=True, timeout=30)

        filler = store / "filler"

        def fill():
            with open(filler, "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\0" * 4096)
                except OSError:
                    pass
                try:
                    while True:  # the last partial page
                        f.write(b"\0")
                except OSError:
                    pass

        def unfill():
            filler.unlink()

        fault("read-only (a read-only bind mount of the database's directory)", remount_read_only, remount_writable,
              "readonly")
        fault("disk full (the tmpfs filled to its last byte)", fill, unfill, "full")
        code, message, _ = users_command("add", "latecomer", "--password-stdin", "--cost", "4",
                                         stdin="latecomer-secret\n")
        seen = until(lambda: r.get(proxy.port, url, r.basic("latecomer", "latecomer-secret"))[0] == 200, 10)
        print(f"- once writable again: `users add` exit {code}, the new user logs in through the same proxy after "
              f"{seen if seen is None else round(seen, 2)} s; proxy {'running' if proxy.alive() else 'DEAD'}")
        if code != 0 or seen is None or not proxy.alive():
            problems.append(f"sqlite: no recovery (users add exit {code}: {message[:120]}, login {seen})")
    finally:
        b.stop_all()
        if subprocess.run(["umount", "-R", str(store)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-R", "-l", str(store)], capture_output=True, timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    for problem in problems:
        print(f"  problem: {problem}")
    return 1 if problems else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    r.binary_argument(ap)
    ap.add_argument("--ci", action="store_true", help="one kill of 5 s (about 40 s in all)")
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--outage", type=float, default=8, help="seconds the database stays down each time")
    ap.add_argument("--part", choices=["all", "postgres", "sqlite", "sqlite-inside"], default="all")
    args = ap.parse_args()
    r.check_binary(args.bin)
    r.exit_on_sigterm()
    if args.part == "sqlite-inside":
        sys.exit(sqlite_inside(args))
    if args.ci:
        args.kills, args.outage = 1, 5
    problems: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="portcullis-storefaults-"))
    os.chmod(work, 0o755)
    print(f"# Store faults ({r.now_utc()})")
    try:
        if args.part in ("all", "postgres"):
            postgres(args, work, problems)
        if args.part in ("all", "sqlite"):
            sqlite_in_namespace(args, problems)
    finally:
        b.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    for problem in problems:
        if not problem.endswith("see above"):
            print(f"  problem: {problem}")
    print(f"{'PASS' if not problems else 'FAIL'}: store faults")
    sys.exit(0 if not problems else 1)


if __name__ == "__main__":
    main()
