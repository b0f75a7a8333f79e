"""Origin servers that run as threads inside the test process, on 127.0.0.1 only."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import socketserver
import ssl
import struct
import threading
import time
from urllib.parse import parse_qs, urlsplit

from portcullis_helpers import data_chunks


def _read_chunked(rfile, sink):
    """Decode a chunked body from rfile, feeding data to sink(bytes). Returns byte count."""
    total = 0
    while True:
        line = rfile.readline(4096)
        if not line:
            raise EOFError("EOF in chunked body")
        size = int(line.split(b";")[0].strip(), 16)
        if size == 0:
            while True:  # trailers
                t = rfile.readline(65536)
                if t in (b"\r\n", b"\n", b""):
                    return total
        remaining = size
        while remaining:
            piece = rfile.read(min(remaining, 1 << 20))
            if not piece:
                raise EOFError("EOF inside a chunk")
            sink(piece)
            remaining -= len(piece)
            total += len(piece)
        crlf = rfile.readline(16)
        if crlf not in (b"\r\n", b"\n"):
            raise ValueError(f"bad chunk terminator {crlf!r}")


class _TrackingMixin:
    """Counts accepted TCP connections and can close them all at teardown."""

    def _init_tracking(self):
        self.lock = threading.Lock()
        self.connections_accepted = 0
        self.open_sockets = set()

    def get_request(self):
        sock, addr = super().get_request()
        with self.lock:
            self.connections_accepted += 1
            self.open_sockets.add(sock)
        return sock, addr

    def shutdown_request(self, request):
        with self.lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def close_all(self):
        with self.lock:
            socks = list(self.open_sockets)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass


class OriginHandler(http.server.BaseHTTPRequestHandler):
    """Endpoints:
    /text                   'hello from origin\\n'
    /headers                JSON: method, target, version, headers (pairs), conn_id, body_len
    /bytes/N[?chunked=1]    N deterministic bytes (portcullis_helpers.data_chunks); sha256 recorded
    /upload                 reads the body (Content-Length or chunked), answers JSON sha256/length
    /delay/SECONDS          sets server.delay_started, sleeps, answers 'slept'
    /status/204, /status/304  no body (304 carries Content-Length: 1234 and an ETag)
    /closedelim             HTTP/1.1 200 without Content-Length or chunking, then close
    """

    protocol_version = "HTTP/1.1"
    server_version = "TestOrigin/1"

    def log_message(self, *args):  # quiet
        pass

    def setup(self):
        super().setup()
        with self.server.lock:
            self.server.conn_seq += 1
            self.conn_id = self.server.conn_seq

    # every method goes through route()
    def do_GET(self):
        self.route()

    do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = do_HEAD = do_GET

    def _read_body(self, sink=None) -> int:
        sink = sink or (lambda b: None)
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            return _read_chunked(self.rfile, sink)
        n = int(self.headers.get("Content-Length") or 0)
        remaining = n
        while remaining:
            piece = self.rfile.read(min(remaining, 1 << 20))
            if not piece:
                raise EOFError("EOF in body")
            sink(piece)
            remaining -= len(piece)
        return n

    def _send(self, status: int, body: bytes, ctype: str = "text/plain", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def route(self):
        self.server.record(self)
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        if path == "/text":
            self._read_body()
            self._send(200, b"hello from origin\n")
        elif path == "/headers":
            body_len = self._read_body()
            info = {
                "method": self.command,
                "target": self.path,
                "version": self.request_version,
                "headers": [[k, v] for k, v in self.headers.items()],
                "conn_id": self.conn_id,
                "body_len": body_len,
            }
            self._send(200, json.dumps(info).encode(), "application/json")
        elif path.startswith("/bytes/"):
            self._read_body()
            n = int(path.split("/")[2])
            chunked = query.get("chunked") == ["1"]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(n))
            self.end_headers()
            if self.command == "HEAD":
                return
            h = hashlib.sha256()
            for c in data_chunks(n):
                h.update(c)
                if chunked:
                    self.wfile.write(b"%x\r\n" % len(c))
                    self.wfile.write(c)
                    self.wfile.write(b"\r\n")
                else:
                    self.wfile.write(c)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
            self.server.last_download_sha256 = h.hexdigest()
        elif path == "/upload":
            h = hashlib.sha256()
            n = self._read_body(h.update)
            info = {"sha256": h.hexdigest(), "length": n,
                    "expect": self.headers.get("Expect"),
                    "transfer_encoding": self.headers.get("Transfer-Encoding"),
                    "content_length": self.headers.get("Content-Length")}
            self._send(200, json.dumps(info).encode(), "application/json")
        elif path.startswith("/delay/"):
            self._read_body()
            secs = float(path.split("/")[2])
            self.server.delay_started.set()
            time.sleep(secs)
            self._send(200, b"slept\n")
        elif path == "/status/204":
            self._read_body()
            self.send_response(204)
            self.end_headers()
        elif path == "/status/304":
            self._read_body()
            self.send_response(304)
            self.send_header("ETag", '"v1"')
            self.send_header("Content-Length", "1234")
            self.end_headers()
        elif path == "/closedelim":
            self._read_body()
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
            self.wfile.write(b"close-delimited body\n" * 100)
            self.close_connection = True
        else:
            self._read_body()
            self._send(404, b"no such endpoint\n")


class HTTPOrigin(_TrackingMixin, socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, handler=OriginHandler):
        self._init_tracking()
        self.conn_seq = 0
        self.requests = []  # (method, path, headers)
        self.delay_started = threading.Event()
        self.last_download_sha256 = None
        super().__init__(("127.0.0.1", 0), handler)
        self.port = self.server_address[1]
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def record(self, handler):
        with self.lock:
            self.requests.append((handler.command, handler.path, list(handler.headers.items())))

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.shutdown()
        self.close_all()
        self.server_close()


class TLSHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = b"hello over tls\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class TLSOrigin(_TrackingMixin, socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, certfile: str, keyfile: str):
        self._init_tracking()
        super().__init__(("127.0.0.1", 0), TLSHandler)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(certfile, keyfile)
        self.port = self.server_address[1]
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def get_request(self):
        sock, addr = super().get_request()
        sock.settimeout(10)
        return sock, addr

    def finish_request(self, request, client_address):
        # TLS handshake in the handler thread, not in the accept loop.
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.shutdown()
        self.close_all()
        self.server_close()


class TCPOrigin:
    """A raw TCP server. mode='echo': echoes bytes; on EOF from the client it sends
    b'<origin saw EOF>' and closes. mode='silent': accepts and reads, never answers."""

    EOF_MARK = b"<origin saw EOF>"

    def __init__(self, mode: str = "echo"):
        self.mode = mode
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.lsock.settimeout(0.2)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.connections_accepted = 0
        self.received = bytearray()
        self.eof_seen = threading.Event()
        self.socks = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                s, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.connections_accepted += 1
                self.socks.append(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        s.settimeout(60)
        try:
            while True:
                data = s.recv(1 << 18)
                if not data:
                    break
                if self.mode == "echo":
                    with self.lock:
                        if len(self.received) < (1 << 20):
                            self.received += data[: (1 << 20) - len(self.received)]
                    s.sendall(data)
            self.eof_seen.set()
            if self.mode == "echo":
                s.sendall(self.EOF_MARK)
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            if self.mode == "echo":
                s.close()

    def stop(self):
        self.stopping.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            socks = list(self.socks)
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
        self.thread.join(2)


class NXDomainDNS:
    """A UDP DNS server on 127.0.0.1:53 that answers NXDOMAIN to everything, so a proxy whose
    resolv.conf points here can fail a lookup without any packet leaving the machine."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 53))
        self.sock.settimeout(0.2)
        self.queries = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        while not self.stopping.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            if len(data) < 12:
                continue
            self.queries += 1
            qid, flags, qd = struct.unpack("!HHH", data[:6])
            # question section: the name, then QTYPE and QCLASS
            i = 12
            for _ in range(qd):
                while i < len(data) and data[i] != 0:
                    i += data[i] + 1
                i += 5
            rd = flags & 0x0100
            resp_flags = 0x8000 | rd | 0x0080 | 3  # QR, RD echoed, RA, NXDOMAIN
            reply = struct.pack("!HHHHHH", qid, resp_flags, qd, 0, 0, 0) + data[12:i]
            try:
                self.sock.sendto(reply, addr)
            except OSError:
                pass

    def stop(self):
        self.stopping.set()
        self.thread.join(2)
        self.sock.close()
