import Foundation
import PortcullisAuth
import Testing

@testable import PortcullisDoctor

/// The peers of Tests/integration/test_doctor.py (Portcullis, Squid Basic and Digest, tinyproxy)
/// as recorded transcripts: the same verdicts, exit codes, outcomes and phrases, with no socket.
@Suite struct DiagnosisTests {
    typealias F = Fixture

    static let bothTargets = ["http://origin.test/x", "https://127.0.0.1:8443/"]

    /// The answer each peer gives to credentials it accepts, and its challenge.
    static let peers: [(name: String, challenge: String, scheme: String)] = [
        ("portcullis", #"Basic realm="Portcullis", charset="UTF-8""#, "Basic"),
        ("squid-basic", #"Basic realm="portcullis-test""#, "Basic"),
        ("squid-digest", #"Digest realm="portcullis-test", nonce="c3F1aWQ=", qop="auth", stale=false"#, "Digest"),
        ("tinyproxy", #"Basic realm="Tinyproxy""#, "Basic"),
    ]

    @Test(arguments: Self.peers)
    func eachPeerAcceptsGoodCredentialsOnEveryStep(peer: (name: String, challenge: String, scheme: String)) throws {
        let setup = F.setup(targets: Self.bothTargets)
        let replay = TranscriptReplay(
            setup,
            [F.opened, F.challenge(peer.challenge), F.ok, F.response(200), .handshake]
        )
        let report = try replay.complete()
        #expect(report.verdict == .ok && report.exitCode == 0)
        #expect(report.authentication?.outcome == "accepted")
        #expect(report.authentication?.scheme == peer.scheme)
        #expect(report.proxy == "http://alice:***@127.0.0.1:3128")
        #expect(report.steps.map(\.name) == DoctorSteps.names)
        #expect(report.steps.allSatisfy { $0.status == .pass }, "\(report.steps.map { ($0.name, $0.status) })")
        #expect(report.targets.map(\.status) == [.pass, .pass])
        #expect(report.targets.map(\.httpStatus) == [200, 200])
        #expect(report.targets.allSatisfy { $0.viaProxy })
        // The http target is the authentication step's own request: fetched once.
        #expect(replay.requests.map(\.method) == ["GET", "GET", "CONNECT"])
        #expect(replay.requests.last?.newConnection == true)
        if peer.scheme == "Digest" {
            let digest = try #require(report.challenges.first)
            #expect(digest.realm == "portcullis-test" && digest.params["qop"] == "auth")
            #expect(digest.field == "Proxy-Authenticate")
            // One nonce answered twice: nc=1 for the GET, nc=2 for the CONNECT.
            let counts = replay.requests.compactMap { request -> Int? in
                if case .digest(_, let challenge, let nc) = request.credentials, challenge.nonce == "c3F1aWQ=" {
                    return nc
                }
                return nil
            }
            #expect(counts == [1, 2])
        }
    }

    @Test func portcullisRejectionCarriesItsReasonAndStatus() throws {
        let report = try TranscriptReplay(
            F.setup(),
            [
                F.opened, F.challenge(#"Basic realm="Portcullis""#),
                F.response(
                    407,
                    ("Proxy-Authenticate", #"Basic realm="Portcullis""#),
                    ("Proxy-Status", #"portcullis; error=http_request_denied; details="invalid-credentials""#)
                ),
            ]
        ).complete()
        #expect((report.verdict, report.exitCode, F.outcome(report)) == (.authFailed, 2, "rejected"))
        #expect(report.authentication?.proxyReason == "invalid-credentials")
        #expect(report.authentication?.status == 407)
        #expect(report.authentication?.scheme == "Basic")
        let step = try #require(F.step(report, "authentication"))
        #expect(step.status == .fail && step.message.contains("rejected the credentials") && step.fix != nil)
        #expect(F.step(report, "http")?.status == .skip)
    }

    @Test func squidRejectionNamesItsErrorPage() throws {
        let squid407 = F.response(
            407,
            ("Proxy-Authenticate", #"Basic realm="portcullis-test""#),
            ("X-Squid-Error", "ERR_CACHE_ACCESS_DENIED 0")
        )
        let report = try TranscriptReplay(F.setup(), [F.opened, squid407, squid407]).complete()
        #expect((report.verdict, F.outcome(report)) == (.authFailed, "rejected"))
        #expect(report.authentication?.proxyReason == "ERR_CACHE_ACCESS_DENIED")
        #expect(F.step(report, "authentication")?.message.contains("proxy says: ERR_CACHE_ACCESS_DENIED") == true)
    }

    @Test func squidDigestRejectionWithAFreshNonceIsRejectedNotStale() throws {
        let report = try TranscriptReplay(
            F.setup(),
            [
                F.opened, F.challenge(#"Digest realm="portcullis-test", nonce="n1", qop="auth", stale=false"#),
                F.challenge(#"Digest realm="portcullis-test", nonce="n2", qop="auth", stale=false"#),
            ]
        ).complete()
        #expect((report.verdict, F.outcome(report)) == (.authFailed, "rejected"))
        #expect(report.authentication?.scheme == "Digest")
    }

    @Test func tinyproxysWrong401IsRejectedAndNamedNonconformant() throws {
        // tinyproxy 1.11: 407 without credentials, 401 + WWW-Authenticate to wrong ones.
        let report = try TranscriptReplay(
            F.setup(),
            [
                F.opened, F.challenge(#"Basic realm="Tinyproxy""#),
                F.response(401, ("WWW-Authenticate", #"Basic realm="Tinyproxy""#)),
            ]
        ).complete()
        #expect((report.verdict, report.exitCode, F.outcome(report)) == (.authFailed, 2, "rejected"))
        let step = try #require(F.step(report, "authentication"))
        #expect(step.details["nonconformant_401"] == .bool(true))
        #expect(step.message.contains("407"))
    }

    @Test func anOrigins401BehindAProxyIsNotTheProxysRefusal() throws {
        let report = try TranscriptReplay(
            F.setup(),
            [
                F.opened, F.challenge(#"Basic realm="proxy""#),
                F.response(401, ("WWW-Authenticate", #"Basic realm="origin""#), ("Via", "1.1 proxy")),
            ]
        ).complete()
        #expect((report.verdict, F.outcome(report)) == (.ok, "accepted"))
        #expect(report.targets.first?.httpStatus == 401)
    }

    @Test func withoutCredentialsNothingIsSentAfterTheChallenge() throws {
        let replay = TranscriptReplay(
            F.setup(proxy: "http://127.0.0.1:3128"),
            [F.opened, F.challenge(#"Basic realm="Portcullis""#)]
        )
        let report = try replay.complete()
        #expect((report.verdict, report.exitCode, F.outcome(report)) == (.authFailed, 2, "no-credentials"))
        #expect(F.step(report, "authentication")?.fix?.contains("USER:PASSWORD@") == true)
        #expect(replay.requests.count == 1)
    }

    @Test func aProxyThatRefusesTheConnectionIsUnreachable() throws {
        let refused = ProbeError(kind: .refused, message: "cannot connect to 127.0.0.1:3128: connection refused")
        let report = try TranscriptReplay(F.setup(), [.failed(refused)]).complete()
        #expect((report.verdict, report.exitCode, F.outcome(report)) == (.proxyUnreachable, 1, nil))
        let step = try #require(F.step(report, "reachability"))
        #expect(step.status == .fail && step.message.contains("connection refused") && step.fix != nil)
        #expect(report.steps.filter { $0.status == .skip }.count == 5)
    }

    @Test(arguments: [
        [("Proxy-Status", #"portcullis; error=destination_ip_prohibited; details="destination-denied""#)],
        [("X-Squid-Error", "ERR_ACCESS_DENIED 0")],
    ])
    func aPolicy403AfterGoodCredentialsIsDenied(fields: [(String, String)]) throws {
        let forbidden = ProbeOutcome.response(RecordedResponse(status: 403, reason: "Forbidden", fields: fields))
        let report = try TranscriptReplay(F.setup(), [F.opened, F.challenge(#"Basic realm="r""#), forbidden])
            .complete()
        #expect((report.verdict, report.exitCode, F.outcome(report)) == (.denied, 3, "denied"))
        let step = try #require(F.step(report, "authentication"))
        #expect(step.status == .fail && step.message.contains("not a password problem"))
    }

    @Test(arguments: ["portcullis", "squid", "tinyproxy"])
    func aConnectPortNotAllowedIsDeniedOnTheTunnelStep(peer: String) throws {
        let refusal: ProbeOutcome =
            peer == "squid" ? F.response(403, ("X-Squid-Error", "ERR_ACCESS_DENIED 0")) : F.response(403)
        let replay = TranscriptReplay(
            F.setup(targets: Self.bothTargets),
            [F.opened, F.challenge(#"Basic realm="r""#), F.ok, refusal]
        )
        let report = try replay.complete()
        #expect((report.verdict, report.exitCode, F.outcome(report)) == (.denied, 3, "accepted"))
        let tunnel = try #require(F.step(report, "tunnel"))
        #expect(tunnel.status == .fail && tunnel.message.contains("refused CONNECT"))
        #expect(F.step(report, "http")?.status == .pass)
        let https = try #require(report.targets.first { $0.url.hasPrefix("https://") })
        #expect(https.status == .fail && https.httpStatus == 403)
        // No handshake is attempted through a refused tunnel.
        #expect(!replay.transcript.records.contains { $0.action == .handshake(serverName: "127.0.0.1") })
    }

    @Test func squidDigestWithSchemeBasicIsAMismatchAndSendsNoCredentials() throws {
        let replay = TranscriptReplay(
            F.setup(scheme: .basic),
            [F.opened, F.challenge(#"Digest realm="portcullis-test", nonce="n", qop="auth""#)]
        )
        let report = try replay.complete()
        #expect((report.verdict, report.exitCode, F.outcome(report)) == (.authFailed, 2, "scheme-mismatch"))
        #expect(F.step(report, "scheme")?.message.contains("will never work here") == true)
        #expect(replay.requests.allSatisfy { $0.credentials == .none })
    }

    @Test func theTextOfARejectionHasTheVerdictLineStepLinesAndAFix() throws {
        let report = try TranscriptReplay(
            F.setup(),
            [F.opened, F.challenge(#"Basic realm="r""#), F.challenge(#"Basic realm="r""#)]
        ).complete()
        let lines = report.text().split(separator: "\n").map(String.init)
        #expect(lines.first?.hasPrefix("portcullis doctor: FAIL (exit 2) — ") == true)
        #expect(lines.contains { $0.hasPrefix("  pass  configuration") })
        #expect(lines.contains { $0.hasPrefix("  fail  authentication") })
        #expect(lines.contains { $0.trimmingCharacters(in: .whitespaces).hasPrefix("fix: ") })
        #expect(report.verdictLine == lines.first)
    }

    @Test func theTranscriptHoldsNoPasswordAndNoAuthorizationValue() throws {
        let replay = TranscriptReplay(
            F.setup(targets: Self.bothTargets),
            [F.opened, F.challenge(#"Basic realm="r""#), F.ok, F.response(200), .handshake]
        )
        let report = try replay.complete()
        let token = Data("alice:\(F.password)".utf8).base64EncodedString()
        for text in ["\(replay.transcript)", report.json(), report.text()] {
            #expect(!text.contains(F.password) && !text.contains(token.dropLast(2)))
        }
        #expect(replay.requests.dropFirst().allSatisfy { $0.credentials == .basic(user: "alice") })
    }
}

enum DoctorSteps {
    static let names = ["configuration", "reachability", "challenge", "scheme", "authentication", "http", "tunnel"]
}
