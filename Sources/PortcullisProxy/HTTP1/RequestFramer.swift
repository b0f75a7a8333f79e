import NIOCore
import NIOHTTP1
import PortcullisAuth

/// The head of a client's request, kept as the bytes that arrived, with what the proxy needs
/// to know about it worked out once while parsing.
struct RequestHead: RawMessageHead {
    enum Method: Equatable {
        case get, head, post, put, delete, options, trace, patch, connect
        case other
    }

    enum Framing: Equatable {
        case none
        case length(Int)
        case chunked
    }

    var method: Method
    var minorVersion: Int
    /// The whole head, from the request line to the empty line.
    var bytes: ByteBuffer
    var lines: [HeaderLine]
    /// End of the method token in ``bytes``.
    var methodEnd: Int
    /// The request-target as sent.
    var target: String
    var framing: Framing
    /// Neither HTTP/1.0 nor `Connection: close`.
    var keepAlive: Bool
    /// Field names listed in `Connection` (other than `close`/`keep-alive`), lower-cased.
    var connectionOptions: [String]
    var expectsContinue: Bool
    /// The `Proxy-Authorization` line when there is exactly one (the normal case; kept without
    /// an array, which would be an allocation per request). `nil` for none or several: the gate
    /// reads those through `values(named:)`.
    var proxyAuthorization: HeaderLine?
    /// `Content-Length` came as several fields or as a list of the same number: the origin gets
    /// one field instead (RFC 9112 §6.3 — an origin that reads `4, 4` as invalid would otherwise
    /// see the body as the start of the next request).
    var contentLengthIsRepeated = false

    var methodBytes: ByteBufferView {
        let view = self.bytes.readableBytesView
        return view[view.startIndex..<(view.startIndex + self.methodEnd)]
    }

    /// Stands in for a request whose head could not be parsed, to answer it.
    static let unparsable = RequestHead(
        method: .other,
        minorVersion: 1,
        bytes: ByteBuffer(),
        lines: [],
        methodEnd: 0,
        target: "",
        framing: .none,
        keepAlive: false,
        connectionOptions: [],
        expectsContinue: false,
        proxyAuthorization: nil
    )

    /// A request head as a client would send it, for tests.
    static func parse(_ text: String) throws(RequestFramer.RequestError) -> RequestHead {
        try RequestFramer.parseHead(ByteBuffer(string: text))
    }
}

/// Reads a client's HTTP/1.1 request stream (RFC 9112): finds each request head, decides how
/// its body is framed and hands body bytes on unchanged (a chunked body stays chunked).
///
/// Hand-written because a proxy must own these rules: where one request ends and the next
/// begins is where request smuggling lives, so the ambiguous cases — `Content-Length` with
/// `Transfer-Encoding`, differing lengths, `Transfer-Encoding` in HTTP/1.0, line folding,
/// bare CR/LF, whitespace before a colon, several `Host` fields — are refused, not guessed.
///
/// Pull-based: the connection handler appends what it reads and asks for the next event when
/// it is ready for it, so a pipelined request simply waits here as bytes.
struct RequestFramer {
    enum Event {
        case head(RequestHead)
        /// Body bytes exactly as the client sent them (chunk framing included when chunked).
        case body(ByteBuffer)
        case end
    }

    /// A request this proxy will not forward, with the status that says why.
    struct RequestError: Error, Equatable {
        var status: HTTPResponseStatus
        var reason: String

        static func bad(_ reason: String) -> RequestError { RequestError(status: .badRequest, reason: reason) }
    }

    private enum State {
        case head
        case body(remaining: Int)
        case chunked(ChunkWalker)
        case end(thenTunnelOrNext: Bool)
        /// After a CONNECT head: what follows is either tunnel bytes or, if no tunnel opens,
        /// the next request; the handler says which.
        case afterConnect
        case failed
    }

    static let maximumHeadSize = 64 * 1024
    static let maximumRequestLine = 16 * 1024
    /// Apache's LimitRequestFields default; real clients send 5 to 30.
    static let maximumHeaderFields = 100

    private var state: State = .head
    private var buffer = ByteBuffer()

    /// Bytes read but not yet handed out as events.
    var bufferedBytes: Int { self.buffer.readableBytes }

    mutating func append(_ bytes: ByteBuffer) {
        if self.buffer.readableBytes == 0 {
            self.buffer = bytes
        } else {
            var bytes = bytes
            self.buffer.writeBuffer(&bytes)
        }
    }

    /// After a CONNECT that did not become a tunnel: parse what follows as requests again.
    mutating func resumeAfterConnect() {
        if case .afterConnect = self.state { self.state = .head }
    }

    /// The bytes read but not parsed, for the tunnel a CONNECT opened.
    mutating func takeBufferedBytes() -> ByteBuffer {
        let bytes = self.buffer
        self.buffer = ByteBuffer()
        return bytes
    }

    /// The next complete event, or `nil` when more bytes are needed.
    mutating func next() throws(RequestError) -> Event? {
        switch self.state {
        case .head:
            // RFC 9112 §2.2: empty lines before a request line are ignored.
            while self.buffer.readableBytes >= 2,
                self.buffer.getInteger(at: self.buffer.readerIndex, as: UInt16.self) == 0x0D0A
            {
                self.buffer.moveReaderIndex(forwardBy: 2)
            }
            guard let headEnd = MessageSyntax.findHeadEnd(self.buffer) else {
                try self.checkIncompleteHead()
                return nil
            }
            guard headEnd <= Self.maximumHeadSize else {
                throw self.fail(
                    RequestError(status: .requestHeaderFieldsTooLarge, reason: "request head larger than 64 KiB")
                )
            }
            let head: RequestHead
            do {
                head = try Self.parseHead(self.buffer.readSlice(length: headEnd)!)
            } catch {
                throw self.fail(error)
            }
            switch head.framing {
            case _ where head.method == .connect:
                // A CONNECT has no body (RFC 9110 §9.3.6).
                self.state = .end(thenTunnelOrNext: true)
            case .none, .length(0):
                self.state = .end(thenTunnelOrNext: false)
            case .length(let n):
                self.state = .body(remaining: n)
            case .chunked:
                self.state = .chunked(ChunkWalker())
            }
            return .head(head)
        case .body(let remaining):
            guard self.buffer.readableBytes > 0 else { return nil }
            let take = min(remaining, self.buffer.readableBytes)
            let slice = self.buffer.readSlice(length: take)!
            self.state = take == remaining ? .end(thenTunnelOrNext: false) : .body(remaining: remaining - take)
            return .body(slice)
        case .chunked(var walker):
            guard self.buffer.readableBytes > 0 else { return nil }
            let before = self.buffer
            let finished: Bool
            do {
                finished = try walker.walk(&self.buffer)
            } catch {
                throw self.fail(.bad(error.reason))
            }
            let consumed = self.buffer.readerIndex - before.readerIndex
            let passed = consumed > 0 ? walker.passedOn(before, upTo: self.buffer.readerIndex) : nil
            self.state = finished ? .end(thenTunnelOrNext: false) : .chunked(walker)
            guard let passed else { return nil }
            return .body(passed)
        case .end(let afterConnect):
            self.state = afterConnect ? .afterConnect : .head
            return .end
        case .afterConnect, .failed:
            return nil
        }
    }

    private mutating func fail(_ error: RequestError) -> RequestError {
        self.state = .failed
        self.buffer = ByteBuffer()
        return error
    }

    /// A head still arriving: refuse it as soon as it is certain to be too large.
    private mutating func checkIncompleteHead() throws(RequestError) {
        let count = self.buffer.readableBytes
        if count > Self.maximumHeadSize {
            throw self.fail(
                RequestError(status: .requestHeaderFieldsTooLarge, reason: "request head larger than 64 KiB")
            )
        }
        if count > Self.maximumRequestLine,
            !self.buffer.readableBytesView.prefix(Self.maximumRequestLine).contains(0x0A)
        {
            throw self.fail(RequestError(status: .uriTooLong, reason: "request line longer than 16 KiB"))
        }
    }

    // MARK: - Parsing a head

    static func parseHead(_ bytes: ByteBuffer) throws(RequestError) -> RequestHead {
        // Read through a pointer: this runs for every request.
        let parsed = bytes.withUnsafeReadableBytes { raw in
            Result { () throws(RequestError) -> RequestHead in try Self.parseHead(raw, of: bytes) }
        }
        return try parsed.get()
    }

    private static func parseHead(_ raw: UnsafeRawBufferPointer, of bytes: ByteBuffer) throws(RequestError)
        -> RequestHead
    {
        let count = raw.count
        guard let lineEnd = raw.firstIndex(of: 0x0D), lineEnd + 1 < count, raw[lineEnd + 1] == 0x0A else {
            throw .bad("malformed request line")
        }
        if raw[..<lineEnd].contains(0x0A) { throw .bad("bare LF in the request line") }
        if lineEnd > Self.maximumRequestLine {
            throw RequestError(status: .uriTooLong, reason: "request line longer than 16 KiB")
        }
        // request-line = method SP request-target SP HTTP-version (RFC 9112 §3), single spaces.
        guard let methodEnd = raw[..<lineEnd].firstIndex(of: 0x20), methodEnd > 0,
            raw[..<methodEnd].allSatisfy(HTTPGrammar.isTokenByte)
        else { throw .bad("malformed request line") }
        guard let targetEnd = raw[(methodEnd + 1)..<lineEnd].firstIndex(of: 0x20), targetEnd > methodEnd + 1 else {
            throw .bad("malformed request line")
        }
        let targetBytes = UnsafeRawBufferPointer(rebasing: raw[(methodEnd + 1)..<targetEnd])
        if targetBytes.contains(where: { $0 <= 0x20 || $0 == 0x7F }) { throw .bad("invalid request target") }
        let version = UnsafeRawBufferPointer(rebasing: raw[(targetEnd + 1)..<lineEnd])
        guard version.count == 8, FieldName.bytes(version.prefix(5), equal: "HTTP/"),
            (48...57).contains(version[5]), version[6] == UInt8(ascii: "."), (48...57).contains(version[7])
        else { throw .bad("malformed HTTP version") }
        let major = version[5] - 48
        let minor = Int(version[7] - 48)
        guard major == 1, minor <= 1 else {
            throw RequestError(status: .httpVersionNotSupported, reason: "only HTTP/1.0 and HTTP/1.1 are spoken here")
        }

        var lines: [HeaderLine] = []
        lines.reserveCapacity(12)
        if let reason = MessageSyntax.headerLines(raw, from: lineEnd + 2, to: count - 2, into: &lines) {
            throw .bad(reason)
        }
        if lines.count > Self.maximumHeaderFields {
            throw RequestError(
                status: .requestHeaderFieldsTooLarge,
                reason: "more than \(Self.maximumHeaderFields) header fields"
            )
        }

        var hostCount = 0
        var length: Int?
        var sawLength = false
        var lengthIsRepeated = false
        var transferEncodings = 0
        var chunkedLast = false
        var close = false
        var options: [String] = []
        var expectsContinue = false
        var proxyAuthorization: HeaderLine?
        var proxyAuthorizationCount = 0
        for line in lines {
            let name = line.name(in: raw)
            switch name.count {
            case 4 where FieldName.equals(name, "host"):
                hostCount += 1
            case 6 where FieldName.equals(name, "expect"):
                expectsContinue = FieldName.equals(line.value(in: raw), "100-continue")
            case 10 where FieldName.equals(name, "connection"):
                MessageSyntax.connectionOptions(line.value(in: raw), close: &close, options: &options)
            case 14 where FieldName.equals(name, "content-length"):
                if sawLength || line.value(in: raw).contains(UInt8(ascii: ",")) { lengthIsRepeated = true }
                sawLength = true
                guard let n = MessageSyntax.contentLength(line.value(in: raw), previous: length) else {
                    throw .bad("invalid or conflicting Content-Length")
                }
                length = n
            case 17 where FieldName.equals(name, "transfer-encoding"):
                // RFC 9112 §6.1: chunked must be applied once and last; anything else leaves the
                // body's length unknowable.
                let codings = FieldName.tokens(line.value(in: raw))
                guard !codings.isEmpty, !chunkedLast,
                    codings.allSatisfy({ $0.utf8.allSatisfy(HTTPGrammar.isTokenByte) })
                else { throw .bad("invalid Transfer-Encoding") }
                transferEncodings += codings.count
                chunkedLast = codings.last == "chunked"
                if codings.dropLast().contains("chunked") { throw .bad("invalid Transfer-Encoding") }
            case 19 where FieldName.equals(name, "proxy-authorization"):
                proxyAuthorizationCount += 1
                proxyAuthorization = proxyAuthorizationCount == 1 ? line : nil
            default:
                break
            }
        }
        if hostCount > 1 { throw .bad("more than one Host field") }
        if hostCount == 0, minor == 1 { throw .bad("an HTTP/1.1 request needs a Host field") }

        let framing: RequestHead.Framing
        if transferEncodings > 0 {
            if minor == 0 { throw .bad("Transfer-Encoding in an HTTP/1.0 request") }
            if sawLength { throw .bad("both Transfer-Encoding and Content-Length") }
            guard chunkedLast else { throw .bad("Transfer-Encoding does not end in chunked") }
            framing = .chunked
        } else if let length {
            framing = .length(length)
        } else {
            framing = .none
        }

        return RequestHead(
            method: Self.method(UnsafeRawBufferPointer(rebasing: raw[..<methodEnd])),
            minorVersion: minor,
            bytes: bytes,
            lines: lines,
            methodEnd: methodEnd,
            target: String(decoding: targetBytes, as: UTF8.self),
            framing: framing,
            keepAlive: minor == 1 && !close,
            connectionOptions: options,
            expectsContinue: expectsContinue,
            proxyAuthorization: proxyAuthorization,
            contentLengthIsRepeated: lengthIsRepeated
        )
    }

    private static func method(_ bytes: UnsafeRawBufferPointer) -> RequestHead.Method {
        // Methods are case-sensitive (RFC 9110 §9.1).
        switch bytes.count {
        case 3:
            if FieldName.bytes(bytes, equal: "GET") { return .get }
            if FieldName.bytes(bytes, equal: "PUT") { return .put }
        case 4:
            if FieldName.bytes(bytes, equal: "HEAD") { return .head }
            if FieldName.bytes(bytes, equal: "POST") { return .post }
        case 5:
            if FieldName.bytes(bytes, equal: "TRACE") { return .trace }
            if FieldName.bytes(bytes, equal: "PATCH") { return .patch }
        case 6:
            if FieldName.bytes(bytes, equal: "DELETE") { return .delete }
        case 7:
            if FieldName.bytes(bytes, equal: "OPTIONS") { return .options }
            if FieldName.bytes(bytes, equal: "CONNECT") { return .connect }
        default:
            break
        }
        return .other
    }

}
