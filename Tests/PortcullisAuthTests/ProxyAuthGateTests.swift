import Testing

@testable import PortcullisAuth

@Suite struct ProxyAuthGateTests {
    let gate = ProxyAuthGate(realm: "Portcullis")

    private func reason(_ values: [String]) -> AuthFailureReason? {
        if case .reject(let failure) = gate.evaluate(proxyAuthorization: values) { return failure.reason }
        return nil
    }

    @Test func basicChallengeNamesRealmAndCharset() {
        #expect(gate.challenges() == [#"Basic realm="Portcullis", charset="UTF-8""#])
    }

    @Test func realmIsAQuotedStringWithEscapes() throws {
        let gate = ProxyAuthGate(realm: #"Corp "HQ" \ proxy"#)
        #expect(gate.challenges() == [#"Basic realm="Corp \"HQ\" \\ proxy", charset="UTF-8""#])
        // Other UTF-8 is kept as is (escaping is byte-wise), and the challenge parses back.
        let realm = "a\"b\\c \u{E9}"
        let challenge = ProxyAuthGate(realm: realm).challenges()[0]
        #expect(challenge == "Basic realm=\"a\\\"b\\\\c \u{E9}\", charset=\"UTF-8\"")
        #expect(try ChallengeParser.parse(fieldValue: challenge)[0].parameter("realm") == realm)
    }

    /// `--basic-requires-tls` on a plain connection: Basic is neither challenged nor checked,
    /// and its refusal says where Basic works; other schemes are untouched.
    @Test func withoutBasicRefusesBasicNamingTheTLSAddress() {
        let plain = ProxyAuthGate(realm: "R", schemes: [.digest, .basic]).withoutBasic()
        #expect(plain.schemes == [.digest])
        #expect(plain.challenges(digest: ["Digest x"]) == ["Digest x"])
        guard case .reject(let failure) = plain.evaluate(proxyAuthorization: ["Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="])
        else {
            Issue.record("Basic was checked on a plain connection")
            return
        }
        #expect(failure.reason == .basicRequiresTLS)
        #expect(failure.explanation.contains("https://"))
        #expect(failure.explanation.contains("or Digest"))
        #expect(!failure.explanation.contains("open sesame"))
        // A gate that never offered Basic keeps calling it an unsupported scheme.
        let digestOnly = ProxyAuthGate(realm: "R", schemes: [.digest]).withoutBasic()
        guard case .reject(let other) = digestOnly.evaluate(proxyAuthorization: ["Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="])
        else {
            Issue.record("accepted")
            return
        }
        #expect(other.reason == .unsupportedScheme)
    }

    @Test func noHeaderIsMissingCredentials() {
        #expect(reason([]) == .missingCredentials)
    }

    @Test func wellFormedBasicGoesToVerification() {
        #expect(
            gate.evaluate(proxyAuthorization: ["basic   QWxhZGRpbjpvcGVuIHNlc2FtZQ=="])
                == .verifyBasic(BasicCredentials(user: "Aladdin", password: "open sesame"))
        )
    }

    @Test(arguments: ["Digest username=\"a\"", "Bearer abc", "NTLM TlRMTVNTUAABAAAA", "Negotiate YII="])
    func otherSchemesAreUnsupported(value: String) {
        guard case .reject(let failure) = gate.evaluate(proxyAuthorization: [value]) else {
            Issue.record("accepted")
            return
        }
        #expect(failure.reason == .unsupportedScheme)
        #expect(failure.explanation.contains("accepts Basic"))
    }

    @Test func bearerWhenOfferedReadsTheTokensUserAndLeavesTheRestToTheStore() {
        let gate = ProxyAuthGate(realm: "Portcullis", schemes: [.basic, .bearer])
        #expect(gate.challenges() == [#"Basic realm="Portcullis", charset="UTF-8""#, #"Bearer realm="Portcullis""#])
        let token = AccessToken(id: Array(0..<12), user: "ci", expires: 1).encoded(
            key: [UInt8](repeating: 1, count: 32)
        )
        #expect(
            gate.evaluate(proxyAuthorization: ["Bearer \(token)"])
                == .verifyBearer(BasicCredentials(user: "ci", password: token))
        )
        // Not a token of this proxy: refused before any store is asked.
        guard case .reject(let failure) = gate.evaluate(proxyAuthorization: ["Bearer abc"]) else {
            Issue.record("accepted")
            return
        }
        #expect(failure.reason == .malformedCredentials)
        #expect(failure.presentedScheme == "bearer")
    }

    @Test func malformedBasicAndGarbage() {
        #expect(reason(["Basic !!!"]) == .malformedCredentials)
        #expect(reason(["Basic"]) == .malformedCredentials)
        #expect(reason(["\"quoted\""]) == .malformedCredentials)
    }

    @Test func twoHeadersAreRefused() {
        #expect(
            reason(["Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==", "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="])
                == .malformedCredentials
        )
    }

    /// A bare token (or a password) where the scheme should be must not come back in the 407,
    /// the logs or the metrics: only registered scheme names are echoed.
    @Test(arguments: [
        String(repeating: "x", count: 40), "0123456789abcdef0123456789abcdef", "s3cret", "s3cret more", "Basic2 x",
    ])
    func anUnregisteredSchemeIsNeverEchoed(value: String) {
        guard case .reject(let failure) = gate.evaluate(proxyAuthorization: [value]) else {
            Issue.record("accepted")
            return
        }
        let first = String(value.split(separator: " ")[0])
        #expect(!failure.explanation.contains(first))
        #expect(failure.presentedScheme == "other")
    }

    @Test func aRegisteredSchemeIsNamed() {
        guard case .reject(let failure) = gate.evaluate(proxyAuthorization: ["SCRAM-SHA-256 abc"]) else {
            Issue.record("accepted")
            return
        }
        #expect(failure.presentedScheme == "scram-sha-256")
        #expect(failure.explanation.contains("scram-sha-256"))
    }
}
