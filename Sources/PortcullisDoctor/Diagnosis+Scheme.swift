import PortcullisAuth
import PortcullisKerberos

extension Diagnosis {
    // MARK: - 4. Scheme

    /// Picks the scheme to answer with. `auto` takes the strongest the proxy offers that this
    /// client holds credentials for, in the order browsers rank them: Negotiate when there is a
    /// Kerberos ticket, then NTLM, Digest (SHA-512-256, SHA-256, MD5), Basic. (curl's
    /// `--proxy-anyauth` ranks Digest above NTLM; a proxy offering both is there for Windows
    /// sign-on, which is NTLM.) Without a ticket, Negotiate is still the choice when no other
    /// offered scheme has credentials here: its failure then says to run kinit.
    mutating func checkScheme() throws(Pending) -> Bool {
        guard self.authRequired else {
            self.report.add("scheme", .skip, "the proxy does not ask for credentials")
            return true
        }
        let choice = self.setup.scheme
        let wantsDigest = choice == .auto || choice == .digest
        let wantsBasic = choice == .auto || choice == .basic
        let digests = self.offered.compactMap(DigestChallenge.init)
        // Strongest first: SHA-512-256, SHA-256, then MD5.
        func rank(_ c: DigestChallenge) -> Int {
            switch c.algorithm?.hash {
            case .sha512_256: return 0
            case .sha256: return 1
            default: return 2
            }
        }
        let usableDigest = digests.filter { $0.algorithm != nil }
            .sorted { rank($0) < rank($1) }
            .first { DigestResponder(challenge: $0, user: "u", password: "p") != nil }
        let basicOffered = self.offered.contains { $0.schemeIs("Basic") }
        let ntlmOffered = self.offered.contains { $0.schemeIs("NTLM") }
        let offeredNames = Self.uniqueSchemes(self.offered)
        let offered = JSONValue.array(offeredNames.map { .string($0) })

        var note = ""
        if choice == .auto || choice == .negotiate, self.offered.contains(where: { $0.schemeIs("Negotiate") }),
            let proxy = self.setup.proxy
        {
            let start = try self.kerberos(host: proxy.host, token: nil)
            self.kerberosStart = start
            var ticketMissing: NegotiateInitiatorFailure?
            if case .failed(let failure) = start, failure.reason == .noTicket || failure.reason == .ticketExpired {
                ticketMissing = failure
            }
            let otherAnswer = ntlmOffered || (usableDigest != nil) || basicOffered
            if choice == .negotiate || ticketMissing == nil || self.setup.user == nil || !otherAnswer {
                self.chosen = .negotiate
                var message = "answering with Negotiate (Kerberos) for HTTP@\(proxy.host)"
                var details: [String: JSONValue] = [
                    "offered": offered, "chosen": .string("Negotiate"), "service": .string("HTTP@\(proxy.host)"),
                ]
                switch start {
                case .token(let client, _), .established(let client):
                    self.principal = client
                    message += " with the ticket of \(client)"
                    details["principal"] = .string(client)
                case .failed:
                    message += "; the authentication step says why there is no token"
                }
                self.report.add("scheme", .pass, message, details: details)
                return true
            }
            note =
                ticketMissing?.reason == .ticketExpired
                ? "; Negotiate is offered too, but the Kerberos ticket has expired"
                : "; Negotiate is offered too, but there is no Kerberos ticket"
        }
        if choice == .auto || choice == .ntlm, ntlmOffered {
            self.chosen = .ntlm
            self.report.add(
                "scheme",
                .pass,
                "answering with NTLM (NTLMv2)\(note)",
                details: ["offered": offered, "chosen": .string("NTLM")]
            )
            return true
        }
        if wantsDigest, let digest = usableDigest {
            self.chosen = .digest(digest)
            self.report.add(
                "scheme",
                .pass,
                "answering with Digest (\(digest.algorithm!.description)\(digest.userhash ? ", userhash" : ""))\(basicOffered ? "; Basic is offered too" : "")\(note)",
                details: ["offered": offered, "chosen": .string("Digest")]
            )
            return true
        }
        if wantsBasic, basicOffered {
            self.chosen = .basic
            if !digests.isEmpty, choice == .basic { note += "; Digest is offered too (--scheme basic)" }
            self.report.add(
                "scheme",
                .pass,
                "answering with Basic\(note)",
                details: ["offered": offered, "chosen": .string("Basic")]
            )
            return true
        }
        let clientSchemes: String
        switch choice {
        case .auto: clientSchemes = "Negotiate, NTLM, Digest or Basic"
        case .basic: clientSchemes = "Basic"
        case .digest: clientSchemes = "Digest"
        case .negotiate: clientSchemes = "Negotiate"
        case .ntlm: clientSchemes = "NTLM"
        }
        let offeredText = offeredNames.isEmpty ? "no scheme at all" : offeredNames.joined(separator: ", ")
        var message = "the proxy offers only \(offeredText); \(clientSchemes) credentials will never work here"
        if !digests.isEmpty, usableDigest == nil, wantsDigest {
            message +=
                " (Digest with \(digests.map { $0.algorithmToken ?? "MD5" }.joined(separator: ", ")), which doctor cannot compute here)"
        }
        self.report.authentication = DoctorReport.Authentication(
            outcome: "scheme-mismatch",
            scheme: nil,
            status: nil,
            proxyReason: nil
        )
        var fix = Self.schemeAdvice(offered: offeredNames)
        let bound = offeredNames.filter { ["negotiate", "ntlm"].contains($0.lowercased()) }
        if !bound.isEmpty {
            fix += "; doctor answers \(bound.joined(separator: " and ")) with --scheme auto"
        }
        return self.report.fail("scheme", .authFailed, message, fix: fix, details: ["offered": offered])
    }

    static func uniqueSchemes(_ challenges: [Challenge]) -> [String] {
        var seen: [String] = []
        for c in challenges where !seen.contains(where: { $0.lowercased() == c.scheme.lowercased() }) {
            seen.append(c.scheme)
        }
        return seen
    }

    static func schemeAdvice(offered: [String]) -> String {
        let lower = Set(offered.map { $0.lowercased() })
        var advice: [String] = []
        if lower.contains("negotiate") || lower.contains("ntlm") {
            advice.append(
                "the proxy wants Negotiate/NTLM (Windows/Kerberos): curl --proxy-negotiate -U : (after kinit) or --proxy-ntlm -U 'DOMAIN\\user'; Java: NTLM/Negotiate work with java.net.Authenticator, and Basic over CONNECT stays off unless jdk.http.auth.tunneling.disabledSchemes=\"\" — which only helps if the proxy offers Basic; Python requests sends only Basic (use requests-kerberos or requests-ntlm, or a local relay such as px or cntlm)"
            )
        }
        if lower.contains("digest") {
            advice.append(
                "the proxy wants Digest: curl --proxy-digest -U user; Python requests sends only Basic to proxies; if your client cannot do Digest ask the proxy's admins to enable Basic (over TLS)"
            )
        }
        if advice.isEmpty {
            advice.append(
                "use a client that supports the offered scheme, or ask the proxy's admins to enable Basic or Digest"
            )
        }
        return advice.joined(separator: "; ")
    }
}
