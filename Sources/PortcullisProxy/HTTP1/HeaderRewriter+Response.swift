import NIOCore

extension HeaderRewriter {
    /// The response head for the client: the origin's header lines copied as they are, less the
    /// hop-by-hop ones, plus `Via`, with framing fixed for this client. Returns whether the
    /// origin closes its connection after this response (its upstream is not reused).
    /// `wantsContentType`: the content type is kept for the access log (no String otherwise).
    static func writeClientResponseHead(
        _ head: ResponseHead,
        framing: ResponseFramer.Framing,
        for exchange: ProxyExchange,
        close: Bool,
        wantsContentType: Bool,
        into out: inout ByteBuffer
    ) -> Bool {
        let clientMinor = exchange.isHTTP10 ? 0 : 1
        var singleLength: Int?
        var originWillClose = false
        // Through a pointer, one closure: this runs for every response.
        head.bytes.withUnsafeReadableBytes { raw in
            var connectionOptions: [String] = []
            var originCloses = false
            var lengthFields = 0
            var lengthIsList = false
            for line in head.lines {
                let name = line.name(in: raw)
                if FieldName.equals(name, "connection") {
                    MessageSyntax.connectionOptions(
                        line.value(in: raw),
                        close: &originCloses,
                        options: &connectionOptions
                    )
                } else if FieldName.equals(name, "content-length") {
                    lengthFields += 1
                    if line.value(in: raw).contains(UInt8(ascii: ",")) { lengthIsList = true }
                }
            }
            originWillClose = originCloses || head.minorVersion < 1

            var dropLength = false
            var dropTransferEncoding = false
            switch framing {
            case .chunked:
                dropLength = true
                // An HTTP/1.0 client gets the decoded body, delimited by the close.
                if clientMinor == 0 { dropTransferEncoding = true }
            case .untilClose:
                dropLength = true
                dropTransferEncoding = true
                if clientMinor == 1 { exchange.rechunkBody = true }
            case .length(let length) where lengthFields > 1 || lengthIsList:
                // The framer accepted repeats of one number (RFC 9112 §6.3); the client gets
                // that number once, never a list another parser may read differently.
                dropLength = true
                singleLength = length
            case .length, .none:
                break
            }

            out.clear(minimumCapacity: raw.count + 64)
            out.writeStaticString(clientMinor == 0 ? "HTTP/1.0" : "HTTP/1.1")
            // " 200 OK": status code and reason phrase as the origin sent them.
            out.writeBytes(UnsafeRawBufferPointer(rebasing: raw[8..<head.statusLineEnd]))
            out.writeStaticString("\r\n")
            for line in head.lines {
                let name = line.name(in: raw)
                if HeaderRewriter.isAlwaysHopByHop(name) { continue }
                if dropLength, FieldName.equals(name, "content-length") { continue }
                if dropTransferEncoding, FieldName.equals(name, "transfer-encoding") { continue }
                if !connectionOptions.isEmpty, connectionOptions.contains(where: { FieldName.equals(name, $0) }) {
                    continue
                }
                if wantsContentType, FieldName.equals(name, "content-type") {
                    exchange.contentType = String(decoding: line.value(in: raw), as: UTF8.self)
                }
                out.writeBytes(line.line(in: raw))
                out.writeStaticString("\r\n")
            }
        }
        if let singleLength {
            out.writeStaticString("Content-Length: ")
            out.writeString(String(singleLength))
            out.writeStaticString("\r\n")
        }
        if exchange.rechunkBody { out.writeStaticString("Transfer-Encoding: chunked\r\n") }
        out.writeStaticString(HeaderRewriter.viaLine)
        exchange.writeProxyStatus(into: &out)
        exchange.writeAuthenticationInfo(into: &out)
        if close { out.writeStaticString("Connection: close\r\n") }
        out.writeStaticString("\r\n")
        return originWillClose
    }
}
