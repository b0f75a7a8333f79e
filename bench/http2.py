"""HTTP/2 on the TLS listener against HTTP/1.1 on the same listener, in one run, everything on
loopback (issue 21's figures):

1. many requests: 50 concurrent streams on ONE HTTP/2 connection (`h2load -c1 -m50`, with
   `:scheme http` and the origin's `:authority`) against HTTP/1.1 over 50 TLS connections
   (`wrk -t1 -c50` + bench/proxy.lua), keep-alive GETs of nginx's 1 KiB file, Basic on every
   request; the two clients' own CPU per request is reported, as they differ;
2. bulk: one CONNECT tunnel's download throughput — an HTTP/2 CONNECT stream (Python over ssl,
   frames read by hand, frames up to 16 MiB asked for) against an HTTP/1.1 CONNECT over TLS (Python ssl) — reading N MiB
   that a local source writes as fast as it can into the tunnel.

Targets alternate, order reversed every round; ratios are paired within a round.

    python3 bench/http2.py [--rounds 5] [--duration 5] [--bulk-mib 256]
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import hpack

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
AUTH = "Basic " + base64.b64encode(b"bench:benchpass").decode()


def tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a throwaway self-signed certificate on loopback
    return context


def bulk_h1(port: int, target: str, total: int) -> float:
    """MB/s reading `total` bytes through an HTTP/1.1 CONNECT tunnel over TLS."""
    context = tls_context()
    context.set_alpn_protocols(["http/1.1"])
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost") as s:
        return b.connect_download(s, target, total, AUTH)


def bulk_h2(port: int, target: str, total: int) -> float:
    """MB/s reading `total` bytes through one HTTP/2 CONNECT stream. Frames are read by hand
    (9-byte headers, payloads skipped, WINDOW_UPDATEs written directly): the h2 library's
    per-frame Python work, not the proxy, capped its first version at a third of this."""
    context = tls_context()
    context.set_alpn_protocols(["h2"])
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost") as s:
        assert s.selected_alpn_protocol() == "h2"

        def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
            return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload

        settings = (5).to_bytes(2, "big") + ((1 << 24) - 1).to_bytes(4, "big")  # MAX_FRAME_SIZE
        settings += (4).to_bytes(2, "big") + (64 << 20).to_bytes(4, "big")  # INITIAL_WINDOW_SIZE
        block = hpack.Encoder().encode([(":method", "CONNECT"), (":authority", target), ("proxy-authorization", AUTH)])
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, settings)
                  + frame(8, 0, 0, (256 << 20).to_bytes(4, "big"))  # connection WINDOW_UPDATE
                  + frame(1, 0x4, 1, block))  # HEADERS, END_HEADERS, stream 1
        decoder = hpack.Decoder()
        buffer = bytearray()
        got, start, unacked = 0, None, 0
        view = memoryview(bytearray(1 << 22))
        while got < total:
            n = s.recv_into(view)
            if not n:
                raise RuntimeError("connection closed early")
            buffer += view[:n]
            offset = 0
            while len(buffer) - offset >= 9:
                length = int.from_bytes(buffer[offset:offset + 3], "big")
                if len(buffer) - offset < 9 + length:
                    break
                kind, flags = buffer[offset + 3], buffer[offset + 4]
                payload_start = offset + 9
                if kind == 0:  # DATA
                    got += length
                    unacked += length
                elif kind == 1:  # HEADERS: the response
                    headers = dict(decoder.decode(bytes(buffer[payload_start:payload_start + length])))
                    assert headers.get(":status") == "200", headers
                    start = time.monotonic()
                elif kind == 4 and not flags & 1:  # SETTINGS: acknowledge
                    s.sendall(frame(4, 1, 0))
                elif kind in (3, 7):
                    raise RuntimeError("stream reset or connection closed")
                offset = payload_start + length
            del buffer[:offset]
            if unacked >= 16 << 20:
                increment = unacked.to_bytes(4, "big")
                s.sendall(frame(8, 0, 0, increment) + frame(8, 0, 1, increment))
                unacked = 0
        return total / (time.monotonic() - start) / 1e6


def h2load(port: int, origin: int, duration: int, streams: int) -> dict:
    """`h2load -c1 -m<streams>` for `duration` seconds: req/s and 2xx count."""
    out = subprocess.run(["h2load", "-c1", f"-m{streams}", "-D", str(duration), "-H", ":scheme: http",
                          "-H", f":authority: 127.0.0.1:{origin}", "-H", f"proxy-authorization: {AUTH}",
                          f"https://127.0.0.1:{port}/1k"], capture_output=True, text=True, timeout=duration + 60)
    text = out.stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text).group(1))
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", text).group(1))
    assert "Application protocol: h2" in text, text[-500:]
    return {"rps": rps, "requests": done, "non2xx": done - int(codes.group(1))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=str(ROOT / ".build/release/portcullis"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--bulk-mib", type=int, default=256)
    args = ap.parse_args()
    if not Path(args.bin).exists():
        sys.exit(f"{args.bin} missing: swift build -c release --product portcullis")
    b.find("h2load", "nghttp2-client")
    work = Path(tempfile.mkdtemp(prefix="portcullis-h2-"))
    os.chmod(work, 0o755)
    stop = threading.Event()
    started = time.monotonic()
    try:
        origin = b.start_origin(b.find("nginx", "nginx-light"), work)
        src = b.start_byte_source(stop)
        cert, key = b.self_signed_certificate(work)
        users = work / "users"
        subprocess.run(["htpasswd", "-bcB", "-C", "5", users, "bench", "benchpass"], check=True, capture_output=True)
        port = b.free_port()
        proxy = b.spawn([args.bin, "serve", "--listen-tls", f"127.0.0.1:{port}", "--tls-cert", cert, "--tls-key", key,
                         "--htpasswd", users, "--allow-private-destinations", "--connect-ports", str(src),
                         "--log-level", "error", "--data-dir", work / "data"])
        b.wait_port(port)
        env = {"BENCH_ORIGIN_URL": f"http://127.0.0.1:{origin}/1k", "BENCH_ORIGIN_HOST": f"127.0.0.1:{origin}",
               "BENCH_PROXY_AUTH": AUTH}
        lua = ROOT / "bench" / "proxy.lua"

        def cpu() -> float:
            return sum(b.cpu_seconds(proxy.pid))

        def many(kind: str, duration: int) -> dict:
            before = cpu()
            t0 = time.monotonic()
            client_before = os.times()
            if kind == "h2":
                x = h2load(port, origin, duration, 50)
            else:
                x = b.wrk(port, duration, 50, lua, env, scheme="https")
            client = os.times()
            x["proxy_cpu_us"] = (cpu() - before) / max(x["requests"], 1) * 1e6
            x["client_cpu_us"] = ((client.children_user + client.children_system)
                                  - (client_before.children_user + client_before.children_system)) / max(x["requests"], 1) * 1e6
            x["seconds"] = time.monotonic() - t0
            assert x["non2xx"] == 0, (kind, x)
            return x

        for kind in ("h2", "h1"):
            many(kind, 2)
        total = args.bulk_mib << 20
        bulk_h1(port, f"127.0.0.1:{src}", 32 << 20)
        bulk_h2(port, f"127.0.0.1:{src}", 32 << 20)
        results = {"h2 many": [], "h1 many": [], "h2 bulk": [], "h1 bulk": []}
        for r in range(args.rounds):
            order = ["h2", "h1"] if r % 2 == 0 else ["h1", "h2"]
            for kind in order:
                x = many(kind, args.duration)
                results[f"{kind} many"].append(x)
                print(f"[h2] round {r + 1} {kind} 50 at once: {x['rps']:.0f} req/s, proxy {x['proxy_cpu_us']:.1f} µs/req, "
                      f"client {x['client_cpu_us']:.1f} µs/req", flush=True)
            for kind in order:
                before = cpu()
                rate = (bulk_h2 if kind == "h2" else bulk_h1)(port, f"127.0.0.1:{src}", total)
                results[f"{kind} bulk"].append({"mbps": rate, "proxy_cpu_s_per_gb": (cpu() - before) / (total / 1e9)})
                print(f"[h2] round {r + 1} {kind} CONNECT bulk: {rate:.0f} MB/s", flush=True)
        ratios = {}
        many_ratio = [h["rps"] / o["rps"] for h, o in zip(results["h2 many"], results["h1 many"])]
        bulk_ratio = [h["mbps"] / o["mbps"] for h, o in zip(results["h2 bulk"], results["h1 bulk"])]
        ratios["req/s, 50 streams on one h2 connection / 50 HTTP/1.1 TLS connections (target >= 1)"] = many_ratio
        ratios["CONNECT bulk MB/s, one h2 stream / one HTTP/1.1 TLS tunnel (target >= 0.8)"] = bulk_ratio
        meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": os.cpu_count(),
                "rounds": args.rounds, "duration": args.duration, "bulk_mib": args.bulk_mib,
                "seconds": round(time.monotonic() - started)}
        med = statistics.median
        lines = [f"# HTTP/2 vs HTTP/1.1 on the TLS listener ({meta['date']})", "",
                 "| target | figure (median) | proxy CPU | client CPU |", "| --- | ---: | ---: | ---: |"]
        for kind, label in (("h2", "HTTP/2, 1 connection × 50 streams (h2load)"), ("h1", "HTTP/1.1, 50 TLS connections (wrk)")):
            xs = results[f"{kind} many"]
            lines.append(f"| {label} | {med(x['rps'] for x in xs):.0f} req/s | {med(x['proxy_cpu_us'] for x in xs):.1f} µs/req "
                         f"| {med(x['client_cpu_us'] for x in xs):.1f} µs/req |")
        for kind, label in (("h2", "HTTP/2 CONNECT stream, bulk download"), ("h1", "HTTP/1.1 CONNECT over TLS, bulk download")):
            xs = results[f"{kind} bulk"]
            lines.append(f"| {label} | {med(x['mbps'] for x in xs):.0f} MB/s | {med(x['proxy_cpu_s_per_gb'] for x in xs):.2f} s/GB | — |")
        lines += ["", "| ratio (paired per round) | median (range) | per round |", "| --- | --- | --- |"]
        lines += [f"| {k} | {med(v):.3f} ({min(v):.3f}–{max(v):.3f}) | {', '.join(f'{x:.3f}' for x in v)} |" for k, v in ratios.items()]
        text = "\n".join(lines) + "\n"
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "http2.md").write_text(text)
        (OUT / "http2.json").write_text(json.dumps({"meta": meta, "results": results, "ratios": ratios}, indent=2))
        print(text)
    finally:
        stop.set()
        b.stop_all()


if __name__ == "__main__":
    main()
