import PortcullisAuth

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A destination host in its one canonical spelling, so that access rules and logs never see
/// two spellings of one destination.
///
/// The resolver (getaddrinfo, through inet_aton) reads `127.1`, `2130706433`, `0x7f000001`,
/// `0177.0.0.1` and `0x7f.1` all as 127.0.0.1: every such spelling becomes the dotted quad.
/// Names are lower-cased and lose one trailing dot (`example.com.` is `example.com` to DNS).
/// A name whose last label is a number but which is not an address (`1.2.3.4.5`, `08.1`,
/// `256.1.1.1`) is refused, as the WHATWG URL standard does: no top-level domain is numeric,
/// and getaddrinfo would send such a name to DNS, where anyone's answer could come back.
public enum CanonicalHost: Hashable, Sendable, CustomStringConvertible {
    /// Lower-case, without a trailing dot, every label non-empty.
    case name(String)
    /// Host byte order.
    case ipv4(UInt32)
    /// 16 bytes.
    case ipv6([UInt8])

    /// Reads a host as it appears in a request target or a rule: a name, any inet_aton
    /// spelling of an IPv4 address, or an IPv6 address (bracketed or not). `nil` for anything
    /// else.
    public init?(_ text: String) {
        var bytes = Array(text.utf8)
        if bytes.first == UInt8(ascii: "[") {
            guard bytes.count > 2, bytes.last == UInt8(ascii: "]") else { return nil }
            bytes = Array(bytes.dropFirst().dropLast())
            guard let v6 = Self.ipv6(bytes) else { return nil }
            self = .ipv6(v6)
            return
        }
        if bytes.contains(UInt8(ascii: ":")) {
            guard let v6 = Self.ipv6(bytes) else { return nil }
            self = .ipv6(v6)
            return
        }
        let parsed = bytes.withUnsafeBufferPointer { Self.name(lowercasing: $0) }
        guard let parsed else { return nil }
        self = parsed
    }

    /// The dotted quad, the compressed IPv6 form (RFC 5952, as inet_ntop writes it) or the name.
    public var description: String {
        switch self {
        case .name(let name): return name
        case .ipv4(let value): return Self.dottedQuad(value)
        case .ipv6(let bytes): return Self.ipv6Text(bytes) ?? "::"
        }
    }

    /// The address bytes (4 or 16) of an IP literal; `nil` for a name.
    var addressBytes: [UInt8]? {
        switch self {
        case .name: return nil
        case .ipv4(let value):
            return [UInt8(value >> 24), UInt8(value >> 16 & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF)]
        case .ipv6(let bytes): return bytes
        }
    }

    // MARK: - Byte-level parsing, shared with OriginAuthority

    /// What a host name (not bracketed) of a request target is: a name or an IPv4 literal.
    enum NameKind: Equatable {
        case name
        case ipv4(UInt32)
        case invalid
    }

    /// Classifies host-name bytes already checked for the reg-name alphabet; upper-case letters
    /// allowed. Empty labels are invalid, except one final dot (an absolute name).
    static func classify(_ bytes: UnsafeBufferPointer<UInt8>) -> NameKind {
        var end = bytes.count
        if end > 0, bytes[end - 1] == UInt8(ascii: ".") { end -= 1 }
        guard end > 0 else { return .invalid }
        let host = UnsafeBufferPointer(rebasing: bytes[0..<end])
        // Starting as if after a dot catches a leading dot too.
        var previous = UInt8(ascii: ".")
        for byte in host {
            if byte == UInt8(ascii: "."), previous == UInt8(ascii: ".") { return .invalid }
            previous = byte
        }
        guard host[end - 1] != UInt8(ascii: ".") else { return .invalid }
        guard Self.endsInANumber(host) else { return .name }
        guard let value = Self.ipv4(host) else { return .invalid }
        return .ipv4(value)
    }

    /// WHATWG URL "ends in a number": the last label is all digits or `0x` and hex digits.
    /// Every spelling inet_aton accepts ends so, which is what makes the check complete.
    static func endsInANumber(_ host: UnsafeBufferPointer<UInt8>) -> Bool {
        let start = (host.lastIndex(of: UInt8(ascii: ".")) ?? -1) + 1
        let label = UnsafeBufferPointer(rebasing: host[start...])
        guard !label.isEmpty else { return false }
        if label.allSatisfy(Self.isDigit) { return true }
        guard label.count >= 2, label[0] == UInt8(ascii: "0"), label[1] | 0x20 == UInt8(ascii: "x") else {
            return false
        }
        return label.dropFirst(2).allSatisfy(HTTPGrammar.isHexDigit)
    }

    /// An IPv4 address in any form glibc's inet_aton accepts: 1 to 4 parts (`a`, `a.b` with a
    /// 24-bit b, `a.b.c` with a 16-bit c, `a.b.c.d`), each decimal, octal after a leading `0`,
    /// or hexadecimal after `0x`; every part in range. Upper- or lower-case `x` and hex digits.
    static func ipv4(_ host: UnsafeBufferPointer<UInt8>) -> UInt32? {
        // The parts before the last, packed from the top byte down: no array (this runs for
        // every request whose target is an IPv4 literal).
        var leading: UInt32 = 0
        var leadingCount = 0
        var index = 0
        let count = host.count
        while true {
            guard index < count, Self.isDigit(host[index]) else { return nil }
            var radix: UInt64 = 10
            if host[index] == UInt8(ascii: "0") {
                radix = 8
                if index + 1 < count, host[index + 1] | 0x20 == UInt8(ascii: "x") {
                    radix = 16
                    index += 2
                    // inet_aton (strtoul) reads `0x` without digits as 0 followed by junk.
                    guard index < count, HTTPGrammar.isHexDigit(host[index]) else { return nil }
                }
            }
            var value: UInt64 = 0
            while index < count, host[index] != UInt8(ascii: ".") {
                guard let digit = Self.digitValue(host[index]), UInt64(digit) < radix else { return nil }
                value = value * radix + UInt64(digit)
                // Leading zeros keep the value small; anything past 32 bits is out of range.
                guard value <= 0xFFFF_FFFF else { return nil }
                index += 1
            }
            guard index < count else {
                // The last part fills the bits the leading ones left.
                let lastBits = 32 - 8 * leadingCount
                guard lastBits == 32 || value < UInt64(1) << lastBits else { return nil }
                return leading | UInt32(value)
            }
            // A dot follows: this is a leading part, one byte; at most four parts in all.
            guard leadingCount < 3, value <= 0xFF else { return nil }
            leading |= UInt32(value) << (24 - 8 * leadingCount)
            leadingCount += 1
            index += 1
        }
    }

    static func dottedQuad(_ value: UInt32) -> String {
        "\(value >> 24).\(value >> 16 & 0xFF).\(value >> 8 & 0xFF).\(value & 0xFF)"
    }

    /// The 16 bytes of an IPv6 literal (without brackets or zone), by inet_pton.
    static func ipv6(_ bytes: [UInt8]) -> [UInt8]? {
        // A NUL would end the C string early: `::1\0junk` must not read as ::1.
        guard !bytes.isEmpty, bytes.count <= 45, !bytes.contains(0) else { return nil }
        var address = in6_addr()
        let ok = (bytes + [0]).withUnsafeBufferPointer { text in
            text.withMemoryRebound(to: CChar.self) { inet_pton(AF_INET6, $0.baseAddress, &address) }
        }
        guard ok == 1 else { return nil }
        return withUnsafeBytes(of: &address) { Array($0) }
    }

    /// The RFC 5952 text of 16 address bytes, by inet_ntop.
    static func ipv6Text(_ bytes: [UInt8]) -> String? {
        guard bytes.count == 16 else { return nil }
        var address = in6_addr()
        withUnsafeMutableBytes(of: &address) { $0.copyBytes(from: bytes) }
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        guard inet_ntop(AF_INET6, &address, &buffer, socklen_t(buffer.count)) != nil else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private static func name(lowercasing bytes: UnsafeBufferPointer<UInt8>) -> CanonicalHost? {
        guard !bytes.isEmpty, bytes.allSatisfy(Self.isNameByte) else { return nil }
        switch Self.classify(bytes) {
        case .invalid: return nil
        case .ipv4(let value): return .ipv4(value)
        case .name:
            let end = bytes[bytes.count - 1] == UInt8(ascii: ".") ? bytes.count - 1 : bytes.count
            let lower = bytes[0..<end].map { $0 >= 65 && $0 <= 90 ? $0 | 0x20 : $0 }
            return .name(String(decoding: lower, as: UTF8.self))
        }
    }

    /// The alphabet of a host name in a request target: letters, digits, `-`, `.`, `_` (seen in
    /// real DNS names), nothing that could smuggle a second authority or a header.
    static func isNameByte(_ c: UInt8) -> Bool {
        switch c {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"):
            return true
        default:
            return false
        }
    }

    private static func isDigit(_ c: UInt8) -> Bool { c >= 48 && c <= 57 }

    private static func digitValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - 48
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - 87
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - 55
        default: return nil
        }
    }
}
