import NIOCore
import PortcullisAuth
import PortcullisStores
import Testing

@testable import PortcullisProxy

// The order of the gate's checks (lockout, cache, credential, account, access rules, limits)
// and what each one answers.
extension GateStateMachineTests {
    // MARK: - The order of checks

    /// A locked address gets 429 before the cache is asked: a right password tells it nothing.
    @Test func aLockedAddressIsRefusedBeforeTheCacheIsAsked() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        let cache = try #require(env.credentials)
        cache.users[FakeGateEnvironment.Cache.key(Self.alice)] = "alice"
        self.lock(env)
        let action = gate.startRequest(try self.request(Self.alice, at: t0 + .seconds(20)), in: env)
        let expected = ProxyResponse.lockedOut(retryAfter: .seconds(100))
        #expect(self.seen(action) == .refuse(self.record("locked-out"), Response(expected), close: true))
        #expect(Response(expected).headers == ["Retry-After: 100"])
        #expect(cache.lookups == 0)
        #expect(env.throttleCalls == ["check"])
        #expect(env.challengesSent == [.lockedOut])
        #expect(env.lines.map(\.message) == ["login refused: address locked out"])
        #expect(env.logKindsAsked == [.addressLockedOut])
        #expect(self.outcomes(env, scheme: "none", reason: "locked-out") == 1)
        #expect(env.counters.value("portcullis_credential_cache_total", [("result", "miss")]) == 1)
    }

    /// The credential this connection proved still passes while its address is locked; the
    /// same credential on another connection, or another one here, does not.
    @Test func onlyTheCredentialThisConnectionProvedPassesDuringALockout() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        let cache = try #require(env.credentials)
        cache.users[FakeGateEnvironment.Cache.key(Self.alice)] = "alice"
        cache.users[FakeGateEnvironment.Cache.key(Self.bob)] = "bob"
        let allowed = Seen.allow(self.record("ok", scheme: "basic", user: "alice"), authenticationInfo: false)
        #expect(self.seen(gate.startRequest(try self.request(Self.alice), in: env)) == allowed)
        self.lock(env)
        #expect(self.seen(gate.startRequest(try self.request(Self.alice), in: env)) == allowed)
        let lockedOut = Seen.refuse(
            self.record("locked-out"),
            Response(.lockedOut(retryAfter: .seconds(120))),
            close: true
        )
        #expect(self.seen(gate.startRequest(try self.request(Self.bob), in: env)) == lockedOut)
        var newcomer = GateStateMachine()
        #expect(self.seen(newcomer.startRequest(try self.request(Self.alice), in: env)) == lockedOut)
        #expect(env.counters.value("portcullis_credential_cache_total", [("result", "hit")]) == 1)
    }

    @Test func aCredentialProvedByACheckPassesDuringALockout() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        _ = gate.startRequest(try self.request(Self.alice), in: env)
        let done = gate.basicCheckFinished(CheckID(value: 1), outcome: .accepted(user: "alice"), now: t0, in: env)
        #expect(self.seen(done) == .allow(self.record("ok", scheme: "basic", user: "alice"), authenticationInfo: false))
        #expect(env.counters.value("portcullis_password_verify_seconds") == 1)
        env.credentials?.users[FakeGateEnvironment.Cache.key(Self.alice)] = "alice"
        self.lock(env)
        let again = gate.startRequest(try self.request(Self.alice), in: env)
        #expect(
            self.seen(again) == .allow(self.record("ok", scheme: "basic", user: "alice"), authenticationInfo: false)
        )
    }

    /// A keep-alive client repeating its credential is answered from the cache, and its cache
    /// key is worked out once per connection.
    @Test func aCachedCredentialIsAllowedWithoutACheckAndKeyedOnce() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        let cache = try #require(env.credentials)
        cache.users[FakeGateEnvironment.Cache.key(Self.alice)] = "alice"
        for _ in 0..<3 {
            let action = gate.startRequest(try self.request(Self.alice), in: env)
            #expect(
                self.seen(action)
                    == .allow(self.record("ok", scheme: "basic", user: "alice"), authenticationInfo: false)
            )
        }
        #expect(cache.keyed == [Self.alice])
        #expect(env.throttleCalls == ["check", "check", "check"])
        #expect(env.successes == 3)
        #expect(env.counters.value("portcullis_credential_cache_total", [("result", "hit")]) == 3)
        #expect(self.outcomes(env, scheme: "basic", reason: "ok") == 3)
        #expect(env.lines.isEmpty)
    }

    @Test func aRightPasswordIsCheckedThenAllowed() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        let start = gate.startRequest(try self.request(Self.alice), in: env)
        #expect(self.seen(start) == .verifyBasic(CheckID(value: 1), user: "alice", password: "secret"))
        guard case .verifyBasic(_, _, let key) = start else { return }
        #expect(key == FakeGateEnvironment.Cache.key(Self.alice))
        let done = gate.basicCheckFinished(CheckID(value: 1), outcome: .accepted(user: "alice"), now: t0, in: env)
        #expect(self.seen(done) == .allow(self.record("ok", scheme: "basic", user: "alice"), authenticationInfo: false))
        #expect(env.throttleCalls == ["check", "begin(alice)", "succeeded"])
        #expect(env.counters.value("portcullis_credential_cache_total", [("result", "miss")]) == 1)
    }

    @Test(arguments: [RejectionReason.expired, .disabled, .rotatedOut])
    func theRightPasswordOfAClosedAccountIsNoLongerValid(reason: RejectionReason) throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        _ = gate.startRequest(try self.request(Self.alice), in: env)
        let done = gate.basicCheckFinished(CheckID(value: 1), outcome: .rejected(reason), now: t0, in: env)
        let failure = AuthFailure(
            reason: .credentialsNoLongerValid,
            explanation:
                "this credential is no longer valid (it has expired, was disabled or was replaced); ask for a new one",
            presentedScheme: "basic"
        )
        #expect(
            self.seen(done)
                == .refuse(self.record(reason.rawValue, scheme: "basic"), self.challenge(env, failure), close: false)
        )
        #expect(env.throttleCalls == ["check", "begin(alice)", "abandoned"])
        #expect(env.challengesSent == [.credentialsNoLongerValid])
        #expect(self.outcomes(env, scheme: "basic", reason: reason.rawValue) == 1)
        #expect(
            env.lines
                == [
                    .init(
                        level: .info,
                        message: "authentication failed",
                        metadata: [
                            "client": Self.address, "reason": "credentials-no-longer-valid", "scheme": "basic",
                            "user": "alice", "detail": reason.rawValue,
                        ]
                    )
                ]
        )
    }

    @Test func anUnreadableStoreGets503NotA407() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        _ = gate.startRequest(try self.request(Self.alice), in: env)
        let done = gate.basicCheckFinished(CheckID(value: 1), outcome: .rejected(.unavailable), now: t0, in: env)
        let response = Response(
            ProxyResponse(
                status: .serviceUnavailable,
                proxyError: nil,
                details: "store-unavailable",
                message: "the proxy cannot read its user store right now; try again shortly.",
                extraHeaders: [("Retry-After", "5")]
            )
        )
        #expect(self.seen(done) == .refuse(self.record("store-unavailable", scheme: "basic"), response, close: false))
        #expect(env.throttleCalls == ["check", "begin(alice)", "abandoned"])
        #expect(env.challengesSent.isEmpty)
        #expect(
            env.lines == [.init(level: .error, message: "user store unavailable", metadata: ["client": Self.address])]
        )
        #expect(env.logKindsAsked == [.storeUnavailable])
    }

    @Test func noCredentialsGetA407LoggedAtDebugAndNotCounted() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        env.logAllowed = false
        let action = gate.startRequest(try self.request(), in: env)
        let failure = AuthFailure(
            reason: .missingCredentials,
            explanation: "no Proxy-Authorization header was sent; this proxy requires Basic or Digest credentials"
        )
        #expect(
            self.seen(action) == .refuse(self.record("missing-credentials"), self.challenge(env, failure), close: false)
        )
        #expect(env.throttleCalls == ["check"])
        #expect(env.lines.map(\.level) == [.debug])
        #expect(env.logKindsAsked.isEmpty)
    }

    /// Four checks of other credentials in flight could lock the address (threshold 4): a new
    /// one is refused unchecked.
    @Test func tooManyChecksInFlightGet429Unchecked() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        for _ in 0..<4 {
            _ = env.throttle.begin(address: Self.address, user: "x", credential: .unrepeatable(), now: t0)
        }
        let action = gate.startRequest(try self.request(Self.wrong), in: env)
        let busy = Response(.tooManyLoginsInFlight(retryAfter: .seconds(1)))
        #expect(busy.headers == ["Retry-After: 1"])
        #expect(self.seen(action) == .refuse(self.record("too-many-logins-in-flight"), busy, close: false))
        #expect(self.outcomes(env, scheme: "basic", reason: "too-many-logins-in-flight") == 1)
        guard case .idle = gate.state else { Issue.record("\(gate.state)"); return }
    }

    /// The failure that reaches the threshold locks the address, is logged once, and is still
    /// held back by the tarpit.
    @Test func theFailureThatLocksTheAddressIsCountedAndLogged() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        for _ in 0..<3 {
            guard
                case .proceed(let ticket) = env.throttle.begin(
                    address: Self.address,
                    user: "x",
                    credential: .unrepeatable(),
                    now: t0
                )
            else { return }
            _ = env.throttle.failed(ticket, now: t0)
        }
        _ = gate.startRequest(try self.request(Self.wrong), in: env)
        let done = gate.basicCheckFinished(CheckID(value: 1), outcome: .rejected(.invalid), now: t0, in: env)
        #expect(self.seen(done) == .wait(CheckID(value: 2), .milliseconds(400)))
        #expect(env.counters.value("portcullis_lockouts_total") == 1)
        #expect(
            env.lines
                == [
                    .init(
                        level: .warning,
                        message: "client address locked out after repeated failed logins",
                        metadata: ["client": Self.address, "failures": "4", "lockout": "120 s"]
                    )
                ]
        )
        let sent = gate.delayElapsed(CheckID(value: 2), in: env)
        #expect(
            self.seen(sent)
                == .refuse(
                    self.record("invalid-credentials", scheme: "basic"),
                    self.challenge(env, Self.wrongBasic),
                    close: false
                )
        )
        #expect(env.lines.last?.metadata["user"] == nil)
    }

    // MARK: - After the credential: access rules and limits

    @Test func theAccessRulesAreAskedAfterTheCredential() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        env.credentials?.users[FakeGateEnvironment.Cache.key(Self.alice)] = "alice"
        env.policy = AccessPolicy(rules: [.init(name: "deny-all", action: .deny)])
        let action = gate.startRequest(try self.request(Self.alice), in: env)
        let denied = Response(
            ProxyResponse(
                status: .forbidden,
                proxyError: "http_request_denied",
                details: "policy: rule deny-all",
                message: "GET to o.test:80 is not allowed for user \"alice\" (rule deny-all)."
            )
        )
        #expect(self.seen(action) == .refuse(self.record("ok", scheme: "basic", user: "alice"), denied, close: false))
        #expect(env.counters.value("portcullis_refusals_total", [("reason", "policy")]) == 1)
        #expect(
            env.lines
                == [
                    .init(
                        level: .info,
                        message: "request denied by policy",
                        metadata: ["client": Self.address, "user": "alice", "rule": "deny-all"]
                    )
                ]
        )
    }

    @Test func aBodyOverTheLimitGets413AndCloses() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        env.credentials?.users[FakeGateEnvironment.Cache.key(Self.alice)] = "alice"
        env.maximumRequestBody = 10
        let post = try self.request(Self.alice, "POST http://o.test/a HTTP/1.1", headers: "Content-Length: 11\r\n")
        let action = gate.startRequest(post, in: env)
        #expect(
            self.seen(action)
                == .refuse(
                    self.record("ok", scheme: "basic", user: "alice"),
                    Response(.bodyTooLarge(limit: 10)),
                    close: true
                )
        )
        let small = try self.request(Self.alice, "POST http://o.test/a HTTP/1.1", headers: "Content-Length: 10\r\n")
        #expect(
            self.seen(gate.startRequest(small, in: env))
                == .allow(self.record("ok", scheme: "basic", user: "alice"), authenticationInfo: false)
        )
    }

    @Test func aUserOverItsConnectionLimitGets429() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        env.credentials?.users[FakeGateEnvironment.Cache.key(Self.alice)] = "alice"
        var settings = UserLimits.Settings()
        settings.maximumConnections = 1
        let limits = UserLimits(settings: settings)
        env.userLimits = limits
        let elsewhere = FakeGateEnvironment()
        _ = limits.admit(user: "alice", connection: ObjectIdentifier(elsewhere), address: "192.0.2.8")
        let action = gate.startRequest(try self.request(Self.alice), in: env)
        let response = Response(
            ProxyResponse(
                status: .tooManyRequests,
                proxyError: nil,
                details: "user connection limit",
                message: "this user already has 1 connections open (the limit); reuse them."
            )
        )
        #expect(self.seen(action) == .refuse(self.record("ok", scheme: "basic", user: "alice"), response, close: false))
        #expect(env.counters.value("portcullis_refusals_total", [("reason", "user connection limit")]) == 1)
        #expect(env.lines.map(\.message) == ["request over a user limit"])
    }

    @Test func withoutAuthenticationOnlyTheAccessRulesDecide() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        env.credentials = nil
        #expect(
            self.seen(gate.startRequest(try self.request(), in: env))
                == .allow(.unauthenticated, authenticationInfo: false)
        )
        env.policy = AccessPolicy(rules: [.init(name: "deny-all", action: .deny)])
        let denied = Response(
            ProxyResponse(
                status: .forbidden,
                proxyError: "http_request_denied",
                details: "policy: rule deny-all",
                message: "GET to o.test:80 is not allowed for this client (rule deny-all)."
            )
        )
        #expect(
            self.seen(gate.startRequest(try self.request(), in: env)) == .refuse(.unauthenticated, denied, close: false)
        )
        #expect(env.throttleCalls.isEmpty)
    }
}
