import Foundation
import PortcullisAuth
import PortcullisKerberos
import Testing

@testable import PortcullisDoctor

/// NTLM and Negotiate as recorded transcripts: the legs on one connection, the scheme `auto`
/// picks, and the message and fix of each failure test_doctor_negotiate.py meets against the
/// real Portcullis and the test KDC (and those it cannot stage: clock skew, NTLMv1, a proxy that
/// drops the connection).
@Suite struct DiagnosisNegotiateNTLMTests {
    typealias F = Fixture

    static let realm = "PORTCULLIS.TEST"
    static let alice = "alice@PORTCULLIS.TEST"

    /// A CHALLENGE as Portcullis' acceptor makes it.
    static let challengeBytes: [UInt8] = {
        var acceptor = NTLMAcceptor(settings: .init(netbiosDomainName: "PORTCULLIS", netbiosComputerName: "PROXY"))
        var random = SystemRandomNumberGenerator()
        let now = NTLMFileTime(unixMilliseconds: 1_700_000_000_000)
        guard
            case .sendChallenge(let bytes) = acceptor.messageReceived(
                NTLMClient().negotiate(),
                now: now,
                random: &random
            )
        else { return [] }
        return bytes
    }()

    static let offers = F.challenge("Negotiate", "NTLM", #"Basic realm="Portcullis", charset="UTF-8""#)
    static let ntlmChallenge = F.response(
        407,
        ("Proxy-Authenticate", "NTLM " + Data(challengeBytes).base64EncodedString()),
        ("Proxy-Status", #"portcullis; details="continue""#)
    )
    static let ticket = ProbeOutcome.kerberos(.token(client: alice, complete: false))
    static let verified = ProbeOutcome.kerberos(.established(client: alice))
    /// A 200 carrying the proxy's last Negotiate token ("ok").
    static let acceptedWithToken = F.response(200, ("Proxy-Authenticate", "Negotiate b2s="), ("Via", "1.1 proxy"))

    static func kerberosFailed(_ reason: NegotiateInitiatorFailureReason, _ detail: String) -> ProbeOutcome {
        .kerberos(.failed(NegotiateInitiatorFailure(reason: reason, detail: detail)))
    }

    static let noTicket = kerberosFailed(
        .noTicket,
        "No Kerberos credentials available (default cache: FILE:/tmp/krb5cc_1000)"
    )

    static func refusal(_ reason: String) -> ProbeOutcome {
        F.response(
            407,
            ("Proxy-Authenticate", "Negotiate"),
            ("Proxy-Authenticate", "NTLM"),
            ("Proxy-Authenticate", #"Basic realm="Portcullis""#),
            ("Proxy-Status", #"portcullis; error=http_request_denied; details="\#(reason)""#)
        )
    }

    func credentials(_ replay: TranscriptReplay) -> [ProbeRequest.Credentials] { replay.requests.map(\.credentials) }

    // MARK: - Negotiate

    @Test func aTicketIsAcceptedAndTheProxysFinalTokenVerified() throws {
        let replay = TranscriptReplay(
            F.setup(proxy: "http://localhost:3128"),
            [F.opened, Self.offers, Self.ticket, Self.acceptedWithToken, Self.verified]
        )
        let report = try replay.complete()
        #expect((report.verdict, report.exitCode, F.outcome(report)) == (.ok, 0, "accepted"))
        #expect(report.authentication?.scheme == "Negotiate")
        #expect(F.step(report, "scheme")?.message.contains("ticket of \(Self.alice)") == true)
        let step = try #require(F.step(report, "authentication"))
        #expect(step.status == .pass && step.message.contains("final token verified"))
        #expect(step.details["mutual_authentication"] == .bool(true))
        #expect(report.summary.contains("user \"\(Self.alice)\" (Negotiate)"))
        #expect(self.credentials(replay) == [.none, .negotiate])
        let kerberos = replay.transcript.records.compactMap { record -> ProbeAction? in
            if case .kerberos = record.action { return record.action }
            return nil
        }
        #expect(
            kerberos == [
                .kerberos(host: "localhost", token: nil), .kerberos(host: "localhost", token: Array("ok".utf8)),
            ]
        )
    }

    @Test func noFinalTokenStillPassesAndSaysSo() throws {
        let report = try TranscriptReplay(
            F.setup(proxy: "http://localhost:3128", scheme: .negotiate),
            [F.opened, Self.offers, Self.ticket, F.ok]
        ).complete()
        #expect((report.verdict, F.outcome(report)) == (.ok, "accepted"))
        #expect(F.step(report, "authentication")?.message.contains("no final token to verify") == true)
    }

    @Test func aFinalTokenThatDoesNotVerifyFails() throws {
        let report = try TranscriptReplay(
            F.setup(proxy: "http://localhost:3128"),
            [
                F.opened, Self.offers, Self.ticket, Self.acceptedWithToken,
                Self.kerberosFailed(.gssFailure, "A token was invalid"),
            ]
        ).complete()
        #expect((report.verdict, report.exitCode, F.outcome(report)) == (.authFailed, 2, "kerberos-failed"))
        #expect(report.authentication?.clientReason == "mutual-auth-failed")
        #expect(F.step(report, "authentication")?.message.contains("mutual authentication failed") == true)
    }

    @Test func noTicketAndNoOtherCredentialsSaysRunKinit() throws {
        let replay = TranscriptReplay(F.setup(proxy: "http://localhost:3128"), [F.opened, Self.offers, Self.noTicket])
        let report = try replay.complete()
        #expect((report.verdict, report.exitCode, F.outcome(report)) == (.authFailed, 2, "no-credentials"))
        #expect(report.authentication?.clientReason == "no-ticket")
        let step = try #require(F.step(report, "authentication"))
        #expect(step.message.contains("no Kerberos ticket") && step.fix?.contains("kinit") == true)
        #expect(replay.requests.count == 1)
    }

    @Test func autoWithoutATicketAnswersWithNTLMWhenCredentialsAreGiven() throws {
        let replay = TranscriptReplay(
            F.setup(proxy: "http://bob:Ntlm-pa55@localhost:3128"),
            [F.opened, Self.offers, Self.noTicket, Self.ntlmChallenge, F.ok]
        )
        let report = try replay.complete()
        #expect((report.verdict, F.outcome(report)) == (.ok, "accepted"))
        #expect(report.authentication?.scheme == "NTLM")
        #expect(F.step(report, "scheme")?.message.contains("there is no Kerberos ticket") == true)
        #expect(
            self.credentials(replay) == [
                .none, .ntlmNegotiate, .ntlmAuthenticate(user: "bob", domain: "", challenge: Self.challengeBytes),
            ]
        )
        #expect(replay.requests.map(\.connection) == [.reuse, .reuse, .same])
        #expect(F.step(report, "authentication")?.message.contains("2 legs on one connection") == true)
    }

    @Test func anExpiredTicketSaysKinitAgain() throws {
        let report = try TranscriptReplay(
            F.setup(proxy: "http://bob:pw@localhost:3128", scheme: .negotiate),
            [F.opened, Self.offers, Self.kerberosFailed(.ticketExpired, "The referenced credential has expired")]
        ).complete()
        #expect((report.verdict, F.outcome(report)) == (.authFailed, "kerberos-failed"))
        #expect(report.authentication?.clientReason == "ticket-expired")
        let step = try #require(F.step(report, "authentication"))
        #expect(step.message.contains("has expired") && step.fix?.contains("kinit") == true)
    }

    @Test func aProxyNamedByItsAddressIsToldToUseTheHostName() throws {
        let detail = "Server HTTP/127.0.0.1@PORTCULLIS.TEST not found in Kerberos database"
        let report = try TranscriptReplay(
            F.setup(proxy: "http://127.0.0.1:3128"),
            [F.opened, Self.offers, Self.kerberosFailed(.noServicePrincipal, detail)]
        ).complete()
        #expect((report.verdict, F.outcome(report)) == (.authFailed, "kerberos-failed"))
        #expect(report.authentication?.clientReason == "no-service-principal")
        let step = try #require(F.step(report, "authentication"))
        #expect(step.message.contains("named by its IP address 127.0.0.1") && step.message.contains(detail))
        #expect(step.fix?.contains("host name its HTTP/ principal was made for") == true)
    }

    @Test func aHostWithoutAPrincipalIsNamed() throws {
        let report = try TranscriptReplay(
            F.setup(proxy: "http://proxy.test:3128"),
            [F.opened, Self.offers, Self.kerberosFailed(.noServicePrincipal, "Server not found in Kerberos database")]
        ).complete()
        let step = try #require(F.step(report, "authentication"))
        #expect(step.message.contains("no service principal HTTP/proxy.test"))
        #expect(step.fix?.contains("add HTTP/proxy.test") == true)
    }

    @Test(arguments: [
        (NegotiateInitiatorFailureReason.clockSkew, "Clock skew too great", "NTP"),
        (.kdcUnreachable, "Cannot contact any KDC for realm 'PORTCULLIS.TEST'", "krb5.conf"),
        (.gssFailure, "Message stream modified", "klist"),
    ])
    func eachKerberosFailureHasItsFix(reason: NegotiateInitiatorFailureReason, detail: String, fix: String) throws {
        let report = try TranscriptReplay(
            F.setup(proxy: "http://localhost:3128"),
            [F.opened, Self.offers, Self.kerberosFailed(reason, detail)]
        ).complete()
        #expect((report.verdict, report.exitCode, F.outcome(report)) == (.authFailed, 2, "kerberos-failed"))
        #expect(report.authentication?.clientReason == reason.rawValue)
        let step = try #require(F.step(report, "authentication"))
        #expect(step.message.contains(detail) && step.fix?.contains(fix) == true, "\(step.message) / \(step.fix ?? "")")
    }

    @Test func aProxyWhoseKeytabLacksTheKeyIsNamedAsTheProxysProblem() throws {
        let report = try TranscriptReplay(
            F.setup(proxy: "http://localhost:3128"),
            [F.opened, Self.offers, Self.ticket, Self.refusal("no-keytab-key")]
        ).complete()
        #expect((report.verdict, F.outcome(report)) == (.authFailed, "rejected"))
        #expect(report.authentication?.proxyReason == "no-keytab-key")
        let step = try #require(F.step(report, "authentication"))
        #expect(step.message.contains("its keytab holds no key") && step.message.contains("HTTP/localhost"))
        #expect(step.fix?.contains("the proxy's administrator") == true && step.fix?.contains("--keytab") == true)
    }

    @Test func negotiateNotOfferedSaysWhatIs() throws {
        let replay = TranscriptReplay(
            F.setup(proxy: "http://localhost:3128", scheme: .negotiate),
            [F.opened, F.challenge(#"Basic realm="Portcullis""#)]
        )
        let report = try replay.complete()
        #expect((report.verdict, F.outcome(report)) == (.authFailed, "scheme-mismatch"))
        #expect(
            F.step(report, "scheme")?.message.contains("offers only Basic; Negotiate credentials will never work")
                == true
        )
        #expect(replay.requests.count == 1)
    }

    // MARK: - NTLM

    @Test(arguments: [
        ("invalid-credentials", "rejected", "users passwd NAME --ntlm"),
        ("ntlm-v1-refused", "rejected", "NTLMv2"),
        ("clock-skew", "rejected", "NTP"),
        ("unexpected-message", "handshake-interrupted", "NTLM authenticates a connection"),
        ("bad-mic", "rejected", "rewrites Proxy-Authorization"),
        ("malformed-credentials", "malformed", "damaged"),
    ])
    func eachNTLMRefusalHasItsFix(reason: String, outcome: String, fix: String) throws {
        let replay = TranscriptReplay(
            F.setup(proxy: "http://bob:wrong@localhost:3128", scheme: .ntlm),
            [F.opened, Self.offers, Self.ntlmChallenge, Self.refusal(reason)]
        )
        let report = try replay.complete()
        #expect((report.verdict, report.exitCode, F.outcome(report)) == (.authFailed, 2, outcome))
        #expect(report.authentication?.proxyReason == reason && report.authentication?.scheme == "NTLM")
        #expect(F.step(report, "authentication")?.fix?.contains(fix) == true)
        #expect(self.credentials(replay).count == 3)
    }

    @Test func aConnectionClosedBetweenTheLegsIsNamed() throws {
        let closed = ProbeError(
            kind: .closed,
            message: "the connection closed before the next leg of the handshake could be sent on it"
        )
        let report = try TranscriptReplay(
            F.setup(proxy: "http://bob:pw@localhost:3128", scheme: .ntlm),
            [F.opened, Self.offers, Self.ntlmChallenge, .failed(closed)]
        ).complete()
        #expect((report.verdict, report.exitCode, F.outcome(report)) == (.authFailed, 2, "handshake-interrupted"))
        let step = try #require(F.step(report, "authentication"))
        #expect(step.message.contains("does not keep the connection"))
        #expect(step.fix?.contains("cannot work through") == true)
    }

    @Test func ntlmWithoutAUserSaysPassUser() throws {
        let replay = TranscriptReplay(
            F.setup(proxy: "http://localhost:3128", scheme: .ntlm),
            [F.opened, Self.offers]
        )
        let report = try replay.complete()
        #expect((report.verdict, F.outcome(report)) == (.authFailed, "no-credentials"))
        #expect(F.step(report, "authentication")?.fix?.contains("--user") == true)
        #expect(replay.requests.count == 1)
    }

    @Test func aNonASCIIPasswordWarnsAboutCurl() throws {
        let report = try TranscriptReplay(
            F.setup(proxy: "http://carol:S%C3%A9same@localhost:3128", scheme: .ntlm),
            [F.opened, Self.offers, Self.ntlmChallenge, F.ok]
        ).complete()
        #expect((report.verdict, report.exitCode, F.outcome(report)) == (.ok, 0, "accepted"))
        let step = try #require(F.step(report, "authentication"))
        #expect(step.status == .warn && step.message.contains("curl") && step.message.contains("UTF-16"))
        #expect(step.fix?.contains("ASCII password") == true)
    }

    @Test func aDomainIsTakenFromTheUserName() throws {
        var options = DoctorOptions()
        options.proxy = "http://localhost:3128"
        options.user = #"CORP\bob"#
        options.password = "pw"
        options.targets = ["http://origin.test/x"]
        options.scheme = .ntlm
        let replay = TranscriptReplay(
            DoctorSetup.resolve(options).setup,
            [F.opened, Self.offers, Self.ntlmChallenge, F.ok]
        )
        #expect(try replay.complete().verdict == .ok)
        #expect(
            self.credentials(replay).last
                == .ntlmAuthenticate(user: "bob", domain: "CORP", challenge: Self.challengeBytes)
        )
    }

    @Test func everyTargetAfterwardsUsesTheBoundConnectionOrAHandshakeOfItsOwn() throws {
        let replay = TranscriptReplay(
            F.setup(
                proxy: "http://bob:pw@localhost:3128",
                targets: ["http://origin.test/x", "http://origin.test/y", "https://127.0.0.1:8443/"],
                scheme: .ntlm
            ),
            [
                F.opened, Self.offers, Self.ntlmChallenge, F.ok,
                // /y on the connection bob proved: no credentials needed.
                F.ok,
                // The tunnel: a connection of its own, so a handshake of its own.
                Self.ntlmChallenge, F.response(200), .handshake,
            ]
        )
        let report = try replay.complete()
        #expect((report.verdict, F.outcome(report)) == (.ok, "accepted"))
        #expect(report.targets.map(\.status) == [.pass, .pass, .pass])
        #expect(replay.requests.map(\.connection) == [.reuse, .reuse, .same, .reuse, .new, .same])
        #expect(replay.requests.map(\.method) == ["GET", "GET", "GET", "GET", "CONNECT", "CONNECT"])
    }

    @Test func aTargetChallengedAgainRunsTheHandshakeAgain() throws {
        let replay = TranscriptReplay(
            F.setup(
                proxy: "http://localhost:3128",
                targets: ["http://origin.test/x", "http://origin.test/y"]
            ),
            [
                F.opened, Self.offers, Self.ticket, F.ok,
                // The proxy closed the connection; /y on a new one is challenged, then answered.
                Self.offers, Self.ticket, F.ok,
            ]
        )
        let report = try replay.complete()
        #expect((report.verdict, F.outcome(report)) == (.ok, "accepted"))
        #expect(self.credentials(replay) == [.none, .negotiate, .none, .negotiate])
    }

    @Test func userNamesSplitAtTheBackslash() {
        #expect(Diagnosis.ntlmName(#"CORP\bob"#) == ("bob", "CORP"))
        #expect(Diagnosis.ntlmName("bob") == ("bob", ""))
        #expect(Diagnosis.isIPAddress("127.0.0.1") && Diagnosis.isIPAddress("::1"))
        #expect(!Diagnosis.isIPAddress("localhost"))
    }
}
