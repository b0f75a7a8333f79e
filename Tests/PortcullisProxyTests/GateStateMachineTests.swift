import NIOCore
import PortcullisAuth
import PortcullisStores
import Testing

@testable import PortcullisProxy

/// The 407 gate without sockets, threads or clocks: each test feeds ``GateStateMachine`` events
/// with a ``FakeGateEnvironment`` and checks the exact actions, and what the throttle, the loop
/// detector, the metrics and the log were told.
@Suite struct GateStateMachineTests {
    typealias Action = GateStateMachine.Action
    typealias Record = GateStateMachine.Record
    typealias CheckID = GateStateMachine.CheckID

    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
    static let alice = "Basic YWxpY2U6c2VjcmV0"  // alice:secret
    static let bob = "Basic Ym9iOmh1bnRlcjI="  // bob:hunter2
    static let wrong = "Basic dTpw"  // u:p
    static let address = "192.0.2.7"

    // MARK: - Helpers

    func request(
        _ authorization: String? = nil,
        _ line: String = "GET http://o.test/a HTTP/1.1",
        headers: String = "",
        at started: NIODeadline? = nil
    ) throws -> GateStateMachine.Request {
        var text = line + "\r\nHost: o.test\r\n"
        if let authorization { text += "Proxy-Authorization: \(authorization)\r\n" }
        text += headers + "\r\n"
        let head = try RequestHead.parse(text)
        let target = try RequestTarget.parse(head.target, isConnect: head.method == .connect).get()
        return .init(head: head, target: target, started: started ?? self.t0, clientAddress: Self.address)
    }

    /// Locks the test's address: `threshold` distinct failures from it.
    func lock(_ env: FakeGateEnvironment, at now: NIODeadline? = nil) {
        for _ in 0..<env.throttle.settings.threshold {
            let admission = env.throttle.begin(
                address: Self.address,
                user: "x",
                credential: .unrepeatable(),
                now: now ?? self.t0
            )
            guard case .proceed(let ticket) = admission else { return }
            _ = env.throttle.failed(ticket, now: now ?? self.t0)
        }
    }

    /// A response as the client sees it, nonces aside (they are random).
    struct Response: Equatable, CustomStringConvertible {
        var status: UInt
        var proxyStatus: String
        var message: String
        var headers: [String]

        init(_ response: ProxyResponse) {
            self.status = response.status.code
            self.proxyStatus = response.proxyStatus
            self.message = response.message
            self.headers = response.extraHeaders.map { name, value in
                "\(name): " + value.replacing(#/nonce="[^"]*"/#, with: #"nonce="*""#)
            }
        }

        var description: String { "\(self.status) \(self.proxyStatus) \(self.message) \(self.headers)" }
    }

    /// An action as a test states it.
    enum Seen: Equatable {
        case allow(Record, authenticationInfo: Bool)
        case refuse(Record, Response, close: Bool)
        case verifyBasic(CheckID, user: String, password: String)
        case lookUpDigestSecrets(CheckID, name: String)
        case wait(CheckID, TimeAmount)
        case acceptNegotiate(CheckID, token: [UInt8])
        case lookUpNTLMSecrets(CheckID, name: String)
        case verifyNTLM(CheckID)
        case lookUpAccount(CheckID, name: String)
        case lookUpGroups(CheckID, name: String, user: String)
        case none
    }

    func seen(_ action: Action) -> Seen {
        switch action {
        case .allow(let record, let info): return .allow(record, authenticationInfo: info != nil)
        case .refuse(let record, let response, let close): return .refuse(record, Response(response), close: close)
        case .verifyBasic(let id, let credentials, _):
            return .verifyBasic(id, user: credentials.user, password: credentials.password)
        case .lookUpDigestSecrets(let id, let key): return .lookUpDigestSecrets(id, name: key.name)
        case .wait(let id, let delay): return .wait(id, delay)
        case .acceptNegotiate(let id, let token): return .acceptNegotiate(id, token: token)
        case .lookUpNTLMSecrets(let id, let name): return .lookUpNTLMSecrets(id, name: name)
        case .verifyNTLM(let id, _, _, _): return .verifyNTLM(id)
        case .lookUpAccount(let id, let name): return .lookUpAccount(id, name: name)
        case .lookUpGroups(let id, let name, let user): return .lookUpGroups(id, name: name, user: user)
        case .none: return .none
        }
    }

    /// The 407 the gate answers `failure` with, as the client sees it.
    func challenge(_ env: FakeGateEnvironment, _ failure: AuthFailure, stale: Bool = false) -> Response {
        let digest = env.digest!.challenges(stale: stale)
        return Response(.proxyAuthenticationRequired(failure, challenges: env.gate.challenges(digest: digest)))
    }

    func record(_ result: String, scheme: String? = nil, user: String? = nil, otherName: String? = nil) -> Record {
        Record(user: user, otherName: otherName, scheme: scheme, result: result)
    }

    static let wrongBasic = AuthFailure(
        reason: .invalidCredentials,
        explanation: "unknown user or wrong password",
        presentedScheme: "basic"
    )

    static let notBase64 = AuthFailure(
        reason: .malformedCredentials,
        explanation: "the Basic credentials are not valid base64 (RFC 7617 needs base64 of \"user:password\")",
        presentedScheme: "basic"
    )

    func outcomes(_ env: FakeGateEnvironment, scheme: String, reason: String) -> Int64 {
        let outcome = reason == "ok" ? "accepted" : "rejected"
        return env.counters.value(
            "portcullis_auth_outcomes_total",
            [("scheme", scheme), ("outcome", outcome), ("reason", reason)]
        )
    }

    // MARK: - Every state × every completion

    @Test func inIdleNoCompletionDoesAnything() {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        let id = CheckID(value: 1)
        #expect(self.seen(gate.basicCheckFinished(id, outcome: .accepted(user: "alice"), now: t0, in: env)) == .none)
        #expect(self.seen(gate.basicCheckFinished(id, outcome: .rejected(.invalid), now: t0, in: env)) == .none)
        #expect(self.seen(gate.digestSecretsFound(id, lookup: .unknownUser, now: t0, in: env)) == .none)
        #expect(self.seen(gate.delayElapsed(id, in: env)) == .none)
        gate.cancel()
        guard case .idle = gate.state else { Issue.record("\(gate.state)"); return }
        #expect(env.throttleCalls.isEmpty)
        #expect(env.lines.isEmpty)
        #expect(env.counters.value("portcullis_proxy_auth_challenges_total") == 0)
    }

    @Test func aBasicCheckIsWaitedForUnderItsIdAndAnsweredOnce() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        let start = gate.startRequest(try self.request(Self.wrong), in: env)
        #expect(self.seen(start) == .verifyBasic(CheckID(value: 1), user: "u", password: "p"))
        #expect(env.throttleCalls == ["check", "begin(u)"])
        let id = CheckID(value: 1)
        // Other completions, or this one under another id: nothing, and the check still waits.
        #expect(self.seen(gate.digestSecretsFound(id, lookup: .unknownUser, now: t0, in: env)) == .none)
        #expect(self.seen(gate.delayElapsed(id, in: env)) == .none)
        let other = CheckID(value: 2)
        #expect(self.seen(gate.basicCheckFinished(other, outcome: .rejected(.invalid), now: t0, in: env)) == .none)
        #expect(env.throttleCalls == ["check", "begin(u)"])
        guard case .verifyingBasic = gate.state else { Issue.record("\(gate.state)"); return }

        let done = gate.basicCheckFinished(id, outcome: .rejected(.invalid), now: t0, in: env)
        #expect(
            self.seen(done)
                == .refuse(
                    self.record("invalid-credentials", scheme: "basic"),
                    self.challenge(env, Self.wrongBasic),
                    close: false
                )
        )
        #expect(env.throttleCalls == ["check", "begin(u)", "failed"])
        // Delivered twice: the throttle has already learned it, and nobody waits.
        #expect(self.seen(gate.basicCheckFinished(id, outcome: .rejected(.invalid), now: t0, in: env)) == .none)
        #expect(env.throttleCalls == ["check", "begin(u)", "failed"])
        #expect(self.outcomes(env, scheme: "basic", reason: "invalid-credentials") == 1)
        #expect(env.counters.value("portcullis_proxy_auth_challenges_total") == 1)
    }

    static let checkOutcomes: [(VerificationOutcome, String)] = [
        (.accepted(user: "alice"), "succeeded"),
        (.rejected(.invalid), "failed"),
        (.rejected(.expired), "abandoned"),
        (.rejected(.disabled), "abandoned"),
        (.rejected(.rotatedOut), "abandoned"),
        (.rejected(.unavailable), "abandoned"),
    ]

    /// The client left during the check: no answer, but the throttle learns the outcome once
    /// (its slot is given back; a wrong guess counts).
    @Test(arguments: Self.checkOutcomes)
    func aCheckFinishingAfterCancelOnlyTellsTheThrottleOnce(outcome: VerificationOutcome, told: String) throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        _ = gate.startRequest(try self.request(Self.wrong), in: env)
        gate.cancel()
        guard case .idle = gate.state else { Issue.record("\(gate.state)"); return }
        let id = CheckID(value: 1)
        #expect(self.seen(gate.basicCheckFinished(id, outcome: outcome, now: t0, in: env)) == .none)
        #expect(self.seen(gate.basicCheckFinished(id, outcome: outcome, now: t0, in: env)) == .none)
        #expect(env.throttleCalls == ["check", "begin(u)", told])
        #expect(env.lines.isEmpty)
        #expect(env.counters.value("portcullis_proxy_auth_challenges_total") == 0)
    }

    @Test func aRequestStartingDuringACheckLeavesItToTheThrottle() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        _ = gate.startRequest(try self.request(Self.wrong), in: env)
        let next = gate.startRequest(try self.request(), in: env)
        let missing = AuthFailure(
            reason: .missingCredentials,
            explanation: "no Proxy-Authorization header was sent; this proxy requires Basic or Digest credentials"
        )
        #expect(
            self.seen(next) == .refuse(self.record("missing-credentials"), self.challenge(env, missing), close: false)
        )
        let late = gate.basicCheckFinished(CheckID(value: 1), outcome: .rejected(.invalid), now: t0, in: env)
        #expect(self.seen(late) == .none)
        #expect(env.throttleCalls == ["check", "begin(u)", "check", "failed"])
    }

    @Test func aDigestLookupIsWaitedForUnderItsIdAndAnsweredOnce() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        let start = gate.startRequest(try self.request(try self.digestField(env)), in: env)
        let id = CheckID(value: 1)
        #expect(self.seen(start) == .lookUpDigestSecrets(id, name: "alice"))
        #expect(self.seen(gate.basicCheckFinished(id, outcome: .accepted(user: "alice"), now: t0, in: env)) == .none)
        #expect(self.seen(gate.delayElapsed(id, in: env)) == .none)
        #expect(self.seen(gate.digestSecretsFound(CheckID(value: 9), lookup: .unknownUser, now: t0, in: env)) == .none)
        #expect(env.throttleCalls == ["check"])
        guard case .lookingUpDigestSecrets = gate.state else { Issue.record("\(gate.state)"); return }

        let done = gate.digestSecretsFound(id, lookup: self.secrets(env), now: t0, in: env)
        #expect(self.seen(done) == .allow(self.record("ok", scheme: "digest", user: "alice"), authenticationInfo: true))
        #expect(self.seen(gate.digestSecretsFound(id, lookup: self.secrets(env), now: t0, in: env)) == .none)
        #expect(env.credentials?.digestLoginsNoted == ["alice"])
    }

    @Test func aDigestLookupFinishingAfterCancelIsDropped() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        _ = gate.startRequest(try self.request(try self.digestField(env)), in: env)
        gate.cancel()
        #expect(
            self.seen(gate.digestSecretsFound(CheckID(value: 1), lookup: self.secrets(env), now: t0, in: env)) == .none
        )
        #expect(env.throttleCalls == ["check"])
        #expect(env.credentials?.digestLoginsNoted == [])
    }

    /// Two distinct wrong credentials from one address (threshold 4): the second 407 is held
    /// back 100 ms, and only then counted, logged and sent.
    @Test func theTarpitHoldsThe407UnderItsIdUntilTheDelayElapses() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        let first = gate.startRequest(try self.request("Basic !!!!"), in: env)
        let refused = Seen.refuse(
            self.record("malformed-credentials", scheme: "basic"),
            self.challenge(env, Self.notBase64),
            close: false
        )
        #expect(self.seen(first) == refused)
        let second = gate.startRequest(try self.request("Basic ????"), in: env)
        let id = CheckID(value: 1)
        #expect(self.seen(second) == .wait(id, .milliseconds(100)))
        #expect(env.throttleCalls == ["check", "begin(-)", "failed", "check", "begin(-)", "failed"])
        #expect(env.counters.value("portcullis_proxy_auth_challenges_total") == 1)
        #expect(env.lines.count == 1)

        #expect(self.seen(gate.basicCheckFinished(id, outcome: .rejected(.invalid), now: t0, in: env)) == .none)
        #expect(self.seen(gate.digestSecretsFound(id, lookup: .unknownUser, now: t0, in: env)) == .none)
        #expect(self.seen(gate.delayElapsed(CheckID(value: 2), in: env)) == .none)
        #expect(env.throttleCalls.count == 6)

        #expect(self.seen(gate.delayElapsed(id, in: env)) == refused)
        #expect(self.seen(gate.delayElapsed(id, in: env)) == .none)
        #expect(env.counters.value("portcullis_proxy_auth_challenges_total") == 2)
        #expect(env.lines.map(\.message) == ["authentication failed", "authentication failed"])
        #expect(env.lines.last?.level == .info)
    }

    @Test func aTarpitCancelledSendsNothing() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        _ = gate.startRequest(try self.request("Basic !!!!"), in: env)
        _ = gate.startRequest(try self.request("Basic ????"), in: env)
        gate.cancel()
        #expect(self.seen(gate.delayElapsed(CheckID(value: 1), in: env)) == .none)
        #expect(env.counters.value("portcullis_proxy_auth_challenges_total") == 1)
    }

    /// The gate waits for a Digest lookup (`true`) or in the tarpit; a new request starts.
    @Test(arguments: [true, false])
    func aRequestStartingDuringAWaitLeavesItBehind(lookup: Bool) throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        if lookup {
            #expect(
                self.seen(gate.startRequest(try self.request(try self.digestField(env)), in: env))
                    == .lookUpDigestSecrets(CheckID(value: 1), name: "alice")
            )
        } else {
            _ = gate.startRequest(try self.request("Basic !!!!"), in: env)
            #expect(
                self.seen(gate.startRequest(try self.request("Basic ????"), in: env))
                    == .wait(CheckID(value: 1), .milliseconds(100))
            )
        }
        let challenges = env.counters.value("portcullis_proxy_auth_challenges_total")
        let next = gate.startRequest(try self.request(Self.wrong), in: env)
        #expect(self.seen(next) == .verifyBasic(CheckID(value: 2), user: "u", password: "p"))
        let id = CheckID(value: 1)
        #expect(self.seen(gate.digestSecretsFound(id, lookup: self.secrets(env), now: t0, in: env)) == .none)
        #expect(self.seen(gate.delayElapsed(id, in: env)) == .none)
        #expect(env.counters.value("portcullis_proxy_auth_challenges_total") == challenges)
        guard case .verifyingBasic(let check) = gate.state else { Issue.record("\(gate.state)"); return }
        #expect(check.id == CheckID(value: 2))
    }
}
