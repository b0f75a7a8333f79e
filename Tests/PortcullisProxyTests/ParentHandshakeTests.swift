import Foundation
import PortcullisAuth
import Testing

@testable import PortcullisProxy

/// The client side of a parent's 407, without sockets: what goes out first, what each answer
/// leads to, what is remembered.
@Suite struct ParentHandshakeTests {
    static let credentials = ParentHandshake.Credentials(user: "bridge", password: "p@ss:wörd")
    static let entropy = ParentHandshake.Entropy(
        bytes: { count in [UInt8](repeating: 0x11, count: count) },
        now: { Date(timeIntervalSince1970: 1_800_000_000) }
    )

    func machine(
        _ credentials: ParentHandshake.Credentials? = Self.credentials,
        allowed: Set<ParentAuthScheme> = Set(ParentAuthScheme.allCases),
        memory: ParentAuthMemory? = nil,
        method: String = "CONNECT",
        uri: String = "origin.test:443"
    ) -> ParentHandshake {
        ParentHandshake(
            method: method,
            uri: uri,
            credentials: credentials,
            allowed: allowed,
            memory: memory,
            entropy: Self.entropy
        )
    }

    func challenges(_ values: String...) throws -> [Challenge] {
        try ChallengeParser.parse(fieldValues: values)
    }

    static let basicAnswer = "Basic " + Data("bridge:p@ss:wörd".utf8).base64EncodedString()
    static let digestChallenge =
        #"Digest realm="corp", nonce="n1", qop="auth", algorithm=SHA-256"#

    @Test func aParentThatAsksNothingIsPassedStraightThrough() {
        var m = self.machine()
        #expect(m.start() == .send(authorization: nil))
        #expect(m.received(status: 200, challenges: [], reusable: true) == .done)
        #expect(m.memory == nil)
    }

    @Test func basicIsAnsweredOnceThenRememberedAndSentPreemptively() throws {
        var m = self.machine()
        #expect(m.start() == .send(authorization: nil))
        let answer = m.received(status: 407, challenges: try self.challenges(#"Basic realm="corp""#), reusable: true)
        #expect(answer == .send(authorization: Self.basicAnswer))
        #expect(m.received(status: 200, challenges: [], reusable: true) == .done)
        #expect(m.memory == .basic)

        var next = self.machine(memory: .basic)
        #expect(next.start() == .send(authorization: Self.basicAnswer))
        #expect(next.received(status: 200, challenges: [], reusable: true) == .done)
    }

    @Test func aRefusedAnswerFailsWithTheSchemeAndForgetsIt() throws {
        var m = self.machine(memory: .basic)
        _ = m.start()
        let refused = m.received(status: 407, challenges: try self.challenges(#"Basic realm="corp""#), reusable: true)
        #expect(refused == .fail(.credentialsRefused(.basic)))
        #expect(m.memory == nil)
    }

    @Test func aParentThatClosesAfterIts407IsAnsweredOnANewConnection() throws {
        var m = self.machine()
        _ = m.start()
        let answer = m.received(status: 407, challenges: try self.challenges(#"Basic realm="corp""#), reusable: false)
        #expect(answer == .sendOnNewConnection(authorization: Self.basicAnswer))
    }

    @Test func noCredentialsConfiguredIsSaidWithWhatTheParentOffers() throws {
        var m = self.machine(nil)
        #expect(m.start() == .send(authorization: nil))
        let failure = m.received(
            status: 407,
            challenges: try self.challenges(#"Basic realm="corp""#, "NTLM"),
            reusable: true
        )
        #expect(failure == .fail(.credentialsMissing(offered: ["Basic", "NTLM"])))
    }

    @Test func theStrongestAllowedSchemeOfferedIsChosen() throws {
        let offered = try self.challenges(#"Basic realm="corp""#, Self.digestChallenge, "NTLM")
        var any = self.machine()
        _ = any.start()
        guard case .send(let ntlm?) = any.received(status: 407, challenges: offered, reusable: true) else {
            Issue.record("NTLM expected")
            return
        }
        #expect(ntlm.hasPrefix("NTLM "))

        var noNTLM = self.machine(allowed: [.basic, .digest])
        _ = noNTLM.start()
        guard case .send(let digest?) = noNTLM.received(status: 407, challenges: offered, reusable: true) else {
            Issue.record("Digest expected")
            return
        }
        #expect(digest.hasPrefix("Digest "))

        var basicOnly = self.machine(allowed: [.basic])
        _ = basicOnly.start()
        #expect(
            basicOnly.received(status: 407, challenges: offered, reusable: true)
                == .send(authorization: Self.basicAnswer)
        )

        var none = self.machine(allowed: [.basic])
        _ = none.start()
        #expect(
            none.received(status: 407, challenges: try self.challenges("Negotiate", "NTLM"), reusable: true)
                == .fail(.noCommonScheme(offered: ["Negotiate", "NTLM"]))
        )
    }

    @Test func digestAnswersTheChallengeForTheRequestAndCountsOnFromMemory() throws {
        var m = self.machine()
        _ = m.start()
        let answer = m.received(status: 407, challenges: try self.challenges(Self.digestChallenge), reusable: true)
        guard case .send(let authorization?) = answer else {
            Issue.record("a Digest answer expected, got \(answer)")
            return
        }
        let parsed = try #require(try ChallengeParser.parse(fieldValue: authorization).first)
        #expect(parsed.parameter("username") == "bridge")
        #expect(parsed.parameter("uri") == "origin.test:443")
        #expect(parsed.parameter("nc") == "00000001")
        #expect(parsed.parameter("algorithm") == "SHA-256")
        let cnonce = try #require(parsed.parameter("cnonce"))
        #expect(cnonce == String(repeating: "11", count: 16))
        // The response is the RFC 7616 hash of this request: recomputed independently here.
        func sha256(_ text: String) -> String { DigestAlgorithm(hash: .sha256).hex(text) }
        let ha1 = sha256("bridge:corp:p@ss:wörd")
        let ha2 = sha256("CONNECT:origin.test:443")
        #expect(parsed.parameter("response") == sha256("\(ha1):n1:00000001:\(cnonce):auth:\(ha2)"))
        #expect(m.received(status: 200, challenges: [], reusable: true) == .done)
        guard case .digest(let remembered, let count)? = m.memory else {
            Issue.record("the challenge should be remembered")
            return
        }
        #expect(remembered.nonce == "n1" && count == 2)

        var next = self.machine(memory: m.memory, method: "GET", uri: "http://origin.test/a")
        guard case .send(let preemptive?) = next.start() else {
            Issue.record("a pre-emptive Digest answer expected")
            return
        }
        let second = try #require(try ChallengeParser.parse(fieldValue: preemptive).first)
        #expect(second.parameter("nc") == "00000002")
        #expect(second.parameter("uri") == "http://origin.test/a")
    }

    @Test func aStaleNonceIsAnsweredAgainOnceAndThenRefused() throws {
        let parsed = try #require(try self.challenges(Self.digestChallenge).first)
        let memory = ParentAuthMemory.digest(try #require(DigestChallenge(parsed)), nonceCount: 7)
        var m = self.machine(memory: memory)
        _ = m.start()
        let stale = try self.challenges(#"Digest realm="corp", nonce="n2", qop="auth", algorithm=SHA-256, stale=true"#)
        guard case .send(let again?) = m.received(status: 407, challenges: stale, reusable: true) else {
            Issue.record("a retry with the fresh nonce expected")
            return
        }
        #expect(again.contains(#"nonce="n2""#) && again.contains("nc=00000001"))
        #expect(m.received(status: 407, challenges: stale, reusable: true) == .fail(.credentialsRefused(.digest)))
    }

    @Test func aDigestChallengeThatCannotBeAnsweredIsSaidSo() throws {
        var m = self.machine(allowed: [.digest])
        _ = m.start()
        let intOnly = try self.challenges(#"Digest realm="corp", nonce="n1", qop="auth-int""#)
        #expect(m.received(status: 407, challenges: intOnly, reusable: true) == .fail(.malformedChallenge(.digest)))
    }

    @Test func ntlmNegotiatesThenAuthenticatesOnTheSameConnection() throws {
        var m = self.machine()
        _ = m.start()
        guard
            case .send(let negotiate?) = m.received(
                status: 407,
                challenges: try self.challenges("NTLM"),
                reusable: true
            )
        else {
            Issue.record("an NTLM NEGOTIATE expected")
            return
        }
        let type1 = try #require(Data(base64Encoded: String(negotiate.dropFirst(5))))
        #expect(NTLMMessageType.of(Array(type1)) == .negotiate)
        // The proxy's own acceptor challenges and then verifies the AUTHENTICATE with the password's NT hash.
        var acceptor = NTLMAcceptor(settings: .init(netbiosDomainName: "CORP", netbiosComputerName: "PARENT"))
        var generator = SystemRandomNumberGenerator()
        let now = NTLMFileTime(unixMilliseconds: 1_800_000_000_000)
        guard case .sendChallenge(let type2) = acceptor.messageReceived(Array(type1), now: now, random: &generator)
        else {
            Issue.record("the acceptor should challenge")
            return
        }
        let challenge = "NTLM " + Data(type2).base64EncodedString()
        guard
            case .send(let authenticate?) = m.received(
                status: 407,
                challenges: try self.challenges(challenge),
                reusable: true
            )
        else {
            Issue.record("an NTLM AUTHENTICATE expected")
            return
        }
        let type3 = try #require(Data(base64Encoded: String(authenticate.dropFirst(5))))
        guard case .lookUpNTHash(let lookup) = acceptor.messageReceived(Array(type3), now: now, random: &generator)
        else {
            Issue.record("the acceptor should look the user up")
            return
        }
        #expect(lookup.user == "bridge")
        guard case .accept = acceptor.ntHashFound(NTHash(password: "p@ss:wörd"), for: lookup.id) else {
            Issue.record("the acceptor should accept the right password")
            return
        }
        #expect(m.received(status: 200, challenges: [], reusable: true) == .done)
        #expect(m.memory == .ntlm)
    }

    @Test func ntlmCannotContinueOnAClosedConnection() throws {
        var m = self.machine(memory: .ntlm)
        guard case .send(let negotiate?) = m.start(), negotiate.hasPrefix("NTLM ") else {
            Issue.record("a pre-emptive NEGOTIATE expected")
            return
        }
        #expect(
            m.received(status: 407, challenges: try self.challenges("NTLM TlRMTVNTUAACAAAA"), reusable: false)
                == .fail(.connectionClosedMidHandshake)
        )
    }

    // MARK: - Negotiate: tokens made outside, fallback when there is no ticket

    @Test func negotiateIsPreferredAndItsTokenIsAskedForThenSent() throws {
        var m = self.machine()
        _ = m.start()
        let offered = try self.challenges("Negotiate", "NTLM", #"Basic realm="corp""#)
        #expect(m.received(status: 407, challenges: offered, reusable: true) == .negotiate(input: nil))
        #expect(m.negotiateStepped(.token([1, 2, 3])) == .send(authorization: "Negotiate AQID"))
        #expect(m.received(status: 200, challenges: [], reusable: true) == .done)
        #expect(m.memory == .negotiate)
    }

    @Test func withoutATicketTheNextStrongestSchemeIsUsed() throws {
        var m = self.machine()
        _ = m.start()
        let offered = try self.challenges("Negotiate", #"Basic realm="corp""#)
        #expect(m.received(status: 407, challenges: offered, reusable: true) == .negotiate(input: nil))
        #expect(m.negotiateStepped(.failed(reason: "no-ticket")) == .send(authorization: Self.basicAnswer))
        #expect(m.received(status: 200, challenges: [], reusable: true) == .done)
        #expect(m.memory == .basic)
    }

    @Test func negotiateAloneWithoutATicketSaysWhy() throws {
        var m = self.machine(nil)
        _ = m.start()
        #expect(
            m.received(status: 407, challenges: try self.challenges("Negotiate"), reusable: false)
                == .negotiate(input: nil)
        )
        #expect(m.negotiateStepped(.failed(reason: "no-ticket")) == .fail(.negotiateUnavailable("no-ticket")))
    }

    @Test func negotiateNeedsNoConfiguredPasswordAndGoesOnANewConnectionWhenTheParentClosed() throws {
        var m = self.machine(nil)
        _ = m.start()
        #expect(
            m.received(status: 407, challenges: try self.challenges("Negotiate"), reusable: false)
                == .negotiate(input: nil)
        )
        #expect(m.negotiateStepped(.token([9])) == .sendOnNewConnection(authorization: "Negotiate CQ=="))
    }

    @Test func aRememberedNegotiateStartsWithAToken() throws {
        var m = self.machine(memory: .negotiate)
        #expect(m.start() == .negotiate(input: nil))
        // No ticket any more: the request goes without and the parent's challenge decides.
        #expect(m.negotiateStepped(.failed(reason: "ticket-expired")) == .send(authorization: nil))
        #expect(m.memory == nil)
        let offered = try self.challenges("Negotiate", #"Basic realm="corp""#)
        #expect(m.received(status: 407, challenges: offered, reusable: true) == .send(authorization: Self.basicAnswer))
    }

    @Test func aNegotiateAnswerRefusedIsSaidSoAndAContinuationIsFollowed() throws {
        var refused = self.machine(memory: .negotiate)
        _ = refused.start()
        _ = refused.negotiateStepped(.token([1]))
        #expect(
            refused.received(status: 407, challenges: try self.challenges("Negotiate"), reusable: true)
                == .fail(.credentialsRefused(.negotiate))
        )
        var continued = self.machine(memory: .negotiate)
        _ = continued.start()
        _ = continued.negotiateStepped(.token([1]))
        #expect(
            continued.received(status: 407, challenges: try self.challenges("Negotiate oYG2"), reusable: true)
                == .negotiate(input: [0xa1, 0x81, 0xb6])
        )
    }

    @Test func negotiateIsNotUsedWhenParentAuthLeavesItOut() throws {
        var m = self.machine(allowed: [.basic, .digest, .ntlm], memory: .negotiate)
        #expect(m.start() == .send(authorization: nil))
        let offered = try self.challenges("Negotiate", #"Basic realm="corp""#)
        #expect(m.received(status: 407, challenges: offered, reusable: true) == .send(authorization: Self.basicAnswer))
    }
}
