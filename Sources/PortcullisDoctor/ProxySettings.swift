import Foundation

/// A proxy URL as clients take it from `--proxy` or `*_PROXY`: `http[s]://[user[:password]@]host[:port]`.
public struct ProxyURL: Sendable, Hashable {
    public var isTLS: Bool
    public var host: String
    public var port: Int
    public var user: String?
    public var password: String?

    /// The URL for people: credentials replaced by `***`, never the password.
    public var redacted: String {
        var s = self.isTLS ? "https://" : "http://"
        if let user = self.user {
            s += Self.percentEncodeUserinfo(user)
            if self.password != nil { s += ":***" }
            s += "@"
        }
        s += self.host.contains(":") ? "[\(self.host)]" : self.host
        return s + ":\(self.port)"
    }

    public var authority: String {
        self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)"
    }

    public init(isTLS: Bool, host: String, port: Int, user: String? = nil, password: String? = nil) {
        self.isTLS = isTLS
        self.host = host
        self.port = port
        self.user = user
        self.password = password
    }

    /// What parsing found: the URL (when usable) and remarks for the configuration step.
    public struct Parsed: Sendable {
        public var url: ProxyURL?
        /// Problems that make the URL unusable or wrong.
        public var errors: [String] = []
        /// Things that work here but break elsewhere or look unintended.
        public var warnings: [String] = []
    }

    /// Parses like curl does, and says what a stricter client would trip on. The password is
    /// never part of a remark.
    public static func parse(_ text: String) -> Parsed {
        var parsed = Parsed()
        var rest = Substring(text.trimmingCharacters(in: .whitespaces))
        var isTLS = false
        if let range = rest.range(of: "://") {
            let scheme = rest[..<range.lowerBound].lowercased()
            switch scheme {
            case "http": isTLS = false
            case "https": isTLS = true
            case "socks4", "socks4a", "socks5", "socks5h":
                parsed.errors.append(
                    "the proxy URL uses \(scheme)://, a SOCKS proxy; doctor tests HTTP proxies (http:// or https://)"
                )
                return parsed
            default:
                parsed.errors.append(
                    "the proxy URL scheme \(scheme.isEmpty ? "(empty)" : "\"\(scheme)\"") is not http or https"
                )
                return parsed
            }
            rest = rest[range.upperBound...]
        } else {
            parsed.warnings.append(
                "the proxy URL has no scheme; curl assumes http://, other clients (Go, Java, Node) refuse it — write http://\(Self.redactedRest(rest))"
            )
        }
        // The authority ends at the first "/", "?" or "#" after the user info. The user info
        // ends at the LAST "@" (curl's reading), so an unencoded "@" in a password still parses
        // here but not in every client.
        var userinfo: Substring?
        if let at = rest.lastIndex(of: "@") {
            let info = rest[..<at]
            if let bad = info.first(where: { "/?#".contains($0) }) {
                let code = bad == "/" ? "%2F" : bad == "?" ? "%3F" : "%23"
                parsed.errors.append(
                    "the proxy URL's user name or password contains \"\(bad)\", which ends the host part of a URL; percent-encode it as \(code)"
                )
                return parsed
            }
            if info.filter({ $0 == "@" }).count > 0 {
                parsed.warnings.append(
                    "the proxy URL's user name or password contains an unencoded \"@\"; curl reads it, other clients do not — write it as %40"
                )
            }
            userinfo = info
            rest = rest[rest.index(after: at)...]
        }
        if let end = rest.firstIndex(where: { "/?#".contains($0) }) {
            let path = rest[end...]
            if path != "/" && !path.isEmpty {
                parsed.warnings.append("the proxy URL has a path (\(path)), which clients ignore")
            }
            rest = rest[..<end]
        }
        var host: Substring
        var portText: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else {
                parsed.errors.append("the proxy URL's IPv6 address has no closing \"]\"")
                return parsed
            }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if after.hasPrefix(":") {
                portText = after.dropFirst()
            } else if !after.isEmpty {
                parsed.errors.append("the proxy URL has text after the IPv6 address")
                return parsed
            }
        } else if let colon = rest.lastIndex(of: ":") {
            host = rest[..<colon]
            portText = rest[rest.index(after: colon)...]
        } else {
            host = rest
        }
        guard !host.isEmpty else {
            parsed.errors.append("the proxy URL has no host")
            return parsed
        }
        if host.contains(where: { $0 == " " || $0 == "%" || $0 == "@" }) {
            parsed.errors.append("the proxy URL's host \"\(host)\" is not a valid host name")
            return parsed
        }
        var port = isTLS ? 443 : 1080
        if let portText {
            guard let value = Int(portText), (1...65535).contains(value) else {
                parsed.errors.append("the proxy URL's port \"\(portText)\" is not a number from 1 to 65535")
                return parsed
            }
            port = value
        } else {
            parsed.warnings.append(
                "the proxy URL has no port; curl uses \(port), other clients 80 or 8080 — write the port"
            )
        }
        var user: String?
        var password: String?
        if let userinfo {
            let name: Substring
            let secret: Substring?
            if let colon = userinfo.firstIndex(of: ":") {
                name = userinfo[..<colon]
                secret = userinfo[userinfo.index(after: colon)...]
            } else {
                name = userinfo
                secret = nil
            }
            guard let decodedName = Self.percentDecode(name) else {
                parsed.errors.append(
                    "the proxy URL's user name has a bad percent-encoding (a \"%\" must be followed by two hex digits; write a literal % as %25)"
                )
                return parsed
            }
            user = decodedName
            if let secret {
                guard let decoded = Self.percentDecode(secret) else {
                    parsed.errors.append(
                        "the proxy URL's password has a bad percent-encoding (a \"%\" must be followed by two hex digits; write a literal % as %25)"
                    )
                    return parsed
                }
                password = decoded
                let risky = secret.filter { " \"<>\\^`{|}[]".contains($0) }
                if !risky.isEmpty {
                    parsed.warnings.append(
                        "the proxy URL's password contains characters that must be percent-encoded in a URL (\(Set(risky).sorted().map { "\"\($0)\"" }.joined(separator: ", "))); some clients will send a different password"
                    )
                }
            }
        }
        parsed.url = ProxyURL(isTLS: isTLS, host: String(host), port: port, user: user, password: password)
        return parsed
    }

    /// Percent-decodes; `nil` for a "%" not followed by two hex digits or bytes that are not UTF-8.
    static func percentDecode(_ s: Substring) -> String? {
        var bytes: [UInt8] = []
        var it = Array(s.utf8)[...]
        while let b = it.popFirst() {
            if b == UInt8(ascii: "%") {
                guard it.count >= 2, let v = UInt8(String(decoding: it.prefix(2), as: UTF8.self), radix: 16) else {
                    return nil
                }
                bytes.append(v)
                it = it.dropFirst(2)
            } else {
                bytes.append(b)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }

    static func percentEncodeUserinfo(_ s: String) -> String {
        let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-._~!$&'()*+,;="))
        return s.addingPercentEncoding(withAllowedCharacters: allowed) ?? s
    }

    /// The part after the scheme with any user info replaced, for messages.
    private static func redactedRest(_ rest: Substring) -> String {
        guard let at = rest.lastIndex(of: "@") else { return String(rest) }
        return "USER:***@" + rest[rest.index(after: at)...]
    }
}

/// `NO_PROXY` as curl reads it: comma-separated host names (matching the name and its
/// subdomains, a leading dot optional), IP addresses, CIDR blocks, or `*`.
public struct NoProxyList: Sendable {
    public var entries: [String]
    /// Entries that cannot match anything, for the configuration step.
    public var invalid: [String] = []

    public init(_ value: String) {
        self.entries = []
        for raw in value.split(separator: ",") {
            let entry = raw.trimmingCharacters(in: .whitespaces).lowercased()
            guard !entry.isEmpty else { continue }
            if entry.contains("://") || entry.contains("/") && !Self.isCIDR(entry) || entry.contains(" ") {
                self.invalid.append(entry)
                continue
            }
            self.entries.append(entry)
        }
    }

    /// The entry that makes `host` bypass the proxy, if any.
    public func match(host: String) -> String? {
        let host = host.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        for entry in self.entries {
            if entry == "*" { return entry }
            if Self.isCIDR(entry) {
                if Self.cidr(entry, contains: host) { return entry }
                continue
            }
            var name = entry
            if let colon = name.lastIndex(of: ":"), !name.contains("::"), name.filter({ $0 == ":" }).count == 1 {
                name = String(name[..<colon])  // curl ignores a port in NO_PROXY entries
            }
            if name.hasPrefix(".") { name.removeFirst() }
            if name.hasPrefix("*.") { name.removeFirst(2) }
            if host == name || host.hasSuffix("." + name) { return entry }
        }
        return nil
    }

    static func isCIDR(_ entry: String) -> Bool {
        let parts = entry.split(separator: "/")
        guard parts.count == 2, let bits = Int(parts[1]) else { return false }
        if let v4 = IPv4(String(parts[0])) { _ = v4; return (0...32).contains(bits) }
        return parts[0].contains(":") && (0...128).contains(bits)
    }

    static func cidr(_ entry: String, contains host: String) -> Bool {
        let parts = entry.split(separator: "/")
        guard parts.count == 2, let bits = Int(parts[1]), let net = IPv4(String(parts[0])), let ip = IPv4(host) else {
            return false
        }
        let mask: UInt32 = bits == 0 ? 0 : ~UInt32(0) << (32 - UInt32(bits))
        return net.value & mask == ip.value & mask
    }

    struct IPv4 {
        var value: UInt32
        init?(_ s: String) {
            let octets = s.split(separator: ".", omittingEmptySubsequences: false)
            guard octets.count == 4 else { return nil }
            var v: UInt32 = 0
            for o in octets {
                guard let n = UInt8(o) else { return nil }
                v = v << 8 | UInt32(n)
            }
            self.value = v
        }
    }
}

/// Which proxy a client on this machine would use for a URL, from the environment.
public struct ProxyEnvironment: Sendable {
    public var variables: [String: String]

    public init(_ variables: [String: String]) {
        self.variables = variables
    }

    /// A variable's value: lower-case name first, as curl reads them; empty means unset.
    public func value(_ name: String) -> (name: String, value: String)? {
        for candidate in [name.lowercased(), name.uppercased()] {
            if let v = self.variables[candidate], !v.trimmingCharacters(in: .whitespaces).isEmpty {
                return (candidate, v)
            }
        }
        return nil
    }

    /// Variables set in both cases to different values: clients disagree on which one wins.
    public func caseConflicts() -> [String] {
        ["http_proxy", "https_proxy", "all_proxy", "no_proxy"].compactMap { lower in
            guard let a = self.variables[lower], let b = self.variables[lower.uppercased()], a != b else { return nil }
            return
                "\(lower) and \(lower.uppercased()) are both set, to different values; curl and Python use \(lower), Go and Java tools may use \(lower.uppercased())"
        }
    }

    /// The proxy variable for a target scheme (`http` or `https`).
    public func proxyVariable(forScheme scheme: String) -> (name: String, value: String)? {
        self.value(scheme == "https" ? "https_proxy" : "http_proxy") ?? self.value("all_proxy")
    }

    public var noProxy: (name: String, list: NoProxyList)? {
        guard let v = self.value("no_proxy") else { return nil }
        return (v.name, NoProxyList(v.value))
    }
}
