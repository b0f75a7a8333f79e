import NIOCore

/// The head of an origin's response, kept as the bytes that arrived: header lines are copied
/// to the client as they are, without turning every name and value into a String.
struct ResponseHead: RawMessageHead {
    var minorVersion: Int
    var status: Int
    /// The whole head, from the status line to the empty line.
    var bytes: ByteBuffer
    var lines: [HeaderLine]
    /// End of the status line (without CRLF): the reason phrase ends here.
    var statusLineEnd: Int
}

/// Reads an origin's HTTP/1.1 response stream: parses the head, works out how the body is
/// framed (RFC 9112 §6.3) and relays body bytes without re-encoding them.
///
/// Hand-written because a proxy must own this: the same rules decide where one response ends
/// and the next begins on a reused connection, which is where response smuggling lives.
struct ResponseFramer {
    enum Framing: Equatable {
        case none
        case length(Int)
        case chunked
        case untilClose
    }

    enum Event {
        /// A 1xx (not 101) head; the final head follows.
        case informational(ResponseHead)
        case head(ResponseHead, Framing)
        /// Body bytes exactly as the origin sent them (chunk framing included when chunked).
        case body(ByteBuffer)
        case end
    }

    struct ProtocolError: Error, Equatable {
        var reason: String
    }

    private enum State {
        case idle
        case head
        case body(Framing, remaining: Int)
        case chunked(ChunkWalker)
        case done
    }

    static let maximumHeadSize = 64 * 1024

    private var state: State = .idle
    private var pending = ByteBuffer()
    private var requestWasHead = false
    /// Emit only chunk payloads (for an HTTP/1.0 client) instead of the raw chunked stream.
    private var dechunk = false
    /// Whether the connection may carry another exchange once this response ends.
    private(set) var reusable = true

    /// Prepares for the response to a request with `method`.
    mutating func expectResponse(toHead: Bool, dechunk: Bool) {
        self.state = .head
        self.requestWasHead = toHead
        self.dechunk = dechunk
        self.pending.clear()
    }

    var isAwaitingResponse: Bool {
        if case .idle = self.state { return false }
        if case .done = self.state { return false }
        return true
    }

    /// How far the current exchange's response has come.
    enum Progress: Equatable {
        /// No request sent yet on this connection.
        case noRequest
        /// Waiting for the final head (1xx heads may have come).
        case awaitingHead
        case inBody
        case complete
    }

    var progress: Progress {
        switch self.state {
        case .idle: return .noRequest
        case .head: return .awaitingHead
        case .body, .chunked: return .inBody
        case .done: return .complete
        }
    }

    /// Consumes bytes from the origin and reports what they complete.
    mutating func feed(_ input: ByteBuffer, _ emit: (Event) -> Void) throws {
        var buffer = input
        if self.pending.readableBytes > 0 {
            var joined = self.pending
            joined.writeImmutableBuffer(buffer)
            buffer = joined
            self.pending.clear()
        }
        while buffer.readableBytes > 0 {
            switch self.state {
            case .idle, .done:
                // Bytes nobody asked for: the connection is out of step and must not be reused.
                self.reusable = false
                return
            case .head:
                guard let headEnd = MessageSyntax.findHeadEnd(buffer) else {
                    guard buffer.readableBytes <= Self.maximumHeadSize else {
                        throw ProtocolError(reason: "response head larger than 64 KiB")
                    }
                    self.pending = buffer
                    return
                }
                guard headEnd <= Self.maximumHeadSize else {
                    throw ProtocolError(reason: "response head larger than 64 KiB")
                }
                let head = try Self.parseHead(buffer.readSlice(length: headEnd)!)
                if head.status >= 100 && head.status < 200 {
                    if head.status == 101 { throw ProtocolError(reason: "unexpected 101 Switching Protocols") }
                    emit(.informational(head))
                    continue
                }
                let framing = try self.framing(of: head)
                emit(.head(head, framing))
                switch framing {
                case .none:
                    self.state = .done
                    emit(.end)
                case .length(0):
                    self.state = .done
                    emit(.end)
                case .length(let n):
                    self.state = .body(framing, remaining: n)
                case .untilClose:
                    self.reusable = false
                    self.state = .body(framing, remaining: 0)
                case .chunked:
                    self.state = .chunked(ChunkWalker())
                }
            case .body(.untilClose, _):
                emit(.body(buffer))
                return
            case .body(let framing, let remaining):
                let take = min(remaining, buffer.readableBytes)
                emit(.body(buffer.readSlice(length: take)!))
                if take == remaining {
                    self.state = .done
                    emit(.end)
                } else {
                    self.state = .body(framing, remaining: remaining - take)
                }
            case .chunked(var walker):
                // Chunked bodies go to the client as they are; we only follow the framing to
                // know where the response ends (and take the payload out for HTTP/1.0 clients).
                let before = buffer
                let finished: Bool
                do {
                    let dechunk = self.dechunk
                    finished = try walker.walk(&buffer) { if dechunk { emit(.body($0)) } }
                } catch {
                    throw ProtocolError(reason: error.reason)
                }
                let consumed = buffer.readerIndex - before.readerIndex
                if consumed > 0, !self.dechunk {
                    emit(.body(walker.passedOn(before, upTo: buffer.readerIndex)))
                }
                self.state = .chunked(walker)
                if finished {
                    self.state = .done
                    emit(.end)
                } else if buffer.readableBytes > 0 {
                    // An incomplete chunk-size or trailer line: wait for the rest.
                    self.pending = buffer.readSlice(length: buffer.readableBytes)!
                    return
                }
            }
        }
    }

    /// The origin closed its side.
    mutating func feedEOF(_ emit: (Event) -> Void) throws {
        self.reusable = false
        switch self.state {
        case .body(.untilClose, _):
            self.state = .done
            emit(.end)
        case .idle, .done:
            return
        case .head where self.pending.readableBytes == 0:
            // Not one byte of a response: a close, not broken HTTP. Origins close idle
            // keep-alive connections at will, and a request sent on one just as it closed may be
            // sent again on a fresh connection (RFC 9112 §9.3.1); the owner decides.
            self.state = .done
        default:
            throw ProtocolError(reason: "origin closed the connection in the middle of a response")
        }
    }

    // MARK: - Parsing

    private func framing(of head: ResponseHead) throws -> Framing {
        if self.requestWasHead || head.status == 204 || head.status == 304 { return .none }
        // One pass through a pointer, no allocation: this runs for every response.
        var sawTransferEncoding = false
        var lastCodingIsChunked = false
        var length: Int?
        var invalidLength = false
        head.bytes.withUnsafeReadableBytes { raw in
            for line in head.lines {
                let name = line.name(in: raw)
                if FieldName.equals(name, "transfer-encoding") {
                    sawTransferEncoding = true
                    lastCodingIsChunked = MessageSyntax.lastCodingIsChunked(line.value(in: raw))
                } else if FieldName.equals(name, "content-length") {
                    guard let n = MessageSyntax.contentLength(line.value(in: raw), previous: length) else {
                        invalidLength = true
                        return
                    }
                    length = n
                }
            }
        }
        if invalidLength { throw ProtocolError(reason: "invalid or conflicting Content-Length") }
        if sawTransferEncoding {
            // RFC 9112 §6.1: with Transfer-Encoding, Content-Length is ignored; chunked must be
            // the final coding, otherwise the body runs until close.
            return lastCodingIsChunked ? .chunked : .untilClose
        }
        if let length { return .length(length) }
        return .untilClose
    }

    static func parseHead(_ head: ByteBuffer) throws -> ResponseHead {
        // Read through a pointer: this runs for every response.
        let parsed = head.withUnsafeReadableBytes { raw in
            Result { () throws(ProtocolError) -> ResponseHead in try Self.parseHead(raw, of: head) }
        }
        return try parsed.get()
    }

    private static func parseHead(_ raw: UnsafeRawBufferPointer, of head: ByteBuffer) throws(ProtocolError)
        -> ResponseHead
    {
        // Status line: HTTP/1.x SP 3DIGIT SP reason CRLF
        guard raw.count >= 14, FieldName.bytes(raw.prefix(7), equal: "HTTP/1."),
            raw[7] == 0x30 || raw[7] == 0x31,
            raw[8] == 0x20,
            (9..<12).allSatisfy({ raw[$0] >= 48 && raw[$0] <= 57 })
        else { throw ProtocolError(reason: "malformed status line") }
        let status = (9..<12).reduce(0) { $0 * 10 + Int(raw[$1] - 48) }
        guard let statusEnd = raw.firstIndex(of: 0x0D), statusEnd + 1 < raw.count, raw[statusEnd + 1] == 0x0A else {
            throw ProtocolError(reason: "malformed status line")
        }
        if statusEnd > 12 && raw[12] != 0x20 { throw ProtocolError(reason: "malformed status line") }
        var lines: [HeaderLine] = []
        lines.reserveCapacity(12)
        // headEnd: the final CRLF of the empty line
        if let reason = MessageSyntax.headerLines(raw, from: statusEnd + 2, to: raw.count - 2, into: &lines) {
            throw ProtocolError(reason: reason + " in the response")
        }
        return ResponseHead(
            minorVersion: Int(raw[7] - 48),
            status: status,
            bytes: head,
            lines: lines,
            statusLineEnd: statusEnd
        )
    }
}

/// Writing a body as HTTP/1.1 chunks (RFC 9112 §7.1), for handlers whose outbound type is bytes.
enum ChunkedFraming {
    /// Writes `buffer` as one chunk; nothing for an empty buffer, whose zero-size chunk would
    /// end the body.
    static func writeChunk(_ buffer: ByteBuffer, on context: ChannelHandlerContext) {
        guard buffer.readableBytes > 0 else { return }
        var size = context.channel.allocator.buffer(capacity: 12)
        size.writeString(String(buffer.readableBytes, radix: 16))
        size.writeStaticString("\r\n")
        context.write(NIOAny(size), promise: nil)
        context.write(NIOAny(buffer), promise: nil)
        var crlf = context.channel.allocator.buffer(capacity: 2)
        crlf.writeStaticString("\r\n")
        context.write(NIOAny(crlf), promise: nil)
    }
}
