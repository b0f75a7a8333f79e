"""Streaming with bounded memory: 1 GiB through the proxy each way, checked by sha256, while
the proxy's peak RSS (VmHWM) grows by less than 100 MiB."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pytest

from portcullis_helpers import basic, build_request, data_chunks

GIB = 1 << 30
MAX_GROWTH_KIB = 100 * 1024
TEST_BUDGET_S = 60
AUTH = ("Proxy-Authorization", basic())

pytestmark = pytest.mark.slow


@pytest.fixture
def warm_proxy(launcher, origin):
    """A fresh proxy (so VmHWM starts clean) that has served one small request."""
    p = launcher.start("--upstream-response-timeout", "120")
    with p.conn() as c:
        assert c.request("GET", f"{origin.base}/text", [AUTH]).status == 200
    return p


def _download(p, origin, query: str):
    base = p.vm_hwm_kib()
    started = time.monotonic()
    h = hashlib.sha256()
    n = 0
    with p.conn(timeout=30) as c:
        c.send(build_request("GET", f"{origin.base}/bytes/{GIB}{query}", [AUTH]))
        r = c.read_response_head()
        assert r.status == 200, r.describe()
        for chunk in c.iter_body(r):
            h.update(chunk)
            n += len(chunk)
            if time.monotonic() - started > TEST_BUDGET_S:
                pytest.fail(f"only {n >> 20} MiB after {TEST_BUDGET_S}s")
        # the connection is still good for another request
        r2 = c.request("GET", f"{origin.base}/text", [AUTH])
        assert r2.body == b"hello from origin\n"
    elapsed = time.monotonic() - started
    growth = p.vm_hwm_kib() - base
    assert n == GIB
    assert h.hexdigest() == origin.last_download_sha256
    assert growth < MAX_GROWTH_KIB, f"VmHWM grew by {growth >> 10} MiB"
    print(f"download{query}: {GIB / elapsed / (1 << 20):.0f} MiB/s, VmHWM +{growth >> 10} MiB")


def test_download_1gib_content_length(warm_proxy, origin):
    _download(warm_proxy, origin, "")


def test_download_1gib_chunked(warm_proxy, origin):
    _download(warm_proxy, origin, "?chunked=1")


def _upload(p, origin, chunked: bool):
    base = p.vm_hwm_kib()
    started = time.monotonic()
    hdrs = [AUTH, ("Content-Type", "application/octet-stream")]
    hdrs.append(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(GIB)))
    h = hashlib.sha256()
    with p.conn(timeout=30) as c:
        c.send(build_request("POST", f"{origin.base}/upload", hdrs))
        err = []

        def send_body():
            try:
                for chunk in data_chunks(GIB):
                    h.update(chunk)
                    if chunked:
                        c.sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                    else:
                        c.sock.sendall(chunk)
                    if time.monotonic() - started > TEST_BUDGET_S:
                        raise TimeoutError(f"upload not done after {TEST_BUDGET_S}s")
                if chunked:
                    c.sock.sendall(b"0\r\n\r\n")
            except Exception as e:  # noqa: BLE001 - reported below
                err.append(e)

        t = threading.Thread(target=send_body, daemon=True)
        t.start()
        t.join(TEST_BUDGET_S + 5)
        assert not t.is_alive(), "upload thread stuck"
        assert not err, f"sending failed: {err[0]!r}"
        r = c.read_response()
    elapsed = time.monotonic() - started
    assert r.status == 200, r.describe()
    info = json.loads(r.body)
    growth = p.vm_hwm_kib() - base
    assert info["length"] == GIB
    assert info["sha256"] == h.hexdigest()
    assert growth < MAX_GROWTH_KIB, f"VmHWM grew by {growth >> 10} MiB"
    print(f"upload chunked={chunked}: {GIB / elapsed / (1 << 20):.0f} MiB/s, VmHWM +{growth >> 10} MiB")


def test_upload_1gib_content_length(warm_proxy, origin):
    _upload(warm_proxy, origin, chunked=False)


def test_upload_1gib_chunked(warm_proxy, origin):
    _upload(warm_proxy, origin, chunked=True)
