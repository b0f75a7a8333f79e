import Foundation
import PortcullisAuth

extension Diagnosis {
    // MARK: - 5. Authentication

    /// The credentials of the next request; each Digest answer uses its nonce once more.
    mutating func credentials() -> ProbeRequest.Credentials {
        guard let chosen, let user = self.setup.user else { return .none }
        switch chosen {
        case .basic:
            return .basic(user: user)
        case .digest(let challenge):
            self.nonceCount += 1
            return .digest(user: user, challenge: challenge, nonceCount: self.nonceCount)
        case .ntlm, .negotiate:
            // A handshake, not a field: see connectionHandshake.
            return .none
        }
    }

    /// What a new challenge in answer to credentials means, and whether to answer once more.
    enum Rechallenge: Equatable {
        /// `stale=true` with a nonce doctor can answer: the answer was right, the nonce old
        /// (RFC 7616 §3.3); answer the fresh nonce once.
        case retryStale(DigestChallenge)
        /// `stale=true` again after the retry, or with a nonce doctor cannot answer.
        case staleLoop
        case realmChanged(before: String, after: String)
        /// Anything else: the proxy refused the credentials.
        case refused
    }

    /// Reads the challenges that came back to an answer in `chosen`; `firstRealm` is the realm
    /// of the challenge doctor answered, `staleRetried` whether it already answered a stale one.
    static func rechallenge(
        _ challenges: [Challenge],
        chosen: ChosenScheme,
        firstRealm: String?,
        staleRetried: Bool
    ) -> Rechallenge {
        let sameScheme = challenges.filter { $0.schemeIs(chosen.name) }
        if case .digest = chosen, let fresh = sameScheme.compactMap(DigestChallenge.init).first(where: { $0.stale }) {
            // Whether doctor can answer it does not depend on the name or the password.
            if !staleRetried, DigestResponder(challenge: fresh, user: "", password: "") != nil {
                return .retryStale(fresh)
            }
            return .staleLoop
        }
        if let newRealm = sameScheme.first?.parameter("realm"), let firstRealm, newRealm != firstRealm {
            return .realmChanged(before: firstRealm, after: newRealm)
        }
        return .refused
    }

    mutating func checkAuthentication() throws(Pending) -> Bool {
        guard self.authRequired else {
            self.report.add("authentication", .skip, "the proxy does not ask for credentials")
            return true
        }
        guard let target = self.firstTarget, let chosen else { return false }
        if chosen.isConnectionBound { return try self.checkConnectionBoundAuthentication(target) }
        guard let user = self.setup.user else {
            self.report.authentication = DoctorReport.Authentication(
                outcome: "no-credentials",
                scheme: nil,
                status: nil,
                proxyReason: nil
            )
            return self.report.fail(
                "authentication",
                .authFailed,
                "the proxy requires authentication (\(chosen.name)) and no credentials were given",
                fix:
                    "put credentials in the proxy URL (http://USER:PASSWORD@host:port, percent-encoded) or pass --user NAME with --password-stdin"
            )
        }
        let firstRealm = self.offered.first { $0.schemeIs(chosen.name) }?.parameter("realm")
        var staleRetried = false
        var totalMs = 0.0
        while true {
            let request = ProbeRequest(target: target, credentials: self.credentials())
            guard
                let (response, ms) = try self.sendOrFail(
                    request,
                    step: "authentication",
                    what: "with credentials",
                    fix: "the proxy stopped answering once credentials were sent; check its logs"
                )
            else { return false }
            totalMs += ms
            let reason = Self.proxyReason(response)
            var details: [String: JSONValue] = ["status": .int(response.status)]
            if let reason { details["proxy_reason"] = .string(reason) }
            let proxys401 = response.status == 401 && self.isProxysOwn401(response)
            let isChallenge = response.status == 407 || proxys401
            if proxys401 { details["nonconformant_401"] = .bool(true) }
            if isChallenge {
                let field = response.status == 407 ? "Proxy-Authenticate" : "WWW-Authenticate"
                let again = (try? ChallengeParser.parse(fieldValues: response.values(field))) ?? []
                switch Self.rechallenge(again, chosen: chosen, firstRealm: firstRealm, staleRetried: staleRetried) {
                case .retryStale(let fresh):
                    staleRetried = true
                    self.chosen = .digest(fresh)
                    self.nonceCount = 0
                    continue
                case .staleLoop:
                    return self.authFailure(
                        "challenge-loop",
                        "the proxy keeps answering stale=true with a fresh nonce: a challenge loop (its nonces expire at once, or its clock is off)",
                        fix:
                            "report it to the proxy's admins with the Proxy-Authenticate values; no client setting fixes this",
                        response: response,
                        reason: reason,
                        ms: totalMs,
                        details: details
                    )
                case .realmChanged(let firstRealm, let newRealm):
                    details["realm_before"] = .string(firstRealm)
                    details["realm_after"] = .string(newRealm)
                    return self.authFailure(
                        "realm-changed",
                        "the realm changed from \"\(firstRealm)\" to \"\(newRealm)\" between the challenge and the answer (a load balancer in front of differently configured proxies?)",
                        fix:
                            "credentials are per realm: make every proxy behind this address use one realm, or ask which one applies",
                        response: response,
                        reason: reason,
                        ms: totalMs,
                        details: details
                    )
                case .refused:
                    break
                }
                switch reason {
                case "malformed-credentials":
                    return self.authFailure(
                        "malformed",
                        "the proxy says the credentials are malformed (\(chosen.name))",
                        fix:
                            "the Proxy-Authorization header was damaged on the way or the client encodes it wrongly; check for non-ASCII characters in the user name or password",
                        response: response,
                        reason: reason,
                        ms: totalMs,
                        details: details
                    )
                case "missing-credentials":
                    return self.authFailure(
                        "challenge-loop",
                        "the proxy keeps asking although credentials were sent: it never saw them (something between here and the proxy drops Proxy-Authorization?)",
                        fix: "check for another proxy or a load balancer in between that strips Proxy-Authorization",
                        response: response,
                        reason: reason,
                        ms: totalMs,
                        details: details
                    )
                default:
                    var message = "the proxy rejected the credentials of user \"\(user)\" (\(chosen.name))"
                    if let reason { message += "; proxy says: \(reason)" }
                    if response.status == 401 {
                        message +=
                            "; it answered 401 with WWW-Authenticate where RFC 9110 requires 407 with Proxy-Authenticate"
                    }
                    return self.authFailure(
                        "rejected",
                        message,
                        fix: "check the user name and password; if they were rotated or have expired, ask for new ones",
                        response: response,
                        reason: reason,
                        ms: totalMs,
                        details: details
                    )
                }
            }
            return self.credentialsAccepted(
                target,
                response,
                who: user,
                how: self.chosenDescription + (staleRetried ? " (after one stale nonce)" : ""),
                ms: totalMs,
                details: details
            )
        }
    }

    /// The end of the authentication step once the proxy took the credentials of `who`,
    /// answered `how`: a pass (or `status`, a warning), or a 403 for a plain request (denied).
    mutating func credentialsAccepted(
        _ target: DoctorTarget,
        _ response: RecordedResponse,
        who user: String,
        how: String,
        ms totalMs: Double,
        details: [String: JSONValue],
        status: DoctorReport.Status = .pass,
        note: (message: String, fix: String)? = nil
    ) -> Bool {
        var status = status
        var note = note
        var details = details
        // Portcullis says when a credential ends soon (`credential-expires-in`): a warning now,
        // days before the 407.
        if note == nil, let seconds = Self.credentialExpiresIn(response) {
            let date = ISO8601DateFormatter().string(from: Date().addingTimeInterval(TimeInterval(seconds)))
            status = .warn
            details["credential_expires_in"] = .int(seconds)
            note = (
                "the credential expires in \(Self.duration(seconds)), on \(date)",
                "renew it before then: a new password (portcullis users passwd/rotate) or a new token (portcullis tokens issue)"
            )
        }
        let method = target.isTLS ? "CONNECT" : "GET"
        self.report.authentication = DoctorReport.Authentication(
            outcome: response.status == 403 ? "denied" : "accepted",
            scheme: self.chosen?.name,
            status: response.status,
            proxyReason: Self.proxyReason(response)
        )
        if response.status == 403 && target.isTLS {
            // A CONNECT refused after the gate: the tunnel step says why.
            self.firstAuthenticated = (target, response)
            self.report.add(
                "authentication",
                status,
                "credentials accepted: user \"\(user)\" with \(how); the proxy then refused the CONNECT (see tunnel)\(note.map { "; " + $0.message } ?? "")",
                fix: note?.fix,
                ms: totalMs,
                details: details
            )
            return true
        }
        if response.status == 403 {
            return self.report.fail(
                "authentication",
                .denied,
                "credentials accepted, but the proxy forbids \(method) \(target.requestTarget) (403): not a password problem\(Self.reasonSuffix(response))",
                fix: "ask the proxy's admins which destinations and ports are allowed for user \"\(user)\"",
                ms: totalMs,
                details: details
            )
        }
        self.firstAuthenticated = (target, response)
        self.report.add(
            "authentication",
            status,
            "accepted: user \"\(user)\" with \(how)\(note.map { "; " + $0.message } ?? "")",
            fix: note?.fix,
            ms: totalMs,
            details: details
        )
        return true
    }

    /// Whether a 401 after credentials is the proxy refusing them in the wrong words (tinyproxy
    /// 1.11 answers 407 without credentials but 401 + WWW-Authenticate to wrong ones) rather
    /// than the origin's own 401: the proxy used 401 from the start, or the 401 repeats the
    /// proxy's realm, or nothing relayed it (no `Via`).
    func isProxysOwn401(_ response: RecordedResponse) -> Bool {
        if self.offeredField == "WWW-Authenticate" { return true }
        let proxyRealms = Set(self.offered.compactMap { $0.parameter("realm") })
        let challenges = (try? ChallengeParser.parse(fieldValues: response.values("WWW-Authenticate"))) ?? []
        if challenges.contains(where: { $0.parameter("realm").map(proxyRealms.contains) ?? false }) { return true }
        return response.values("Via").isEmpty
    }

    private var chosenDescription: String {
        switch self.chosen {
        case .basic: return "Basic"
        case .digest(let c): return "Digest \(c.algorithm?.description ?? "MD5")"
        case .ntlm: return "NTLM (NTLMv2)"
        case .negotiate: return "Negotiate (Kerberos)"
        case nil: return "no credentials"
        }
    }

    mutating func authFailure(
        _ outcome: String,
        _ message: String,
        fix: String,
        response: RecordedResponse?,
        reason: String?,
        clientReason: String? = nil,
        ms: Double,
        details: [String: JSONValue]
    ) -> Bool {
        self.report.authentication = DoctorReport.Authentication(
            outcome: outcome,
            scheme: self.chosen?.name,
            status: response?.status,
            proxyReason: reason,
            clientReason: clientReason
        )
        return self.report.fail("authentication", .authFailed, message, fix: fix, ms: ms, details: details)
    }

    /// The proxy's own reason for a refusal: RFC 9209 `Proxy-Status` details (Portcullis puts
    /// its reason token there), else Squid's `X-Squid-Error`.
    static func proxyReason(_ response: RecordedResponse) -> String? {
        for value in response.values("Proxy-Status") {
            if let range = value.range(of: "details=\"") {
                let rest = value[range.upperBound...]
                if let end = rest.firstIndex(of: "\"") { return String(rest[..<end]) }
            }
            if let range = value.range(of: "error=") {
                let rest = value[range.upperBound...]
                return String(rest.prefix { $0 != ";" && $0 != "," && $0 != " " })
            }
        }
        if let squid = response.values("X-Squid-Error").first {
            return squid.split(separator: " ").first.map(String.init)
        }
        return nil
    }

    /// Seconds until the credential ends, when the proxy said (`details="credential-expires-in=N"`).
    static func credentialExpiresIn(_ response: RecordedResponse) -> Int? {
        for value in response.values("Proxy-Status") {
            guard let range = value.range(of: "credential-expires-in=") else { continue }
            return Int(value[range.upperBound...].prefix { $0.isNumber })
        }
        return nil
    }

    /// `3 d 4 h`, `5 h 12 min`, `40 s`.
    static func duration(_ seconds: Int) -> String {
        if seconds >= 86400 { return "\(seconds / 86400) d \(seconds % 86400 / 3600) h" }
        if seconds >= 3600 { return "\(seconds / 3600) h \(seconds % 3600 / 60) min" }
        if seconds >= 60 { return "\(seconds / 60) min" }
        return "\(seconds) s"
    }

    /// The next hop a `Proxy-Status` names (RFC 9209 §2.1.2), quoted or not.
    static func nextHop(_ response: RecordedResponse) -> String? {
        for value in response.values("Proxy-Status") {
            guard let range = value.range(of: "next-hop=") else { continue }
            var rest = value[range.upperBound...]
            if rest.first == "\"" {
                rest = rest.dropFirst()
                return rest.firstIndex(of: "\"").map { String(rest[..<$0]) }
            }
            return String(rest.prefix { $0 != ";" && $0 != "," && $0 != " " })
        }
        return nil
    }

    static func reasonSuffix(_ response: RecordedResponse) -> String {
        guard let reason = self.proxyReason(response) else { return "" }
        return "; proxy says: \(reason)"
    }
}
