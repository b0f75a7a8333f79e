import Foundation
import PortcullisAuth
import PortcullisKerberos

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// NTLM and Negotiate authenticate a connection, not a request: a handshake of several legs, every
// leg after the first on the connection the first went on (RFC 4559 §4; MS-NLMP over HTTP).
extension Diagnosis {
    /// Legs of Negotiate after which doctor calls it a loop (Kerberos takes one, SPNEGO two).
    static let maximumNegotiateLegs = 4

    /// How a handshake ended.
    enum HandshakeEnd {
        /// The proxy's answer to the last leg: it let the request through, refused the answer (a
        /// 407 with no next token) or said something else. `mutualVerified`: the proxy's final
        /// Negotiate token was checked.
        case answered(RecordedResponse, legs: Int, mutualVerified: Bool)
        /// A leg got no answer (not a closed connection between legs).
        case unanswered(ProbeError)
        /// The connection was gone when the next leg was to be sent on it.
        case interrupted(ProbeError, legs: Int)
        /// This machine could not make the next Kerberos token.
        case kerberosFailed(NegotiateInitiatorFailure, legs: Int)
        /// The proxy let the request through, but its final Negotiate token did not verify.
        case mutualFailed(NegotiateInitiatorFailure, RecordedResponse)
        /// The proxy's NTLM CHALLENGE cannot be read.
        case unreadableChallenge(RecordedResponse)
    }

    /// Runs the chosen scheme's handshake for a request to `target`: its first leg on `first`,
    /// the others on the same connection. `started`: Negotiate's first token, already made.
    mutating func connectionHandshake(
        _ target: DoctorTarget,
        first: ProbeRequest.Connection,
        started: KerberosOutcome? = nil
    ) throws(Pending) -> (HandshakeEnd, ms: Double) {
        if self.chosen == .ntlm { return try self.ntlmHandshake(target, first: first) }
        return try self.negotiateHandshake(target, first: first, started: started)
    }

    /// NEGOTIATE → the proxy's CHALLENGE → AUTHENTICATE (MS-NLMP §3.1.5), NTLMv2.
    private mutating func ntlmHandshake(
        _ target: DoctorTarget,
        first: ProbeRequest.Connection
    ) throws(Pending) -> (HandshakeEnd, ms: Double) {
        let (result, ms) = try self.send(ProbeRequest(target: target, credentials: .ntlmNegotiate, connection: first))
        let response: RecordedResponse
        switch result {
        case .success(let received): response = received
        case .failure(let error): return (.unanswered(error), ms)
        }
        guard response.status == 407, let challenge = Self.handshakeToken(response, scheme: "NTLM") else {
            return (.answered(response, legs: 1, mutualVerified: false), ms)
        }
        guard NTLMClient.read(challenge) != nil else { return (.unreadableChallenge(response), ms) }
        let name = Self.ntlmName(self.setup.user ?? "")
        let answer = ProbeRequest(
            target: target,
            credentials: .ntlmAuthenticate(user: name.user, domain: name.domain, challenge: challenge),
            connection: .same
        )
        let (second, secondMs) = try self.send(answer)
        switch second {
        case .success(let final): return (.answered(final, legs: 2, mutualVerified: false), ms + secondMs)
        case .failure(let error) where error.kind == .closed: return (.interrupted(error, legs: 1), ms + secondMs)
        case .failure(let error): return (.unanswered(error), ms + secondMs)
        }
    }

    /// Kerberos tokens until the proxy stops asking, then its final token checked (mutual
    /// authentication) when it sends one.
    private mutating func negotiateHandshake(
        _ target: DoctorTarget,
        first: ProbeRequest.Connection,
        started: KerberosOutcome?
    ) throws(Pending) -> (HandshakeEnd, ms: Double) {
        let host = self.setup.proxy?.host ?? ""
        var step: KerberosOutcome
        if let started {
            step = started
        } else {
            step = try self.kerberos(host: host, token: nil)
        }
        var connection = first
        var legs = 0
        var ms = 0.0
        while true {
            let complete: Bool
            switch step {
            case .failed(let failure):
                return (.kerberosFailed(failure, legs: legs), ms)
            case .established:
                // The proxy asks for more, and Kerberos has nothing more to say.
                let failure = NegotiateInitiatorFailure(
                    reason: .gssFailure,
                    detail: "the proxy asked for another leg after the Kerberos handshake was complete"
                )
                return (.kerberosFailed(failure, legs: legs), ms)
            case .token(_, let done):
                complete = done
            }
            legs += 1
            let (result, legMs) = try self.send(
                ProbeRequest(target: target, credentials: .negotiate, connection: connection)
            )
            ms += legMs
            let response: RecordedResponse
            switch result {
            case .success(let received): response = received
            case .failure(let error) where error.kind == .closed && legs > 1:
                return (.interrupted(error, legs: legs - 1), ms)
            case .failure(let error): return (.unanswered(error), ms)
            }
            connection = .same
            let token = Self.handshakeToken(response, scheme: "Negotiate")
            if response.status == 407 {
                guard let token, legs < Self.maximumNegotiateLegs else {
                    return (.answered(response, legs: legs, mutualVerified: false), ms)
                }
                step = try self.kerberos(host: host, token: token)
                continue
            }
            // RFC 4559 §5: the success response may carry the proxy's last token.
            guard let token, !complete else { return (.answered(response, legs: legs, mutualVerified: false), ms) }
            if case .failed(let failure) = try self.kerberos(host: host, token: token) {
                return (.mutualFailed(failure, response), ms)
            }
            return (.answered(response, legs: legs, mutualVerified: true), ms)
        }
    }

    /// A request to a target after the authentication step, with the chosen scheme: on a reused
    /// connection NTLM and Negotiate first try without credentials (the connection may be the
    /// one the authentication step proved), and run the handshake again if challenged.
    mutating func authenticatedSend(
        _ target: DoctorTarget,
        connection: ProbeRequest.Connection
    ) throws(Pending) -> (Result<RecordedResponse, ProbeError>, ms: Double) {
        guard self.authRequired, let chosen = self.chosen, chosen.isConnectionBound else {
            let credentials: ProbeRequest.Credentials = self.authRequired ? self.credentials() : .none
            return try self.send(ProbeRequest(target: target, credentials: credentials, connection: connection))
        }
        var ms = 0.0
        if connection == .reuse {
            let (result, plainMs) = try self.send(ProbeRequest(target: target, credentials: .none, connection: .reuse))
            ms += plainMs
            guard case .success(let response) = result, response.status == 407 else { return (result, ms) }
        }
        let (end, handshakeMs) = try self.connectionHandshake(target, first: connection)
        ms += handshakeMs
        switch end {
        case .answered(let response, _, _), .unreadableChallenge(let response):
            return (.success(response), ms)
        case .unanswered(let error):
            return (.failure(error), ms)
        case .interrupted(let error, _):
            return (
                .failure(
                    ProbeError(kind: error.kind, message: "the \(chosen.name) handshake broke off: \(error.message)")
                ),
                ms
            )
        case .kerberosFailed(let failure, _):
            return (.failure(ProbeError(kind: .other, message: "Kerberos: \(failure.detail)")), ms)
        case .mutualFailed(let failure, _):
            return (
                .failure(
                    ProbeError(
                        kind: .other,
                        message: "the proxy's final Negotiate token did not verify: \(failure.detail)"
                    )
                ),
                ms
            )
        }
    }

    // MARK: - Reading the legs

    /// The token of the proxy's `scheme` challenge (`NTLM <base64>`) in a response; empty when it
    /// is not base64, `nil` when there is none.
    static func handshakeToken(_ response: RecordedResponse, scheme: String) -> [UInt8]? {
        let challenges = (try? ChallengeParser.parse(fieldValues: response.values("Proxy-Authenticate"))) ?? []
        guard let text = challenges.first(where: { $0.schemeIs(scheme) && $0.token68 != nil })?.token68 else {
            return nil
        }
        return Data(base64Encoded: text).map { Array($0) } ?? []
    }

    /// `DOMAIN\user` as curl and Windows write it, else a user with no domain.
    static func ntlmName(_ text: String) -> (user: String, domain: String) {
        guard let slash = text.firstIndex(of: "\\") else { return (text, "") }
        return (String(text[text.index(after: slash)...]), String(text[..<slash]))
    }

    /// Whether `host` is an IPv4 or IPv6 address rather than a name.
    static func isIPAddress(_ host: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }
}
