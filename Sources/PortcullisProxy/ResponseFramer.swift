import NIOCore
import PortcullisAuth

/// The head of an origin's response, kept as the bytes that arrived: header lines are copied
/// to the client as they are, without turning every name and value into a String.
struct ResponseHead {
    var minorVersion: Int
    var status: Int
    /// The whole head, from the status line to the empty line.
    var bytes: ByteBuffer
    /// Offsets (into ``bytes``) of each header line without its CRLF, and of the name's end.
    var lines: [(start: Int, end: Int, nameEnd: Int)]
    /// End of the status line (without CRLF): the reason phrase ends here.
    var statusLineEnd: Int

    func name(_ line: (start: Int, end: Int, nameEnd: Int)) -> ByteBufferView {
        let view = self.bytes.readableBytesView
        return view[(view.startIndex + line.start)..<(view.startIndex + line.nameEnd)]
    }

    /// The value of a header line with optional whitespace trimmed.
    func value(_ line: (start: Int, end: Int, nameEnd: Int)) -> ByteBufferView {
        let all = self.bytes.readableBytesView
        var view = all[(all.startIndex + line.nameEnd + 1)..<(all.startIndex + line.end)]
        while let f = view.first, f == 0x20 || f == 0x09 { view = view.dropFirst() }
        while let l = view.last, l == 0x20 || l == 0x09 { view = view.dropLast() }
        return view
    }

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
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd
        case trailers
        case done
    }

    static let maximumHeadSize = 64 * 1024
    private static let maximumChunkLine = 4096

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
                guard let headEnd = Self.findHeadEnd(buffer) else {
                    guard buffer.readableBytes <= Self.maximumHeadSize else {
                        throw ProtocolError(reason: "response head larger than 64 KiB")
                    }
                    self.pending = buffer
                    return
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
                    self.state = .chunkSize
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
            case .chunkSize, .chunkDataEnd, .trailers, .chunkData:
                // Chunked bodies go to the client as they are; we only follow the framing to
                // know where the response ends.
                let before = buffer
                let finished = try self.walkChunks(&buffer, emit)
                let consumed = buffer.readerIndex - before.readerIndex
                if consumed > 0, !self.dechunk {
                    var raw = before
                    emit(.body(raw.readSlice(length: consumed)!))
                }
                if finished {
                    self.state = .done
                    emit(.end)
                } else if buffer.readableBytes > 0 {
                    // An incomplete chunk-size or trailer line: wait for the rest.
                    self.pending = buffer.readSlice(length: buffer.readableBytes)!
                    guard self.pending.readableBytes <= Self.maximumChunkLine else {
                        throw ProtocolError(reason: "chunk line too long")
                    }
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
            throw ProtocolError(reason: "origin closed the connection before sending a response")
        default:
            throw ProtocolError(reason: "origin closed the connection in the middle of a response")
        }
    }

    // MARK: - Parsing

    private func framing(of head: ResponseHead) throws -> Framing {
        if self.requestWasHead || head.status == 204 || head.status == 304 { return .none }
        // One pass, no allocation: this runs for every response.
        var sawTransferEncoding = false
        var lastCodingIsChunked = false
        var length: Int?
        for line in head.lines {
            let name = head.name(line)
            if FieldName.equals(name, "transfer-encoding") {
                sawTransferEncoding = true
                lastCodingIsChunked = Self.lastTokenIsChunked(head.value(line))
            } else if FieldName.equals(name, "content-length") {
                for part in head.value(line).split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false) {
                    var digits = part[...]
                    while let f = digits.first, f == 0x20 || f == 0x09 { digits = digits.dropFirst() }
                    while let l = digits.last, l == 0x20 || l == 0x09 { digits = digits.dropLast() }
                    guard !digits.isEmpty, digits.count <= 18, digits.allSatisfy({ $0 >= 48 && $0 <= 57 }) else {
                        throw ProtocolError(reason: "invalid Content-Length")
                    }
                    let n = digits.reduce(0) { $0 * 10 + Int($1 - 48) }
                    if let length, length != n { throw ProtocolError(reason: "conflicting Content-Length values") }
                    length = n
                }
            }
        }
        if sawTransferEncoding {
            // RFC 9112 §6.1: with Transfer-Encoding, Content-Length is ignored; chunked must be
            // the final coding, otherwise the body runs until close.
            return lastCodingIsChunked ? .chunked : .untilClose
        }
        if let length { return .length(length) }
        return .untilClose
    }

    /// Whether the last comma-separated coding of a Transfer-Encoding value is `chunked`.
    private static func lastTokenIsChunked(_ value: ByteBufferView) -> Bool {
        var end = value.endIndex
        while end > value.startIndex, value[end - 1] == 0x20 || value[end - 1] == 0x09 { end -= 1 }
        var start = end
        while start > value.startIndex, value[start - 1] != UInt8(ascii: ",") { start -= 1 }
        while start < end, value[start] == 0x20 || value[start] == 0x09 { start += 1 }
        return FieldName.equals(value[start..<end], "chunked")
    }

    /// Offset just past the CRLFCRLF that ends the head, if it has arrived.
    private static func findHeadEnd(_ buffer: ByteBuffer) -> Int? {
        buffer.withUnsafeReadableBytes { bytes -> Int? in
            guard bytes.count >= 4 else { return nil }
            var i = 0
            while i + 3 < bytes.count {
                if bytes[i + 3] == 0x0A && bytes[i + 2] == 0x0D && bytes[i + 1] == 0x0A && bytes[i] == 0x0D {
                    return i + 4
                }
                i += 1
            }
            return nil
        }
    }

    static func parseHead(_ head: ByteBuffer) throws -> ResponseHead {
        let view = head.readableBytesView
        let base = view.startIndex
        // Status line: HTTP/1.x SP 3DIGIT SP reason CRLF
        guard view.count >= 14,
            view[base..<(base + 7)].elementsEqual("HTTP/1.".utf8),
            view[base + 7] == 0x30 || view[base + 7] == 0x31,
            view[base + 8] == 0x20,
            (base + 9..<base + 12).allSatisfy({ view[$0] >= 48 && view[$0] <= 57 })
        else { throw ProtocolError(reason: "malformed status line") }
        let status = (base + 9..<base + 12).reduce(0) { $0 * 10 + Int(view[$1] - 48) }
        guard let statusEnd = view[base...].firstIndex(of: 0x0D), view[statusEnd + 1] == 0x0A else {
            throw ProtocolError(reason: "malformed status line")
        }
        if statusEnd > base + 12 && view[base + 12] != 0x20 { throw ProtocolError(reason: "malformed status line") }
        var lines: [(start: Int, end: Int, nameEnd: Int)] = []
        lines.reserveCapacity(12)
        var lineStart = statusEnd + 2
        let headEnd = view.endIndex - 2  // the final CRLF of the empty line
        while lineStart < headEnd {
            guard let cr = view[lineStart..<headEnd].firstIndex(of: 0x0D), view[cr + 1] == 0x0A else {
                throw ProtocolError(reason: "malformed header line")
            }
            let first = view[lineStart]
            if first == 0x20 || first == 0x09 { throw ProtocolError(reason: "obsolete line folding in a response") }
            guard let colon = view[lineStart..<cr].firstIndex(of: UInt8(ascii: ":")), colon > lineStart,
                view[lineStart..<colon].allSatisfy(HTTPGrammar.isTokenByte)
            else { throw ProtocolError(reason: "malformed header line") }
            if view[lineStart..<cr].contains(where: { ($0 < 0x20 && $0 != 0x09) || $0 == 0x7F }) {
                throw ProtocolError(reason: "control character in a response header")
            }
            lines.append((lineStart - base, cr - base, colon - base))
            lineStart = cr + 2
        }
        return ResponseHead(
            minorVersion: Int(view[base + 7] - 48),
            status: status,
            bytes: head,
            lines: lines,
            statusLineEnd: statusEnd - base
        )
    }

    /// Follows chunk framing through `buffer`, consuming complete pieces.
    /// - Returns: `true` when the last chunk and the trailers have been read.
    private mutating func walkChunks(_ buffer: inout ByteBuffer, _ emit: (Event) -> Void) throws -> Bool {
        while buffer.readableBytes > 0 {
            switch self.state {
            case .chunkSize:
                guard let line = Self.readLine(&buffer) else { return false }
                let sizeText = line.prefix { $0 != UInt8(ascii: ";") && $0 != 0x20 && $0 != 0x09 }
                guard !sizeText.isEmpty, sizeText.count <= 15, sizeText.allSatisfy(HTTPGrammar.isHexDigit) else {
                    throw ProtocolError(reason: "invalid chunk size")
                }
                let size = sizeText.reduce(0) { $0 * 16 + Self.hexValue($1) }
                self.state = size == 0 ? .trailers : .chunkData(remaining: size)
            case .chunkData(let remaining):
                let take = min(remaining, buffer.readableBytes)
                if self.dechunk {
                    emit(.body(buffer.getSlice(at: buffer.readerIndex, length: take)!))
                }
                buffer.moveReaderIndex(forwardBy: take)
                self.state = take == remaining ? .chunkDataEnd : .chunkData(remaining: remaining - take)
            case .chunkDataEnd:
                guard buffer.readableBytes >= 2 else { return false }
                guard buffer.readInteger(as: UInt16.self) == 0x0D0A else {
                    throw ProtocolError(reason: "chunk data not followed by CRLF")
                }
                self.state = .chunkSize
            case .trailers:
                guard let line = Self.readLine(&buffer) else { return false }
                if line.isEmpty { return true }
            default:
                return false
            }
        }
        return false
    }

    /// Reads one CRLF-terminated line (without the CRLF), or nothing if it is not all here.
    private static func readLine(_ buffer: inout ByteBuffer) -> [UInt8]? {
        let view = buffer.readableBytesView
        guard let lf = view.firstIndex(of: 0x0A), lf > view.startIndex, view[lf - 1] == 0x0D else { return nil }
        let length = lf - view.startIndex + 1
        let line = buffer.readBytes(length: length)!
        return Array(line.dropLast(2))
    }

    private static func hexValue(_ c: UInt8) -> Int {
        switch c {
        case 48...57: return Int(c - 48)
        case 97...102: return Int(c - 87)
        default: return Int(c - 55)
        }
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
