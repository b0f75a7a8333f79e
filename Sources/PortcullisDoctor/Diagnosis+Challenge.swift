import PortcullisAuth

extension Diagnosis {
    // MARK: - 3. Challenge

    mutating func checkChallenge() throws(Pending) -> Bool {
        guard let target = self.firstTarget else { return false }
        let request = ProbeRequest(target: target, credentials: .none)
        let method = request.method
        guard
            let (response, ms) = try self.sendOrFail(
                request,
                step: "challenge",
                what: "without credentials",
                fix:
                    "the proxy accepted the connection but did not answer; check that \(self.setup.proxy?.authority ?? "it") is an HTTP proxy"
            )
        else { return false }
        switch response.status {
        case 407, 401:
            let field = response.status == 407 ? "Proxy-Authenticate" : "WWW-Authenticate"
            self.offeredField = field
            let values = response.values(field)
            var details: [String: JSONValue] = ["status": .int(response.status)]
            do {
                self.offered = try ChallengeParser.parse(fieldValues: values)
            } catch {
                self.offered = []
                details["parse_error"] = .string("\(error)")
            }
            self.report.challenges = self.offered.map { Self.info($0, field: field) }
            let listed = self.offered.map(Self.describe).joined(separator: "; ")
            if response.status == 401 {
                details["nonconformant_401"] = .bool(true)
                self.report.add(
                    "challenge",
                    .warn,
                    "the proxy answered 401 with WWW-Authenticate where RFC 9110 requires 407 with Proxy-Authenticate (tinyproxy does this): \(listed.isEmpty ? "no challenge" : listed)",
                    fix:
                        "clients treat a 401 as the origin's challenge and may never send proxy credentials; use a proxy that answers 407, or give credentials in the proxy URL so they are sent up front",
                    ms: ms,
                    details: details
                )
                return true
            }
            if values.isEmpty || self.offered.isEmpty {
                self.report.add(
                    "challenge",
                    .warn,
                    "407 without a usable Proxy-Authenticate challenge\(details["parse_error"].map { _ in " (unparsable)" } ?? "") — RFC 9110 §11.7.1 requires one",
                    fix: "no client can know how to answer; report it to the proxy's admins",
                    ms: ms,
                    details: details
                )
                return true
            }
            self.report.add("challenge", .pass, "407: \(listed)", ms: ms, details: details)
            return true
        case 403:
            return self.report.fail(
                "challenge",
                .denied,
                "the proxy forbids \(method) \(target.requestTarget) (403) before asking for credentials: not a password problem\(Self.reasonSuffix(response))",
                fix: "ask the proxy's admins which clients, destinations and ports are allowed",
                ms: ms,
                details: ["status": .int(403)]
            )
        default:
            self.authRequired = false
            self.firstAuthenticated = (target, response)
            self.report.authentication = DoctorReport.Authentication(
                outcome: "not-required",
                scheme: nil,
                status: response.status,
                proxyReason: nil
            )
            self.report.add(
                "challenge",
                .pass,
                "the proxy did not ask for credentials (\(response.status) to \(method) \(target.requestTarget))",
                ms: ms,
                details: ["status": .int(response.status)]
            )
            return true
        }
    }

    static func info(_ challenge: Challenge, field: String) -> DoctorReport.ChallengeInfo {
        var params: [String: String] = [:]
        for p in challenge.parameters where params[p.name.lowercased()] == nil { params[p.name.lowercased()] = p.value }
        return DoctorReport.ChallengeInfo(
            scheme: challenge.scheme,
            realm: challenge.parameter("realm"),
            params: params,
            field: field
        )
    }

    static func describe(_ challenge: Challenge) -> String {
        var s = challenge.scheme
        if let realm = challenge.parameter("realm") { s += " realm=\"\(realm)\"" }
        if challenge.schemeIs("Digest") {
            s += " algorithm=\(challenge.parameter("algorithm") ?? "MD5")"
            if let qop = challenge.parameter("qop") { s += " qop=\(qop)" }
            if challenge.parameter("stale")?.lowercased() == "true" { s += " stale" }
            if challenge.parameter("userhash")?.lowercased() == "true" { s += " userhash" }
        }
        return s
    }
}
