import Foundation
import NIOCore
import PortcullisAuth
import PortcullisStores
import Testing

@testable import PortcullisProxy

// Digest answers through the gate: realm, algorithm and uri first, then the secrets, the
// answer, the nonce and the account's standing.
extension GateStateMachineTests {
    /// A Digest answer to the fake's authority, right for `password` unless said otherwise.
    func digestField(
        _ env: FakeGateEnvironment,
        user: String = "alice",
        password: String = "pw",
        realm: String = "R",
        uri: String = "/a",
        method: String = "GET",
        algorithm: String = "SHA-256",
        nonce: String? = nil,
        nc: Int = 1,
        opaque: String? = nil,
        ha1 given: String? = nil
    ) throws -> String {
        let authority = try #require(env.digest)
        let a = try #require(DigestAlgorithm(token: algorithm))
        let ncText = String(nc, radix: 16)
        var parts = [
            "username=\"\(user)\"", "realm=\"\(realm)\"", "uri=\"\(uri)\"", "algorithm=\(algorithm)",
            "nonce=\"\(nonce ?? authority.mintNonce())\"",
            "nc=" + String(repeating: "0", count: 8 - ncText.count) + ncText,
            "cnonce=\"c0ffee\"", "qop=auth", "opaque=\"\(opaque ?? authority.opaque)\"",
        ]
        let draft =
            "Digest " + (parts + ["response=\"\(String(repeating: "0", count: a.hexLength))\""]).joined(separator: ", ")
        let parsed = try DigestAuthorization.parse(draft).get()
        let ha1 = given ?? a.hex("\(user):\(realm):\(password)")
        parts.append("response=\"\(authority.expectedResponse(parsed, ha1: ha1, method: method))\"")
        return "Digest " + parts.joined(separator: ", ")
    }

    /// alice's secrets for SHA-256: `pw`, and optionally a previous password.
    func secrets(
        _ env: FakeGateEnvironment,
        user: String = "alice",
        previous: String? = nil,
        standing: AccountStanding = .init()
    ) -> DigestLookup {
        let a = DigestAlgorithm(hash: .sha256)
        return .found(
            DigestSecrets(
                user: user,
                ha1: a.hex("\(user):R:pw"),
                previousHA1: previous.map { a.hex("\(user):R:\($0)") },
                standing: standing
            )
        )
    }

    func cacheSecrets(_ env: FakeGateEnvironment, _ lookup: DigestLookup, user: String = "alice") {
        env.credentials?.digestSecrets[.init(name: user, isUserhash: false, hash: .sha256)] = lookup
    }

    static let wrongDigest = AuthFailure(
        reason: .invalidCredentials,
        explanation: "unknown user or wrong password",
        presentedScheme: "digest"
    )

    // MARK: - Tests

    @Test func aRightDigestAnswerIsAllowedWithAuthenticationInfo() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        self.cacheSecrets(env, self.secrets(env))
        let action = gate.startRequest(try self.request(try self.digestField(env)), in: env)
        guard case .allow(let record, .authenticationInfo(let info)?) = action else {
            Issue.record("\(action)")
            return
        }
        #expect(record == self.record("ok", scheme: "digest", user: "alice"))
        let text = String(decoding: info, as: UTF8.self)
        #expect(text.hasPrefix("qop=auth, rspauth=\""))
        #expect(text.hasSuffix("\", cnonce=\"c0ffee\", nc=00000001"))
        // The lockout is asked again once the secrets are at hand, cached or not.
        #expect(env.throttleCalls == ["check", "check", "begin(alice)", "succeeded"])
        #expect(env.counters.value("portcullis_credential_cache_total", [("result", "hit")]) == 1)
        #expect(self.outcomes(env, scheme: "digest", reason: "ok") == 1)
    }

    /// Java's HttpURLConnection hashes the Latin-1 bytes of `user:realm:password`: its answer
    /// matches the Latin-1 HA1 the store keeps, current or (during a grace) previous.
    @Test func anAnswerOverTheLatin1BytesOfThePasswordIsAllowed() throws {
        let a = DigestAlgorithm(hash: .sha256)
        let latin1 = { (text: String) in a.hex(bytes: text.unicodeScalars.map { UInt8($0.value) }) }
        for (current, previous, answered, allowed) in [
            ("pässe", nil, "pässe", true), ("nöu", "pässe", "pässe", true), ("nöu", nil, "pässe", false),
        ] as [(String, String?, String, Bool)] {
            var gate = GateStateMachine()
            let env = FakeGateEnvironment()
            var standing = AccountStanding()
            standing.previousValidUntil = previous == nil ? nil : env.currentDate.addingTimeInterval(60)
            let secrets = DigestSecrets(
                user: "alice",
                ha1: a.hex("alice:R:\(current)"),
                previousHA1: previous.map { a.hex("alice:R:\($0)") },
                latin1HA1: latin1("alice:R:\(current)"),
                previousLatin1HA1: previous.map { latin1("alice:R:\($0)") },
                standing: standing
            )
            self.cacheSecrets(env, .found(secrets))
            let field = try self.digestField(env, ha1: latin1("alice:R:\(answered)"))
            let action = gate.startRequest(try self.request(field), in: env)
            if allowed {
                guard case .allow(let record, _) = action else {
                    Issue.record("\(current)/\(String(describing: previous)): \(action)")
                    continue
                }
                #expect(record.user == "alice")
            } else {
                #expect(
                    self.seen(action)
                        == .refuse(
                            self.record("invalid-credentials", scheme: "digest"),
                            self.challenge(env, Self.wrongDigest),
                            close: false
                        )
                )
            }
        }
    }

    /// Noted once per connection and user (not a throttle lock and a store write per request);
    /// again after another user, and after a failure.
    @Test func aDigestSuccessIsNotedOncePerConnectionAndUser() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment(threshold: 100)
        self.cacheSecrets(env, self.secrets(env))
        self.cacheSecrets(env, self.secrets(env, user: "bob"), user: "bob")
        let answers = [
            ("alice", "pw"), ("alice", "pw"), ("bob", "pw"), ("bob", "pw"), ("alice", "pw"), ("alice", "wrong"),
            ("alice", "pw"),
        ]
        for (user, password) in answers {
            _ = gate.startRequest(try self.request(try self.digestField(env, user: user, password: password)), in: env)
        }
        #expect(env.credentials?.digestLoginsNoted == ["alice", "bob", "alice", "alice"])
        #expect(env.throttleCalls.filter { $0 == "succeeded" }.count == 4)
    }

    @Test func aDigestAnswerForAnotherRealmIsAWrongAnswer() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        let action = gate.startRequest(try self.request(try self.digestField(env, realm: "other")), in: env)
        let failure = AuthFailure(
            reason: .invalidCredentials,
            explanation: "the Digest answer is for another realm; answer the challenge for realm \"R\"",
            presentedScheme: "digest"
        )
        #expect(
            self.seen(action)
                == .refuse(
                    self.record("invalid-credentials", scheme: "digest"),
                    self.challenge(env, failure),
                    close: false
                )
        )
        // Counted, as a failure that cannot be recognised when repeated.
        #expect(env.throttleCalls == ["check", "begin(-)", "failed"])
    }

    @Test func aDigestAlgorithmNotOfferedIsMalformed() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        let action = gate.startRequest(try self.request(try self.digestField(env, algorithm: "SHA-256-sess")), in: env)
        let failure = AuthFailure(
            reason: .malformedCredentials,
            explanation: "the Digest algorithm SHA-256-sess is not offered here (offered: SHA-256, MD5)",
            presentedScheme: "digest"
        )
        #expect(
            self.seen(action)
                == .refuse(
                    self.record("malformed-credentials", scheme: "digest"),
                    self.challenge(env, failure),
                    close: false
                )
        )
    }

    @Test func aDigestAnswerForAnotherRequestIsABadRequest() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        self.cacheSecrets(env, self.secrets(env))
        let action = gate.startRequest(try self.request(try self.digestField(env, uri: "/b")), in: env)
        let response = Response(
            ProxyResponse(
                status: .badRequest,
                proxyError: "http_request_error",
                details: "digest-uri-mismatch",
                message:
                    "the uri parameter of the Digest answer does not name this request's target (use the request target, or its path for absolute-form requests)."
            )
        )
        #expect(
            self.seen(action) == .refuse(self.record("digest-uri-mismatch", scheme: "digest"), response, close: false)
        )
        #expect(env.throttleCalls == ["check"])
        #expect(self.outcomes(env, scheme: "digest", reason: "digest-uri-mismatch") == 1)
    }

    @Test func aConnectIsAnsweredForItsAuthority() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        self.cacheSecrets(env, self.secrets(env))
        let field = try self.digestField(env, uri: "o.test:443", method: "CONNECT")
        let connect = try self.request(field, "CONNECT o.test:443 HTTP/1.1")
        #expect(
            self.seen(gate.startRequest(connect, in: env))
                == .allow(self.record("ok", scheme: "digest", user: "alice"), authenticationInfo: true)
        )
    }

    /// Unknown and not enrolled read alike to the client; the log tells the operator which.
    @Test(arguments: [
        (DigestLookup.unknownUser, [String: String]()),
        (
            .notEnrolled(user: "alice"),
            ["user": "alice", "detail": "no-digest-secret (add one with users passwd --digest)"]
        ),
    ])
    func aUserWithoutDigestSecretsGetsTheWrongPassword407(lookup: DigestLookup, detail: [String: String]) throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        let start = gate.startRequest(try self.request(try self.digestField(env)), in: env)
        #expect(self.seen(start) == .lookUpDigestSecrets(CheckID(value: 1), name: "alice"))
        let done = gate.digestSecretsFound(CheckID(value: 1), lookup: lookup, now: t0, in: env)
        #expect(
            self.seen(done)
                == .refuse(
                    self.record("invalid-credentials", scheme: "digest"),
                    self.challenge(env, Self.wrongDigest),
                    close: false
                )
        )
        #expect(env.throttleCalls == ["check", "check", "begin(alice)", "failed"])
        var metadata = ["client": Self.address, "reason": "invalid-credentials", "scheme": "digest"]
        metadata.merge(detail) { $1 }
        #expect(env.lines == [.init(level: .info, message: "authentication failed", metadata: metadata)])
    }

    @Test func theStoreDownDuringADigestLookupGets503() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        _ = gate.startRequest(try self.request(try self.digestField(env)), in: env)
        let done = gate.digestSecretsFound(CheckID(value: 1), lookup: .unavailable, now: t0, in: env)
        guard case .refuse(let record, let response, false) = done else {
            Issue.record("\(done)")
            return
        }
        #expect(record == self.record("store-unavailable", scheme: "digest"))
        #expect(Response(response).status == 503)
    }

    /// The address was locked while the secrets were read: answers checked after that must not
    /// tell right from wrong.
    @Test func aLockoutDuringTheLookupIsAnsweredWith429() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        _ = gate.startRequest(try self.request(try self.digestField(env)), in: env)
        self.lock(env, at: t0 + .seconds(1))
        let done = gate.digestSecretsFound(CheckID(value: 1), lookup: self.secrets(env), now: t0 + .seconds(2), in: env)
        #expect(
            self.seen(done)
                == .refuse(self.record("locked-out"), Response(.lockedOut(retryAfter: .seconds(119))), close: true)
        )
        #expect(env.credentials?.digestLoginsNoted == [])
    }

    @Test func thePreviousPasswordWorksUntilItsGraceEnds() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        let field = try self.digestField(env, password: "old")
        let inGrace = AccountStanding(previousValidUntil: env.currentDate + 60)
        self.cacheSecrets(env, self.secrets(env, previous: "old", standing: inGrace))
        // Accepted, and the response will say that this secret ends in 60 s.
        var ending = self.record("ok", scheme: "digest", user: "alice")
        ending.expiresIn = 60
        #expect(
            self.seen(gate.startRequest(try self.request(field), in: env))
                == .allow(ending, authenticationInfo: true)
        )

        let over = AccountStanding(previousValidUntil: env.currentDate - 1)
        self.cacheSecrets(env, self.secrets(env, previous: "old", standing: over))
        let late = gate.startRequest(try self.request(try self.digestField(env, password: "old")), in: env)
        let failure = AuthFailure(
            reason: .credentialsNoLongerValid,
            explanation:
                "this credential is no longer valid (it has expired, was disabled or was replaced); ask for a new one",
            presentedScheme: "digest"
        )
        #expect(
            self.seen(late)
                == .refuse(self.record("rotated-out", scheme: "digest"), self.challenge(env, failure), close: false)
        )
        #expect(env.lines.last?.metadata["detail"] == "rotated-out")
    }

    @Test func aRightAnswerToAnExpiredNonceGetsAStaleChallenge() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        self.cacheSecrets(env, self.secrets(env))
        let field = try self.digestField(env)
        env.clock.advance(seconds: 61)
        let action = gate.startRequest(try self.request(field), in: env)
        let failure = AuthFailure(
            reason: .staleNonce,
            explanation: "the Digest nonce is no longer valid; answer the new challenge (stale=true)",
            presentedScheme: "digest"
        )
        let response = self.challenge(env, failure, stale: true)
        #expect(response.headers.last?.contains("stale=true") == true)
        #expect(self.seen(action) == .refuse(self.record("stale-nonce", scheme: "digest"), response, close: false))
        #expect(env.throttleCalls == ["check", "check"])
        #expect(env.challengesSent == [.staleNonce])
        #expect(env.lines.last?.metadata["detail"] == "nonce expired")
    }

    @Test func anOpaqueNotOursGetsAStaleChallenge() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment()
        self.cacheSecrets(env, self.secrets(env))
        let action = gate.startRequest(try self.request(try self.digestField(env, opaque: "0000")), in: env)
        guard case .refuse(let record, _, false) = action else {
            Issue.record("\(action)")
            return
        }
        #expect(record == self.record("stale-nonce", scheme: "digest"))
        #expect(env.lines.last?.metadata["detail"] == "opaque not issued by this proxy")
    }

    /// Five 407s to Digest answers in a row are answered; the sixth closes the connection. A
    /// success starts the count again.
    @Test func theSixthFailedDigestAnswerInARowCloses() throws {
        var gate = GateStateMachine()
        let env = FakeGateEnvironment(threshold: 100)
        self.cacheSecrets(env, self.secrets(env))
        func answer(_ password: String) throws -> Action {
            gate.startRequest(try self.request(try self.digestField(env, password: password)), in: env)
        }
        func closes(_ action: Action) -> Bool? {
            guard case .refuse(_, _, let close) = action else { return nil }
            return close
        }
        for _ in 0..<5 { #expect(closes(try answer("wrong")) == false) }
        guard case .allow = try answer("pw") else { Issue.record("not allowed"); return }
        for _ in 0..<5 { #expect(closes(try answer("wrong")) == false) }
        #expect(closes(try answer("wrong")) == true)
        #expect(
            env.lines.contains(
                .init(
                    level: .warning,
                    message: "closing a connection after repeated failed Digest answers",
                    metadata: ["client": Self.address, "failures_in_a_row": "6", "reason": "invalid-credentials"]
                )
            )
        )
        #expect(env.logKindsAsked.contains(.digestFailures))
    }
}
