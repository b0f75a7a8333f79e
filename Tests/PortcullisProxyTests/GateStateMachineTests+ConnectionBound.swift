import Foundation
import NIOCore
import PortcullisAuth
import PortcullisKerberos
import PortcullisStores
import Testing

@testable import PortcullisProxy

/// Negotiate and NTLM through the gate: legs answered with 407s that keep the connection, the
/// connection bound to the user afterwards, the store's answers, and the handshake count.
extension GateStateMachineTests {
    static let negotiateToken: [UInt8] = [0x60, 0x82, 0x01, 0x02, 0x06, 0x06]

    func negotiate(_ token: [UInt8] = Self.negotiateToken) -> String {
        "Negotiate " + Data(token).base64EncodedString()
    }

    func ntlm(_ message: [UInt8], scheme: String = "NTLM") -> String {
        "\(scheme) " + Data(message).base64EncodedString()
    }

    /// The token in the 407's `Proxy-Authenticate: <scheme> <token>`.
    func continuation(_ action: Action, scheme: String) -> [UInt8]? {
        guard case .refuse(let record, let response, let close) = action, record.result == "continue", !close,
            response.status == .proxyAuthenticationRequired,
            let field = response.extraHeaders.first(where: { $0.0 == "Proxy-Authenticate" })?.1,
            field.hasPrefix(scheme + " ")
        else { return nil }
        return Data(base64Encoded: String(field.dropFirst(scheme.count + 1))).map(Array.init)
    }

    func ntlmEnvironment() -> FakeGateEnvironment {
        let env = FakeGateEnvironment()
        env.gate = ProxyAuthGate(realm: "R", schemes: [.ntlm, .basic])
        return env
    }

    // MARK: - Negotiate

    @Test func aNegotiateHandshakeBindsTheConnectionToThePrincipal() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        env.gate = ProxyAuthGate(realm: "R", schemes: [.negotiate, .basic])
        let first = gate.startRequest(try self.request(self.negotiate()), in: env)
        guard case .acceptNegotiate(let id, let token) = first else { Issue.record("\(first)"); return }
        #expect(token == Self.negotiateToken)
        #expect(env.handshakes == 1)
        // A continuation leg: a 407 with the acceptor's token, the connection kept.
        let leg = gate.negotiateLegFinished(id, step: .continueNeeded(token: [1, 2, 3]), in: env)
        #expect(self.continuation(leg, scheme: "Negotiate") == [1, 2, 3])
        #expect(env.handshakes == 1)
        let second = gate.startRequest(try self.request(self.negotiate([9])), in: env)
        guard case .acceptNegotiate(let id2, _) = second else { Issue.record("\(second)"); return }
        let done = gate.negotiateLegFinished(
            id2,
            step: .established(principal: "alice@EXAMPLE.ORG", localName: "alice", token: [7, 7]),
            in: env
        )
        guard case .allow(let record, .negotiate([7, 7])?) = done else { Issue.record("\(done)"); return }
        #expect(record == self.record("ok", scheme: "negotiate", user: "alice@EXAMPLE.ORG", otherName: "alice"))
        #expect(env.handshakes == 0)
        // Later requests on the connection need no credentials, nor ask the lockout.
        #expect(env.throttleCalls == ["check", "check"])
        let later = gate.startRequest(try self.request(), in: env)
        let bound = self.record("ok", scheme: "negotiate", user: "alice@EXAMPLE.ORG", otherName: "alice")
        #expect(self.seen(later) == .allow(bound, authenticationInfo: false))
        #expect(env.throttleCalls == ["check", "check"])
    }

    /// `--strip-realm` uses the local name krb5.conf maps the principal to; a principal it maps
    /// to nothing (another realm's) keeps its full name, so it never passes for a local user.
    @Test(arguments: [
        ("alice@EXAMPLE.ORG", "alice" as String?, "alice", "alice@EXAMPLE.ORG" as String?),
        ("alice@OTHER.ORG", nil, "alice@OTHER.ORG", nil),
    ])
    func stripRealmNamesTheUserByItsLocalName(
        principal: String,
        localName: String?,
        user: String,
        otherName: String?
    ) throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        env.gate = ProxyAuthGate(realm: "R", schemes: [.negotiate])
        env.stripsRealm = true
        guard case .acceptNegotiate(let id, _) = gate.startRequest(try self.request(self.negotiate()), in: env)
        else { Issue.record("no leg"); return }
        let done = gate.negotiateLegFinished(
            id,
            step: .established(principal: principal, localName: localName, token: nil),
            in: env
        )
        let record = self.record("ok", scheme: "negotiate", user: user, otherName: otherName)
        #expect(self.seen(done) == .allow(record, authenticationInfo: false))
    }

    /// The access rules may name a Kerberos user either way: `alice` or `alice@EXAMPLE.ORG`,
    /// with or without `--strip-realm`; another realm's `alice` is neither, and a bound
    /// connection's later requests are judged the same way.
    @Test(arguments: [
        (["alice"], false, "alice@EXAMPLE.ORG", "alice" as String?, true),
        (["alice@EXAMPLE.ORG"], false, "alice@EXAMPLE.ORG", "alice", true),
        (["alice"], true, "alice@EXAMPLE.ORG", "alice", true),
        (["alice@EXAMPLE.ORG"], true, "alice@EXAMPLE.ORG", "alice", true),
        (["alice"], false, "alice@OTHER.ORG", nil, false),
        (["alice"], true, "alice@OTHER.ORG", nil, false),
        (["alice@OTHER.ORG"], true, "alice@OTHER.ORG", nil, true),
    ])
    func thePolicyMayNameEitherForm(
        named: [String],
        strip: Bool,
        principal: String,
        localName: String?,
        allowed: Bool
    ) throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        env.gate = ProxyAuthGate(realm: "R", schemes: [.negotiate])
        env.stripsRealm = strip
        env.policy = AccessPolicy(rules: [.init(name: "named", action: .allow, users: Set(named))])
        guard case .acceptNegotiate(let id, _) = gate.startRequest(try self.request(self.negotiate()), in: env)
        else { Issue.record("no leg"); return }
        let done = gate.negotiateLegFinished(
            id,
            step: .established(principal: principal, localName: localName, token: nil),
            in: env
        )
        let later = gate.startRequest(try self.request(), in: env)
        for action in [done, later] {
            switch action {
            case .allow: #expect(allowed, "\(named) let \(principal) through")
            case .refuse(_, let response, _):
                #expect(!allowed, "\(named) refused \(principal)")
                #expect(response.status == .forbidden)
            default: Issue.record("\(action)")
            }
        }
    }

    @Test(arguments: [
        (NegotiateFailureReason.clockSkew, AuthFailureReason.clockSkew),
        (.noKeytabKey, .noKeytabKey),
        (.unsupportedMechanism, .unsupportedMechanism),
        (.gssFailure, .gssFailure),
    ])
    func aFailedLegIsA407WithItsReasonAndTheGSSAPIWordsInTheLog(
        failure: NegotiateFailureReason,
        reason: AuthFailureReason
    ) throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        env.gate = ProxyAuthGate(realm: "R", schemes: [.negotiate, .basic])
        guard case .acceptNegotiate(let id, _) = gate.startRequest(try self.request(self.negotiate()), in: env)
        else { Issue.record("no leg"); return }
        let done = gate.negotiateLegFinished(
            id,
            step: .failed(NegotiateFailure(reason: failure, detail: "GSS words")),
            in: env
        )
        guard case .refuse(let record, let response, close: false) = done else { Issue.record("\(done)"); return }
        #expect(record.result == reason.token)
        #expect(response.status == .proxyAuthenticationRequired)
        #expect(response.extraHeaders.map(\.1) == ["Negotiate", "Basic realm=\"R\", charset=\"UTF-8\""])
        #expect(env.lines.last?.metadata["gss"] == "GSS words")
        #expect(env.handshakes == 0)
        // Not a password guess: nothing counted against the address.
        #expect(!env.throttleCalls.contains("failed"))
    }

    /// The token that established the connection, sent again on it: not a replay to refuse.
    @Test func theEstablishingTokenSentAgainKeepsTheConnectionBound() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        env.gate = ProxyAuthGate(realm: "R", schemes: [.negotiate])
        guard case .acceptNegotiate(let id, _) = gate.startRequest(try self.request(self.negotiate()), in: env)
        else { Issue.record("no leg"); return }
        _ = gate.negotiateLegFinished(id, step: .established(principal: "alice@R", localName: nil, token: nil), in: env)
        for _ in 0..<3 {
            let again = gate.startRequest(try self.request(self.negotiate()), in: env)
            #expect(
                self.seen(again)
                    == .allow(self.record("ok", scheme: "negotiate", user: "alice@R"), authenticationInfo: false)
            )
        }
        #expect(env.handshakes == 0)
        // Another token is another authentication.
        guard case .acceptNegotiate = gate.startRequest(try self.request(self.negotiate([5])), in: env) else {
            Issue.record("a new token goes to the acceptor")
            return
        }
    }

    @Test func aNewTokenOnABoundConnectionAuthenticatesAgain() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        env.gate = ProxyAuthGate(realm: "R", schemes: [.negotiate])
        guard case .acceptNegotiate(let id, _) = gate.startRequest(try self.request(self.negotiate()), in: env)
        else { Issue.record("no leg"); return }
        _ = gate.negotiateLegFinished(
            id,
            step: .established(principal: "alice@R", localName: "alice", token: nil),
            in: env
        )
        let again = gate.startRequest(try self.request(self.negotiate([5])), in: env)
        guard case .acceptNegotiate(let id2, _) = again else { Issue.record("\(again)"); return }
        _ = gate.negotiateLegFinished(id2, step: .failed(NegotiateFailure(reason: .gssFailure, detail: "x")), in: env)
        // The failed re-authentication left the connection unbound.
        let later = gate.startRequest(try self.request(), in: env)
        guard case .refuse(_, let response, _) = later else { Issue.record("\(later)"); return }
        #expect(response.status == .proxyAuthenticationRequired)
    }

    @Test func tooManyHandshakesInProgressGetA503() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        env.gate = ProxyAuthGate(realm: "R", schemes: [.negotiate])
        env.maximumHandshakes = 0
        let action = gate.startRequest(try self.request(self.negotiate()), in: env)
        guard case .refuse(let record, let response, close: false) = action else { Issue.record("\(action)"); return }
        #expect(response.status == .serviceUnavailable)
        #expect(record.result == "too-many-handshakes")
        #expect(env.logKindsAsked.contains(.tooManyHandshakes))
    }

    @Test func aConnectionClosedMidHandshakeNoLongerCounts() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        env.gate = ProxyAuthGate(realm: "R", schemes: [.negotiate])
        guard case .acceptNegotiate(let id, _) = gate.startRequest(try self.request(self.negotiate()), in: env)
        else { Issue.record("no leg"); return }
        _ = gate.negotiateLegFinished(id, step: .continueNeeded(token: [1]), in: env)
        #expect(env.handshakes == 1)
        gate.connectionClosed(in: env)
        #expect(env.handshakes == 0)
        gate.connectionClosed(in: env)
        #expect(env.handshakes == 0)
    }

    @Test func ntlmInsideNegotiateWithoutNTLMOfferedIsAnUnsupportedMechanism() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        env.gate = ProxyAuthGate(realm: "R", schemes: [.negotiate])
        let action = gate.startRequest(
            try self.request(self.ntlm(NTLMClient().negotiate(), scheme: "Negotiate")),
            in: env
        )
        guard case .refuse(let record, _, close: false) = action else { Issue.record("\(action)"); return }
        #expect(record.result == "unsupported-mechanism")
    }

    // MARK: - NTLM

    /// Runs NEGOTIATE → CHALLENGE → AUTHENTICATE; returns the gate's action on the AUTHENTICATE.
    func ntlmHandshake(
        _ gate: inout GateStateMachine,
        _ env: FakeGateEnvironment,
        client: NTLMClient,
        scheme: String = "NTLM"
    ) throws -> Action {
        let negotiate = client.negotiate()
        let first = gate.startRequest(try self.request(self.ntlm(negotiate, scheme: scheme)), in: env)
        let challenge = try #require(self.continuation(first, scheme: scheme), "\(first)")
        let authenticate = client.authenticate(negotiate: negotiate, challenge: challenge)
        return gate.startRequest(try self.request(self.ntlm(authenticate, scheme: scheme)), in: env)
    }

    /// The store's answer, then the NT hash check the gate asks for (run here as the verifier
    /// would run it off the event loop).
    func found(_ gate: inout GateStateMachine, _ env: FakeGateEnvironment, _ id: CheckID, _ lookup: NTLMLookup)
        -> Action
    {
        let action = gate.ntlmSecretsFound(id, lookup: lookup, now: t0, in: env)
        guard case .verifyNTLM(let check, let pending, let current, let previous) = action else { return action }
        #expect(check == id)
        let result = NTLMAcceptor.verify(pending, ntHash: current, previous: previous)
        return gate.ntlmVerified(check, result, now: t0, in: env)
    }

    func client(_ user: String = "alice", _ password: String = "secret") -> NTLMClient {
        var client = NTLMClient()
        client.user = user
        client.password = password
        client.domain = "CORP"
        // The CHALLENGE's time is the fake's clock: the client copies it.
        return client
    }

    @Test(arguments: ["NTLM", "Negotiate"])
    func anNTLMHandshakeLooksUpTheUserThenBindsTheConnection(scheme: String) throws {
        var gate = GateStateMachine()
        let env = self.ntlmEnvironment()
        if scheme == "Negotiate" { env.gate = ProxyAuthGate(realm: "R", schemes: [.negotiate, .ntlm]) }
        let action = try self.ntlmHandshake(&gate, env, client: self.client(), scheme: scheme)
        guard case .lookUpNTLMSecrets(let id, let name) = action else { Issue.record("\(action)"); return }
        #expect(name == "alice")
        #expect(env.handshakes == 0)
        let found = NTLMSecrets(user: "alice", ntHash: NTHash(password: "secret"))
        let done = self.found(&gate, env, id, .found(found))
        #expect(self.seen(done) == .allow(self.record("ok", scheme: "ntlm", user: "alice"), authenticationInfo: false))
        #expect(env.throttleCalls == ["check", "check", "begin(alice)", "succeeded"])
        #expect(env.credentials?.ntlmLoginsNoted == ["alice"])
        let later = gate.startRequest(try self.request(), in: env)
        #expect(self.seen(later) == .allow(self.record("ok", scheme: "ntlm", user: "alice"), authenticationInfo: false))
    }

    @Test func aWrongNTLMPasswordCountsAgainstTheAddress() throws {
        var gate = GateStateMachine()
        let env = self.ntlmEnvironment()
        let action = try self.ntlmHandshake(&gate, env, client: self.client("alice", "wrong"))
        guard case .lookUpNTLMSecrets(let id, _) = action else { Issue.record("\(action)"); return }
        let found = NTLMSecrets(user: "alice", ntHash: NTHash(password: "secret"))
        let done = self.found(&gate, env, id, .found(found))
        guard case .refuse(let record, let response, _) = done else { Issue.record("\(done)"); return }
        #expect(record.result == "invalid-credentials")
        #expect(response.status == .proxyAuthenticationRequired)
        #expect(env.throttleCalls.contains("failed"))
        // Nothing bound.
        let later = gate.startRequest(try self.request(), in: env)
        guard case .refuse = later else { Issue.record("\(later)"); return }
    }

    @Test func theRotatedOutNTHashWorksOnlyWithinItsGrace() throws {
        for (graceLeft, expected) in [(60.0, "ok"), (-1.0, "rotated-out")] {
            var gate = GateStateMachine()
            let env = self.ntlmEnvironment()
            let action = try self.ntlmHandshake(&gate, env, client: self.client("alice", "old"))
            guard case .lookUpNTLMSecrets(let id, _) = action else { Issue.record("\(action)"); return }
            let found = NTLMSecrets(
                user: "alice",
                ntHash: NTHash(password: "new"),
                previousNTHash: NTHash(password: "old"),
                standing: AccountStanding(previousValidUntil: env.currentDate.addingTimeInterval(graceLeft))
            )
            let done = self.found(&gate, env, id, .found(found))
            switch done {
            case .allow(let record, _): #expect(record.result == expected)
            case .refuse(let record, _, _): #expect(record.result == expected)
            default: Issue.record("\(done)")
            }
        }
    }

    @Test func aStoreChangeEndsAnNTLMBinding() throws {
        var gate = GateStateMachine()
        let env = self.ntlmEnvironment()
        let action = try self.ntlmHandshake(&gate, env, client: self.client())
        guard case .lookUpNTLMSecrets(let id, _) = action else { Issue.record("\(action)"); return }
        _ = self.found(&gate, env, id, .found(NTLMSecrets(user: "alice", ntHash: NTHash(password: "secret"))))
        env.credentials?.storeGeneration += 1
        let later = gate.startRequest(try self.request(), in: env)
        guard case .refuse(let record, let response, _) = later else { Issue.record("\(later)"); return }
        #expect(response.status == .proxyAuthenticationRequired)
        #expect(record.result == "missing-credentials")
    }

    @Test(arguments: [NTLMLookup.unknownUser, .notEnrolled(user: "alice")])
    func anUnknownOrUnenrolledUserIsRefusedLikeAWrongPassword(lookup: NTLMLookup) throws {
        var gate = GateStateMachine()
        let env = self.ntlmEnvironment()
        let action = try self.ntlmHandshake(&gate, env, client: self.client())
        guard case .lookUpNTLMSecrets(let id, _) = action else { Issue.record("\(action)"); return }
        let done = self.found(&gate, env, id, lookup)
        guard case .refuse(let record, _, _) = done else { Issue.record("\(done)"); return }
        #expect(record.result == "invalid-credentials")
        #expect(env.throttleCalls.contains("failed"))
    }

    @Test func anUnavailableStoreIsA503AndGivesTheSlotBack() throws {
        var gate = GateStateMachine()
        let env = self.ntlmEnvironment()
        let action = try self.ntlmHandshake(&gate, env, client: self.client())
        guard case .lookUpNTLMSecrets(let id, _) = action else { Issue.record("\(action)"); return }
        let done = gate.ntlmSecretsFound(id, lookup: .unavailable, now: t0, in: env)
        guard case .refuse(_, let response, _) = done else { Issue.record("\(done)"); return }
        #expect(response.status == .serviceUnavailable)
        #expect(env.throttleCalls.last == "abandoned")
    }

    @Test func aLookupAnsweredAfterTheClientLeftGivesItsSlotBack() throws {
        var gate = GateStateMachine()
        let env = self.ntlmEnvironment()
        let action = try self.ntlmHandshake(&gate, env, client: self.client())
        guard case .lookUpNTLMSecrets(let id, _) = action else { Issue.record("\(action)"); return }
        gate.connectionClosed(in: env)
        let late = gate.ntlmSecretsFound(id, lookup: .unknownUser, now: t0, in: env)
        #expect(self.seen(late) == .none)
        #expect(env.throttleCalls.last == "abandoned")
    }

    @Test func anNTLMv1AnswerIsRefusedBeforeAnyLookup() throws {
        var gate = GateStateMachine()
        let env = self.ntlmEnvironment()
        var client = self.client()
        client.ntResponse = .v1
        let action = try self.ntlmHandshake(&gate, env, client: client)
        guard case .refuse(let record, _, close: false) = action else { Issue.record("\(action)"); return }
        #expect(record.result == "ntlm-v1-refused")
        #expect(env.credentials?.lookups == 0)
    }
}

extension GateStateMachineTests {
    @Test func aVerificationThatCouldNotRunIsA503AndAfterACloseIsDropped() throws {
        for closeFirst in [false, true] {
            var gate = GateStateMachine()
            let env = self.ntlmEnvironment()
            let action = try self.ntlmHandshake(&gate, env, client: self.client())
            guard case .lookUpNTLMSecrets(let id, _) = action else { Issue.record("\(action)"); return }
            let lookup = NTLMLookup.found(NTLMSecrets(user: "alice", ntHash: NTHash(password: "secret")))
            guard case .verifyNTLM(let check, _, _, _) = gate.ntlmSecretsFound(id, lookup: lookup, now: t0, in: env)
            else { Issue.record("no verification"); return }
            if closeFirst { gate.connectionClosed(in: env) }
            let done = gate.ntlmVerified(check, nil, now: t0, in: env)
            if closeFirst {
                #expect(self.seen(done) == .none)
            } else {
                guard case .refuse(_, let response, _) = done else { Issue.record("\(done)"); return }
                #expect(response.status == .serviceUnavailable)
            }
            #expect(env.throttleCalls.last == "abandoned")
        }
    }
}
