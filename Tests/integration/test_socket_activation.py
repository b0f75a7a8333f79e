"""Socket activation (systemd's LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES): the proxy serves on
listening sockets handed over at start, so a replacement can accept on the same socket before the
old process drains — one accept queue, nothing reset."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request

from portcullis_helpers import (
    PORTCULLIS_BIN, RawConn, _StreamCollector, basic, clean_env, wait_until,
)

AUTH = ("Proxy-Authorization", basic())


def listening_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(256)
    return s


class ActivatedProxy:
    """`portcullis serve` started as a service manager starts it: `sockets` at descriptors 3, 4…,
    LISTEN_PID set to the process's own pid by the shell that execs it."""

    def __init__(self, sockets: list[socket.socket], names: list[str], args: list[str], home):
        self.sockets = sockets
        fds = [s.fileno() for s in sockets]

        def place():
            # Descriptors above every target first, so dup2 never overwrites a source.
            high = [os.dup(fd) for fd in fds]
            for i, fd in enumerate(high):
                os.dup2(fd, 3 + i)
                os.close(fd)
            for fd in fds:
                if fd >= 3 + len(fds):
                    os.close(fd)

        os.makedirs(home, exist_ok=True)
        env = clean_env(home, {"LISTEN_FDS": str(len(sockets)), "LISTEN_FDNAMES": ":".join(names)})
        self.proc = subprocess.Popen(
            ["sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", PORTCULLIS_BIN, "serve", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            # close_fds runs after preexec_fn: keep the targets, not the sources.
            env=env, preexec_fn=place, pass_fds=tuple(range(3, 3 + len(fds))))
        self.stderr = _StreamCollector(self.proc.stderr)

    def wait_logged(self, text: str, timeout: float = 20.0):
        wait_until(lambda: text in self.stderr.text() or self.proc.poll() is not None, timeout, what=text)
        assert text in self.stderr.text(), self.stderr.text()[-3000:]

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def test_inherited_proxy_and_admin_sockets_are_served(tmp_path, users_file, origin):
    proxy_socket, admin_socket = listening_socket(), listening_socket()
    port, admin_port = proxy_socket.getsockname()[1], admin_socket.getsockname()[1]
    p = ActivatedProxy(
        [proxy_socket, admin_socket], ["portcullis.socket", "admin"],
        ["--htpasswd", str(users_file), "--allow-private-destinations"], tmp_path)
    try:
        p.wait_logged("listening")
        # No --listen was given: the inherited socket replaces the default listener.
        assert f"addresses=127.0.0.1:{port} " in p.stderr.text()
        assert "127.0.0.1:3128" not in p.stderr.text()
        with RawConn("127.0.0.1", port) as c:
            r = c.request("GET", f"{origin.base}/text", [AUTH])
            assert r.status == 200, r.describe()
            r = c.request("GET", f"{origin.base}/text", [])
            assert r.status == 407, r.describe()
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=10) as ready:
            assert ready.status == 200
        # A child process (the PAC evaluator) inherits neither socket.
        for fd in (3, 4):
            flags = open(f"/proc/{p.proc.pid}/fdinfo/{fd}").read()
            octal = int(next(line for line in flags.splitlines() if line.startswith("flags:")).split()[1], 8)
            assert octal & 0o2000000, f"descriptor {fd} is not close-on-exec: {flags}"
    finally:
        p.kill()
        proxy_socket.close()
        admin_socket.close()


def test_a_socket_that_is_not_listening_is_refused_by_name(tmp_path, users_file):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    p = ActivatedProxy([s], [""], ["--htpasswd", str(users_file)], tmp_path)
    try:
        assert p.proc.wait(20) != 0
        p.stderr.wait_closed(5)
        assert "inherited descriptor 3 is not listening" in p.stderr.text(), p.stderr.text()[-2000:]
    finally:
        p.kill()
        s.close()


def test_a_replacement_on_the_same_socket_loses_no_request(tmp_path, users_file, origin):
    """SIGTERM to the old process while requests flow on new connections, the new process started
    on the same socket as the old one drains: the connections that queue meanwhile wait for the
    new one, those the old one had accepted are answered. Every request gets its 200.

    The new process starts once the old one stopped accepting: with both accepting, a debug
    build of NIO asserts that a readable listening socket always yields a connection, which
    another process may have taken (release builds handle it; bench/reliability/restart.py
    measures both orders)."""
    shared = listening_socket()
    port = shared.getsockname()[1]
    args = ["--htpasswd", str(users_file), "--allow-private-destinations"]
    old = ActivatedProxy([shared], ["proxy"], args, tmp_path / "old")
    new = None
    results = {"ok": 0, "failed": []}
    stop = threading.Event()

    def load():
        while not stop.is_set():
            try:
                # A new connection per request: each is accepted by one process or the other.
                with RawConn("127.0.0.1", port, timeout=10) as c:
                    r = c.request("GET", f"{origin.base}/text", [AUTH])
                if r.status == 200:
                    results["ok"] += 1
                else:
                    results["failed"].append(r.status)
            except (OSError, EOFError) as error:
                results["failed"].append(repr(error))

    try:
        old.wait_logged("listening")
        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        old.proc.send_signal(signal.SIGTERM)
        old.wait_logged("shutting down")
        new = ActivatedProxy([shared], ["proxy"], args, tmp_path / "new")
        assert old.proc.wait(20) == 0
        new.wait_logged("listening")
        served_before = results["ok"]
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(20)
        assert not results["failed"], results["failed"][:10]
        # The new process went on serving once the old one had gone.
        assert results["ok"] > served_before, results
    finally:
        stop.set()
        old.kill()
        if new:
            new.kill()
        shared.close()
