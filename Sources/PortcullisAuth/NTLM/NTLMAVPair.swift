/// One AV_PAIR (MS-NLMP §2.2.2.1): the server's TargetInfo in the CHALLENGE, and the client's
/// copy of it (with its own additions) inside the NTLMv2 response.
public struct NTLMAVPair: Sendable, Hashable {
    public struct ID: RawRepresentable, Sendable, Hashable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }

        public static let eol = ID(rawValue: 0)
        public static let nbComputerName = ID(rawValue: 1)
        public static let nbDomainName = ID(rawValue: 2)
        public static let dnsComputerName = ID(rawValue: 3)
        public static let dnsDomainName = ID(rawValue: 4)
        public static let dnsTreeName = ID(rawValue: 5)
        public static let flags = ID(rawValue: 6)
        public static let timestamp = ID(rawValue: 7)
        public static let singleHost = ID(rawValue: 8)
        public static let targetName = ID(rawValue: 9)
        public static let channelBindings = ID(rawValue: 10)
    }

    /// The MsvAvFlags bit by which a client says its AUTHENTICATE carries a MIC.
    public static let micPresentFlag: UInt32 = 0x0000_0002

    public var id: ID
    public var value: [UInt8]

    public init(id: ID, value: [UInt8]) {
        self.id = id
        self.value = value
    }

    /// A name: AV pair strings are always UTF-16LE, whatever the message's encoding.
    public static func text(_ id: ID, _ text: String) -> NTLMAVPair {
        NTLMAVPair(id: id, value: NTLMText.utf16LittleEndian(text))
    }

    public static func timestamp(_ time: NTLMFileTime) -> NTLMAVPair {
        var value: [UInt8] = []
        value.appendLittleEndian(time.ticks)
        return NTLMAVPair(id: .timestamp, value: value)
    }

    /// The pairs and the closing MsvAvEOL.
    static func encode(_ pairs: [NTLMAVPair]) -> [UInt8] {
        var out: [UInt8] = []
        for pair in pairs where pair.id != .eol {
            precondition(pair.value.count <= 0xffff)
            out.appendLittleEndian(pair.id.rawValue)
            out.appendLittleEndian(UInt16(pair.value.count))
            out += pair.value
        }
        out += [0, 0, 0, 0]
        return out
    }

    /// Reads pairs up to MsvAvEOL. A list that ends cleanly without one is accepted (some
    /// clients omit it when they have no pairs); a pair that runs past the end is an error.
    static func decode(_ bytes: ArraySlice<UInt8>) -> Result<[NTLMAVPair], NTLMMessageError> {
        var pairs: [NTLMAVPair] = []
        var at = bytes.startIndex
        while at < bytes.endIndex {
            guard bytes.endIndex - at >= 4 else {
                return .failure(NTLMMessageError("the NTLMv2 response's AV pairs end in the middle of a pair"))
            }
            let id = UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8
            let length = Int(UInt16(bytes[at + 2]) | UInt16(bytes[at + 3]) << 8)
            at += 4
            if id == ID.eol.rawValue { break }
            guard bytes.endIndex - at >= length else {
                return .failure(NTLMMessageError("an AV pair of the NTLMv2 response runs past its end"))
            }
            pairs.append(NTLMAVPair(id: ID(rawValue: id), value: Array(bytes[at..<(at + length)])))
            at += length
        }
        return .success(pairs)
    }
}

extension [NTLMAVPair] {
    /// The first pair with this id (a client cannot forge the others: they are under NTProofStr).
    public func first(_ id: NTLMAVPair.ID) -> NTLMAVPair? { self.first { $0.id == id } }

    /// MsvAvFlags, 0 when absent or not 4 bytes long.
    var avFlags: UInt32 {
        guard let pair = self.first(.flags), pair.value.count == 4 else { return 0 }
        return pair.value.littleEndianUInt32(at: 0) ?? 0
    }
}

/// A FILETIME: 100-nanosecond ticks since 1601-01-01 UTC, the clock of NTLM timestamps
/// (MsvAvTimestamp, the NTLMv2 response's TimeStamp).
public struct NTLMFileTime: Sendable, Hashable, Comparable {
    public var ticks: UInt64

    public init(ticks: UInt64) { self.ticks = ticks }

    /// Ticks from 1601 to 1970.
    static let unixEpoch: UInt64 = 116_444_736_000_000_000
    static let ticksPerSecond: UInt64 = 10_000_000

    /// From the wall clock the rest of the proxy keeps (milliseconds since 1970, as
    /// ``DigestAuthority``'s clock); saturates instead of overflowing.
    public init(unixMilliseconds: UInt64) {
        let (ticks, overflow) = unixMilliseconds.multipliedReportingOverflow(by: 10_000)
        self.ticks = overflow ? .max : ticks.addingSaturating(Self.unixEpoch)
    }

    /// `seconds` as ticks, saturating; negative counts as 0.
    static func ticks(seconds: Int) -> UInt64 {
        let (ticks, overflow) = UInt64(max(0, seconds)).multipliedReportingOverflow(by: Self.ticksPerSecond)
        return overflow ? .max : ticks
    }

    /// How far apart two times are, in either direction.
    func distance(to other: NTLMFileTime) -> UInt64 {
        self.ticks > other.ticks ? self.ticks - other.ticks : other.ticks - self.ticks
    }

    public static func < (a: NTLMFileTime, b: NTLMFileTime) -> Bool { a.ticks < b.ticks }
}

extension UInt64 {
    fileprivate func addingSaturating(_ other: UInt64) -> UInt64 {
        let (sum, overflow) = self.addingReportingOverflow(other)
        return overflow ? .max : sum
    }
}
