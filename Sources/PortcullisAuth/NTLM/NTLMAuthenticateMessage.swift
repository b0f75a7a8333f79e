/// An AUTHENTICATE_MESSAGE (MS-NLMP §2.2.1.3), read from the bytes a client sent.
///
/// Every field is checked against the message before it is read: it must lie after the fixed
/// part and inside the message, and no two non-empty fields may overlap (a field aimed at
/// another's bytes, or at the header, is how a hostile message makes one value mean two
/// things). Names are bounded, UTF-16 ones must have an even length. Nothing here traps: a
/// message that breaks a rule is an ``NTLMMessageError``.
public struct NTLMAuthenticateMessage: Sendable, Hashable {
    /// The message as received: the MIC is computed over these very bytes.
    public let bytes: [UInt8]
    public let flags: NTLMFlags
    public let lmChallengeResponse: [UInt8]
    public let ntChallengeResponse: [UInt8]
    /// Names as sent: UTF-16LE when ``NTLMFlags/unicode`` is set, else OEM bytes.
    public let domainNameBytes: [UInt8]
    public let userNameBytes: [UInt8]
    public let workstationBytes: [UInt8]
    public let encryptedRandomSessionKey: [UInt8]
    /// The Version field, when the layout leaves room for it (payload from offset 72 on).
    public let version: [UInt8]?
    /// Where the MIC field is, when the layout leaves room for it (payload from offset 88 on).
    /// Whether the client *meant* to send one is said by its MsvAvFlags, not by the layout.
    let micRange: Range<Int>?

    /// Larger messages are refused before they are read. Real ones are a few hundred bytes
    /// (Chromium's, with channel bindings and an SPN: 286; pyspnego 0.12's: 324).
    public static let maximumSize = 8192
    /// Domain, user and workstation: each at most this many bytes (512 UTF-16 code units).
    public static let maximumNameSize = 1024

    /// Signature to NegotiateFlags: the fields every AUTHENTICATE has.
    static let fixedSize = 64
    static let versionRange = 64..<72
    static let micFieldRange = 72..<88

    public var isUnicode: Bool { self.flags.contains(.unicode) }
    public var mic: [UInt8]? { self.micRange.map { Array(self.bytes[$0]) } }
    public var userName: String { NTLMText.decode(self.userNameBytes, unicode: self.isUnicode) }
    public var domainName: String { NTLMText.decode(self.domainNameBytes, unicode: self.isUnicode) }
    public var workstation: String { NTLMText.decode(self.workstationBytes, unicode: self.isUnicode) }

    public static func parse(
        _ bytes: [UInt8],
        maximumSize: Int = Self.maximumSize
    ) -> Result<NTLMAuthenticateMessage, NTLMMessageError> {
        if let error = NTLMMessageType.check(
            bytes,
            is: .authenticate,
            minimumSize: Self.fixedSize,
            maximumSize: maximumSize
        ) {
            return .failure(error)
        }
        let flags = NTLMFlags(rawValue: bytes.littleEndianUInt32(at: 60) ?? 0)
        let names = [
            "LmChallengeResponse", "NtChallengeResponse", "DomainName", "UserName", "Workstation",
            "EncryptedRandomSessionKey",
        ]
        var fields: [NTLMPayloadField] = []
        for (index, name) in names.enumerated() {
            let field = NTLMPayloadField(bytes, at: 12 + 8 * index)
            if let error = field.check(in: bytes, after: Self.fixedSize, name: name) { return .failure(error) }
            fields.append(field)
        }
        for index in 2...4 {
            guard fields[index].length <= Self.maximumNameSize else {
                return .failure(
                    NTLMMessageError("the \(names[index]) field is longer than \(Self.maximumNameSize) bytes")
                )
            }
            guard !flags.contains(.unicode) || fields[index].length % 2 == 0 else {
                return .failure(NTLMMessageError("the \(names[index]) field is UTF-16 but has an odd length"))
            }
        }
        let used = fields.filter { $0.length > 0 }.map(\.range).sorted { $0.lowerBound < $1.lowerBound }
        for (earlier, later) in zip(used, used.dropFirst()) where later.lowerBound < earlier.upperBound {
            return .failure(NTLMMessageError("two fields of the AUTHENTICATE message overlap"))
        }
        // The optional Version and MIC fields sit between the fixed part and the payload: they
        // are there when the first field starts after them (MS-NLMP §2.2.1.3).
        let payloadStart = used.first?.lowerBound ?? bytes.count
        return .success(
            NTLMAuthenticateMessage(
                bytes: bytes,
                flags: flags,
                lmChallengeResponse: fields[0].bytes(of: bytes),
                ntChallengeResponse: fields[1].bytes(of: bytes),
                domainNameBytes: fields[2].bytes(of: bytes),
                userNameBytes: fields[3].bytes(of: bytes),
                workstationBytes: fields[4].bytes(of: bytes),
                encryptedRandomSessionKey: fields[5].bytes(of: bytes),
                version: payloadStart >= Self.versionRange.upperBound ? Array(bytes[Self.versionRange]) : nil,
                micRange: payloadStart >= Self.micFieldRange.upperBound ? Self.micFieldRange : nil
            )
        )
    }

    /// The message with its MIC field zeroed, as the MIC is computed (MS-NLMP §3.1.5.1.2).
    var bytesWithMICZeroed: [UInt8] {
        var copy = self.bytes
        if let range = self.micRange { copy.replaceSubrange(range, with: repeatElement(0, count: range.count)) }
        return copy
    }
}

/// Names in NTLM messages: UTF-16LE, or the client's OEM code page.
enum NTLMText {
    static func utf16LittleEndian(_ text: String) -> [UInt8] {
        Self.bytes(ofUTF16: Array(text.utf16))
    }

    static func bytes(ofUTF16 units: [UInt16]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(units.count * 2)
        for unit in units { out.appendLittleEndian(unit) }
        return out
    }

    static func utf16Units(_ bytes: [UInt8]) -> [UInt16] {
        stride(from: 0, to: bytes.count - 1, by: 2).map { UInt16(bytes[$0]) | UInt16(bytes[$0 + 1]) << 8 }
    }

    /// UTF-16 with unpaired surrogates replaced; OEM read as UTF-8 when it is valid UTF-8 (curl
    /// sends the bytes it was given, UTF-8 on today's systems), else as Latin-1, since which
    /// OEM code page the client used is not said anywhere in the protocol.
    static func decode(_ bytes: [UInt8], unicode: Bool) -> String {
        if unicode { return String(decoding: Self.utf16Units(bytes), as: UTF16.self) }
        let text = String(decoding: bytes, as: UTF8.self)
        // Decoding replaces what is not UTF-8, so an unchanged round trip means it was.
        if text.utf8.elementsEqual(bytes) { return text }
        return String(String.UnicodeScalarView(bytes.map { Unicode.Scalar($0) }))
    }

    /// One UTF-16 code unit upper-cased the way Windows does for NTOWFv2 (one unit to one unit,
    /// as `RtlUpcaseUnicodeString`): a unit whose Unicode upper case is a single BMP character
    /// becomes it, any other (ß, whose upper case is "SS"; surrogates) stays as it is.
    static func uppercase(_ unit: UInt16) -> UInt16 {
        if unit < 0x80 {
            return (0x61...0x7a).contains(unit) ? unit - 0x20 : unit
        }
        guard let scalar = Unicode.Scalar(unit) else { return unit }
        let upper = scalar.properties.uppercaseMapping.unicodeScalars
        guard upper.count == 1, let first = upper.first, first.value <= 0xffff else { return unit }
        return UInt16(first.value)
    }
}
