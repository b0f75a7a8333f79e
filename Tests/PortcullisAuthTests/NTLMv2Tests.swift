import Testing

@testable import PortcullisAuth

@Suite struct NTLMv2Tests {
    private let password = NTHash(password: "Password")

    private func verify(
        _ message: [UInt8],
        handshake: NTLMHandshake,
        now: NTLMFileTime,
        hash: NTHash
    ) throws -> Result<NTLMIdentity, NTLMRefusal> {
        let parsed = try NTLMAuthenticateMessage.parse(message).get()
        let answer = try NTLMv2.screen(parsed, now: now, maximumSkew: 300).get()
        return NTLMv2.verify(answer, handshake: handshake, ntHash: hash)
    }

    /// MS-NLMP §4.2.2.1.2 (NTOWFv1, the NT hash), and a non-ASCII password: UTF-16, not its
    /// UTF-8 bytes widened (what libxcrypt's `$3$` computes: fb6e13…). Expected value from
    /// OpenSSL's MD4 over `iconv -t UTF-16LE`.
    @Test func ntHashIsMD4OfTheUTF16Password() {
        #expect(self.password.hex == "a4f49c406510bdcab6824ee7c30fd852")
        #expect(NTHash(password: "pässword").hex == "f1b094f25bbdcb6fdbaa6cc8b43f0c44")
        #expect(NTHash(hex: "A4F49C406510BDCAB6824EE7C30FD852") == self.password)
        #expect(NTHash(hex: "a4f49c406510bdcab6824ee7c30fd85") == nil)
        #expect(NTHash(hex: "g4f49c406510bdcab6824ee7c30fd852") == nil)
        #expect(NTHash(bytes: [1, 2, 3]) == nil)
        #expect("\(self.password)" == "NTHash(…)")
    }

    /// §4.2.4.1.1 NTOWFv2: the user upper-cased, the domain as it is.
    @Test func responseKeyVector() {
        let key = NTLMv2.responseKey(ntHash: self.password, user: "User", domain: "Domain")
        #expect(hexString(key) == "0c868a403bfd7a93a3001ef22ef02e3f")
        #expect(NTLMv2.responseKey(ntHash: self.password, user: "uSeR", domain: "Domain") == key)
        #expect(NTLMv2.responseKey(ntHash: self.password, user: "User", domain: "DOMAIN") != key)
    }

    /// §4.2.4.2.2 NTProofStr (the first 16 bytes of the NTLMv2 response) and §4.2.4.1.2 the
    /// session base key.
    @Test func ntProofStringAndSessionBaseKeyVectors() {
        let key = NTLMv2.responseKey(ntHash: self.password, user: "User", domain: "Domain")
        let proof = NTLMv2.ntProofString(
            responseKey: key,
            serverChallenge: NTLMVectors.serverChallenge,
            clientBlob: NTLMVectors.clientBlob
        )
        #expect(hexString(proof) == "68cd0ab851e51c96aabc927bebef6a1c")
        #expect(
            hexString(NTLMv2.sessionBaseKey(responseKey: key, ntProofString: proof))
                == "8de40ccadbc14a82f15cb0ad0de95ca3"
        )
    }

    /// The test client, given §4.2.4's inputs, writes §4.2.4.3's AUTHENTICATE byte for byte
    /// (LMv2 included), so the round trips elsewhere start from a client that follows the spec.
    @Test func testClientWritesTheSpecsAuthenticateMessage() {
        var client = NTLMClient()
        client.authenticateFlags = NTLMFlags(rawValue: 0xe288_8235)
        client.sendMIC = false
        client.micField = false
        client.lmResponse = .lmv2
        #expect(client.authenticate(negotiate: [], challenge: NTLMVectors.challenge) == NTLMVectors.authenticate)
    }

    /// §4.2.4.3's AUTHENTICATE, verified against the CHALLENGE it answers: its timestamp is 0
    /// (1601), so "now" is too. Key exchange with signing: the exported session key is the
    /// client's random 55 × 16, decrypted from EncryptedRandomSessionKey.
    @Test func specAuthenticateMessageVerifies() throws {
        let result = try self.verify(
            NTLMVectors.authenticate,
            handshake: NTLMVectors.handshake(),
            now: NTLMFileTime(ticks: 0),
            hash: self.password
        )
        #expect(result == .success(NTLMIdentity(user: "User", domain: "Domain", workstation: "COMPUTER")))

        let message = try NTLMAuthenticateMessage.parse(NTLMVectors.authenticate).get()
        let keyExchangeKey = hexBytes("8de40ccadbc14a82f15cb0ad0de95ca3")
        #expect(
            NTLMv2.exportedSessionKey(keyExchangeKey: keyExchangeKey, message: message)
                == [UInt8](repeating: 0x55, count: 16)
        )
        let answer = try NTLMv2.screen(message, now: NTLMFileTime(ticks: 0), maximumSkew: 300).get()
        #expect(!answer.announcesMIC)
        #expect(answer.clientAVPairs == [.text(.nbDomainName, "Domain"), .text(.nbComputerName, "Server")])
    }

    @Test func specAuthenticateMessageWithAnotherPasswordIsInvalidCredentials() throws {
        let result = try self.verify(
            NTLMVectors.authenticate,
            handshake: NTLMVectors.handshake(),
            now: NTLMFileTime(ticks: 0),
            hash: NTHash(password: "password")
        )
        #expect(throws: NTLMRefusal.self) { try result.get() }
        if case .failure(let refusal) = result {
            #expect(refusal.reason == .invalidCredentials)
            #expect(refusal.claimed?.user == "User")
        }
    }

    /// The same answer to another server challenge (a replay on another connection) fails.
    @Test func specAuthenticateMessageAgainstAnotherServerChallengeFails() throws {
        var handshake = NTLMVectors.handshake()
        handshake.serverChallenge = hexBytes("0123456789abcdee")
        let result = try self.verify(
            NTLMVectors.authenticate,
            handshake: handshake,
            now: NTLMFileTime(ticks: 0),
            hash: self.password
        )
        #expect((try? result.get()) == nil)
    }

    /// Chromium's AUTHENTICATE announces a MIC (MsvAvFlags 0x2) and has no key exchange: the
    /// MIC is keyed by the session base key and covers all three messages.
    @Test func chromiumMICVerifies() throws {
        let handshake = NTLMVectors.handshake(
            negotiate: NTLMVectors.chromiumNegotiate,
            issuedAt: NTLMVectors.chromiumTime
        )
        let result = try self.verify(
            NTLMVectors.chromiumAuthenticate,
            handshake: handshake,
            now: NTLMVectors.chromiumTime,
            hash: self.password
        )
        #expect(result == .success(NTLMIdentity(user: "User", domain: "Domain", workstation: "COMPUTER")))
        let message = try NTLMAuthenticateMessage.parse(NTLMVectors.chromiumAuthenticate).get()
        #expect(message.mic.map(hexString) == "f7361633f0ad9bdf4a7c421bc6b824a3")
        #expect(try NTLMv2.screen(message, now: NTLMVectors.chromiumTime, maximumSkew: 0).get().announcesMIC)
    }

    /// Any change to the MIC, or to a message under it that NTProofStr does not cover (the
    /// NEGOTIATE, the CHALLENGE's flags), is a bad MIC.
    @Test func chromiumMICTamperedIsBadMIC() throws {
        let handshake = NTLMVectors.handshake(
            negotiate: NTLMVectors.chromiumNegotiate,
            issuedAt: NTLMVectors.chromiumTime
        )
        var tamperedMIC = NTLMVectors.chromiumAuthenticate
        tamperedMIC[80] ^= 0x01
        var otherNegotiate = handshake
        otherNegotiate.negotiateMessage[12] ^= 0x01
        var otherChallenge = handshake
        otherChallenge.challengeMessage[22] ^= 0x01
        for (message, handshake) in [
            (tamperedMIC, handshake), (NTLMVectors.chromiumAuthenticate, otherNegotiate),
            (NTLMVectors.chromiumAuthenticate, otherChallenge),
        ] {
            let result = try self.verify(
                message,
                handshake: handshake,
                now: NTLMVectors.chromiumTime,
                hash: self.password
            )
            guard case .failure(let refusal) = result else {
                Issue.record("accepted")
                continue
            }
            #expect(refusal.reason == .badMIC)
        }
    }

    /// NTOWFv2 upper-cases the user one UTF-16 unit at a time, as Windows does: ß stays (its
    /// upper case is two letters), ö becomes Ö, a surrogate pair is left alone.
    @Test func userIsUpperCasedOneUnitAtATime() {
        func upper(_ text: String) -> String {
            String(decoding: text.utf16.map(NTLMText.uppercase), as: UTF16.self)
        }
        #expect(upper("straße") == "STRAßE")
        #expect(upper("jörg-7_x") == "JÖRG-7_X")
        #expect(upper("𝒶bc") == "𝒶BC")
        #expect(upper("ǆ") == "Ǆ")
    }
}
