import NIOCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Which resolved addresses the proxy may connect to.
///
/// Checked on the *resolved* addresses, so a public name that resolves to 127.0.0.1 (DNS
/// rebinding) is refused exactly like the literal.
public struct DestinationPolicy: Sendable {
    public var allowPrivateDestinations: Bool

    public init(allowPrivateDestinations: Bool) {
        self.allowPrivateDestinations = allowPrivateDestinations
    }

    public func allows(_ address: SocketAddress) -> Bool {
        self.allowPrivateDestinations || !Self.isInternal(address)
    }

    /// Loopback, private, link-local, CGNAT, multicast, unspecified and reserved ranges.
    public static func isInternal(_ address: SocketAddress) -> Bool {
        switch address {
        case .v4(let v4):
            return isInternalIPv4(UInt32(bigEndian: v4.address.sin_addr.s_addr))
        case .v6(let v6):
            var addr = v6.address.sin6_addr
            let bytes = withUnsafeBytes(of: &addr) { Array($0) }
            return isInternalIPv6(bytes)
        default:
            return true
        }
    }

    static func isInternalIPv4(_ a: UInt32) -> Bool {
        func inNet(_ net: UInt32, _ bits: UInt32) -> Bool {
            let mask: UInt32 = bits == 0 ? 0 : ~UInt32(0) << (32 - bits)
            return a & mask == net & mask
        }
        return inNet(0x0000_0000, 8)  // 0.0.0.0/8 "this network"
            || inNet(0x0A00_0000, 8)  // 10/8
            || inNet(0x6440_0000, 10)  // 100.64/10 CGNAT
            || inNet(0x7F00_0000, 8)  // 127/8
            || inNet(0xA9FE_0000, 16)  // 169.254/16 link-local (cloud metadata lives here)
            || inNet(0xAC10_0000, 12)  // 172.16/12
            || inNet(0xC000_0000, 24)  // 192.0.0/24 IETF protocol assignments
            || inNet(0xC0A8_0000, 16)  // 192.168/16
            || inNet(0xC612_0000, 15)  // 198.18/15 benchmarking
            || inNet(0xE000_0000, 4)  // multicast
            || inNet(0xF000_0000, 4)  // reserved + broadcast
    }

    static func isInternalIPv6(_ b: [UInt8]) -> Bool {
        guard b.count == 16 else { return true }
        if b[0..<15].allSatisfy({ $0 == 0 }) { return true }  // :: and ::1
        // IPv4-mapped ::ffff:a.b.c.d and NAT64 64:ff9b::/96 carry an IPv4 address: judge that.
        let isMapped = b[0..<10].allSatisfy({ $0 == 0 }) && b[10] == 0xFF && b[11] == 0xFF
        let isNAT64 = b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xFF && b[3] == 0x9B && b[4..<12].allSatisfy({ $0 == 0 })
        if isMapped || isNAT64 {
            let v4 = UInt32(b[12]) << 24 | UInt32(b[13]) << 16 | UInt32(b[14]) << 8 | UInt32(b[15])
            return isInternalIPv4(v4)
        }
        if b[0] & 0xFE == 0xFC { return true }  // fc00::/7 unique local
        if b[0] == 0xFE && b[1] & 0xC0 == 0x80 { return true }  // fe80::/10 link-local
        if b[0] == 0xFE && b[1] & 0xC0 == 0xC0 { return true }  // fec0::/10 site-local (deprecated)
        if b[0] == 0xFF { return true }  // multicast
        return false
    }
}

/// Why a destination could not be resolved to an allowed address.
public enum ResolutionError: Error, Equatable, Sendable {
    /// The name does not resolve (getaddrinfo's message).
    case nameNotResolved(String)
    /// Every address the name resolves to is internal and internal destinations are denied.
    case destinationDenied
    /// The access rules allow none of the addresses the name resolves to (`rule`: the rule
    /// that refused the first one, `nil` when no rule matched it).
    case policyDenied(rule: String?)
}
