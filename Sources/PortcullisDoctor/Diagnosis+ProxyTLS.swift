import Foundation

/// A failure explained from its evidence: a stable id (`details.finding`), the verdict it gives,
/// and what to say and change.
struct Finding: Sendable {
    var id: String
    var verdict: DoctorReport.Verdict
    var message: String
    var fix: String
    var details: [String: JSONValue] = [:]
    /// For a client certificate the proxy wants or refuses: the `authentication` outcome
    /// (`no-credentials`, `rejected`) and the alert the proxy sent.
    var authentication: DoctorReport.Authentication?
}

extension Diagnosis {
    // MARK: - TLS to the proxy

    /// Explains a failed TLS exchange with an https:// proxy, or `nil` when the evidence says
    /// nothing beyond the error's own message.
    static func proxyTLSFinding(_ error: ProbeError, setup: DoctorSetup) -> Finding? {
        guard let proxy = setup.proxy, proxy.isTLS, let evidence = error.evidence else { return nil }
        let files = setup.tlsFiles
        if let answer = evidence.plainAnswer {
            return Finding(
                id: "proxy-speaks-plain-http",
                verdict: .configError,
                message:
                    "\(proxy.authority) did not answer the TLS handshake (\(error.message)) but answered a plain HTTP request with \"\(answer)\": this port of the proxy speaks plain HTTP",
                fix:
                    "use http://\(proxy.authority) as the proxy URL (an https:// URL needs a port where the proxy listens with TLS, e.g. Portcullis --listen-tls)",
                details: ["plain_answer": .string(answer)]
            )
        }
        if evidence.peerSpokeHTTP {
            let line = Self.firstLine(evidence.peerBytes)
            return Finding(
                id: "proxy-speaks-plain-http",
                verdict: .configError,
                message:
                    "\(proxy.authority) answered the TLS handshake in plain HTTP (\"\(line)\"): this port of the proxy does not speak TLS",
                fix:
                    "use http://\(proxy.authority) as the proxy URL (an https:// URL needs a port where the proxy listens with TLS, e.g. Portcullis --listen-tls)",
                details: ["peer_first_line": .string(line)]
            )
        }
        if let certificate = evidence.peerCertificate, evidence.isVerificationFailure {
            return Self.certificateFinding(certificate, evidence: evidence, proxy: proxy, files: files)
        }
        if evidence.isVerificationFailure {
            return Finding(
                id: "proxy-tls-certificate-unverified",
                verdict: .proxyUnreachable,
                message:
                    "the certificate of \(proxy.host) did not verify (\(evidence.hostnameMismatch ? "it does not name \(proxy.host)" : "certificate verify failed")) and a second look at it failed, so doctor cannot say whether its CA, its dates or its names are wrong",
                fix:
                    "compare `openssl s_client -connect \(proxy.authority) -servername \(proxy.host)` with the CA passed in --proxy-cacert"
            )
        }
        return Self.clientCertificateFinding(evidence, files: files)
    }

    /// The certificate the proxy presented, against the host of the URL and the time the probe
    /// looked. BoringSSL checks the chain before the dates count, and NIOSSL the names after
    /// both, so a name mismatch means chain and dates were fine.
    private static func certificateFinding(
        _ certificate: PeerCertificate,
        evidence: TLSEvidence,
        proxy: ProxyEndpoint,
        files: DoctorSetup.TLSFiles
    ) -> Finding {
        var details: [String: JSONValue] = [
            "certificate_subject": .string(certificate.subject),
            "certificate_issuer": .string(certificate.issuer),
            "certificate_names": .array(certificate.names.map { .string($0) }),
            "not_before": .string(Self.date(certificate.notBefore)),
            "not_after": .string(Self.date(certificate.notAfter)),
        ]
        let validity = "valid from \(Self.date(certificate.notBefore)) to \(Self.date(certificate.notAfter))"
        if evidence.hostnameMismatch {
            details["host"] = .string(proxy.host)
            let names = certificate.names.isEmpty ? "no name" : certificate.names.joined(separator: ", ")
            let usable = certificate.dnsNames.first { !$0.hasPrefix("*.") } ?? certificate.ipAddresses.first
            let suggestion = usable.map {
                "use a proxy URL with a name the certificate has: https://\($0.contains(":") ? "[\($0)]" : $0):\(proxy.port) (if it reaches this proxy), or "
            }
            return Finding(
                id: "proxy-tls-name-mismatch",
                verdict: .proxyUnreachable,
                message:
                    "the proxy's certificate is for \(names), not for \(proxy.host) (the host in the proxy URL)",
                fix: (suggestion ?? "")
                    + "have the proxy's certificate reissued with \(proxy.host) among its subject alternative names",
                details: details
            )
        }
        if evidence.checkedAt > certificate.notAfter {
            return Finding(
                id: "proxy-tls-expired",
                verdict: .proxyUnreachable,
                message:
                    "the proxy's certificate expired on \(Self.date(certificate.notAfter)) (\(validity); checked at \(Self.date(evidence.checkedAt)))",
                fix:
                    "the proxy's administrators must renew its certificate; if it was renewed, check this machine's clock",
                details: details
            )
        }
        if evidence.checkedAt < certificate.notBefore {
            return Finding(
                id: "proxy-tls-not-yet-valid",
                verdict: .proxyUnreachable,
                message:
                    "the proxy's certificate is not valid before \(Self.date(certificate.notBefore)) (\(validity); checked at \(Self.date(evidence.checkedAt)))",
                fix:
                    "check this machine's clock (NTP); if it is right, the certificate was issued with a future start date",
                details: details
            )
        }
        // Verification failed with dates in range and before any name was checked: the chain
        // does not reach a CA trusted here.
        let selfSigned = certificate.subject == certificate.issuer
        var fix: String
        if let given = files.proxyCACertificate {
            fix =
                "the CAs in --proxy-cacert \(given) did not sign it: pass the certificate of the CA \"\(certificate.issuer)\" instead"
        } else {
            fix =
                "pass the proxy's CA certificate (PEM) with --proxy-cacert FILE, or install that CA in this machine's trust store"
            if files.targetCACertificate != nil {
                fix += " (--cacert is for the targets' certificates, not the proxy's)"
            }
        }
        return Finding(
            id: "proxy-tls-unknown-ca",
            verdict: .proxyUnreachable,
            message:
                "the proxy's certificate is not trusted here: \(selfSigned ? "it is self-signed (\"\(certificate.subject)\")" : "\"\(certificate.subject)\" was issued by \"\(certificate.issuer)\", a CA not trusted here") (\(validity))",
            fix: fix,
            details: details
        )
    }

    /// A proxy that wants a client certificate, or refuses the one sent: read from the alert
    /// it sent, and from whether it asked for a certificate (visible in TLS 1.2 only).
    private static func clientCertificateFinding(_ evidence: TLSEvidence, files: DoctorSetup.TLSFiles) -> Finding? {
        let refusals = [
            "UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN", "CERTIFICATE_EXPIRED", "CERTIFICATE_REVOKED",
            "UNSUPPORTED_CERTIFICATE", "ACCESS_DENIED", "DECRYPT_ERROR",
        ]
        let required = evidence.receivedAlert("CERTIFICATE_REQUIRED")
        let handshakeFailure = evidence.receivedAlert("HANDSHAKE_FAILURE")
        let fileHint = "pass a client certificate and its key with --proxy-cert FILE --proxy-key FILE (PEM)"
        if !evidence.clientCertificateOffered,
            let alert = required ?? (evidence.certificateRequested ? handshakeFailure : nil)
        {
            let name = Self.alertName(alert)
            return Finding(
                id: "proxy-tls-client-certificate-required",
                verdict: .authFailed,
                message:
                    "the proxy requires a TLS client certificate and none was sent (it \(evidence.certificateRequested ? "asked for one, then " : "")ended the handshake with the alert \(name))",
                fix: fileHint,
                details: ["alert": .string(name)],
                authentication: .init(outcome: "no-credentials", scheme: nil, status: nil, proxyReason: name)
            )
        }
        if evidence.clientCertificateOffered,
            let alert = evidence.receivedAlert(anyOf: refusals)
                ?? (evidence.certificateRequested ? handshakeFailure : nil)
        {
            let name = Self.alertName(alert)
            let meaning: String
            switch name {
            case "unknown_ca": meaning = "it does not trust the CA that issued it"
            case "certificate_expired": meaning = "it says the certificate has expired"
            case "certificate_revoked": meaning = "it says the certificate was revoked"
            case "access_denied": meaning = "it accepted the certificate but lets no one in with it"
            case "decrypt_error": meaning = "the key's signature did not verify: is --proxy-key the certificate's key?"
            default: meaning = "it does not accept it"
            }
            return Finding(
                id: "proxy-tls-client-certificate-refused",
                verdict: .authFailed,
                message:
                    "the proxy refused this client's certificate (--proxy-cert \(files.proxyCertificate ?? "?")): alert \(name), \(meaning)",
                fix:
                    "ask the proxy's administrators which CA its client certificates must come from (Portcullis: --tls-client-ca), and pass such a certificate with --proxy-cert/--proxy-key",
                details: ["alert": .string(name)],
                authentication: .init(outcome: "rejected", scheme: nil, status: nil, proxyReason: name)
            )
        }
        if let handshakeFailure {
            let name = Self.alertName(handshakeFailure)
            return Finding(
                id: "proxy-tls-handshake-failure",
                verdict: .proxyUnreachable,
                message:
                    "the proxy ended the TLS handshake with the alert \(name): it may require a client certificate\(evidence.clientCertificateOffered ? " other than the one sent" : ""), or share no TLS version or cipher with this client; whether it asked for a certificate is encrypted (TLS 1.3), so doctor cannot tell which",
                fix: evidence.clientCertificateOffered
                    ? "ask the proxy's administrators which client certificates it accepts, and which TLS versions"
                    : "if the proxy wants client certificates, \(fileHint); else compare its TLS versions and ciphers with this client's (TLS 1.2 and 1.3)",
                details: ["alert": .string(name)]
            )
        }
        return nil
    }

    // MARK: - Plain HTTP to a TLS port

    /// An http:// proxy URL whose port answers as a TLS server: Portcullis' readable 400, or a
    /// TLS record where an HTTP response should be.
    static func speaksTLSFinding(response: RecordedResponse?, error: ProbeError?, setup: DoctorSetup) -> Finding? {
        guard let proxy = setup.proxy, !proxy.isTLS else { return nil }
        let fix =
            "use https://\(proxy.authority) as the proxy URL (with --proxy-cacert FILE if its certificate comes from a private CA)"
        if let response, response.status == 400,
            let status = response.values("Proxy-Status").first(where: { $0.contains("plain HTTP on a TLS port") })
        {
            return Finding(
                id: "proxy-speaks-tls",
                verdict: .configError,
                message: "the proxy says this port speaks TLS: 400 with Proxy-Status: \(status)",
                fix: fix,
                details: ["status": .int(400)]
            )
        }
        if let error, error.evidence?.tlsAnswered == true {
            return Finding(
                id: "proxy-speaks-tls",
                verdict: .configError,
                message:
                    "\(proxy.authority) gave no HTTP answer (\(error.message)) and answered a TLS handshake on a second connection: this port speaks TLS",
                fix: fix,
                details: ["tls_answered": .bool(true)]
            )
        }
        if let bytes = error?.evidence?.peerBytes, bytes.count >= 3, bytes[0] == 21 || bytes[0] == 22,
            bytes[1] == 3, bytes[2] <= 4
        {
            let what = bytes[0] == 21 ? "a TLS alert" : "a TLS handshake record"
            return Finding(
                id: "proxy-speaks-tls",
                verdict: .configError,
                message:
                    "\(proxy.authority) answered an HTTP request with \(what) (bytes \(bytes.prefix(7).map { String(format: "%02x", $0) }.joined(separator: " "))): this port speaks TLS",
                fix: fix,
                details: ["peer_bytes": .string(bytes.prefix(16).map { String(format: "%02x", $0) }.joined())]
            )
        }
        return nil
    }

    /// Records `finding` as `step`'s failure; ends the run.
    mutating func fail(_ step: String, with finding: Finding, ms: Double? = nil) -> Bool {
        var details = finding.details
        details["finding"] = .string(finding.id)
        if let authentication = finding.authentication, self.report.authentication == nil {
            self.report.authentication = authentication
        }
        return self.report.fail(step, finding.verdict, finding.message, fix: finding.fix, ms: ms, details: details)
    }

    /// `TLSV1_ALERT_CERTIFICATE_REQUIRED` → `certificate_required`, as RFC 8446 §6 names alerts.
    static func alertName(_ reason: String) -> String {
        guard let range = reason.range(of: "ALERT_") else { return reason.lowercased() }
        return reason[range.upperBound...].lowercased()
    }

    /// The first line of what the peer sent, printable ASCII only, at most 60 characters.
    static func firstLine(_ bytes: [UInt8]) -> String {
        let line = bytes.prefix { $0 != 13 && $0 != 10 }.prefix(60)
        return String(decoding: line.map { (32...126).contains($0) ? $0 : 63 }, as: UTF8.self)
    }

    /// A certificate date as RFC 3339 UTC (`2026-12-05T09:53:29Z`).
    static func date(_ secondsSince1970: Double) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: Date(timeIntervalSince1970: secondsSince1970))
    }
}
