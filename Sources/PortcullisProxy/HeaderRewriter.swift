import NIOCore
import NIOHTTP1

/// Header rewriting a forward proxy owes each hop (RFC 9110 §7.6.1).
enum HeaderRewriter {
    /// The `Via` line this proxy adds in both directions (its pseudonym, RFC 9110 §7.6.3).
    static let viaLine: StaticString = "Via: 1.1 portcullis\r\n"

    /// Hop-by-hop fields removed in both directions, plus the proxy-auth fields which belong
    /// to this hop only: `Proxy-Authorization` must never reach an origin, and an origin's
    /// `Proxy-Authenticate` must not make the client prompt for proxy credentials.
    @inline(__always)
    static func isAlwaysHopByHop(_ name: String) -> Bool {
        switch name.utf8.count {
        case 2: return name.caseInsensitiveEquals("te")
        case 7: return name.caseInsensitiveEquals("trailer") || name.caseInsensitiveEquals("upgrade")
        case 10: return name.caseInsensitiveEquals("connection") || name.caseInsensitiveEquals("keep-alive")
        case 16: return name.caseInsensitiveEquals("proxy-connection")
        case 18: return name.caseInsensitiveEquals("proxy-authenticate")
        case 19: return name.caseInsensitiveEquals("proxy-authorization")
        case 25: return name.caseInsensitiveEquals("proxy-authentication-info")
        default: return false
        }
    }

    /// The same test on the raw bytes of a field name.
    @inline(__always)
    static func isAlwaysHopByHop(_ name: ByteBufferView) -> Bool {
        switch name.count {
        case 2: return ByteFieldName.equals(name, "te")
        case 7: return ByteFieldName.equals(name, "trailer") || ByteFieldName.equals(name, "upgrade")
        case 10: return ByteFieldName.equals(name, "connection") || ByteFieldName.equals(name, "keep-alive")
        case 16: return ByteFieldName.equals(name, "proxy-connection")
        case 18: return ByteFieldName.equals(name, "proxy-authenticate")
        case 19: return ByteFieldName.equals(name, "proxy-authorization")
        case 25: return ByteFieldName.equals(name, "proxy-authentication-info")
        default: return false
        }
    }

    /// Field names a `Connection` value lists (hop-by-hop for this message), lower-cased;
    /// `close` and `keep-alive` are connection options, not field names.
    static func connectionOptions(_ value: String) -> [String] {
        value.split(separator: ",").compactMap { token in
            let name = token.trimmingCharacters(in: " \t").lowercased()
            return name.isEmpty || name == "close" || name == "keep-alive" ? nil : name
        }
    }

    /// The request head for the origin, serialized: origin-form target, hop-by-hop fields
    /// removed, `Host` set to the target's authority (RFC 9112 §3.2.2), `Via` appended.
    /// - Returns: the bytes and whether the body must be sent chunked.
    static func upstreamRequestHead(
        _ head: HTTPRequestHead,
        pathAndQuery: String,
        hostHeader: String,
        allocator: ByteBufferAllocator
    ) -> (bytes: ByteBuffer, chunked: Bool) {
        var options: [String] = []
        var chunked = false
        for (name, value) in head.headers {
            if name.caseInsensitiveEquals("connection") {
                options.append(contentsOf: connectionOptions(value))
            } else if name.caseInsensitiveEquals("transfer-encoding") {
                chunked = true
            }
        }
        var out = allocator.buffer(capacity: 256 + pathAndQuery.utf8.count)
        out.writeString(head.method.rawValue)
        out.writeStaticString(" ")
        out.writeString(pathAndQuery)
        out.writeStaticString(" HTTP/1.1\r\nHost: ")
        out.writeString(hostHeader)
        out.writeStaticString("\r\n")
        for (name, value) in head.headers {
            if isAlwaysHopByHop(name) || name.caseInsensitiveEquals("host") { continue }
            // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3); never send both.
            if chunked, name.caseInsensitiveEquals("content-length") { continue }
            if !options.isEmpty, options.contains(where: { name.caseInsensitiveEquals($0) }) { continue }
            out.writeString(name)
            out.writeStaticString(": ")
            out.writeString(value)
            out.writeStaticString("\r\n")
        }
        out.writeStaticString(viaLine)
        out.writeStaticString("\r\n")
        return (out, chunked)
    }
}

extension String {
    @inline(__always)
    func caseInsensitiveEquals(_ other: String) -> Bool {
        let a = self.utf8
        let b = other.utf8
        guard a.count == b.count else { return false }
        for (x, y) in zip(a, b) {
            let lx = (x >= 65 && x <= 90) ? x | 0x20 : x
            let ly = (y >= 65 && y <= 90) ? y | 0x20 : y
            if lx != ly { return false }
        }
        return true
    }
}

extension Substring {
    func trimmingCharacters(in set: String) -> Substring {
        var s = self
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return s
    }
}
