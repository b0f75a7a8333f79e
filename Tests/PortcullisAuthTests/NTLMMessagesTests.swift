import Testing

@testable import PortcullisAuth

@Suite struct NTLMMessagesTests {
    /// The CHALLENGE encoder writes §4.2.4.3's CHALLENGE_MESSAGE from its fields.
    @Test func challengeEncodesTheSpecsMessage() {
        let message = NTLMChallengeMessage(
            flags: NTLMFlags(rawValue: 0xe28a_8233),
            serverChallenge: NTLMVectors.serverChallenge,
            targetName: NTLMText.utf16LittleEndian("Server"),
            targetInfo: [.text(.nbDomainName, "Domain"), .text(.nbComputerName, "Server")],
            version: [0x06, 0x00, 0x70, 0x17, 0x00, 0x00, 0x00, 0x0f]
        )
        #expect(message.encoded() == NTLMVectors.challenge)
    }

    @Test func negotiateFromChromiumIsRead() throws {
        let negotiate = try NTLMNegotiateMessage.parse(NTLMVectors.chromiumNegotiate).get()
        #expect(negotiate.flags == NTLMFlags(rawValue: 0x0008_8207))
        #expect(
            negotiate.flags.contains([.unicode, .oem, .requestTarget, .ntlm, .alwaysSign, .extendedSessionSecurity])
        )
        #expect(negotiate.domain.isEmpty && negotiate.workstation.isEmpty)
    }

    /// An old client's 16-byte NEGOTIATE (signature, type, flags) is complete; the domain and
    /// workstation are read only when their flags say they are supplied, and then checked.
    @Test func negotiateFieldsAreReadOnlyWhenSupplied() throws {
        let short = Array(NTLMVectors.chromiumNegotiate.prefix(16))
        #expect(try NTLMNegotiateMessage.parse(short).get().flags == NTLMFlags(rawValue: 0x0008_8207))

        var supplied = NTLMVectors.chromiumNegotiate
        supplied.replaceSubrange(12..<16, with: [0x07, 0xb2, 0x08, 0x00])  // + OEM domain and workstation supplied
        supplied.replaceSubrange(16..<32, with: [3, 0, 3, 0, 32, 0, 0, 0, 2, 0, 2, 0, 35, 0, 0, 0])
        supplied += Array("DOMWS".utf8)
        let negotiate = try NTLMNegotiateMessage.parse(supplied).get()
        #expect(negotiate.domain == Array("DOM".utf8) && negotiate.workstation == Array("WS".utf8))

        var outside = supplied
        outside[24] = 40  // workstation length past the end
        #expect(throws: NTLMMessageError.self) { try NTLMNegotiateMessage.parse(outside).get() }
        var intoHeader = supplied
        intoHeader[20] = 8  // domain offset inside the fixed part
        #expect(throws: NTLMMessageError.self) { try NTLMNegotiateMessage.parse(intoHeader).get() }
    }

    @Test func negotiateRefusesWhatIsNotANegotiate() {
        let valid = NTLMVectors.chromiumNegotiate
        for length in 0..<16 {
            #expect(throws: NTLMMessageError.self) { try NTLMNegotiateMessage.parse(Array(valid.prefix(length))).get() }
        }
        var otherType = valid
        otherType[8] = 3
        var noSignature = valid
        noSignature[0] = UInt8(ascii: "X")
        for message in [otherType, noSignature, NTLMVectors.challenge, valid + [UInt8](repeating: 0, count: 8192)] {
            #expect(throws: NTLMMessageError.self) { try NTLMNegotiateMessage.parse(message).get() }
        }
    }

    @Test func messageTypeIsReadFromTheHeader() {
        #expect(NTLMMessageType.of(NTLMVectors.chromiumNegotiate) == .negotiate)
        #expect(NTLMMessageType.of(NTLMVectors.challenge) == .challenge)
        #expect(NTLMMessageType.of(NTLMVectors.authenticate) == .authenticate)
        #expect(NTLMMessageType.of(Array(NTLMVectors.authenticate.prefix(11))) == nil)
        var unknown = NTLMVectors.authenticate
        unknown[8] = 4
        #expect(NTLMMessageType.of(unknown) == nil)
    }

    /// AV pairs end at MsvAvEOL; a list that ends cleanly without one is accepted, a pair or a
    /// header cut short is not.
    @Test func avPairsAreBoundsChecked() throws {
        let encoded = NTLMAVPair.encode([.text(.nbDomainName, "D"), NTLMAVPair(id: .flags, value: [2, 0, 0, 0])])
        #expect(encoded == [2, 0, 2, 0, 0x44, 0, 6, 0, 4, 0, 2, 0, 0, 0, 0, 0, 0, 0])
        let decoded = try NTLMAVPair.decode(encoded[...]).get()
        #expect(decoded.count == 2 && decoded.avFlags == 2)
        #expect(try NTLMAVPair.decode(encoded.dropLast(4)).get() == decoded)
        #expect(try NTLMAVPair.decode((encoded + [9, 9, 9])[...]).get() == decoded)  // after EOL: not read
        for cut in [1, 2, 3, 5, 6, 7] {
            #expect(throws: NTLMMessageError.self) { try NTLMAVPair.decode(encoded.dropLast(4 + cut)).get() }
        }
        #expect([NTLMAVPair(id: .flags, value: [2, 0])].avFlags == 0)
    }

    @Test func fileTimeFromTheUnixClock() {
        // Chromium's client timestamp: Tue, 23 May 2017 20:13:07 UTC.
        #expect(NTLMFileTime(unixMilliseconds: 1_495_570_387_000) == NTLMVectors.chromiumTime)
        #expect(NTLMFileTime(unixMilliseconds: 0).ticks == 116_444_736_000_000_000)
        #expect(NTLMFileTime(unixMilliseconds: .max).ticks == .max)
        #expect(NTLMFileTime.ticks(seconds: -5) == 0)
        #expect(NTLMFileTime.ticks(seconds: .max) == .max)
        #expect(NTLMFileTime(ticks: 5).distance(to: NTLMFileTime(ticks: 3)) == 2)
        #expect(NTLMFileTime(ticks: 3).distance(to: NTLMFileTime(ticks: .max)) == UInt64.max - 3)
    }
}
