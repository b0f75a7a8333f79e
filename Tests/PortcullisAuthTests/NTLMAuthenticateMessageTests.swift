import Testing

@testable import PortcullisAuth

@Suite struct NTLMAuthenticateMessageTests {
    private func parse(_ bytes: [UInt8]) -> Result<NTLMAuthenticateMessage, NTLMMessageError> {
        NTLMAuthenticateMessage.parse(bytes)
    }

    /// §4.2.4.3's message: its payload starts at 72, so it has a Version and no MIC field.
    @Test func specMessageFields() throws {
        let message = try self.parse(NTLMVectors.authenticate).get()
        #expect(message.flags == NTLMFlags(rawValue: 0xe288_8235))
        #expect(message.isUnicode)
        #expect(message.userName == "User" && message.domainName == "Domain" && message.workstation == "COMPUTER")
        #expect(hexString(message.lmChallengeResponse) == "86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa")
        #expect(message.ntChallengeResponse.count == 84)
        #expect(hexString(message.encryptedRandomSessionKey) == "c5dad2544fc9799094ce1ce90bc9d03e")
        #expect(message.version == [0x05, 0x01, 0x28, 0x0a, 0x00, 0x00, 0x00, 0x0f])
        #expect(message.mic == nil)
        #expect(message.bytesWithMICZeroed == NTLMVectors.authenticate)
    }

    /// Chromium's: payload from 88, so a MIC field, zeroed for the MIC's own computation.
    @Test func chromiumMessageHasAMICField() throws {
        let message = try self.parse(NTLMVectors.chromiumAuthenticate).get()
        #expect(message.mic.map(hexString) == "f7361633f0ad9bdf4a7c421bc6b824a3")
        #expect(message.version == [UInt8](repeating: 0, count: 8))
        #expect(message.encryptedRandomSessionKey.isEmpty)
        let zeroed = message.bytesWithMICZeroed
        #expect(zeroed[72..<88].allSatisfy { $0 == 0 })
        #expect(zeroed[..<72] == NTLMVectors.chromiumAuthenticate[..<72])
        #expect(zeroed[88...] == NTLMVectors.chromiumAuthenticate[88...])
    }

    /// A client that writes no Version (curl: the payload right after the 64 bytes) and one
    /// with nothing in the payload at all.
    @Test func shortestLayouts() throws {
        var client = NTLMClient()
        client.includeVersion = false
        client.micField = false
        client.sendMIC = false
        let curlLike = client.authenticate(negotiate: [], challenge: NTLMVectors.challenge)
        let message = try self.parse(curlLike).get()
        #expect(message.version == nil && message.mic == nil && message.userName == "User")

        var empty = Array("NTLMSSP".utf8) + [0, 3, 0, 0, 0]
        for _ in 0..<6 { empty.appendField(length: 0, offset: 0) }
        empty.appendLittleEndian(UInt32(1))
        let anonymous = try self.parse(empty).get()
        #expect(anonymous.userNameBytes.isEmpty && anonymous.ntChallengeResponse.isEmpty && anonymous.mic == nil)
    }

    /// Every prefix of a valid message is refused with an error, none traps.
    @Test(arguments: [NTLMVectors.authenticate, NTLMVectors.chromiumAuthenticate])
    func everyTruncationIsAnError(message: [UInt8]) {
        for length in 0..<message.count {
            guard case .failure = self.parse(Array(message.prefix(length))) else {
                Issue.record("a \(length)-byte prefix parsed")
                continue
            }
        }
    }

    /// The field descriptions are at 12 (LM), 20 (NT), 28 (domain), 36 (user), 44
    /// (workstation), 52 (key); each is length, maximum length, offset.
    private func withField(
        _ at: Int,
        length: Int? = nil,
        offset: Int? = nil,
        in message: [UInt8] = NTLMVectors.authenticate
    ) -> [UInt8] {
        var copy = message
        if let length { copy.replaceSubrange(at..<(at + 2), with: [UInt8(length & 0xff), UInt8(length >> 8)]) }
        if let offset {
            copy.replaceSubrange(
                (at + 4)..<(at + 8),
                with: [
                    UInt8(offset & 0xff), UInt8(offset >> 8 & 0xff), UInt8(offset >> 16 & 0xff), UInt8(offset >> 24),
                ]
            )
        }
        return copy
    }

    @Test func hostileFieldsAreErrors() {
        let cases: [(String, [UInt8])] = [
            ("user at the signature", self.withField(36, offset: 0)),
            ("user into the flags", self.withField(36, offset: 60)),
            ("user over the domain", self.withField(36, offset: 76)),
            ("NT response over the LM response", self.withField(20, offset: 120)),
            ("user past the end", self.withField(36, offset: NTLMVectors.authenticate.count - 4)),
            ("offset near 2^32", self.withField(36, offset: 0xffff_fffe)),
            ("length 65535", self.withField(20, length: 0xffff)),
            ("odd UTF-16 user", self.withField(36, length: 7)),
            ("not NTLMSSP", [UInt8](repeating: 0x41, count: 100)),
            ("a NEGOTIATE", NTLMVectors.chromiumNegotiate),
            (
                "over the size limit",
                NTLMVectors.authenticate + [UInt8](repeating: 0, count: NTLMAuthenticateMessage.maximumSize)
            ),
        ]
        for (name, message) in cases {
            guard case .failure = self.parse(message) else {
                Issue.record("\(name): parsed")
                continue
            }
        }
    }

    @Test func namesAreBounded() {
        var client = NTLMClient()
        client.user = String(repeating: "u", count: NTLMAuthenticateMessage.maximumNameSize / 2)
        #expect((try? self.parse(client.authenticate(negotiate: [], challenge: NTLMVectors.challenge)).get()) != nil)
        client.user += "u"
        guard
            case .failure(let error) = self.parse(client.authenticate(negotiate: [], challenge: NTLMVectors.challenge))
        else {
            Issue.record("a user name over the bound parsed")
            return
        }
        #expect(error.message.contains("UserName"))
    }

    /// OEM names (no Unicode flag): UTF-8 when they are, Latin-1 otherwise.
    @Test func oemNamesDecodeAsUTF8ElseLatin1() {
        #expect(NTLMText.decode(Array("jörg".utf8), unicode: false) == "jörg")
        #expect(NTLMText.decode([0x6a, 0xf6, 0x72, 0x67], unicode: false) == "jörg")
        #expect(NTLMText.decode([0x3d, 0xd8], unicode: true) == "\u{fffd}")
    }

    /// Random bytes behind a valid header, and random lengths: errors or messages, never a trap.
    @Test func randomMessagesNeverTrap() {
        var random = SeededGenerator(seed: 19)
        for _ in 0..<3000 {
            let length = Int.random(in: 12...400, using: &random)
            var message = Array("NTLMSSP".utf8) + [0, 3, 0, 0, 0]
            message += (12..<length).map { _ in UInt8.random(in: 0...255, using: &random) }
            // Offsets that land inside the message now and then.
            for at in stride(from: 16, to: min(56, length - 4), by: 8) where Bool.random(using: &random) {
                message[at] = UInt8.random(in: 0...UInt8(min(255, length)), using: &random)
                message[at + 1] = 0
                message[at + 2] = 0
                message[at + 3] = 0
            }
            _ = self.parse(message)
        }
    }
}
