import Foundation
import Testing

@testable import PortcullisDoctor

/// TLS to the proxy itself (Tests/integration/test_doctor_tls.py): each failure explained from
/// its evidence, with its stable `details.finding` id, verdict and exit code.
@Suite struct DiagnosisProxyTLSTests {
    typealias F = Fixture

    static let now = 1_780_000_000.0
    static let day = 86_400.0
    static let httpsProxy = "https://alice:s3cret-Pa55@proxy.test:3129"

    static func setup(
        proxy: String = Self.httpsProxy,
        proxyCACertificate: String? = nil,
        proxyCertificate: String? = nil,
        proxyKey: String? = nil,
        targetCACertificate: String? = nil
    ) -> DoctorSetup {
        var options = DoctorOptions()
        options.proxy = proxy
        options.targets = ["http://origin.test/x"]
        options.proxyCACertificateFile = proxyCACertificate
        options.proxyCertificateFile = proxyCertificate
        options.proxyKeyFile = proxyKey
        options.caCertificateFile = targetCACertificate
        return DoctorSetup.resolve(options).setup
    }

    static func certificate(
        names: [String] = ["proxy.test"],
        issuer: String = "Example CA",
        from: Double = now - day,
        to: Double = now + day
    ) -> PeerCertificate {
        PeerCertificate(
            subject: names.first ?? "proxy",
            issuer: issuer,
            commonName: names.first,
            dnsNames: names.filter { Double($0.prefix(1)) == nil },
            ipAddresses: names.filter { Double($0.prefix(1)) != nil },
            notBefore: from,
            notAfter: to
        )
    }

    static func verifyFailed(_ certificate: PeerCertificate?, hostnameMismatch: Bool = false) -> ProbeOutcome {
        let evidence = TLSEvidence(
            reasons: hostnameMismatch ? [] : ["CERTIFICATE_VERIFY_FAILED"],
            hostnameMismatch: hostnameMismatch,
            peerCertificate: certificate,
            checkedAt: Self.now
        )
        return .failed(ProbeError(kind: .tlsUntrusted, message: "not trusted", evidence: evidence))
    }

    static func alert(_ reasons: [String], offered: Bool = false, requested: Bool = false) -> ProbeOutcome {
        let evidence = TLSEvidence(
            reasons: reasons,
            certificateRequested: requested,
            clientCertificateOffered: offered,
            checkedAt: Self.now
        )
        return .failed(ProbeError(kind: .tls, message: "TLS failed", evidence: evidence))
    }

    static let openedTLS = ProbeOutcome.opened(.init(dnsMs: 0.1, connectMs: 0.2, address: "127.0.0.1"), tlsMs: 3)

    /// The failed step's finding id, and the report.
    static func finding(_ report: DoctorReport, step: String) -> String? {
        if case .string(let id) = F.step(report, step)?.details["finding"] { return id }
        return nil
    }

    @Test func anHTTPSProxyThatVerifiesIsReachedAndAuthenticates() throws {
        let report = try TranscriptReplay(
            Self.setup(proxyCACertificate: "/etc/ca.pem"),
            [Self.openedTLS, F.challenge(#"Basic realm="tls""#), F.ok]
        ).complete()
        #expect((report.verdict, report.exitCode, F.outcome(report)) == (.ok, 0, "accepted"))
        #expect(F.step(report, "reachability")?.details["tls_ms"] == .number(3))
        #expect(F.step(report, "configuration")?.details["proxy_cacert"] == .string("/etc/ca.pem"))
    }

    @Test func anUnknownCASaysToPassProxyCACert() throws {
        let report = try TranscriptReplay(Self.setup(), [Self.verifyFailed(Self.certificate())]).complete()
        #expect((report.verdict, report.exitCode) == (.proxyUnreachable, 1))
        #expect(Self.finding(report, step: "reachability") == "proxy-tls-unknown-ca")
        let step = try #require(F.step(report, "reachability"))
        #expect(step.message.contains("not trusted") && step.message.contains("\"Example CA\""))
        #expect(step.fix?.contains("--proxy-cacert FILE") == true)
        #expect(step.fix?.contains("--cacert is for the targets") == false)
        #expect(F.step(report, "challenge")?.status == .skip)
    }

    @Test func anUnknownCAWithOnlyCACertSaysItIsForTargets() throws {
        let report = try TranscriptReplay(
            Self.setup(targetCACertificate: "/tmp/ca.pem"),
            [Self.verifyFailed(Self.certificate())]
        ).complete()
        #expect(F.step(report, "reachability")?.fix?.contains("--cacert is for the targets") == true)
    }

    @Test func anUnknownCAWithTheWrongProxyCACertNamesTheIssuerToPass() throws {
        let report = try TranscriptReplay(
            Self.setup(proxyCACertificate: "/tmp/other-ca.pem"),
            [Self.verifyFailed(Self.certificate(issuer: "Corp Issuing CA 2"))]
        ).complete()
        let fix = try #require(F.step(report, "reachability")?.fix)
        #expect(fix.contains("/tmp/other-ca.pem did not sign it") && fix.contains("\"Corp Issuing CA 2\""))
    }

    @Test func aSelfSignedCertificateIsNamedSo() throws {
        let report = try TranscriptReplay(
            Self.setup(),
            [Self.verifyFailed(Self.certificate(issuer: "proxy.test"))]
        ).complete()
        #expect(F.step(report, "reachability")?.message.contains("self-signed") == true)
    }

    @Test func aNameMismatchNamesTheCertificatesNamesAndSuggestsOne() throws {
        let report = try TranscriptReplay(
            Self.setup(),
            [Self.verifyFailed(Self.certificate(names: ["gateway.example", "10.0.0.9"]), hostnameMismatch: true)]
        ).complete()
        #expect((report.verdict, report.exitCode) == (.proxyUnreachable, 1))
        #expect(Self.finding(report, step: "reachability") == "proxy-tls-name-mismatch")
        let step = try #require(F.step(report, "reachability"))
        #expect(step.message.contains("gateway.example, 10.0.0.9") && step.message.contains("not for proxy.test"))
        #expect(step.fix?.contains("https://gateway.example:3129") == true)
        #expect(step.details["host"] == .string("proxy.test"))
    }

    @Test func anExpiredCertificateGivesItsDates() throws {
        let cert = Self.certificate(from: Self.now - 10 * Self.day, to: Self.now - Self.day)
        let report = try TranscriptReplay(Self.setup(), [Self.verifyFailed(cert)]).complete()
        #expect(Self.finding(report, step: "reachability") == "proxy-tls-expired")
        let step = try #require(F.step(report, "reachability"))
        #expect(step.message.contains("expired on \(Diagnosis.date(cert.notAfter))"))
        #expect(step.message.contains("valid from \(Diagnosis.date(cert.notBefore))"))
        #expect(step.details["not_after"] == .string(Diagnosis.date(cert.notAfter)))
        #expect(report.exitCode == 1)
    }

    @Test func aCertificateNotYetValidMentionsTheClock() throws {
        let cert = Self.certificate(from: Self.now + Self.day, to: Self.now + 10 * Self.day)
        let report = try TranscriptReplay(Self.setup(), [Self.verifyFailed(cert)]).complete()
        #expect(Self.finding(report, step: "reachability") == "proxy-tls-not-yet-valid")
        #expect(F.step(report, "reachability")?.fix?.contains("clock") == true)
    }

    @Test func aVerifyFailureWithoutTheCertificateSaysDoctorCannotTellWhy() throws {
        let report = try TranscriptReplay(Self.setup(), [Self.verifyFailed(nil)]).complete()
        #expect(Self.finding(report, step: "reachability") == "proxy-tls-certificate-unverified")
        #expect(F.step(report, "reachability")?.message.contains("cannot say") == true)
    }

    @Test func certificateRequiredAfterTheTLS13HandshakeFailsTheFirstRequestAsAuthentication() throws {
        // TLS 1.3: the client's handshake is over before the proxy reads its (empty)
        // certificate; the proxy's alert ends the first request.
        let report = try TranscriptReplay(
            Self.setup(),
            [Self.openedTLS, Self.alert(["TLSV1_ALERT_CERTIFICATE_REQUIRED"])]
        ).complete()
        #expect((report.verdict, report.exitCode) == (.authFailed, 2))
        #expect(Self.finding(report, step: "challenge") == "proxy-tls-client-certificate-required")
        let step = try #require(F.step(report, "challenge"))
        #expect(
            step.message.contains("requires a TLS client certificate") && step.message.contains("certificate_required")
        )
        #expect(step.fix?.contains("--proxy-cert FILE --proxy-key FILE") == true)
        #expect(report.authentication?.outcome == "no-credentials")
        #expect(report.authentication?.proxyReason == "certificate_required")
    }

    @Test func handshakeFailureAfterATLS12CertificateRequestIsACertificateRequired() throws {
        let report = try TranscriptReplay(
            Self.setup(),
            [Self.alert(["SSLV3_ALERT_HANDSHAKE_FAILURE"], requested: true)]
        ).complete()
        #expect(Self.finding(report, step: "reachability") == "proxy-tls-client-certificate-required")
        #expect(F.step(report, "reachability")?.message.contains("asked for one") == true)
        #expect(report.exitCode == 2)
    }

    @Test func handshakeFailureWithoutACertificateRequestIsAmbiguousAndSaysSo() throws {
        let report = try TranscriptReplay(Self.setup(), [Self.alert(["SSLV3_ALERT_HANDSHAKE_FAILURE"])]).complete()
        #expect((report.verdict, report.exitCode) == (.proxyUnreachable, 1))
        #expect(Self.finding(report, step: "reachability") == "proxy-tls-handshake-failure")
        let message = try #require(F.step(report, "reachability")?.message)
        #expect(message.contains("may require a client certificate") && message.contains("cannot tell"))
        #expect(report.authentication == nil)
    }

    @Test(arguments: [
        ("TLSV1_ALERT_UNKNOWN_CA", "unknown_ca", "does not trust the CA"),
        ("SSLV3_ALERT_BAD_CERTIFICATE", "bad_certificate", "does not accept it"),
        ("SSLV3_ALERT_CERTIFICATE_EXPIRED", "certificate_expired", "expired"),
        ("TLSV1_ALERT_ACCESS_DENIED", "access_denied", "lets no one in"),
    ])
    func aRefusedClientCertificateNamesTheAlert(reason: String, alert: String, meaning: String) throws {
        let report = try TranscriptReplay(
            Self.setup(proxyCertificate: "/tmp/me.pem", proxyKey: "/tmp/me.key"),
            [Self.openedTLS, Self.alert([reason], offered: true)]
        ).complete()
        #expect((report.verdict, report.exitCode) == (.authFailed, 2))
        #expect(Self.finding(report, step: "challenge") == "proxy-tls-client-certificate-refused")
        let message = try #require(F.step(report, "challenge")?.message)
        #expect(message.contains("refused this client's certificate (--proxy-cert /tmp/me.pem)"))
        #expect(message.contains(alert) && message.contains(meaning))
        #expect(report.authentication?.outcome == "rejected" && report.authentication?.proxyReason == alert)
    }

    @Test func anHTTPSURLToAPlainPortSaysUseHTTP() throws {
        let evidence = TLSEvidence(
            reasons: ["WRONG_VERSION_NUMBER"],
            peerBytes: Array("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".utf8)
        )
        let report = try TranscriptReplay(
            Self.setup(),
            [.failed(ProbeError(kind: .tls, message: "wrong version number", evidence: evidence))]
        ).complete()
        #expect((report.verdict, report.exitCode) == (.configError, 1))
        #expect(Self.finding(report, step: "reachability") == "proxy-speaks-plain-http")
        let step = try #require(F.step(report, "reachability"))
        #expect(step.message.contains("\"HTTP/1.1 400 Bad Request\""))
        #expect(step.fix?.hasPrefix("use http://proxy.test:3129") == true)
    }

    @Test func aHandshakeNoOneAnsweredOnAPortThatAnswersPlainHTTPSaysUseHTTP() throws {
        // Portcullis' plain port waits for a request line: a ClientHello gets no answer.
        var evidence = TLSEvidence()
        evidence.plainAnswer = "400 Bad Request"
        let report = try TranscriptReplay(
            Self.setup(),
            [.failed(ProbeError(kind: .timeout, message: "TLS handshake took longer than 3 s", evidence: evidence))]
        ).complete()
        #expect((report.verdict, report.exitCode) == (.configError, 1))
        #expect(Self.finding(report, step: "reachability") == "proxy-speaks-plain-http")
        let message = try #require(F.step(report, "reachability")?.message)
        #expect(message.contains("did not answer the TLS handshake (TLS handshake took longer than 3 s)"))
        #expect(message.contains("answered a plain HTTP request with \"400 Bad Request\""))
        // Without that answer it is only a timeout: no finding.
        let silent = try TranscriptReplay(
            Self.setup(),
            [
                .failed(
                    ProbeError(kind: .timeout, message: "TLS handshake took longer than 3 s", evidence: TLSEvidence())
                )
            ]
        ).complete()
        #expect(Self.finding(silent, step: "reachability") == nil)
    }

    @Test func anHTTPURLToPortcullisTLSPortSaysUseHTTPS() throws {
        let report = try TranscriptReplay(
            Self.setup(proxy: "http://alice:s3cret-Pa55@127.0.0.1:3128"),
            [
                F.opened,
                F.response(
                    400,
                    ("Proxy-Status", #"portcullis; error=http_protocol_error; details="plain HTTP on a TLS port""#)
                ),
            ]
        ).complete()
        #expect((report.verdict, report.exitCode) == (.configError, 1))
        #expect(Self.finding(report, step: "challenge") == "proxy-speaks-tls")
        #expect(F.step(report, "challenge")?.fix?.hasPrefix("use https://127.0.0.1:3128") == true)
    }

    @Test func anHTTPURLToATLSPortThatAnswersWithAnAlertSaysUseHTTPS() throws {
        let evidence = TLSEvidence(peerBytes: [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x46])
        let report = try TranscriptReplay(
            Self.setup(proxy: "http://127.0.0.1:3128"),
            [F.opened, .failed(ProbeError(kind: .protocolError, message: "not HTTP/1.x", evidence: evidence))]
        ).complete()
        #expect((report.verdict, report.exitCode) == (.configError, 1))
        #expect(Self.finding(report, step: "challenge") == "proxy-speaks-tls")
        #expect(F.step(report, "challenge")?.message.contains("a TLS alert (bytes 15 03 01 00 02 02 46)") == true)
    }

    @Test func anHTTPURLToATLSPortThatResetsAndAnswersTLSSaysUseHTTPS() throws {
        var evidence = TLSEvidence()
        evidence.tlsAnswered = true
        let report = try TranscriptReplay(
            Self.setup(proxy: "http://127.0.0.1:3128"),
            [F.opened, .failed(ProbeError(kind: .other, message: "connection reset by peer", evidence: evidence))]
        ).complete()
        #expect((report.verdict, report.exitCode) == (.configError, 1))
        #expect(Self.finding(report, step: "challenge") == "proxy-speaks-tls")
        #expect(
            F.step(report, "challenge")?.message.contains("answered a TLS handshake on a second connection") == true
        )
        // A reset alone says nothing about TLS.
        let reset = try TranscriptReplay(
            Self.setup(proxy: "http://127.0.0.1:3128"),
            [F.opened, .failed(ProbeError(kind: .other, message: "connection reset by peer"))]
        ).complete()
        #expect(Self.finding(reset, step: "challenge") == nil)
        #expect(reset.verdict == .proxyUnreachable)
    }

    @Test func anOrdinary400OrCloseIsNotTakenForATLSPort() throws {
        let report = try TranscriptReplay(
            Self.setup(proxy: "http://127.0.0.1:3128"),
            [F.opened, F.response(400, ("Proxy-Status", #"squid; error=http_protocol_error"#))]
        ).complete()
        #expect(Self.finding(report, step: "challenge") == nil)
        // A close in the middle of the handshake, with nothing sent: no evidence, no finding.
        let closed = try TranscriptReplay(
            Self.setup(),
            [.failed(ProbeError(kind: .tls, message: "closed during the TLS handshake", evidence: TLSEvidence()))]
        ).complete()
        #expect(Self.finding(closed, step: "reachability") == nil)
        #expect((closed.verdict, closed.exitCode) == (.proxyUnreachable, 1))
    }

    @Test func aProxyKeyWithoutACertificateIsAConfigurationError() throws {
        let report = try TranscriptReplay(Self.setup(proxyKey: "/tmp/me.key"), []).complete()
        #expect((report.verdict, report.exitCode) == (.configError, 1))
        #expect(F.step(report, "configuration")?.message.contains("--proxy-key was given without --proxy-cert") == true)
    }

    @Test func unusableClientFilesAreAConfigurationError() throws {
        let report = try TranscriptReplay(
            Self.setup(proxyCertificate: "/tmp/me.pem"),
            [.failed(ProbeError(kind: .localFile, message: "--proxy-key /tmp/me.pem: no unencrypted PEM private key"))]
        ).complete()
        #expect((report.verdict, report.exitCode) == (.configError, 1))
        #expect(F.step(report, "configuration")?.details["proxy_cert"] == .string("/tmp/me.pem"))
    }

    @Test func proxyTLSOptionsWithAnHTTPProxyAreAWarning() throws {
        let setup = Self.setup(proxy: "http://127.0.0.1:3128", proxyCACertificate: "/tmp/ca.pem")
        let step = try #require(F.step(setup.report, "configuration"))
        #expect(step.status == .warn && step.message.contains("--proxy-cacert apply to an https:// proxy only"))
        #expect(setup.proceeds)
    }
}
