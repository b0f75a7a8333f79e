import Testing

@testable import PortcullisAuth

@Suite struct NTLMAcceptorTests {
    static let settings = NTLMAcceptor.Settings(
        netbiosDomainName: "PORTCULLIS",
        netbiosComputerName: "PROXY",
        dnsDomainName: "example.org",
        dnsComputerName: "proxy.example.org"
    )
    /// When the NEGOTIATE arrives; the AUTHENTICATE comes a second later unless a test says.
    static let start = NTLMFileTime(unixMilliseconds: 1_800_000_000_000)

    static func at(_ seconds: Int) -> NTLMFileTime {
        NTLMFileTime(ticks: Self.start.ticks + UInt64(seconds) * 10_000_000)
    }

    /// The store: user names compared case-insensitively, as a store might.
    static let users: [String: NTHash] = ["user": NTHash(password: "Password"), "jörg": NTHash(password: "Passwört")]

    static func lookUp(_ lookup: NTLMAcceptor.HashLookup) -> NTHash? { Self.users[lookup.user.lowercased()] }

    /// An acceptor that has sent its CHALLENGE to `client`'s NEGOTIATE, and the two messages.
    static func challenged(
        _ client: NTLMClient,
        settings: NTLMAcceptor.Settings = Self.settings,
        seed: UInt64 = 1
    ) -> (acceptor: NTLMAcceptor, negotiate: [UInt8], challenge: [UInt8]) {
        var acceptor = NTLMAcceptor(settings: settings)
        var random = SeededGenerator(seed: seed)
        let negotiate = client.negotiate()
        guard case .sendChallenge(let challenge) = acceptor.messageReceived(negotiate, now: Self.start, random: &random)
        else { return (acceptor, negotiate, []) }
        return (acceptor, negotiate, challenge)
    }

    /// A whole handshake: the acceptor's last action. `edit` changes the AUTHENTICATE on the
    /// way; `store` answers the look-up.
    static func handshake(
        _ client: NTLMClient,
        answerAfter seconds: Int = 1,
        store: (NTLMAcceptor.HashLookup) -> NTHash? = Self.lookUp,
        edit: (inout [UInt8]) -> Void = { _ in }
    ) -> NTLMAcceptor.Action {
        var (acceptor, negotiate, challenge) = Self.challenged(client)
        var authenticate = client.authenticate(negotiate: negotiate, challenge: challenge)
        edit(&authenticate)
        var random = SeededGenerator(seed: 2)
        let action = acceptor.messageReceived(authenticate, now: Self.at(seconds), random: &random)
        guard case .lookUpNTHash(let lookup) = action else { return action }
        return acceptor.ntHashFound(store(lookup), for: lookup.id)
    }

    static func reason(_ action: NTLMAcceptor.Action) -> AuthFailureReason? {
        if case .refuse(let refusal) = action { return refusal.reason }
        return nil
    }

    /// A client like curl's: OEM names, no MIC, no key exchange, no Version.
    static var curlLike: NTLMClient {
        var client = NTLMClient()
        client.negotiateFlags = [.oem, .requestTarget, .ntlm, .alwaysSign, .extendedSessionSecurity]
        client.sendMIC = false
        client.micField = false
        client.includeVersion = false
        return client
    }

    // MARK: Round trips

    @Test func rightPasswordWithMICAndKeyExchangeIsAccepted() {
        let action = Self.handshake(NTLMClient())
        #expect(action == .accept(NTLMIdentity(user: "User", domain: "Domain", workstation: "COMPUTER")))
    }

    @Test func rightPasswordFromACurlLikeClientIsAccepted() {
        #expect(
            Self.handshake(Self.curlLike)
                == .accept(NTLMIdentity(user: "User", domain: "Domain", workstation: "COMPUTER"))
        )
    }

    /// Non-ASCII names: UTF-16 from a Unicode client; UTF-8 bytes from an OEM one (what curl
    /// sends), whose NTOWFv2 widens each byte.
    @Test func nonASCIIUserIsAcceptedInUnicodeAndOEM() {
        for var client in [NTLMClient(), Self.curlLike] {
            client.user = "jörg"
            client.domain = ""
            client.password = "Passwört"
            #expect(Self.handshake(client) == .accept(NTLMIdentity(user: "jörg", domain: "", workstation: "COMPUTER")))
        }
    }

    @Test func wrongPasswordIsRefusedAsInvalidCredentials() {
        var client = NTLMClient()
        client.password = "password"
        guard case .refuse(let refusal) = Self.handshake(client) else {
            Issue.record("not refused")
            return
        }
        #expect(refusal.reason == .invalidCredentials)
        #expect(refusal.claimed?.user == "User")
    }

    /// An unknown user gets the very refusal a wrong password gets.
    @Test func unknownUserIsRefusedLikeAWrongPassword() {
        var wrong = NTLMClient()
        wrong.password = "password"
        var unknown = NTLMClient()
        unknown.user = "nobody"
        guard case .refuse(let a) = Self.handshake(wrong), case .refuse(let b) = Self.handshake(unknown) else {
            Issue.record("not refused")
            return
        }
        #expect(a.reason == b.reason && a.explanation == b.explanation)
    }

    @Test func tamperedMICIsRefused() {
        #expect(Self.reason(Self.handshake(NTLMClient(), edit: { $0[75] ^= 0x20 })) == .badMIC)
    }

    /// MsvAvFlags says a MIC is there (under NTProofStr, so a client really said it) but the
    /// layout has no MIC field.
    @Test func announcedMICWithoutAFieldIsRefused() {
        var client = NTLMClient()
        client.micField = false
        #expect(Self.reason(Self.handshake(client)) == .badMIC)
    }

    @Test func encryptedSessionKeyOfTheWrongLengthIsMalformed() {
        var client = NTLMClient()
        client.randomSessionKey = [UInt8](repeating: 0x55, count: 15)
        #expect(Self.reason(Self.handshake(client)) == .malformedCredentials)
    }

    /// NTLMv1 and LM answers are refused before any look-up, whatever the password.
    @Test func ntlmV1AndLMOnlyAreRefusedBeforeALookUp() {
        var v1 = NTLMClient()
        v1.ntResponse = .v1
        v1.lmResponse = .v1
        v1.sendMIC = false
        var lmOnly = v1
        lmOnly.ntResponse = .none
        for client in [v1, lmOnly] {
            let action = Self.handshake(client)
            #expect(Self.reason(action) == .ntlmV1Refused)
            if case .refuse(let refusal) = action { #expect(refusal.claimed?.user == "User") }
        }
        var looked = false
        _ = Self.handshake(
            v1,
            store: { _ in
                looked = true; return nil
            }
        )
        #expect(!looked)
    }

    @Test func anonymousIsRefused() {
        var anonymous = NTLMClient()
        anonymous.user = ""
        anonymous.domain = ""
        anonymous.ntResponse = .none
        anonymous.lmResponse = .none
        anonymous.sendMIC = false
        var noUser = NTLMClient()
        noUser.user = ""
        for client in [anonymous, noUser] {
            #expect(Self.reason(Self.handshake(client)) == .anonymousRefused)
        }
    }

    /// The client's own clock, when it does not copy the CHALLENGE's timestamp: up to the
    /// skew from the proxy's, either way.
    @Test(arguments: [(-299, true), (299, true), (-302, false), (302, false)])
    func clientClockWithinTheSkewIsAccepted(offset: Int, accepted: Bool) {
        var client = NTLMClient()
        client.timestamp = NTLMFileTime(ticks: UInt64(Int64(Self.at(1).ticks) + Int64(offset) * 10_000_000))
        let action = Self.handshake(client)
        if accepted {
            #expect(action == .accept(NTLMIdentity(user: "User", domain: "Domain", workstation: "COMPUTER")))
        } else {
            #expect(Self.reason(action) == .clockSkew)
        }
    }

    @Test func handshakeOlderThanItsLifetimeIsStale() {
        #expect(Self.reason(Self.handshake(NTLMClient(), answerAfter: 120)) == nil)
        #expect(Self.reason(Self.handshake(NTLMClient(), answerAfter: 121)) == .staleHandshake)
    }

    /// Without a MIC, NTLMv2 covers the names and the blob but not the workstation bytes or
    /// the LM field: a change there passes. With one, it is refused (below).
    @Test func withoutAMICOnlyTheProofIsCovered() {
        // The curl-like layout: 64 bytes, then "Domain", "User", "COMPUTER" in OEM.
        let userByte = 64 + 6
        let workstationByte = 64 + 6 + 4 + 2
        #expect(Self.reason(Self.handshake(Self.curlLike, edit: { $0[workstationByte] ^= 0x01 })) == nil)
        #expect(Self.reason(Self.handshake(Self.curlLike, edit: { $0[userByte] ^= 0x01 })) == .invalidCredentials)
    }

    // MARK: Hostile messages

    /// Every byte of an AUTHENTICATE with a MIC is under the MIC or the proof: one flipped bit
    /// anywhere is refused — even with a store that hands out the right hash for any name.
    @Test func everyFlippedByteOfAMICProtectedMessageIsRefused() {
        let (acceptor, negotiate, challenge) = Self.challenged(NTLMClient())
        let message = NTLMClient().authenticate(negotiate: negotiate, challenge: challenge)
        for index in message.indices {
            for bit in [UInt8(0x01), 0x80] {
                var copy = acceptor
                var flipped = message
                flipped[index] ^= bit
                var action = copy.authenticateReceived(flipped, now: Self.at(1))
                if case .lookUpNTHash(let lookup) = action {
                    action = copy.ntHashFound(NTHash(password: "Password"), for: lookup.id)
                }
                if case .accept = action { Issue.record("byte \(index) ^ \(bit) accepted") }
            }
        }
        var copy = acceptor
        guard case .lookUpNTHash(let lookup) = copy.authenticateReceived(message, now: Self.at(1)) else {
            Issue.record("the untouched message was refused")
            return
        }
        #expect(copy.ntHashFound(NTHash(password: "Password"), for: lookup.id) != .ignore)
    }

    /// Random multi-byte damage: refused, never a trap.
    @Test func randomDamageIsRefused() {
        let (acceptor, negotiate, challenge) = Self.challenged(NTLMClient())
        let message = NTLMClient().authenticate(negotiate: negotiate, challenge: challenge)
        var random = SeededGenerator(seed: 7)
        for _ in 0..<2000 {
            var copy = acceptor
            var damaged = message
            for _ in 0..<Int.random(in: 1...6, using: &random) {
                damaged[Int.random(in: 0..<damaged.count, using: &random)] = UInt8.random(in: 0...255, using: &random)
            }
            if damaged == message { continue }
            var action = copy.authenticateReceived(damaged, now: Self.at(1))
            if case .lookUpNTHash(let lookup) = action {
                action = copy.ntHashFound(NTHash(password: "Password"), for: lookup.id)
            }
            if case .accept = action { Issue.record("damaged message accepted") }
        }
    }

    @Test func everyTruncationIsRefusedAsMalformed() {
        let (acceptor, negotiate, challenge) = Self.challenged(NTLMClient())
        let message = NTLMClient().authenticate(negotiate: negotiate, challenge: challenge)
        var random = SeededGenerator(seed: 3)
        for length in 0..<message.count {
            var copy = acceptor
            let action = copy.messageReceived(Array(message.prefix(length)), now: Self.at(1), random: &random)
            #expect(Self.reason(action) == .malformedCredentials, "prefix of \(length) bytes")
            #expect(copy.state == .idle)
        }
    }

    @Test func oversizedAndOverlappingMessagesAreMalformed() {
        let oversized = Self.handshake(NTLMClient(), edit: { $0 += [UInt8](repeating: 0, count: 8192) })
        #expect(Self.reason(oversized) == .malformedCredentials)
        // The user field (at 36) aimed at the domain's bytes (the payload's first field).
        let overlapping = Self.handshake(NTLMClient(), edit: { $0[40] = 88 })
        #expect(Self.reason(overlapping) == .malformedCredentials)
        // Random NEGOTIATE damage: a CHALLENGE or a refusal, never a trap.
        var random = SeededGenerator(seed: 11)
        let negotiate = NTLMClient().negotiate()
        for length in 0...negotiate.count {
            var acceptor = NTLMAcceptor(settings: Self.settings)
            var damaged = Array(negotiate.prefix(length))
            if !damaged.isEmpty { damaged[Int.random(in: 0..<damaged.count, using: &random)] ^= 0xff }
            _ = acceptor.messageReceived(damaged, now: Self.start, random: &random)
        }
    }

    // MARK: The CHALLENGE

    @Test func challengeCarriesNamesTimeAndAFreshServerChallenge() {
        let (_, _, challenge) = Self.challenged(NTLMClient())
        guard let read = NTLMClient.read(challenge) else {
            Issue.record("unreadable CHALLENGE")
            return
        }
        #expect(read.timestamp == Self.start)
        #expect(
            read.targetInfo == [
                .text(.nbDomainName, "PORTCULLIS"), .text(.nbComputerName, "PROXY"),
                .text(.dnsDomainName, "example.org"),
                .text(.dnsComputerName, "proxy.example.org"), .timestamp(Self.start),
            ]
        )
        // TargetName: the NetBIOS computer name, in UTF-16 for a Unicode client.
        #expect(Array(challenge[56..<66]) == NTLMText.utf16LittleEndian("PROXY"))
        // The server challenge is the injected generator's first 8 bytes.
        var random = SeededGenerator(seed: 1)
        var expected: [UInt8] = []
        expected.appendLittleEndian(random.next() as UInt64)
        #expect(read.serverChallenge == expected)
        #expect(Self.challenged(NTLMClient(), seed: 2).challenge[24..<32] != challenge[24..<32])
    }

    @Test func emptyDNSNamesAreLeftOutAndOEMClientsGetAnOEMTargetName() {
        let settings = NTLMAcceptor.Settings(netbiosDomainName: "PORTCULLIS", netbiosComputerName: "PRÖXY")
        let (_, _, challenge) = Self.challenged(Self.curlLike, settings: settings)
        let read = NTLMClient.read(challenge)
        #expect(read?.targetInfo.map(\.id) == [.nbDomainName, .nbComputerName, .timestamp])
        #expect(read?.flags.contains(.oem) == true && read?.flags.contains(.unicode) == false)
        #expect(Array(challenge[56..<61]) == Array("PR?XY".utf8))
    }

    struct FlagCase: Sendable {
        var requested: NTLMFlags
        var granted: NTLMFlags
        var withheld: NTLMFlags
    }

    static let flagCases: [FlagCase] = [
        FlagCase(requested: [.unicode, .oem], granted: .unicode, withheld: .oem),
        FlagCase(requested: .oem, granted: .oem, withheld: .unicode),
        FlagCase(requested: [], granted: .oem, withheld: .unicode),
        FlagCase(
            requested: [.unicode, .sign, .seal, .keyExchange, .key128, .key56, .version, .extendedSessionSecurity],
            granted: [.unicode, .sign, .seal, .keyExchange, .key128, .key56, .version, .extendedSessionSecurity],
            withheld: []
        ),
        FlagCase(
            requested: [.lmKey, .datagram, .anonymous, .identify, .requestNonNTSessionKey],
            granted: [],
            withheld: [.lmKey, .datagram, .anonymous, .identify, .requestNonNTSessionKey]
        ),
    ]

    /// What the CHALLENGE grants for what the NEGOTIATE asks.
    @Test(arguments: Self.flagCases)
    func challengeFlags(_ flagCase: FlagCase) {
        let flags = NTLMAcceptor.challengeFlags(requested: flagCase.requested)
        #expect(flags.isSuperset(of: flagCase.granted))
        #expect(flags.isDisjoint(with: flagCase.withheld))
        #expect(flags.isSuperset(of: [.requestTarget, .ntlm, .alwaysSign, .targetTypeServer, .targetInfo]))
    }
}
