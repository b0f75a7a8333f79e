"""Changes under load (issue 27): while clients of users nobody touches send keep-alive GETs
through Portcullis, 100 reloads (SIGHUP, edits of the policy and config files) and 100 account
changes (disable, enable, rotate of other users with `portcullis users`) — the untouched users
must see no failed request, and a changed user must see the change within 2 s.

Everything on loopback, bounded (a few minutes). Prints its figures and a pass/fail line; exit 1
on fail.

    python3 bench/reliability/changes.py [--changes 100] [--clients 4]
"""
from __future__ import annotations

import argparse
import base64
import http.client
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchlib as b  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
VISIBLE_WITHIN = 2.0


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def status(port: int, origin: int, authorization: str) -> int:
    """One request on a fresh connection: its status, or 0 if it failed."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", f"http://127.0.0.1:{origin}/1k", headers={"Proxy-Authorization": authorization})
        code = c.getresponse().status
        c.close()
        return code
    except OSError:
        return 0


class Client(threading.Thread):
    """Keep-alive GETs as one untouched user until told to stop; every non-200 counted."""

    def __init__(self, port: int, origin: int, authorization: str, stop: threading.Event):
        super().__init__(daemon=True)
        self.port, self.origin, self.authorization, self.stop = port, origin, authorization, stop
        self.ok = 0
        self.failed: list[str] = []

    def run(self):
        connection = None
        while not self.stop.is_set():
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                connection.request("GET", f"http://127.0.0.1:{self.origin}/1k",
                                   headers={"Proxy-Authorization": self.authorization})
                response = connection.getresponse()
                response.read()
                if response.status == 200:
                    self.ok += 1
                else:
                    self.failed.append(f"HTTP {response.status}")
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException) as e:
                self.failed.append(type(e).__name__)
                connection = None
                time.sleep(0.01)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=str(ROOT / ".build/release/portcullis"))
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()
    if not Path(args.bin).exists():
        sys.exit(f"{args.bin} missing: swift build -c release --product portcullis")
    work = Path(tempfile.mkdtemp(prefix="portcullis-changes-"))
    os.chmod(work, 0o755)
    started = time.monotonic()
    try:
        origin = b.start_origin(b.find("nginx", "nginx-light"), work)
        db = work / "users.db"

        def users(*words, stdin=None) -> str:
            out = subprocess.run([args.bin, "users", *words, "--store", f"sqlite:{db}"], input=stdin, text=True,
                                 capture_output=True, timeout=60)
            if out.returncode != 0:
                raise RuntimeError(f"users {' '.join(words)}: {out.stderr}")
            return out.stdout

        stable = [(f"stable{i}", f"stable-secret-{i}") for i in range(args.clients)]
        changed = [(f"changed{i}", f"changed-secret-{i}") for i in range(5)]
        for name, password in stable + changed:
            users("add", name, "--password-stdin", "--cost", "4", stdin=password + "\n")
        policy = work / "policy.yaml"
        config = work / "portcullis.yaml"

        def replace(path: Path, text: str):
            """Written beside and renamed over, as editors and configuration tools do: a reload
            never sees half a file (one that did would be refused, the old rules kept)."""
            temporary = path.with_suffix(".new")
            temporary.write_text(text)
            os.replace(temporary, path)

        def write_policy(variant: int):
            replace(policy, f"# variant {variant}\nrules:\n  - name: everyone-{variant % 2}\n    action: allow\n")

        def write_config(variant: int):
            replace(config, f"client-idle-timeout: {60 + variant % 2}\nallow-private-destinations: true\n")

        write_policy(0)
        write_config(0)
        port = b.free_port()
        admin = b.free_port()
        proxy = b.spawn([args.bin, "serve", "--listen", f"127.0.0.1:{port}", "--store", f"sqlite:{db}",
                         "--policy", policy, "--config", config, "--log-level", "error",
                         "--admin", f"127.0.0.1:{admin}", "--data-dir", work / "data"])
        b.wait_port(port)

        def reloads() -> dict:
            """portcullis_reloads_total by what and result, from /metrics."""
            c = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
            c.request("GET", "/metrics")
            text = c.getresponse().read().decode()
            c.close()
            counts = {}
            for line in text.splitlines():
                if line.startswith("portcullis_reloads_total{"):
                    labels = line[line.index("{") + 1:line.index("}")]
                    key = ",".join(sorted(labels.replace('"', "").split(",")))
                    counts[key] = counts.get(key, 0) + float(line.rsplit(" ", 1)[1])
            return counts

        before = reloads()
        stop = threading.Event()
        clients = [Client(port, origin, basic(name, password), stop) for name, password in stable]
        for client in clients:
            client.start()
        time.sleep(1)

        reload_kinds = {"sighup": 0, "policy": 0, "config": 0}
        visibility: list[float] = []
        late: list[str] = []
        secrets = dict(changed)

        def until(predicate) -> float:
            """Seconds until predicate() holds (polled every 20 ms), or inf after 5 s."""
            t0 = time.monotonic()
            while time.monotonic() - t0 < 5:
                if predicate():
                    return time.monotonic() - t0
                time.sleep(0.02)
            return float("inf")

        for i in range(args.changes):
            # A reload of one kind…
            kind = ("sighup", "policy", "config")[i % 3]
            if kind == "sighup":
                os.kill(proxy.pid, signal.SIGHUP)
            elif kind == "policy":
                write_policy(i)
            else:
                write_config(i)
            reload_kinds[kind] += 1
            # …and one account change, measured until the proxy shows it.
            name, _ = changed[i % len(changed)]
            step = (i // len(changed)) % 3
            # The user's current credential is in the proxy's cache first (a request that passes),
            # so what is measured is the proxy noticing the change, not a first login.
            if step != 1:
                status(port, origin, basic(name, secrets[name]))
            if step == 0:
                users("disable", name)
                what = "disable"
                seconds = until(lambda: status(port, origin, basic(name, secrets[name])) == 407)
            elif step == 1:
                users("enable", name)
                what = "enable"
                seconds = until(lambda: status(port, origin, basic(name, secrets[name])) == 200)
            else:
                new = users("rotate", name, "--grace", "60s", "--cost", "4").strip()
                old = secrets[name]
                secrets[name] = new
                what = "rotate"
                seconds = until(lambda: status(port, origin, basic(name, new)) == 200)
                if status(port, origin, basic(name, old)) != 200:
                    late.append(f"{name}: the old secret failed within its grace")
            visibility.append(seconds)
            if seconds > VISIBLE_WITHIN:
                late.append(f"{what} {name}: seen after {seconds:.2f} s")
        time.sleep(1)
        stop.set()
        for client in clients:
            client.join(15)
        after = reloads()
        done = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
        ok = sum(c.ok for c in clients)
        failed = [f for c in clients for f in c.failed]
        elapsed = time.monotonic() - started
        print(f"# Changes under load ({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})")
        print(f"- {args.changes} reloads ({reload_kinds['sighup']} SIGHUP, {reload_kinds['policy']} policy edits, "
              f"{reload_kinds['config']} config edits) and {args.changes} account changes in {elapsed:.0f} s")
        print("- reloads the proxy counted (portcullis_reloads_total): "
              + ", ".join(f"{k} {int(v)}" for k, v in sorted(done.items())))
        print(f"- untouched users: {ok} requests over {len(clients)} keep-alive clients, {len(failed)} failed"
              + (f" ({', '.join(sorted(set(failed)))})" if failed else ""))
        print(f"- a change seen by the proxy after: median {statistics.median(visibility):.2f} s, "
              f"max {max(visibility):.2f} s (bound {VISIBLE_WITHIN:.0f} s)")
        for line in late[:10]:
            print(f"  late: {line}")
        refused = sum(v for k, v in done.items() if "result=failed" in k)
        passed = not failed and not late and ok > 0 and refused == 0
        print(f"{'PASS' if passed else 'FAIL'}: changes under load")
        sys.exit(0 if passed else 1)
    finally:
        b.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
