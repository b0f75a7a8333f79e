import PortcullisAuth
import PortcullisKerberos

extension Diagnosis {
    // MARK: - 5. Authentication with NTLM or Negotiate

    /// The authentication step for a scheme whose handshake authenticates the connection.
    mutating func checkConnectionBoundAuthentication(_ target: DoctorTarget) throws(Pending) -> Bool {
        guard let chosen else { return false }
        let who: String
        if chosen == .ntlm {
            guard let user = self.setup.user else {
                self.report.authentication = DoctorReport.Authentication(
                    outcome: "no-credentials",
                    scheme: chosen.name,
                    status: nil,
                    proxyReason: nil
                )
                return self.report.fail(
                    "authentication",
                    .authFailed,
                    "the proxy requires authentication (NTLM) and no credentials were given",
                    fix:
                        "pass --user NAME (DOMAIN\\NAME when the proxy wants a domain) with --password-stdin or --password-env VAR"
                )
            }
            who = user
        } else {
            who = self.principal ?? "?"
        }
        let (end, ms) = try self.connectionHandshake(target, first: .reuse, started: self.kerberosStart)
        switch end {
        case .unanswered(let error):
            return self.report.fail(
                "authentication",
                .proxyUnreachable,
                "\(target.isTLS ? "CONNECT" : "GET") \(target.requestTarget) with credentials: \(error.message)",
                fix: "the proxy stopped answering once credentials were sent; check its logs",
                ms: ms
            )
        case .interrupted(let error, let legs):
            return self.authFailure(
                "handshake-interrupted",
                "the connection closed in the middle of the \(chosen.name) handshake (after \(legs) of its legs: \(error.message)): the proxy, or a proxy or load balancer between here and it, does not keep the connection, and \(chosen.name) authenticates a connection",
                fix:
                    "\(chosen.name) cannot work through something that does not keep one client connection on one proxy connection: reach the proxy directly, or use a scheme that authenticates each request (Basic over TLS, Digest)",
                response: nil,
                reason: nil,
                ms: ms,
                details: ["legs": .int(legs)]
            )
        case .kerberosFailed(let failure, _):
            return self.kerberosFailure(failure, ms: ms)
        case .mutualFailed(let failure, let response):
            return self.authFailure(
                "kerberos-failed",
                "the proxy let the request through, but its final Negotiate token does not verify (mutual authentication failed: \(failure.detail)): the answer may not come from the holder of HTTP/\(self.setup.proxy?.host ?? "?")'s key",
                fix:
                    "check what answers at this address (a transparent proxy or TLS inspection in between?); the proxy's admins can compare its keytab with the KDC's key version (kvno HTTP/\(self.setup.proxy?.host ?? "host"))",
                response: response,
                reason: nil,
                clientReason: "mutual-auth-failed",
                ms: ms,
                details: ["status": .int(response.status), "kerberos_detail": .string(failure.detail)]
            )
        case .unreadableChallenge(let response):
            return self.authFailure(
                "malformed",
                "the proxy's NTLM CHALLENGE cannot be read (not a well-formed MS-NLMP type 2 message)",
                fix: "report it to the proxy's admins with the Proxy-Authenticate value; no client setting fixes this",
                response: response,
                reason: Self.proxyReason(response),
                ms: ms,
                details: ["status": .int(response.status)]
            )
        case .answered(let response, let legs, let mutual):
            let reason = Self.proxyReason(response)
            var details: [String: JSONValue] = ["status": .int(response.status), "legs": .int(legs)]
            if let reason { details["proxy_reason"] = .string(reason) }
            let proxys401 = response.status == 401 && self.isProxysOwn401(response)
            if proxys401 { details["nonconformant_401"] = .bool(true) }
            if response.status == 407 || proxys401 {
                let again = Self.handshakeToken(response, scheme: chosen.name) != nil || reason == "continue"
                let refusal = self.refusal(again ? "continue" : reason, who: who, legs: legs)
                return self.authFailure(
                    refusal.outcome,
                    refusal.message,
                    fix: refusal.fix,
                    response: response,
                    reason: reason,
                    ms: ms,
                    details: details
                )
            }
            if response.status == 503, reason == AuthFailureReason.tooManyHandshakes.token {
                return self.authFailure(
                    "rejected",
                    "the proxy has too many \(chosen.name) handshakes in progress and refused this one (503, too-many-handshakes)",
                    fix: "try again in a moment; if it lasts, the proxy's admins can raise --max-pending-handshakes",
                    response: response,
                    reason: reason,
                    ms: ms,
                    details: details
                )
            }
            let how: String
            var note: (message: String, fix: String)?
            if chosen == .ntlm {
                how = "NTLM (NTLMv2, \(legs == 1 ? "1 leg" : "\(legs) legs on one connection"))"
                if self.setup.passwordIsNonASCII {
                    note = (
                        "the password has non-ASCII characters: curl (7.88) makes the NT hash from their UTF-8 bytes instead of UTF-16, so curl --proxy-ntlm fails with this password where doctor succeeds",
                        "with curl, use an ASCII password; browsers, Windows and pyspnego (requests-ntlm) encode it right"
                    )
                }
            } else {
                details["mutual_authentication"] = .bool(mutual)
                how =
                    mutual
                    ? "Negotiate (Kerberos; the proxy's final token verified)"
                    : "Negotiate (Kerberos; the proxy sent no final token to verify)"
            }
            return self.credentialsAccepted(
                target,
                response,
                who: who,
                how: how,
                ms: ms,
                details: details,
                status: note == nil ? .pass : .warn,
                note: note
            )
        }
    }

    /// What the proxy's refusal of an NTLM or Negotiate answer means, by its reason token
    /// (Portcullis' `Proxy-Status` details; `continue`: it asked for yet another leg).
    func refusal(_ reason: String?, who: String, legs: Int) -> (outcome: String, message: String, fix: String) {
        let scheme = self.chosen?.name ?? "?"
        let host = self.setup.proxy?.host ?? "?"
        let says = reason.map { " (proxy says: \($0))" } ?? ""
        switch reason {
        case "continue":
            return (
                "challenge-loop",
                "the \(scheme) handshake did not end after \(legs) legs: the proxy keeps asking for another",
                "report it to the proxy's admins; no client setting fixes this"
            )
        case "invalid-credentials":
            return (
                "rejected",
                "the proxy rejected the \(scheme) answer of user \"\(who)\": a wrong password, or a user the proxy holds no NTLM password for\(says)",
                "check the user name (DOMAIN\\NAME if the proxy wants a domain) and the password; a Portcullis user needs an NT hash: portcullis users passwd NAME --ntlm (or users add NAME --ntlm)"
            )
        case "ntlm-v1-refused":
            return (
                "rejected",
                "the proxy refuses NTLMv1 and LM answers, and says this answer was one\(says)",
                "clients must answer with NTLMv2 (Windows: LmCompatibilityLevel 3 or more; pyspnego: LM_COMPAT_LEVEL unset or 3+); doctor sends NTLMv2, so if doctor sees this, something between here and the proxy rewrote its answer"
            )
        case "clock-skew":
            return (
                "rejected",
                "the proxy says this machine's clock is too far from its own\(says)",
                "synchronise the clocks of this machine and the proxy (NTP); Kerberos and Portcullis' NTLM allow 5 minutes"
            )
        case "no-keytab-key":
            return (
                "rejected",
                "the proxy cannot decrypt the Kerberos ticket for HTTP/\(host): its keytab holds no key for it — a keytab exported before the principal's key changed, or for another name\(says)",
                "nothing to change here: the proxy's administrator must export a current keytab for HTTP/\(host) (kadmin ktadd, or ktpass on Active Directory) and give it to the proxy (portcullis serve --keytab FILE)"
            )
        case "unsupported-mechanism":
            return (
                "rejected",
                "the proxy does not accept the mechanism of the Negotiate token (doctor sends Kerberos in SPNEGO)\(says)",
                "check that the proxy has Kerberos enabled with a keytab; a proxy that wants NTLM inside Negotiate can be checked with --scheme ntlm"
            )
        case "gss-failure":
            return (
                "rejected",
                "the proxy could not accept the Kerberos token\(says)",
                "its log has GSSAPI's reason; check that the proxy's keytab and realm match the KDC that issued this ticket (klist)"
            )
        case "bad-mic":
            return (
                "rejected",
                "the NTLM message integrity code does not match: the handshake was altered on the way\(says)",
                "look for a device between here and the proxy that rewrites Proxy-Authorization"
            )
        case "stale-handshake":
            return (
                "rejected",
                "the proxy says the AUTHENTICATE came too long after its CHALLENGE\(says)",
                "try again; if it lasts, the proxy's clock is jumping"
            )
        case "unexpected-message":
            return (
                "handshake-interrupted",
                "the proxy got the NTLM AUTHENTICATE on a connection where it had sent no CHALLENGE: something between here and the proxy does not keep one client connection on one proxy connection\(says)",
                "NTLM authenticates a connection: reach the proxy directly, or use Basic over TLS or Digest through that device"
            )
        case "malformed-credentials":
            return (
                "malformed",
                "the proxy says the \(scheme) answer is malformed\(says)",
                "the Proxy-Authorization header was damaged on the way, or the proxy reads \(scheme) differently; report it to its admins"
            )
        case "missing-credentials":
            return (
                "challenge-loop",
                "the proxy keeps asking although credentials were sent: it never saw them (something between here and the proxy drops Proxy-Authorization?)",
                "check for another proxy or a load balancer in between that strips Proxy-Authorization"
            )
        default:
            let fix =
                scheme == "NTLM"
                ? "check the user name (DOMAIN\\NAME if the proxy wants a domain) and the password"
                : "check the ticket with klist: the proxy must accept its principal and realm"
            return ("rejected", "the proxy rejected the \(scheme) answer of user \"\(who)\"\(says)", fix)
        }
    }

    /// The authentication step when this machine could not make a Kerberos token.
    private mutating func kerberosFailure(_ failure: NegotiateInitiatorFailure, ms: Double) -> Bool {
        let host = self.setup.proxy?.host ?? "?"
        let detail = failure.detail
        let outcome = failure.reason == .noTicket ? "no-credentials" : "kerberos-failed"
        let message: String
        let fix: String
        switch failure.reason {
        case .noTicket:
            message = "no Kerberos ticket to answer Negotiate with (\(detail))"
            fix =
                "run kinit (kinit USER@REALM) and check it with klist; a ticket cache elsewhere is named by KRB5CCNAME. Or answer with NTLM: --scheme ntlm --user NAME --password-stdin"
        case .ticketExpired:
            message = "expired Kerberos ticket: \(detail)"
            fix = "run kinit again (kinit -R renews a renewable ticket before it ends)"
        case .noServicePrincipal where Self.isIPAddress(host):
            message =
                "the proxy is named by its IP address \(host), and Kerberos has no service principal for an address (\(detail))"
            fix =
                "name the proxy by the host name its HTTP/ principal was made for (the name in the proxy's keytab: HTTP/proxy.example.org → http://proxy.example.org:PORT) in --proxy or HTTP_PROXY/HTTPS_PROXY"
        case .noServicePrincipal:
            message = "the KDC knows no service principal HTTP/\(host) (\(detail))"
            fix =
                "use the host name the proxy's HTTP/ principal was made for (an alias or CNAME does not count unless krb5.conf canonicalises it), or ask the KDC's admins to add HTTP/\(host)"
        case .clockSkew:
            message = "this machine's clock is too far from the KDC's for Kerberos (\(detail))"
            fix = "synchronise this machine's clock (NTP); Kerberos allows 5 minutes"
        case .kdcUnreachable:
            message = "no KDC of the realm answers (\(detail))"
            fix =
                "check the way to the KDC: the kdc lines of krb5.conf (KRB5_CONFIG) or the DNS SRV records _kerberos._tcp, a firewall, a VPN that is down"
        case .gssFailure:
            message = "Kerberos could not make a token for HTTP@\(host) (\(detail))"
            fix = "check the ticket with klist and the realm settings of krb5.conf (KRB5_CONFIG)"
        }
        return self.authFailure(
            outcome,
            message,
            fix: fix,
            response: nil,
            reason: nil,
            clientReason: failure.reason.rawValue,
            ms: ms,
            details: ["client_reason": .string(failure.reason.rawValue), "kerberos_detail": .string(detail)]
        )
    }
}
