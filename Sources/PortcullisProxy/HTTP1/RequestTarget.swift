import PortcullisAuth

/// The request-target of a request line (RFC 9112 §3.2), as far as a forward proxy cares.
public enum RequestTarget: Equatable, Sendable {
    /// `http://host[:port]/path?query` — forwarded.
    case absolute(OriginAuthority, pathAndQuery: String)
    /// `host:port` — CONNECT only.
    case authority(OriginAuthority)
    /// `/path` — a request for the proxy itself.
    case origin(String)
    /// `*` — OPTIONS for the proxy itself.
    case asterisk

    public enum ParseError: Error, Equatable, Sendable {
        case unsupportedScheme(String)
        case userinfoNotAllowed
        case invalidHost
        case invalidPort
        case connectNeedsAuthority
        case malformed
    }

    /// Parses the request-target of a request with `method`.
    public static func parse(_ target: String, isConnect: Bool) -> Result<RequestTarget, ParseError> {
        // Scanned as UTF-8 bytes through a pointer: Character-wise scanning (grapheme breaking)
        // cost ~6 % of a request, and generic algorithms over String.UTF8View another 4 %.
        if let result = target.utf8.withContiguousStorageIfAvailable({
            Self.parse(bytes: $0, target: target, isConnect: isConnect)
        }) {
            return result
        }
        return Array(target.utf8).withUnsafeBufferPointer {
            Self.parse(bytes: $0, target: target, isConnect: isConnect)
        }
    }

    private static func parse(
        bytes: UnsafeBufferPointer<UInt8>,
        target: String,
        isConnect: Bool
    ) -> Result<RequestTarget, ParseError> {
        let count = bytes.count
        if isConnect {
            // CONNECT takes authority-form only (RFC 9110 §9.3.6), and the port is mandatory.
            guard let authority = OriginAuthority(bytes: bytes, defaultPort: nil) else {
                return .failure(bytes.contains(UInt8(ascii: "/")) ? .connectNeedsAuthority : .invalidHost)
            }
            return .success(.authority(authority))
        }
        if count == 1, bytes[0] == UInt8(ascii: "*") { return .success(.asterisk) }
        if count > 0, bytes[0] == UInt8(ascii: "/") { return .success(.origin(target)) }

        guard let colon = bytes.firstIndex(of: UInt8(ascii: ":")), colon + 3 <= count,
            bytes[colon + 1] == UInt8(ascii: "/"), bytes[colon + 2] == UInt8(ascii: "/")
        else {
            return .failure(.malformed)
        }
        guard colon == 4, bytes[0] | 0x20 == UInt8(ascii: "h"), bytes[1] | 0x20 == UInt8(ascii: "t"),
            bytes[2] | 0x20 == UInt8(ascii: "t"), bytes[3] | 0x20 == UInt8(ascii: "p")
        else {
            // The rare path: the scheme is named back to the client, so a String is fine here.
            let scheme = String(decoding: UnsafeBufferPointer(rebasing: bytes[..<colon]), as: UTF8.self).lowercased()
            return .failure(scheme.isEmpty ? .malformed : .unsupportedScheme(String(scheme.prefix(16))))
        }
        let authorityStart = colon + 3
        var authorityEnd = authorityStart
        while authorityEnd < count {
            let byte = bytes[authorityEnd]
            if byte == UInt8(ascii: "/") || byte == UInt8(ascii: "?") || byte == UInt8(ascii: "#") { break }
            if byte == UInt8(ascii: "@") { return .failure(.userinfoNotAllowed) }
            authorityEnd += 1
        }
        let authorityBytes = UnsafeBufferPointer(rebasing: bytes[authorityStart..<authorityEnd])
        guard let authority = OriginAuthority(bytes: authorityBytes, defaultPort: 80) else {
            return .failure(authorityBytes.isEmpty ? .invalidHost : .invalidPort)
        }
        // A fragment is never part of a request-target; drop it rather than forward it.
        var restEnd = authorityEnd
        while restEnd < count, bytes[restEnd] != UInt8(ascii: "#") { restEnd += 1 }
        let rest = UnsafeBufferPointer(rebasing: bytes[authorityEnd..<restEnd])
        let pathAndQuery: String
        if rest.isEmpty {
            pathAndQuery = "/"
        } else if rest[0] == UInt8(ascii: "?") {
            pathAndQuery = "/" + String(decoding: rest, as: UTF8.self)
        } else {
            pathAndQuery = String(decoding: rest, as: UTF8.self)
        }
        return .success(.absolute(authority, pathAndQuery: pathAndQuery))
    }
}

/// Host and port of an origin, validated.
public struct OriginAuthority: Hashable, Sendable {
    /// Host name (lower-cased, a trailing dot kept: it makes the name absolute for the resolver)
    /// or IP literal in its canonical spelling (``CanonicalHost``), without brackets.
    public var host: String
    public var port: Int
    /// The authority as the client wrote it (for `Host`), e.g. `example.com:8080` or `[::1]:80`.
    public var hostHeader: String

    public init(host: String, port: Int, hostHeader: String) {
        self.host = host
        self.port = port
        self.hostHeader = hostHeader
    }

    /// Parses `host[:port]` / `[v6]:port`. With `defaultPort` `nil` a port is required.
    public init?(parsing text: Substring, defaultPort: Int?) {
        let parsed =
            text.utf8.withContiguousStorageIfAvailable { Self(bytes: $0, defaultPort: defaultPort) }
            ?? Array(text.utf8).withUnsafeBufferPointer { Self(bytes: $0, defaultPort: defaultPort) }
        guard let parsed else { return nil }
        self = parsed
    }

    init?(bytes text: UnsafeBufferPointer<UInt8>, defaultPort: Int?) {
        let count = text.count
        let hostRange: Range<Int>
        var portRange: Range<Int>?
        if count > 0, text[0] == UInt8(ascii: "[") {
            guard let close = text.firstIndex(of: UInt8(ascii: "]")) else { return nil }
            hostRange = 1..<close
            if close + 1 < count {
                guard text[close + 1] == UInt8(ascii: ":") else { return nil }
                portRange = (close + 2)..<count
            }
            guard !hostRange.isEmpty,
                hostRange.allSatisfy({
                    HTTPGrammar.isHexDigit(text[$0]) || text[$0] == UInt8(ascii: ":") || text[$0] == UInt8(ascii: ".")
                })
            else { return nil }
        } else {
            if let colon = text.lastIndex(of: UInt8(ascii: ":")) {
                hostRange = 0..<colon
                portRange = (colon + 1)..<count
            } else {
                hostRange = 0..<count
            }
            guard !hostRange.isEmpty, hostRange.count <= 253,
                hostRange.allSatisfy({ CanonicalHost.isNameByte(text[$0]) })
            else { return nil }
        }
        let port: Int
        if let portRange {
            guard !portRange.isEmpty, portRange.count <= 5 else { return nil }
            var value = 0
            for index in portRange {
                let digit = text[index]
                guard digit >= 48, digit <= 57 else { return nil }
                value = value * 10 + Int(digit - 48)
            }
            guard (1...65535).contains(value) else { return nil }
            port = value
        } else {
            guard let defaultPort else { return nil }
            port = defaultPort
        }
        // Host bytes are ASCII (checked above): lower-casing is per byte.
        let host = UnsafeBufferPointer(rebasing: text[hostRange])
        // IP literals get their one canonical spelling here, so the access rules, the upstream
        // pool and the logs all see the address getaddrinfo will connect to (`127.1` and
        // `0x7f000001` are 127.0.0.1); a name ending in a number that is no address is refused.
        if text[0] == UInt8(ascii: "[") {
            guard let address = CanonicalHost.ipv6(Array(host)), let canonical = CanonicalHost.ipv6Text(address)
            else { return nil }
            self.host = canonical
        } else {
            switch CanonicalHost.classify(host) {
            case .invalid:
                return nil
            case .ipv4(let address):
                self.host = CanonicalHost.dottedQuad(address)
            case .name where host.contains(where: { $0 >= 65 && $0 <= 90 }):
                self.host = String(decoding: host.lazy.map { ($0 >= 65 && $0 <= 90) ? $0 | 0x20 : $0 }, as: UTF8.self)
            case .name:
                self.host = String(decoding: host, as: UTF8.self)
            }
        }
        self.port = port
        self.hostHeader = String(decoding: text, as: UTF8.self)
    }
}
