/// The NegotiateFlags of MS-NLMP §2.2.2.5.
public struct NTLMFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let unicode = NTLMFlags(rawValue: 0x0000_0001)
    public static let oem = NTLMFlags(rawValue: 0x0000_0002)
    public static let requestTarget = NTLMFlags(rawValue: 0x0000_0004)
    public static let sign = NTLMFlags(rawValue: 0x0000_0010)
    public static let seal = NTLMFlags(rawValue: 0x0000_0020)
    public static let datagram = NTLMFlags(rawValue: 0x0000_0040)
    public static let lmKey = NTLMFlags(rawValue: 0x0000_0080)
    public static let ntlm = NTLMFlags(rawValue: 0x0000_0200)
    public static let anonymous = NTLMFlags(rawValue: 0x0000_0800)
    public static let oemDomainSupplied = NTLMFlags(rawValue: 0x0000_1000)
    public static let oemWorkstationSupplied = NTLMFlags(rawValue: 0x0000_2000)
    public static let alwaysSign = NTLMFlags(rawValue: 0x0000_8000)
    public static let targetTypeDomain = NTLMFlags(rawValue: 0x0001_0000)
    public static let targetTypeServer = NTLMFlags(rawValue: 0x0002_0000)
    public static let extendedSessionSecurity = NTLMFlags(rawValue: 0x0008_0000)
    public static let identify = NTLMFlags(rawValue: 0x0010_0000)
    public static let requestNonNTSessionKey = NTLMFlags(rawValue: 0x0040_0000)
    public static let targetInfo = NTLMFlags(rawValue: 0x0080_0000)
    public static let version = NTLMFlags(rawValue: 0x0200_0000)
    public static let key128 = NTLMFlags(rawValue: 0x2000_0000)
    public static let keyExchange = NTLMFlags(rawValue: 0x4000_0000)
    public static let key56 = NTLMFlags(rawValue: 0x8000_0000)
}

/// A message that is not a well-formed NTLMSSP message of the expected type: what is wrong with
/// it, never any of its contents.
public struct NTLMMessageError: Error, Sendable, Hashable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { self.message }
}

/// The message types of MS-NLMP §2.2.1.
public enum NTLMMessageType: UInt32, Sendable, Hashable {
    case negotiate = 1
    case challenge = 2
    case authenticate = 3

    static let signature: [UInt8] = Array("NTLMSSP".utf8) + [0]

    /// The name MS-NLMP gives it, for messages.
    var name: String {
        switch self {
        case .negotiate: return "NEGOTIATE"
        case .challenge: return "CHALLENGE"
        case .authenticate: return "AUTHENTICATE"
        }
    }

    /// The type a message says it is, if it starts with the NTLMSSP signature and a known type.
    public static func of(_ bytes: [UInt8]) -> NTLMMessageType? {
        guard bytes.count >= 12, bytes[0..<8].elementsEqual(Self.signature),
            let raw = bytes.littleEndianUInt32(at: 8)
        else { return nil }
        return NTLMMessageType(rawValue: raw)
    }

    /// Checks the signature and the type, and that the message has `minimumSize` bytes.
    static func check(_ bytes: [UInt8], is type: NTLMMessageType, minimumSize: Int, maximumSize: Int)
        -> NTLMMessageError?
    {
        guard bytes.count <= maximumSize else {
            return NTLMMessageError("the NTLM message is longer than \(maximumSize) bytes")
        }
        guard bytes.count >= 12, bytes[0..<8].elementsEqual(Self.signature) else {
            return NTLMMessageError("not an NTLMSSP message (no NTLMSSP signature)")
        }
        guard Self.of(bytes) == type else {
            return NTLMMessageError("expected an NTLM \(type.name) message (type \(type.rawValue))")
        }
        guard bytes.count >= minimumSize else {
            return NTLMMessageError(
                "the NTLM \(type.name) message is shorter than its fixed part (\(minimumSize) bytes)"
            )
        }
        return nil
    }
}

/// Length, maximum length (ignored on receipt) and offset of a payload field (MS-NLMP §2.2.1.1).
struct NTLMPayloadField {
    var length: Int
    var offset: Int
    var range: Range<Int> { self.offset..<(self.offset + self.length) }

    /// The field description at `at`, which the caller has checked lies inside `bytes`.
    init(_ bytes: [UInt8], at: Int) {
        self.length = Int(bytes.littleEndianUInt16(at: at) ?? 0)
        self.offset = Int(bytes.littleEndianUInt32(at: at + 4) ?? 0)
    }

    /// Checks that a non-empty field lies after the fixed part and inside the message.
    /// (`offset + length` cannot overflow: both come from at most 32 bits, Int is 64.)
    func check(in bytes: [UInt8], after fixedSize: Int, name: String) -> NTLMMessageError? {
        guard self.length > 0 else { return nil }
        guard self.offset >= fixedSize else {
            return NTLMMessageError("the \(name) field points into the message's fixed part")
        }
        guard self.offset + self.length <= bytes.count else {
            return NTLMMessageError("the \(name) field runs past the end of the message")
        }
        return nil
    }

    func bytes(of message: [UInt8]) -> [UInt8] {
        self.length == 0 ? [] : Array(message[self.range])
    }
}

extension [UInt8] {
    func littleEndianUInt16(at offset: Int) -> UInt16? {
        guard offset >= 0, offset + 2 <= self.count else { return nil }
        return UInt16(self[offset]) | UInt16(self[offset + 1]) << 8
    }

    func littleEndianUInt32(at offset: Int) -> UInt32? {
        guard offset >= 0, offset + 4 <= self.count else { return nil }
        var value: UInt32 = 0
        for i in (0..<4).reversed() { value = value << 8 | UInt32(self[offset + i]) }
        return value
    }

    func littleEndianUInt64(at offset: Int) -> UInt64? {
        guard offset >= 0, offset + 8 <= self.count else { return nil }
        var value: UInt64 = 0
        for i in (0..<8).reversed() { value = value << 8 | UInt64(self[offset + i]) }
        return value
    }

    mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        for i in 0..<(T.bitWidth / 8) { self.append(UInt8(truncatingIfNeeded: value >> (8 * i))) }
    }

    /// A payload field description (length, maximum length, offset).
    mutating func appendField(length: Int, offset: Int) {
        self.appendLittleEndian(UInt16(length))
        self.appendLittleEndian(UInt16(length))
        self.appendLittleEndian(UInt32(offset))
    }
}

// MARK: NEGOTIATE

/// A NEGOTIATE_MESSAGE (MS-NLMP §2.2.1.1): the client's flags, and the domain and workstation
/// it may name (OEM bytes; unused here except to check they lie inside the message).
public struct NTLMNegotiateMessage: Sendable, Hashable {
    public var flags: NTLMFlags
    public var domain: [UInt8]
    public var workstation: [UInt8]

    /// Signature, type and flags; old clients stop there.
    static let minimumSize = 16
    /// With the domain and workstation fields.
    static let fieldsSize = 32

    public static func parse(
        _ bytes: [UInt8],
        maximumSize: Int = NTLMAuthenticateMessage.maximumSize
    ) -> Result<NTLMNegotiateMessage, NTLMMessageError> {
        if let error = NTLMMessageType.check(
            bytes,
            is: .negotiate,
            minimumSize: Self.minimumSize,
            maximumSize: maximumSize
        ) {
            return .failure(error)
        }
        let flags = NTLMFlags(rawValue: bytes.littleEndianUInt32(at: 12) ?? 0)
        var message = NTLMNegotiateMessage(flags: flags, domain: [], workstation: [])
        // The fields mean something only when their flag says so (§2.2.1.1); a short message
        // without them is a NEGOTIATE of an older client.
        guard bytes.count >= Self.fieldsSize else { return .success(message) }
        for (flag, at, name) in [
            (NTLMFlags.oemDomainSupplied, 16, "domain"), (.oemWorkstationSupplied, 24, "workstation"),
        ] where flags.contains(flag) {
            let field = NTLMPayloadField(bytes, at: at)
            if let error = field.check(in: bytes, after: Self.fieldsSize, name: name) { return .failure(error) }
            if flag == .oemDomainSupplied {
                message.domain = field.bytes(of: bytes)
            } else {
                message.workstation = field.bytes(of: bytes)
            }
        }
        return .success(message)
    }
}

// MARK: CHALLENGE

/// A CHALLENGE_MESSAGE (MS-NLMP §2.2.1.2), as the acceptor builds it.
public struct NTLMChallengeMessage: Sendable, Hashable {
    public var flags: NTLMFlags
    /// 8 bytes.
    public var serverChallenge: [UInt8]
    /// Already encoded: UTF-16LE when ``NTLMFlags/unicode`` is negotiated, else OEM.
    public var targetName: [UInt8]
    /// Without the closing MsvAvEOL, which ``encoded()`` adds.
    public var targetInfo: [NTLMAVPair]
    /// 8 bytes: sent as is (MS-NLMP §2.2.2.10; for debugging only).
    public var version: [UInt8]

    public init(
        flags: NTLMFlags,
        serverChallenge: [UInt8],
        targetName: [UInt8],
        targetInfo: [NTLMAVPair],
        version: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0x0f]
    ) {
        self.flags = flags
        self.serverChallenge = serverChallenge
        self.targetName = targetName
        self.targetInfo = targetInfo
        self.version = version
    }

    /// Signature to Version; the payload follows.
    static let headerSize = 56

    /// The message's bytes: the fixed part, then TargetName, then TargetInfo. Every field must
    /// be under 64 KiB (the acceptor's names are bounded far below).
    public func encoded() -> [UInt8] {
        let info = NTLMAVPair.encode(self.targetInfo)
        precondition(self.serverChallenge.count == 8 && self.version.count == 8)
        precondition(self.targetName.count <= 0xffff && info.count <= 0xffff)
        var out = NTLMMessageType.signature
        out.reserveCapacity(Self.headerSize + self.targetName.count + info.count)
        out.appendLittleEndian(NTLMMessageType.challenge.rawValue)
        out.appendField(length: self.targetName.count, offset: Self.headerSize)
        out.appendLittleEndian(self.flags.rawValue)
        out += self.serverChallenge
        out += [UInt8](repeating: 0, count: 8)
        out.appendField(length: info.count, offset: Self.headerSize + self.targetName.count)
        out += self.version
        out += self.targetName
        out += info
        return out
    }
}
