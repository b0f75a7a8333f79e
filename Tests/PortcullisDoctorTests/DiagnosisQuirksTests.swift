import PortcullisAuth
import Testing

@testable import PortcullisDoctor

/// The misbehaving proxies of Tests/integration/test_doctor_quirks.py, and the configuration
/// cases of test_doctor.py, as recorded transcripts.
@Suite struct DiagnosisQuirksTests {
    typealias F = Fixture

    static let carol = "http://carol:S%C3%A9same@127.0.0.1:3128"

    func digestRequests(_ replay: TranscriptReplay) -> [(challenge: DigestChallenge, nc: Int)] {
        replay.requests.compactMap {
            if case .digest(_, let challenge, let nc) = $0.credentials { return (challenge, nc) }
            return nil
        }
    }

    @Test func negotiateAndNTLMOnlyIsASchemeMismatchForABasicClientWithClientAdvice() throws {
        let replay = TranscriptReplay(
            F.setup(proxy: Self.carol, scheme: .basic),
            [F.opened, F.challenge("Negotiate", "NTLM")]
        )
        let report = try replay.complete()
        #expect((report.verdict, report.exitCode, F.outcome(report)) == (.authFailed, 2, "scheme-mismatch"))
        let step = try #require(F.step(report, "scheme"))
        #expect(step.message.contains("proxy offers only Negotiate, NTLM; Basic credentials will never work here"))
        for advice in [
            "--proxy-negotiate", "--proxy-ntlm", "jdk.http.auth.tunneling.disabledSchemes", "Python requests",
            "--scheme auto",
        ] {
            #expect(step.fix?.contains(advice) == true, "\(advice)")
        }
        #expect(report.challenges.map(\.scheme) == ["Negotiate", "NTLM"])
        #expect(replay.requests.allSatisfy { $0.credentials == .none })
    }

    @Test func a407WithoutAChallengeIsNamed() throws {
        let report = try TranscriptReplay(F.setup(proxy: Self.carol), [F.opened, F.response(407)]).complete()
        #expect((report.verdict, F.outcome(report)) == (.authFailed, "scheme-mismatch"))
        let step = try #require(F.step(report, "challenge"))
        #expect(step.status == .warn && step.message.contains("without a usable Proxy-Authenticate"))
    }

    @Test(arguments: ["MD5", "SHA-256", "SHA-512-256", "MD5-sess", "SHA-256-sess", "SHA-512-256-sess"])
    func eachDigestAlgorithmIsAnsweredAndNamed(algorithm: String) throws {
        let challenge = #"Digest realm="r", nonce="n0nce/abc+def==", qop="auth", algorithm=\#(algorithm), opaque="op""#
        let replay = TranscriptReplay(F.setup(proxy: Self.carol), [F.opened, F.challenge(challenge), F.ok])
        let report = try replay.complete()
        #expect((report.verdict, F.outcome(report)) == (.ok, "accepted"))
        #expect(report.authentication?.scheme == "Digest")
        #expect(F.step(report, "authentication")?.message.contains("Digest \(algorithm)") == true)
        let answer = try #require(self.digestRequests(replay).first)
        #expect(answer.challenge.algorithmToken == algorithm && answer.challenge.opaque == "op" && answer.nc == 1)
    }

    @Test func userhashIsAnsweredWithUserhash() throws {
        let challenge = #"Digest realm="hashed", nonce="nonce-u", qop="auth", algorithm=SHA-256, userhash=true"#
        let replay = TranscriptReplay(F.setup(proxy: Self.carol), [F.opened, F.challenge(challenge), F.ok])
        let report = try replay.complete()
        #expect((report.verdict, F.outcome(report)) == (.ok, "accepted"))
        #expect(F.step(report, "scheme")?.message.contains("userhash") == true)
        #expect(self.digestRequests(replay).first?.challenge.userhash == true)
    }

    @Test func severalChallengesInOneFieldPickTheStrongestDigest() throws {
        let field =
            #"Basic realm="a, b", Digest realm="a, b", nonce="n2", qop="auth", algorithm=MD5, "#
            + #"Digest realm="a, b", nonce="n2", qop="auth", algorithm=SHA-256"#
        let replay = TranscriptReplay(F.setup(proxy: Self.carol), [F.opened, F.challenge(field), F.ok])
        let report = try replay.complete()
        #expect((report.verdict, F.outcome(report)) == (.ok, "accepted"))
        #expect(report.challenges.map(\.scheme) == ["Basic", "Digest", "Digest"])
        #expect(F.step(report, "authentication")?.message.contains("Digest SHA-256") == true)
        #expect(F.step(report, "scheme")?.message.contains("Basic is offered too") == true)
    }

    @Test func oneStaleNonceIsRetriedWithTheFreshNonceWithoutAsking() throws {
        let replay = TranscriptReplay(
            F.setup(proxy: Self.carol),
            [
                F.opened, F.challenge(#"Digest realm="stale-once", nonce="old", qop="auth""#),
                F.challenge(#"Digest realm="stale-once", nonce="new", qop="auth", stale=true"#), F.ok,
            ]
        )
        let report = try replay.complete()
        #expect((report.verdict, F.outcome(report)) == (.ok, "accepted"))
        #expect(F.step(report, "authentication")?.message.contains("after one stale nonce") == true)
        #expect(self.digestRequests(replay).map { "\($0.challenge.nonce) \($0.nc)" } == ["old 1", "new 1"])
    }

    @Test func staleForeverIsAChallengeLoopAfterOneRetry() throws {
        let stale = { (n: Int) in F.challenge(#"Digest realm="loop", nonce="n\#(n)", qop="auth", stale=true"#) }
        let replay = TranscriptReplay(
            F.setup(proxy: Self.carol),
            [F.opened, F.challenge(#"Digest realm="loop", nonce="n0", qop="auth""#), stale(1), stale(2)]
        )
        let report = try replay.complete()
        #expect((report.verdict, report.exitCode, F.outcome(report)) == (.authFailed, 2, "challenge-loop"))
        #expect(F.step(report, "authentication")?.message.contains("challenge loop") == true)
        #expect(replay.requests.count == 3)
    }

    @Test func aRealmThatChangesIsNamed() throws {
        let report = try TranscriptReplay(
            F.setup(proxy: Self.carol),
            [F.opened, F.challenge(#"Basic realm="first""#), F.challenge(#"Basic realm="second""#)]
        ).complete()
        #expect((report.verdict, F.outcome(report)) == (.authFailed, "realm-changed"))
        let step = try #require(F.step(report, "authentication"))
        #expect(step.message.contains(#"from "first" to "second""#))
        #expect(step.details["realm_before"] == .string("first") && step.details["realm_after"] == .string("second"))
        #expect(report.authentication?.scheme == "Basic")
    }

    @Test func aProxyThatNeverSeesTheCredentialsIsALoopNotAWrongPassword() throws {
        let again = F.response(
            407,
            ("Proxy-Authenticate", #"Basic realm="r""#),
            ("Proxy-Status", #"portcullis; details="missing-credentials""#)
        )
        let report = try TranscriptReplay(F.setup(proxy: Self.carol), [F.opened, again, again]).complete()
        #expect((report.verdict, F.outcome(report)) == (.authFailed, "challenge-loop"))
        #expect(F.step(report, "authentication")?.fix?.contains("strips Proxy-Authorization") == true)
    }

    @Test func anHTTPSProxyReportsItsTLSTimeAndAnUntrustedCertificate() throws {
        let tlsProxy = "https://carol:S%C3%A9same@127.0.0.1:3129"
        let opened = ProbeOutcome.opened(.init(dnsMs: 0, connectMs: 0.3, address: "127.0.0.1"), tlsMs: 4.5)
        let report = try TranscriptReplay(
            F.setup(proxy: tlsProxy),
            [opened, F.challenge(#"Basic realm="tls""#), F.ok]
        ).complete()
        #expect((report.verdict, F.outcome(report)) == (.ok, "accepted"))
        #expect(report.proxy?.hasPrefix("https://carol:***@127.0.0.1:") == true)
        #expect(F.step(report, "reachability")?.details["tls_ms"] == .number(4.5))

        let untrusted = ProbeError(kind: .tlsUntrusted, message: "the certificate of 127.0.0.1 is not trusted here")
        let refused = try TranscriptReplay(F.setup(proxy: tlsProxy), [.failed(untrusted)]).complete()
        #expect((refused.verdict, refused.exitCode, F.outcome(refused)) == (.proxyUnreachable, 1, nil))
        #expect(F.step(refused, "reachability")?.message.contains("not trusted") == true)
    }

    @Test func aTunnelThatClosedAfterTheAuthenticationStepIsOpenedAgain() throws {
        let gone = ProbeError(kind: .closed, message: "the tunnel closed before the TLS handshake")
        let replay = TranscriptReplay(
            F.setup(targets: ["https://127.0.0.1:8443/"]),
            [F.opened, F.challenge(#"Basic realm="r""#), F.response(200), .failed(gone), F.response(200), .handshake]
        )
        let report = try replay.complete()
        #expect((report.verdict, F.outcome(report)) == (.ok, "accepted"))
        #expect(replay.requests.map(\.newConnection) == [false, false, true])
    }

    // MARK: - Configuration (no network)

    @Test func aMalformedPercentEncodingIsAConfigErrorBeforeAnyNetworkStep() throws {
        let replay = TranscriptReplay(F.setup(proxy: "http://alice:bad%zz@127.0.0.1:3128"), [])
        let report = try replay.complete()
        #expect((report.verdict, report.exitCode, F.outcome(report)) == (.configError, 1, nil))
        let step = try #require(F.step(report, "configuration"))
        #expect(step.status == .fail && step.message.contains("percent"))
        #expect(report.steps.dropFirst().allSatisfy { $0.status == .skip })
        #expect(replay.transcript.records.isEmpty)
    }

    @Test func anUnencodedAtInThePasswordWorksWithAWarning() throws {
        let report = try TranscriptReplay(
            F.setup(proxy: "http://at:p@ss@127.0.0.1:3128"),
            [F.opened, F.challenge(#"Basic realm="r""#), F.ok]
        ).complete()
        #expect((report.verdict, F.outcome(report)) == (.ok, "accepted"))
        let step = try #require(F.step(report, "configuration"))
        #expect(step.status == .warn && "\(step.message) \(step.fix ?? "")".contains("%40"))
        #expect(report.proxy == "http://at:***@127.0.0.1:3128")
    }

    @Test func noProxyBypassesATargetAndTheOtherGoesThrough() throws {
        let setup = F.setup(
            proxy: nil,
            targets: ["http://localhost:8080/text", "http://127.0.0.1:8080/text"],
            environment: ["HTTP_PROXY": "http://alice:pw@127.0.0.1:3128", "NO_PROXY": "localhost"]
        )
        let replay = TranscriptReplay(setup, [F.opened, F.challenge(#"Basic realm="r""#), F.ok])
        let report = try replay.complete()
        #expect((report.verdict, F.outcome(report)) == (.ok, "accepted"))
        let bypassed = try #require(report.targets.first { $0.url == "http://localhost:8080/text" })
        #expect(!bypassed.viaProxy && bypassed.message.contains("NO_PROXY"))
        let through = try #require(report.targets.first { $0.url == "http://127.0.0.1:8080/text" })
        #expect(through.viaProxy && through.status == .pass)
        #expect(replay.requests.map(\.requestTarget) == ["http://127.0.0.1:8080/text", "http://127.0.0.1:8080/text"])
    }

    // MARK: - The transcript as recorded

    @Test func aRecordedTranscriptGivesTheReportAndAnotherSetupDiverges() throws {
        let target = try #require(DoctorSetup.parseTarget("http://origin.test/x"))
        var transcript = ProbeTranscript()
        transcript.append(.open, F.opened, ms: 0.3)
        transcript.append(.send(ProbeRequest(target: target, credentials: .none)), F.challenge(#"Basic realm="r""#))
        transcript.append(.send(ProbeRequest(target: target, credentials: .basic(user: "alice"))), F.ok, ms: 2)
        let report = try #require(Diagnosis.report(F.setup(), transcript))
        #expect((report.verdict, F.outcome(report)) == (.ok, "accepted"))
        #expect(F.step(report, "authentication")?.elapsedMs == 2)
        // The same records for a user "bob": the third is not what diagnosis would send.
        let bob = F.setup(proxy: "http://bob:pw@127.0.0.1:3128")
        guard case .diverged(let index, _) = Diagnosis.next(bob, transcript) else {
            Issue.record("a transcript of another user's requests was accepted")
            return
        }
        #expect(index == 2)
    }
}
