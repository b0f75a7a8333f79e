import NIOCore
import PortcullisAuth

/// Offsets into a message head's bytes of one header line (without its CRLF) and of the end of
/// its field name (the colon).
struct HeaderLine {
    var start: Int
    var end: Int
    var nameEnd: Int

    // The same accessors as ``RawMessageHead``'s, over the head's bytes through a pointer
    // (`bytes.withUnsafeReadableBytes`): the loops that run for every message use these, as a
    // ByteBufferView per access costs a retain and a release of the buffer's storage.

    @inline(__always)
    func name(in head: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: head[self.start..<self.nameEnd])
    }

    /// The value with optional whitespace trimmed.
    @inline(__always)
    func value(in head: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        var start = self.nameEnd + 1
        var end = self.end
        while start < end, head[start] == 0x20 || head[start] == 0x09 { start += 1 }
        while end > start, head[end - 1] == 0x20 || head[end - 1] == 0x09 { end -= 1 }
        return UnsafeRawBufferPointer(rebasing: head[start..<end])
    }

    /// The whole line, name to end of value, as it arrived.
    @inline(__always)
    func line(in head: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: head[self.start..<self.end])
    }
}

/// A message head kept as the bytes that arrived, with the offsets of its header lines: lines
/// are copied from one hop to the next as they are, without a String per name and value.
protocol RawMessageHead {
    var bytes: ByteBuffer { get }
    var lines: [HeaderLine] { get }
}

extension RawMessageHead {
    func name(_ line: HeaderLine) -> ByteBufferView {
        let view = self.bytes.readableBytesView
        return view[(view.startIndex + line.start)..<(view.startIndex + line.nameEnd)]
    }

    /// The value of a header line with optional whitespace trimmed.
    func value(_ line: HeaderLine) -> ByteBufferView {
        let all = self.bytes.readableBytesView
        var view = all[(all.startIndex + line.nameEnd + 1)..<(all.startIndex + line.end)]
        while let f = view.first, f == 0x20 || f == 0x09 { view = view.dropFirst() }
        while let l = view.last, l == 0x20 || l == 0x09 { view = view.dropLast() }
        return view
    }

    /// Whether a line named `lowercaseName` starts with the NTLM or Negotiate scheme: an origin
    /// authenticating the connection itself (IIS and its kind), not each request.
    func carriesConnectionAuthentication(_ lowercaseName: String) -> Bool {
        self.lines.contains { line in
            guard FieldName.equals(self.name(line), lowercaseName) else { return false }
            let value = self.value(line)
            return (value.count >= 4 && FieldName.equals(value.prefix(4), "ntlm")
                && (value.count == 4 || value[value.startIndex + 4] == 0x20))
                || (value.count >= 9 && FieldName.equals(value.prefix(9), "negotiate")
                    && (value.count == 9 || value[value.startIndex + 9] == 0x20))
        }
    }

    /// Values of every line named `lowercaseName`, as Strings (for the rare paths that need them).
    func values(named lowercaseName: String) -> [String] {
        self.lines.lazy.filter { FieldName.equals(self.name($0), lowercaseName) }
            .map { String(decoding: self.value($0), as: UTF8.self) }
    }
}

/// Parsing shared by the request and the response framers (RFC 9112 §2, §5).
enum MessageSyntax {
    /// Offset just past the CRLFCRLF that ends a head, if it has arrived.
    static func findHeadEnd(_ buffer: ByteBuffer) -> Int? {
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

    /// Splits the header section `bytes[from..<headEnd]` (`headEnd` at the CRLF of the empty
    /// line) into lines. Strict on purpose: obsolete line folding, bare CR or LF, control
    /// characters and whitespace before the colon are where two parsers disagree on where a
    /// field — or a message — ends.
    /// - Returns: `nil`, or the reason the lines are not valid.
    static func headerLines(
        _ bytes: UnsafeRawBufferPointer,
        from start: Int,
        to headEnd: Int,
        into lines: inout [HeaderLine]
    ) -> String? {
        var lineStart = start
        let end = headEnd
        while lineStart < end {
            let first = bytes[lineStart]
            if first == 0x20 || first == 0x09 { return "obsolete line folding" }
            var colon = -1
            var i = lineStart
            while i < end {
                let c = bytes[i]
                if c == 0x0D { break }
                if colon < 0 {
                    if c == UInt8(ascii: ":") {
                        colon = i
                    } else if !HTTPGrammar.isTokenByte(c) {
                        return "malformed header line"
                    }
                } else if (c < 0x20 && c != 0x09) || c == 0x7F {
                    return "control character in a header field"
                }
                i += 1
            }
            guard i < end, bytes[i + 1] == 0x0A else { return "malformed header line" }
            guard colon > lineStart else { return "malformed header line" }
            lines.append(HeaderLine(start: lineStart, end: i, nameEnd: colon))
            lineStart = i + 2
        }
        return nil
    }

    /// The value of a `Content-Length` field: one number, or a list of identical numbers
    /// (RFC 9112 §6.3 allows a recipient to accept those).
    static func contentLength<Bytes: RandomAccessCollection<UInt8>>(_ value: Bytes, previous: Int?) -> Int?
    where Bytes.Index == Int {
        // One pass over the bytes (a split would allocate an array per response).
        var length = previous
        var index = value.startIndex
        let end = value.endIndex
        while true {
            // One list element: optional whitespace, 1–18 digits, optional whitespace.
            while index < end, value[index] == 0x20 || value[index] == 0x09 { index += 1 }
            var n = 0
            var digits = 0
            while index < end, case let byte = value[index], byte >= 48, byte <= 57 {
                guard digits < 18 else { return nil }
                n = n * 10 + Int(byte - 48)
                digits += 1
                index += 1
            }
            guard digits > 0 else { return nil }
            while index < end, value[index] == 0x20 || value[index] == 0x09 { index += 1 }
            if let length, length != n { return nil }
            length = n
            if index == end { return length }
            guard value[index] == UInt8(ascii: ",") else { return nil }
            index += 1
        }
    }

    /// Reads one `Connection` field value (RFC 9110 §7.6.1): sets `close` for the `close` option
    /// and appends the field names it lists, lower-cased. The common single values need no token
    /// list (and no String per token).
    static func connectionOptions<Bytes: RandomAccessCollection<UInt8>>(
        _ value: Bytes,
        close: inout Bool,
        options: inout [String]
    ) where Bytes.Index == Int {
        if FieldName.equals(value, "keep-alive") { return }
        if FieldName.equals(value, "close") {
            close = true
            return
        }
        for token in FieldName.tokens(value) {
            if token == "close" {
                close = true
            } else if token != "keep-alive" {
                options.append(token)
            }
        }
    }

    /// Whether the last comma-separated coding of a Transfer-Encoding value is `chunked`.
    static func lastCodingIsChunked<Bytes: RandomAccessCollection<UInt8>>(_ value: Bytes) -> Bool
    where Bytes.Index == Int {
        var end = value.endIndex
        while end > value.startIndex, value[end - 1] == 0x20 || value[end - 1] == 0x09 { end -= 1 }
        var start = end
        while start > value.startIndex, value[start - 1] != UInt8(ascii: ",") { start -= 1 }
        while start < end, value[start] == 0x20 || value[start] == 0x09 { start += 1 }
        return FieldName.equals(value[start..<end], "chunked")
    }
}

/// Follows chunked framing (RFC 9112 §7.1) through a byte stream without changing it: the
/// framers use it to know where a chunked body ends, and to take out the payload when a peer
/// needs the body decoded.
struct ChunkWalker {
    struct FramingError: Error {
        var reason: String
    }

    private enum State {
        case size
        case data(remaining: Int)
        case dataEnd
        case trailers
    }

    /// Longest chunk-size or trailer line kept while waiting for its end.
    static let maximumLine = 4096
    /// Largest trailer section accepted.
    static let maximumTrailers = 64 * 1024

    private var state: State = .size
    private var trailerBytes = 0
    /// Trailer lines (with their CRLF) that must not be passed on, as reader indices of the
    /// buffer last walked: `Proxy-Authorization` and the other fields a proxy never forwards
    /// may not slip through in a trailer section (RFC 9110 §6.5.1).
    private(set) var droppedTrailerLines: [Range<Int>] = []

    /// Consumes every complete piece of framing in `buffer`; an incomplete line stays unread.
    /// - Parameter payload: called with chunk data, for callers that want the body decoded.
    /// - Returns: `true` once the last chunk and the trailer section have been read.
    mutating func walk(
        _ buffer: inout ByteBuffer,
        payload: (ByteBuffer) -> Void = { _ in }
    ) throws(FramingError) -> Bool {
        while buffer.readableBytes > 0 {
            switch self.state {
            case .size:
                guard let line = try Self.readLine(&buffer) else { return false }
                let sizeText = line.prefix { $0 != UInt8(ascii: ";") && $0 != 0x20 && $0 != 0x09 }
                guard !sizeText.isEmpty, sizeText.count <= 15, sizeText.allSatisfy(HTTPGrammar.isHexDigit) else {
                    throw FramingError(reason: "invalid chunk size")
                }
                let size = sizeText.reduce(0) { $0 * 16 + Self.hexValue($1) }
                self.state = size == 0 ? .trailers : .data(remaining: size)
            case .data(let remaining):
                let take = min(remaining, buffer.readableBytes)
                payload(buffer.getSlice(at: buffer.readerIndex, length: take)!)
                buffer.moveReaderIndex(forwardBy: take)
                self.state = take == remaining ? .dataEnd : .data(remaining: remaining - take)
            case .dataEnd:
                guard buffer.readableBytes >= 2 else { return false }
                guard buffer.readInteger(as: UInt16.self) == 0x0D0A else {
                    throw FramingError(reason: "chunk data not followed by CRLF")
                }
                self.state = .size
            case .trailers:
                let lineStart = buffer.readerIndex
                guard let line = try Self.readLine(&buffer) else { return false }
                if line.isEmpty {
                    self.state = .size
                    self.trailerBytes = 0
                    return true
                }
                self.trailerBytes += line.count + 2
                if self.trailerBytes > Self.maximumTrailers { throw FramingError(reason: "trailer section too large") }
                if Self.isForbiddenTrailer(line) { self.droppedTrailerLines.append(lineStart..<buffer.readerIndex) }
            }
        }
        return false
    }

    /// Fields never forwarded in a trailer: the hop-by-hop ones (credentials for this proxy
    /// among them) and those that frame or route the message. A line without a colon is
    /// dropped too: nobody downstream can read it the same way.
    private static func isForbiddenTrailer(_ line: [UInt8]) -> Bool {
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { return true }
        let name = line[..<colon]
        return HeaderRewriter.isAlwaysHopByHop(name) || FieldName.equals(name, "content-length")
            || FieldName.equals(name, "transfer-encoding") || FieldName.equals(name, "host")
    }

    /// The bytes of `walked` (the buffer as it was before the walk) up to `end` (the reader
    /// index the walk reached), less the trailer lines the walk dropped, which are then
    /// forgotten. Without dropped lines: a slice, no copy.
    mutating func passedOn(_ walked: ByteBuffer, upTo end: Int) -> ByteBuffer {
        let start = walked.readerIndex
        guard !self.droppedTrailerLines.isEmpty else {
            return walked.getSlice(at: start, length: end - start)!
        }
        var out = ByteBuffer()
        var from = start
        for dropped in self.droppedTrailerLines {
            out.writeImmutableBuffer(walked.getSlice(at: from, length: dropped.lowerBound - from)!)
            from = dropped.upperBound
        }
        out.writeImmutableBuffer(walked.getSlice(at: from, length: end - from)!)
        self.droppedTrailerLines.removeAll()
        return out
    }

    /// Reads one CRLF-terminated line (without the CRLF), or nothing if it is not all here.
    private static func readLine(_ buffer: inout ByteBuffer) throws(FramingError) -> [UInt8]? {
        let view = buffer.readableBytesView
        guard let lf = view.firstIndex(of: 0x0A) else {
            if view.count > Self.maximumLine { throw FramingError(reason: "chunk line too long") }
            return nil
        }
        guard lf > view.startIndex, view[lf - 1] == 0x0D else {
            throw FramingError(reason: "bare LF in chunked framing")
        }
        let length = lf - view.startIndex + 1
        if length > Self.maximumLine + 2 { throw FramingError(reason: "chunk line too long") }
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
