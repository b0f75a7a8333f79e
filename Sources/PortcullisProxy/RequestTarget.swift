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
        if isConnect {
            // CONNECT takes authority-form only (RFC 9110 §9.3.6), and the port is mandatory.
            guard let authority = OriginAuthority(parsing: target[...], defaultPort: nil) else {
                return .failure(target.contains(where: { $0 == "/" }) ? .connectNeedsAuthority : .invalidHost)
            }
            return .success(.authority(authority))
        }
        if target == "*" { return .success(.asterisk) }
        if target.hasPrefix("/") { return .success(.origin(target)) }

        // Scanned as UTF-8 bytes: Character-wise scanning (grapheme breaking) cost ~6 % of a request.
        let utf8 = target.utf8
        guard let colon = utf8.firstIndex(of: UInt8(ascii: ":")),
            utf8[colon...].starts(with: "://".utf8)
        else {
            return .failure(.malformed)
        }
        let schemeBytes = utf8[..<colon]
        guard schemeBytes.count == 4, zip(schemeBytes, "http".utf8).allSatisfy({ ($0 | 0x20) == $1 }) else {
            let scheme = target[..<colon].lowercased()
            return .failure(scheme.isEmpty ? .malformed : .unsupportedScheme(String(scheme.prefix(16))))
        }
        let authorityStart = utf8.index(colon, offsetBy: 3)
        let authorityEnd =
            utf8[authorityStart...].firstIndex(where: {
                $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "#")
            }) ?? utf8.endIndex
        let authorityText = target[authorityStart..<authorityEnd]
        if authorityText.utf8.contains(UInt8(ascii: "@")) { return .failure(.userinfoNotAllowed) }
        guard let authority = OriginAuthority(parsing: authorityText, defaultPort: 80) else {
            return .failure(authorityText.isEmpty ? .invalidHost : .invalidPort)
        }
        let afterScheme = target[authorityStart...]
        var rest = afterScheme[authorityEnd...]
        // A fragment is never part of a request-target; drop it rather than forward it.
        if let hash = rest.utf8.firstIndex(of: UInt8(ascii: "#")) { rest = rest[..<hash] }
        let pathAndQuery: String
        if rest.isEmpty {
            pathAndQuery = "/"
        } else if rest.first == "?" {
            pathAndQuery = "/" + rest
        } else {
            pathAndQuery = String(rest)
        }
        return .success(.absolute(authority, pathAndQuery: pathAndQuery))
    }
}

/// Host and port of an origin, validated.
public struct OriginAuthority: Hashable, Sendable {
    /// Host name or IP literal, without brackets, lower-cased.
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
        let utf8 = text.utf8
        var host: Substring
        var portText: Substring?
        if utf8.first == UInt8(ascii: "[") {
            guard let close = utf8.firstIndex(of: UInt8(ascii: "]")) else { return nil }
            host = text[utf8.index(after: utf8.startIndex)..<close]
            let after = text[utf8.index(after: close)...]
            if !after.isEmpty {
                guard after.utf8.first == UInt8(ascii: ":") else { return nil }
                portText = after.dropFirst()
            }
            guard !host.isEmpty,
                host.utf8.allSatisfy({
                    HTTPGrammar.isHexDigit($0) || $0 == UInt8(ascii: ":") || $0 == UInt8(ascii: ".")
                })
            else { return nil }
        } else {
            if let colon = utf8.lastIndex(of: UInt8(ascii: ":")) {
                host = text[..<colon]
                portText = text[utf8.index(after: colon)...]
            } else {
                host = text
            }
            guard !host.isEmpty, host.utf8.count <= 253, host.utf8.allSatisfy(Self.isRegNameByte) else { return nil }
        }
        let port: Int
        if let portText {
            guard !portText.isEmpty, portText.utf8.count <= 5, portText.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
                let value = Int(portText), (1...65535).contains(value)
            else { return nil }
            port = value
        } else {
            guard let defaultPort else { return nil }
            port = defaultPort
        }
        self.host = host.utf8.contains(where: { $0 >= 65 && $0 <= 90 }) ? host.lowercased() : String(host)
        self.port = port
        self.hostHeader = String(text)
    }

    /// Host names: letters, digits, `-`, `.`, `_` (seen in real DNS names), nothing that could
    /// smuggle a second authority or a header.
    private static func isRegNameByte(_ c: UInt8) -> Bool {
        switch c {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"):
            return true
        default:
            return false
        }
    }
}
