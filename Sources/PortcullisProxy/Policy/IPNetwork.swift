import NIOCore

/// An IPv4 or IPv6 network (`10.0.0.0/8`, `fd00::/8`, or one address), for client allow-lists
/// and policy rules.
public struct IPNetwork: Sendable, Hashable, CustomStringConvertible {
    /// 4 or 16 bytes, host bits already cleared.
    public let bytes: [UInt8]
    public let prefixLength: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let address = Self.bytes(of: String(parts[0])) else { return nil }
        let maximum = address.count * 8
        var length = maximum
        if parts.count == 2 {
            guard let n = Int(parts[1]), (0...maximum).contains(n) else { return nil }
            length = n
        }
        self.prefixLength = length
        self.bytes = Self.masked(address, length)
    }

    /// One address (4 or 16 bytes) as a network of its own.
    init?(address bytes: [UInt8]) {
        guard bytes.count == 4 || bytes.count == 16 else { return nil }
        self.bytes = bytes
        self.prefixLength = bytes.count * 8
    }

    public var description: String {
        let address: String
        if self.bytes.count == 4 {
            address = self.bytes.map(String.init).joined(separator: ".")
        } else {
            address = stride(from: 0, to: 16, by: 2).map {
                String(UInt16(self.bytes[$0]) << 8 | UInt16(self.bytes[$0 + 1]), radix: 16)
            }
            .joined(separator: ":")
        }
        return "\(address)/\(self.prefixLength)"
    }

    /// Whether `address` (an IP literal, IPv4-mapped IPv6 included) is in this network.
    public func contains(_ address: String) -> Bool {
        guard let candidate = Self.bytes(of: address) else { return false }
        return self.contains(bytes: candidate)
    }

    /// Whether the address with these 4 or 16 bytes is in this network; an IPv4-mapped IPv6
    /// address (`::ffff:a.b.c.d`, which a dual-stack socket connects to a.b.c.d) and its IPv4
    /// address are one address.
    func contains(bytes: [UInt8]) -> Bool {
        var candidate = bytes
        if candidate.count == 16, self.bytes.count == 4, candidate[0..<10].allSatisfy({ $0 == 0 }),
            candidate[10] == 0xFF, candidate[11] == 0xFF
        {
            candidate = Array(candidate[12..<16])
        } else if candidate.count == 4, self.bytes.count == 16 {
            candidate = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF] + candidate
        }
        guard candidate.count == self.bytes.count else { return false }
        return Self.masked(candidate, self.prefixLength) == self.bytes
    }

    public func contains(_ address: SocketAddress) -> Bool {
        guard let bytes = Self.bytes(of: address) else { return false }
        return self.contains(bytes: bytes)
    }

    static func bytes(of text: String) -> [UInt8]? {
        let trimmed = text.trimmingCharacters(in: "[]")
        guard let address = try? SocketAddress(ipAddress: trimmed, port: 0) else { return nil }
        return Self.bytes(of: address)
    }

    /// The 4 or 16 address bytes of an IP socket address.
    static func bytes(of address: SocketAddress) -> [UInt8]? {
        switch address {
        case .v4(let v4):
            return withUnsafeBytes(of: v4.address.sin_addr.s_addr) { Array($0) }
        case .v6(let v6):
            return withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
        default:
            return nil
        }
    }

    private static func masked(_ bytes: [UInt8], _ length: Int) -> [UInt8] {
        var out = bytes
        for i in out.indices {
            let bitsHere = max(0, min(8, length - i * 8))
            out[i] &= bitsHere == 0 ? 0 : UInt8(truncatingIfNeeded: 0xFF << (8 - bitsHere))
        }
        return out
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return String(s)
    }
}
