import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// An IPv4 or IPv6 address as the `Ex` helpers compare and sort them.
struct PACAddress: Comparable, Hashable {
    /// 4 or 16 bytes.
    var bytes: [UInt8]

    var isIPv4: Bool { self.bytes.count == 4 }

    /// A literal address: dotted quad (exactly four decimal parts) or IPv6 (brackets allowed).
    init?(_ text: some StringProtocol) {
        var text = String(text)
        if text.hasPrefix("["), text.hasSuffix("]") { text = String(text.dropFirst().dropLast()) }
        if text.contains(":") {
            var address = in6_addr()
            guard inet_pton(AF_INET6, text, &address) == 1 else { return nil }
            self.bytes = withUnsafeBytes(of: &address) { Array($0) }
        } else {
            let parts = text.split(separator: ".", omittingEmptySubsequences: false)
            guard parts.count == 4 else { return nil }
            var bytes: [UInt8] = []
            for part in parts {
                guard !part.isEmpty, part.count <= 3, part.allSatisfy(\.isASCIIDigit), let value = UInt8(part)
                else { return nil }
                bytes.append(value)
            }
            self.bytes = bytes
        }
    }

    init(bytes: [UInt8]) { self.bytes = bytes }

    /// IPv4 as `::ffff:a.b.c.d`, so that either family matches a prefix of the other.
    var mappedToIPv6: [UInt8] {
        self.isIPv4 ? [UInt8](repeating: 0, count: 10) + [0xFF, 0xFF] + self.bytes : self.bytes
    }

    /// IPv4 dotted decimal; IPv6 as RFC 5952 writes it (lower case, the longest run of two or
    /// more zero groups compressed, never a dotted tail), as Chromium's `IPAddress::ToString`.
    var text: String {
        if self.isIPv4 { return self.bytes.map(String.init).joined(separator: ".") }
        let groups = (0..<8).map { Int(self.bytes[2 * $0]) << 8 | Int(self.bytes[2 * $0 + 1]) }
        var best = (start: -1, length: 0)
        var index = 0
        while index < 8 {
            if groups[index] == 0 {
                var end = index
                while end < 8, groups[end] == 0 { end += 1 }
                if end - index > best.length, end - index >= 2 { best = (index, end - index) }
                index = end
            } else {
                index += 1
            }
        }
        func hex(_ range: Range<Int>) -> String { range.map { String(groups[$0], radix: 16) }.joined(separator: ":") }
        guard best.start >= 0 else { return hex(0..<8) }
        return hex(0..<best.start) + "::" + hex((best.start + best.length)..<8)
    }

    /// An address literal as Chromium's PAC natives read one (`IPAddress::AssignFromIPLiteral`):
    /// with a colon, an IPv6 address (no brackets, no zone); otherwise an IPv4 host as URLs
    /// spell it — one to four parts, each decimal, octal (leading 0) or hex (0x), the last
    /// filling the remaining bytes (`127.1`, `0x7f.0.0.1`, `1234`).
    init?(chromiumLiteral text: String) {
        if text.contains(":") {
            guard !text.hasPrefix("["), let address = PACAddress(text) else { return nil }
            self = address
            return
        }
        var parts = text.split(separator: ".", omittingEmptySubsequences: false)
        if parts.count > 1, parts.last?.isEmpty == true { parts.removeLast() }
        guard (1...4).contains(parts.count) else { return nil }
        var numbers: [UInt64] = []
        for part in parts {
            guard let number = Self.urlNumber(part) else { return nil }
            numbers.append(number)
        }
        for number in numbers.dropLast() where number > 255 { return nil }
        let lastBytes = 5 - numbers.count
        guard numbers.last! < (UInt64(1) << (8 * UInt64(lastBytes))) else { return nil }
        var value: UInt64 = numbers.last!
        for (position, number) in numbers.dropLast().enumerated() {
            value |= number << (8 * UInt64(3 - position))
        }
        self.bytes = [
            UInt8(value >> 24 & 0xFF), UInt8(value >> 16 & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF),
        ]
    }

    private static func urlNumber(_ part: Substring) -> UInt64? {
        guard !part.isEmpty else { return nil }
        var digits = part
        var radix: UInt64 = 10
        if part.count >= 2, part.hasPrefix("0x") || part.hasPrefix("0X") {
            digits = part.dropFirst(2)
            radix = 16
            if digits.isEmpty { return 0 }
        } else if part.count >= 2, part.hasPrefix("0") {
            digits = part.dropFirst()
            radix = 8
        }
        var value: UInt64 = 0
        for character in digits {
            guard let digit = character.hexDigitValue, UInt64(digit) < radix else { return nil }
            value = value * radix + UInt64(digit)
            if value > UInt64(UInt32.max) * 2 { return nil }
        }
        return value
    }

    /// IPv6 before IPv4, then by bytes (the order `sortIpAddressList` gives).
    static func < (lhs: PACAddress, rhs: PACAddress) -> Bool {
        if lhs.isIPv4 != rhs.isIPv4 { return !lhs.isIPv4 }
        return lhs.bytes.lexicographicallyPrecedes(rhs.bytes)
    }

    /// `isInNetEx`'s prefix: `ADDRESS/LENGTH`, each side trimmed of white space, the length in
    /// digits within the family's bits.
    static func parsePrefix(_ text: String) -> (address: PACAddress, length: Int)? {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        guard parts.count == 2, let address = PACAddress(chromiumLiteral: parts[0]), !parts[1].isEmpty,
            parts[1].allSatisfy(\.isASCIIDigit)
        else { return nil }
        let digits = parts[1].drop { $0 == "0" }
        guard digits.count <= 3, let length = digits.isEmpty ? 0 : Int(digits), length <= address.bytes.count * 8
        else { return nil }
        return (address, length)
    }

    /// Whether the first `length` bits of `self` equal those of `prefix` (IPv4 compared to an
    /// IPv6 prefix as IPv4-mapped, and the reverse).
    func matches(prefix: PACAddress, length: Int) -> Bool {
        var mine = self.bytes
        var theirs = prefix.bytes
        var bits = length
        if mine.count != theirs.count {
            mine = self.mappedToIPv6
            theirs = prefix.mappedToIPv6
            if prefix.isIPv4 { bits += 96 }
        }
        var index = 0
        while bits >= 8 {
            if mine[index] != theirs[index] { return false }
            index += 1
            bits -= 8
        }
        if bits == 0 { return true }
        let mask = UInt8(0xFF) << (8 - bits)
        return mine[index] & mask == theirs[index] & mask
    }
}

extension Character {
    var isASCIIDigit: Bool { self.isASCII && self.isNumber }
}

/// Name resolution for `dnsResolve` and friends: the environment's fixed answers first, then
/// DNS (getaddrinfo) with a per-lookup timeout and a budget per evaluation; answers are cached
/// for the life of the evaluator, as browsers cache them per PAC run.
final class PACResolver {
    private let environment: PACEnvironment
    private var cache: [String: [PACAddress]] = [:]
    /// Seconds of DNS waiting left for the current evaluation.
    private var budget: Double

    init(environment: PACEnvironment) {
        self.environment = environment
        self.budget = environment.dnsBudget
    }

    func startEvaluation() { self.budget = self.environment.dnsBudget }

    /// Every address of `host` (a literal answers itself), in the resolver's order.
    func addresses(of host: String) -> [PACAddress] {
        if let literal = PACAddress(chromiumLiteral: host) { return [literal] }
        let name = host.lowercased()
        if let fixed = self.environment.hosts[name] { return fixed.compactMap { PACAddress($0) } }
        guard self.environment.useDNS, !name.isEmpty, name.utf8.count <= 253 else { return [] }
        if let cached = self.cache[name] { return cached }
        guard self.budget > 0 else { return [] }
        let started = Date()
        let answer = Self.lookUp(name, timeout: min(self.environment.dnsTimeout, self.budget))
        self.budget -= Date().timeIntervalSince(started)
        if self.cache.count < 1024 { self.cache[name] = answer }
        return answer
    }

    /// getaddrinfo on its own thread, abandoned (never waited for) after `timeout`: libc's
    /// resolver cannot be cancelled, and this runs in a process that ends after the evaluation.
    private static func lookUp(_ name: String, timeout: Double) -> [PACAddress] {
        final class Box: @unchecked Sendable {
            let lock = NSLock()
            var addresses: [PACAddress] = []
        }
        let box = Box()
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var list: UnsafeMutablePointer<addrinfo>?
            var found: [PACAddress] = []
            if getaddrinfo(name, nil, &hints, &list) == 0 {
                var entry = list
                while let current = entry {
                    if let sockaddr = current.pointee.ai_addr {
                        if current.pointee.ai_family == AF_INET {
                            sockaddr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                                var address = $0.pointee.sin_addr
                                found.append(PACAddress(bytes: withUnsafeBytes(of: &address) { Array($0) }))
                            }
                        } else if current.pointee.ai_family == AF_INET6 {
                            sockaddr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) {
                                var address = $0.pointee.sin6_addr
                                found.append(PACAddress(bytes: withUnsafeBytes(of: &address) { Array($0) }))
                            }
                        }
                    }
                    entry = current.pointee.ai_next
                }
                freeaddrinfo(list)
            }
            var unique: [PACAddress] = []
            for address in found where !unique.contains(address) { unique.append(address) }
            box.lock.lock()
            box.addresses = unique
            box.lock.unlock()
            done.signal()
        }
        thread.start()
        guard done.wait(timeout: .now() + timeout) == .success else { return [] }
        box.lock.lock()
        defer { box.lock.unlock() }
        return box.addresses
    }

    /// This machine's addresses as `myIpAddress` sees them: the environment's, or the source
    /// address of the default route found by connecting a UDP socket (no packet is sent).
    func myAddresses() -> [PACAddress] {
        let fixed = self.environment.myAddresses.compactMap { PACAddress($0) }
        if !fixed.isEmpty { return fixed }
        var found: [PACAddress] = []
        if let v4 = Self.routeSource(family: AF_INET, probe: "198.18.0.1") { found.append(v4) }
        if let v6 = Self.routeSource(family: AF_INET6, probe: "2001:db8::1") { found.append(v6) }
        return found.isEmpty ? [PACAddress(bytes: [127, 0, 0, 1])] : found
    }

    private static func routeSource(family: Int32, probe: String) -> PACAddress? {
        let fd = socket(family, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        if family == AF_INET {
            var target = sockaddr_in()
            target.sin_family = sa_family_t(AF_INET)
            target.sin_port = UInt16(53).bigEndian
            inet_pton(AF_INET, probe, &target.sin_addr)
            let connected = withUnsafePointer(to: &target) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard connected == 0 else { return nil }
            var local = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let named = withUnsafeMutablePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
            }
            guard named == 0 else { return nil }
            return PACAddress(bytes: withUnsafeBytes(of: &local.sin_addr) { Array($0) })
        } else {
            var target = sockaddr_in6()
            target.sin6_family = sa_family_t(AF_INET6)
            target.sin6_port = UInt16(53).bigEndian
            inet_pton(AF_INET6, probe, &target.sin6_addr)
            let connected = withUnsafePointer(to: &target) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size))
                }
            }
            guard connected == 0 else { return nil }
            var local = sockaddr_in6()
            var length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            let named = withUnsafeMutablePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
            }
            guard named == 0 else { return nil }
            return PACAddress(bytes: withUnsafeBytes(of: &local.sin6_addr) { Array($0) })
        }
    }
}
