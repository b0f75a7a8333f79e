import Foundation
import NIOCore
import NIOHPACK
import NIOHTTP2

/// One HTTP/2 stream, seen by the ``ProxyConnectionHandler`` behind it as an HTTP/1.1
/// connection that carries one request: the stream's HEADERS become an absolute-form request
/// head (or `CONNECT authority`), its DATA the body (chunked when no length was given) or the
/// tunnel's bytes, and END_STREAM the body's end (or, in a tunnel, the client's half-close).
/// What the handler answers goes back the other way: the response head as HEADERS, its body
/// (length, chunked or until close) as DATA, a tunnel's bytes as DATA, and the handler's
/// half-close as END_STREAM. So every scheme, limit, policy and log of the proxy applies to
/// each stream on its own, and a 407 ends the stream, not the connection.
///
/// Flow control comes with the stream channel: it is writable while the stream's and the
/// connection's windows allow, which the handler's back-pressure already obeys.
final class HTTP2StreamAdapter: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = HTTP2Frame.FramePayload

    private enum RequestState {
        case head
        case body(chunked: Bool)
        case tunnel
        case ended
    }

    private enum ResponseState {
        /// Reading the head (the handler writes it as bytes); `buffer` holds what came so far.
        case head
        case fixed(remaining: Int)
        case chunked(ChunkedDecoder)
        case untilClose
        case tunnel
        case done
    }

    private var request = RequestState.head
    private var response = ResponseState.head
    private var headBuffer = ByteBuffer()
    private var isConnect = false
    private var isHead = false

    /// Most bytes of a response head this adapter keeps while looking for its end.
    static let maximumResponseHead = 256 * 1024

    // MARK: - The client's frames, to the handler as HTTP/1.1 bytes

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .headers(let headers):
            self.headersReceived(context: context, headers)
        case .data(let payload):
            guard case .byteBuffer(let bytes) = payload.data else { return }
            self.dataReceived(context: context, bytes, endStream: payload.endStream)
        default:
            // SETTINGS, WINDOW_UPDATE, PRIORITY and RST_STREAM are the stream channel's.
            break
        }
    }

    private func headersReceived(context: ChannelHandlerContext, _ frame: HTTP2Frame.FramePayload.Headers) {
        switch self.request {
        case .head:
            // NTLM authenticates a connection over several requests; a stream is one request.
            // HTTP_1_1_REQUIRED makes a client (Chromium, curl) retry it over HTTP/1.1.
            if Self.carriesNTLM(frame.headers) {
                self.request = .ended
                self.response = .done
                context.writeAndFlush(self.wrapOutboundOut(.rstStream(.http11Required)), promise: nil)
                return
            }
            switch Self.requestHead(frame.headers, endStream: frame.endStream, allocator: context.channel.allocator) {
            case .success(let converted):
                self.isConnect = converted.isConnect
                self.isHead = converted.isHead
                if converted.isConnect {
                    self.request = .tunnel
                } else if frame.endStream {
                    self.request = .ended
                } else {
                    self.request = .body(chunked: converted.chunked)
                }
                context.fireChannelRead(self.wrapInboundOut(converted.bytes))
                if converted.isConnect, frame.endStream {
                    context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
                }
            case .failure(let refusal):
                self.request = .ended
                self.refuse(context: context, refusal)
            }
        case .body(let chunked):
            // Trailers: dropped (a Proxy-Authorization among them must go nowhere); they end the body.
            guard frame.endStream else { return }
            self.request = .ended
            if chunked { context.fireChannelRead(self.wrapInboundOut(ByteBuffer(string: "0\r\n\r\n"))) }
        case .tunnel:
            guard frame.endStream else { return }
            context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        case .ended:
            break
        }
    }

    private func dataReceived(context: ChannelHandlerContext, _ bytes: ByteBuffer, endStream: Bool) {
        switch self.request {
        case .body(let chunked):
            if chunked {
                var out = context.channel.allocator.buffer(capacity: bytes.readableBytes + 16)
                if bytes.readableBytes > 0 {
                    out.writeString(String(bytes.readableBytes, radix: 16) + "\r\n")
                    out.writeImmutableBuffer(bytes)
                    out.writeString("\r\n")
                }
                if endStream { out.writeString("0\r\n\r\n") }
                if out.readableBytes > 0 { context.fireChannelRead(self.wrapInboundOut(out)) }
            } else if bytes.readableBytes > 0 {
                context.fireChannelRead(self.wrapInboundOut(bytes))
            }
            if endStream { self.request = .ended }
        case .tunnel:
            if bytes.readableBytes > 0 { context.fireChannelRead(self.wrapInboundOut(bytes)) }
            if endStream { context.fireUserInboundEventTriggered(ChannelEvent.inputClosed) }
        case .head, .ended:
            // DATA before HEADERS is a protocol error NIOHTTP2 already refused; after the end,
            // nothing is expected.
            break
        }
    }

    /// A request the adapter cannot turn into HTTP/1.1 is answered here, on its stream only.
    private func refuse(context: ChannelHandlerContext, _ refusal: RequestRefusal) {
        self.response = .done
        var headers = HPACKHeaders()
        headers.add(name: ":status", value: String(refusal.status))
        headers.add(name: "content-type", value: "text/plain; charset=utf-8")
        headers.add(name: "proxy-status", value: "portcullis; error=http_request_error; details=\"\(refusal.details)\"")
        let body = ByteBuffer(string: refusal.message + "\n")
        headers.add(name: "content-length", value: String(body.readableBytes))
        context.write(self.wrapOutboundOut(.headers(.init(headers: headers))), promise: nil)
        context.writeAndFlush(self.wrapOutboundOut(.data(.init(data: .byteBuffer(body), endStream: true))), promise: nil)
    }

    // MARK: - The handler's HTTP/1.1 bytes, to the client as frames

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        var bytes = self.unwrapOutboundIn(data)
        // Frames go out as they are made; the last one carries the caller's promise (the
        // earlier ones need none: a stream's writes complete in order).
        var pending: HTTP2Frame.FramePayload?
        func send(_ payload: HTTP2Frame.FramePayload) {
            if let previous = pending { context.write(self.wrapOutboundOut(previous), promise: nil) }
            pending = payload
        }
        func sendData(_ slice: ByteBuffer, end: Bool) {
            guard slice.readableBytes > 0 || end else { return }
            send(.data(.init(data: .byteBuffer(slice), endStream: end)))
        }
        loop: while bytes.readableBytes > 0 {
            switch self.response {
            case .head:
                self.headBuffer.writeBuffer(&bytes)
                guard let head = Self.takeResponseHead(&self.headBuffer) else {
                    if self.headBuffer.readableBytes > Self.maximumResponseHead {
                        context.close(promise: nil)
                        self.response = .done
                    }
                    break loop
                }
                // What came after the head is body: put it back in front of the rest.
                bytes = self.headBuffer
                self.headBuffer = ByteBuffer()
                let (payload, next) = self.responseHeaders(head)
                send(payload)
                self.response = next
            case .fixed(let remaining):
                let count = min(remaining, bytes.readableBytes)
                let slice = bytes.readSlice(length: count)!
                sendData(slice, end: count == remaining)
                self.response = count == remaining ? .done : .fixed(remaining: remaining - count)
            case .chunked(var decoder):
                let (body, finished) = decoder.decode(&bytes)
                sendData(body, end: finished)
                self.response = finished ? .done : .chunked(decoder)
            case .untilClose, .tunnel:
                sendData(bytes, end: false)
                bytes.moveReaderIndex(to: bytes.writerIndex)
            case .done:
                bytes.moveReaderIndex(to: bytes.writerIndex)
            }
        }
        if let pending {
            context.write(self.wrapOutboundOut(pending), promise: promise)
        } else {
            promise?.succeed(())
        }
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        switch (mode, self.response) {
        case (.output, .tunnel), (.output, .untilClose):
            // A half-close is the stream's END_STREAM; the stream stays open for the client's.
            self.response = .done
            context.writeAndFlush(self.wrapOutboundOut(.data(.init(data: .byteBuffer(ByteBuffer()), endStream: true))))
                .cascade(to: promise)
        case (.output, _):
            promise?.succeed(())
        case (.all, .untilClose):
            // The end of a body delimited by the close: END_STREAM, then the stream closes.
            self.response = .done
            context.writeAndFlush(self.wrapOutboundOut(.data(.init(data: .byteBuffer(ByteBuffer()), endStream: true))))
                .assumeIsolated()
                .whenComplete { _ in context.close(mode: .all, promise: promise) }
        default:
            context.close(mode: mode, promise: promise)
        }
    }

    private func responseHeaders(_ head: ResponseHead) -> (HTTP2Frame.FramePayload, ResponseState) {
        var headers = HPACKHeaders()
        headers.add(name: ":status", value: String(head.status))
        var length: Int?
        var chunked = false
        for field in head.fields {
            let name = field.name
            let value = field.value
            let lower = name.lowercased()
            switch lower {
            case "connection", "keep-alive", "proxy-connection", "upgrade", "te":
                continue
            case "transfer-encoding":
                chunked = value.lowercased().contains("chunked")
                continue
            case "content-length":
                length = Int(value.trimmingCharacters(in: .whitespaces))
            default:
                break
            }
            headers.add(name: lower, value: value)
        }
        let next: ResponseState
        if (100..<200).contains(head.status) {
            // An interim response: the final one follows.
            return (.headers(.init(headers: headers, endStream: false)), .head)
        } else if self.isConnect, (200..<300).contains(head.status) {
            next = .tunnel
        } else if self.isHead || head.status == 204 || head.status == 304 {
            next = .done
        } else if chunked {
            next = .chunked(ChunkedDecoder())
        } else if let length {
            next = length == 0 ? .done : .fixed(remaining: length)
        } else {
            next = .untilClose
        }
        if case .done = next {
            return (.headers(.init(headers: headers, endStream: true)), .done)
        }
        return (.headers(.init(headers: headers, endStream: false)), next)
    }

    // MARK: - Conversions

    /// Whether the request answers with NTLM (`NTLM …`, or NTLMSSP inside `Negotiate …`, whose
    /// base64 starts `TlRMTVNT`). Kerberos inside Negotiate takes one leg and works per stream.
    static func carriesNTLM(_ headers: HPACKHeaders) -> Bool {
        headers["proxy-authorization"].contains { value in
            let trimmed = value.drop { $0 == " " }
            guard let space = trimmed.firstIndex(of: " ") else { return false }
            let scheme = trimmed[..<space].lowercased()
            let token = trimmed[trimmed.index(after: space)...].drop { $0 == " " }
            return scheme == "ntlm" || (scheme == "negotiate" && token.hasPrefix("TlRMTVNT"))
        }
    }

    struct RequestRefusal: Error {
        var status: Int
        var details: String
        var message: String
    }

    struct ConvertedRequest {
        var bytes: ByteBuffer
        var isConnect: Bool
        var isHead: Bool
        var chunked: Bool
    }

    /// The HTTP/1.1 head for a stream's request headers (RFC 9113 §8.3.1, §8.5).
    static func requestHead(
        _ headers: HPACKHeaders,
        endStream: Bool,
        allocator: ByteBufferAllocator
    ) -> Result<ConvertedRequest, RequestRefusal> {
        var method: String?
        var scheme: String?
        var authority: String?
        var path: String?
        var cookies: [String] = []
        var fields: [(String, String)] = []
        var hasLength = false
        for (name, value, _) in headers {
            switch name {
            case ":method": method = value
            case ":scheme": scheme = value
            case ":authority": authority = value
            case ":path": path = value
            case ":protocol":
                return .failure(
                    RequestRefusal(status: 501, details: "extended-connect", message: "Extended CONNECT is not supported by this proxy.")
                )
            case "host":
                if authority == nil { authority = value }
            case "cookie":
                cookies.append(value)
            default:
                if name.hasPrefix(":") {
                    return .failure(RequestRefusal(status: 400, details: "bad-pseudo-header", message: "Unknown pseudo-header."))
                }
                if name == "content-length" { hasLength = true }
                fields.append((name, value))
            }
        }
        guard let method, let authority, !authority.isEmpty else {
            return .failure(
                RequestRefusal(status: 400, details: "missing-pseudo-header", message: "The request has no :method or :authority.")
            )
        }
        let isConnect = method == "CONNECT"
        let target: String
        if isConnect {
            guard scheme == nil, path == nil else {
                return .failure(
                    RequestRefusal(status: 400, details: "bad-connect", message: "CONNECT takes :authority alone (RFC 9113 §8.5).")
                )
            }
            target = authority
        } else {
            guard let scheme, let path, !path.isEmpty else {
                return .failure(
                    RequestRefusal(status: 400, details: "missing-pseudo-header", message: "The request has no :scheme or :path.")
                )
            }
            // The absolute form a forward proxy reads; the connection handler checks the rest
            // (an https:// target is refused there as on HTTP/1.1: use CONNECT).
            target = "\(scheme)://\(authority)\(path.hasPrefix("/") ? path : "/" + path)"
        }
        let chunked = !isConnect && !endStream && !hasLength
        var out = allocator.buffer(capacity: 256)
        out.writeString("\(method) \(target) HTTP/1.1\r\nhost: \(authority)\r\n")
        for (name, value) in fields {
            out.writeString("\(name): \(value)\r\n")
        }
        if !cookies.isEmpty { out.writeString("cookie: \(cookies.joined(separator: "; "))\r\n") }
        if chunked { out.writeString("transfer-encoding: chunked\r\n") }
        out.writeString("\r\n")
        return .success(ConvertedRequest(bytes: out, isConnect: isConnect, isHead: method == "HEAD", chunked: chunked))
    }

    struct ResponseHead {
        struct Field {
            var name: String
            var value: String
        }

        var status: Int
        var fields: [Field]
    }

    /// A response head from the front of `buffer` once it is whole (the bytes after it stay).
    /// The head is the proxy's own output (or an origin's it re-framed): CRLF lines.
    static func takeResponseHead(_ buffer: inout ByteBuffer) -> ResponseHead? {
        let end: Int? = buffer.withUnsafeReadableBytes { raw in
            var index = 3
            while index < raw.count {
                if raw[index] == 10, raw[index - 1] == 13, raw[index - 2] == 10, raw[index - 3] == 13 {
                    return index + 1
                }
                index += 1
            }
            return nil
        }
        guard let end, let bytes = buffer.readBytes(length: end) else { return nil }
        var lines: [ArraySlice<UInt8>] = []
        var start = 0
        for index in 0..<(bytes.count - 1) where bytes[index] == 13 && bytes[index + 1] == 10 {
            if index > start { lines.append(bytes[start..<index]) }
            start = index + 2
        }
        guard let statusLine = lines.first else { return ResponseHead(status: 502, fields: []) }
        // "HTTP/1.1 407 …": the three digits after the first space.
        var status = 502
        if let space = statusLine.firstIndex(of: 32), statusLine.index(space, offsetBy: 4) <= statusLine.endIndex {
            let digits = statusLine[(space + 1)..<(space + 4)]
            if digits.allSatisfy({ (48...57).contains($0) }) {
                status = digits.reduce(0) { $0 * 10 + Int($1 - 48) }
            }
        }
        var fields: [ResponseHead.Field] = []
        fields.reserveCapacity(lines.count - 1)
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: 58) else { continue }
            var valueStart = colon + 1
            while valueStart < line.endIndex, line[valueStart] == 32 || line[valueStart] == 9 { valueStart += 1 }
            var valueEnd = line.endIndex
            while valueEnd > valueStart, line[valueEnd - 1] == 32 || line[valueEnd - 1] == 9 { valueEnd -= 1 }
            fields.append(
                ResponseHead.Field(
                    name: String(decoding: line[line.startIndex..<colon], as: UTF8.self),
                    value: String(decoding: line[valueStart..<valueEnd], as: UTF8.self)
                )
            )
        }
        return ResponseHead(status: status, fields: fields)
    }
}

/// The body of a chunked response, without its framing (trailers are dropped).
struct ChunkedDecoder {
    private enum State {
        case size
        case data(remaining: Int)
        case dataEnd
        case trailers
    }

    private var state = State.size
    private var line = ByteBuffer()

    /// The body bytes in `input` (all of it is consumed), and whether the body ended.
    mutating func decode(_ input: inout ByteBuffer) -> (ByteBuffer, Bool) {
        var out = ByteBuffer()
        while input.readableBytes > 0 {
            switch self.state {
            case .size, .dataEnd, .trailers:
                guard let byte = input.readInteger(as: UInt8.self) else { break }
                guard byte == 10 else {
                    if byte != 13, self.line.readableBytes < 1024 { self.line.writeInteger(byte) }
                    continue
                }
                let text = self.line.readString(length: self.line.readableBytes) ?? ""
                self.line.clear()
                switch self.state {
                case .size:
                    let hex = text.split(separator: ";", maxSplits: 1).first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
                    let size = Int(hex, radix: 16) ?? 0
                    self.state = size == 0 ? .trailers : .data(remaining: size)
                case .dataEnd:
                    self.state = .size
                case .trailers:
                    if text.isEmpty {
                        input.moveReaderIndex(to: input.writerIndex)
                        return (out, true)
                    }
                case .data:
                    break
                }
            case .data(let remaining):
                let count = min(remaining, input.readableBytes)
                var slice = input.readSlice(length: count)!
                out.writeBuffer(&slice)
                self.state = count == remaining ? .dataEnd : .data(remaining: remaining - count)
            }
        }
        return (out, false)
    }
}
