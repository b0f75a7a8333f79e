import Foundation
import Logging
import NIOCore
import PortcullisAuth
import PortcullisKerberos
import PortcullisStores

/// A header for the response that lets a request through.
enum SuccessHeader: Equatable {
    /// Digest's `Proxy-Authentication-Info` value (rspauth, nextnonce).
    case authenticationInfo([UInt8])
    /// Negotiate's final token, sent back as `Proxy-Authenticate: Negotiate …` (RFC 4559 §5),
    /// with which the client checks the proxy (mutual authentication).
    case negotiate([UInt8])
}

// Negotiate (Kerberos) and NTLM: several legs on one connection, each answered with a 407
// carrying the next token, then the connection is authenticated. Later requests on it pass
// without credentials as the same user (as Squid and IIS do), until a request brings a new
// token or the user store changes (NTLM users then prove themselves again). Nothing of it
// carries over to another connection.
extension GateStateMachine {
    /// Who a connection proved to be with Negotiate or NTLM.
    struct BoundIdentity: Equatable {
        var user: String
        /// The other spelling `--policy` may use (see ``Record/otherName``).
        var otherName: String? = nil
        var scheme: AuthScheme
        /// NTLM: the store generation it was proved under; a change (a password, a disable)
        /// ends it. Negotiate identities come from the KDC, not the store: `nil`.
        var generation: UInt64?
        /// The account's expiry or the end of a rotation's grace, when it has one.
        var validUntil: Date?
        /// Negotiate: the token that established the identity. A client that sends it again on
        /// the connection would meet the Kerberos replay cache; it is recognised here instead:
        /// the same connection, the same token, the same identity.
        var establishingToken: [UInt8]? = nil
    }

    struct NegotiateLeg {
        var id: CheckID
        var request: Request
        var token: [UInt8]
    }

    /// An NTLM answer being verified against what the store found.
    struct NTLMVerification {
        var wait: NTLMSecretsLookup
        var secrets: NTLMSecrets?
        /// The user exists but has no NT hash (logged as such; refused like a wrong password).
        var notEnrolled: String?
    }

    struct NTLMSecretsLookup {
        var id: CheckID
        var request: Request
        var lookup: NTLMAcceptor.LookupID
        var user: String
        /// The throttle's slot: an NTLM answer is a password guess like a Basic one.
        var ticket: AuthThrottle.Ticket
    }

    /// A store's user proved for the whole connection (NTLM, a client certificate): bound until
    /// the store changes or the account's expiry or grace ends, and this request let through.
    mutating func bindStoreUser(
        _ request: Request,
        user: String,
        scheme: AuthScheme,
        validFor: TimeInterval?,
        _ environment: some GateEnvironment
    ) -> Action {
        self.boundIdentity = BoundIdentity(
            user: user,
            scheme: scheme,
            generation: environment.credentials?.storeGeneration,
            validUntil: validFor.map { environment.currentDate.addingTimeInterval($0) }
        )
        return self.accepted(request, user: user, scheme: scheme, authenticationInfo: nil, environment)
    }

    /// A request without credentials on a connection that has proved who it is: on as that user.
    mutating func continueBound(_ request: Request, in environment: some GateEnvironment) -> Action? {
        guard let bound = self.boundIdentity else { return nil }
        if let generation = bound.generation, generation != environment.credentials?.storeGeneration {
            self.boundIdentity = nil
            return nil
        }
        if let end = bound.validUntil, end <= environment.currentDate {
            self.boundIdentity = nil
            return nil
        }
        let record = Record(user: bound.user, otherName: bound.otherName, scheme: bound.scheme, result: "ok")
        return self.authorized(request, record, authenticationInfo: nil, environment)
    }

    // MARK: - Negotiate

    /// One Negotiate token: to the acceptor, off the event loop.
    mutating func startNegotiate(
        _ request: Request,
        token: [UInt8],
        in environment: some GateEnvironment
    ) -> Action {
        self.boundIdentity = nil
        if let refusal = self.enterHandshake(request, scheme: .negotiate, environment) { return refusal }
        let id = self.newCheckID()
        self.transition(to: .acceptingNegotiate(NegotiateLeg(id: id, request: request, token: token)))
        return .acceptNegotiate(id, token)
    }

    /// The acceptor's answer to a Negotiate token.
    mutating func negotiateLegFinished(
        _ id: CheckID,
        step: NegotiateStep,
        in environment: some GateEnvironment
    ) -> Action {
        guard case .acceptingNegotiate(let leg) = self.state, leg.id == id else { return .none }
        self.transition(to: .idle)
        switch step {
        case .continueNeeded(let token):
            return self.continueHandshake(leg.request, scheme: .negotiate, token: token, environment)
        case .established(let principal, let localName, let token):
            self.leaveHandshake(environment)
            // `--strip-realm` names the user by what krb5.conf maps the principal to (a principal
            // of another realm maps to nothing and keeps its full name: `alice@OTHER.ORG` is not
            // the local `alice`). Either way the policy may name both spellings.
            let user = environment.stripsRealm ? (localName ?? principal) : principal
            let otherName = user == principal ? localName : principal
            self.boundIdentity = BoundIdentity(
                user: user,
                otherName: otherName,
                scheme: .negotiate,
                generation: nil,
                validUntil: nil,
                establishingToken: leg.token
            )
            return self.accepted(
                leg.request,
                user: user,
                otherName: otherName,
                scheme: .negotiate,
                authenticationInfo: token.map(SuccessHeader.negotiate),
                environment
            )
        case .failed(let failure):
            self.leaveHandshake(environment)
            let reason: AuthFailureReason
            let advice: String
            switch failure.reason {
            case .clockSkew:
                reason = .clockSkew
                advice =
                    "the client's clock differs from the proxy's by more than Kerberos allows; synchronise the clocks (NTP)"
            case .noKeytabKey:
                reason = .noKeytabKey
                advice =
                    "the proxy's keytab has no key for the ticket the client presented; the proxy's administrator must refresh its keytab (the service principal's key or version changed)"
            case .unsupportedMechanism:
                reason = .unsupportedMechanism
                advice =
                    "the Negotiate token is not Kerberos; get a Kerberos ticket (kinit) and name the proxy by its host name"
            case .gssFailure:
                reason = .gssFailure
                advice =
                    "the proxy could not accept the Kerberos token; check the client's ticket (klist) and that it names this proxy"
            }
            return self.reject(
                leg.request,
                AuthFailure(reason: reason, explanation: advice, presentedScheme: AuthScheme.negotiate.rawValue),
                logDetail: ["gss": "\(failure.detail)"],
                environment
            )
        }
    }

    // MARK: - NTLM

    /// One NTLM message (as `NTLM …`, or inside `Negotiate …`).
    mutating func startNTLM(
        _ request: Request,
        message: [UInt8],
        wireScheme: AuthScheme,
        in environment: some GateEnvironment
    ) -> Action {
        guard let settings = environment.ntlmSettings, let cache = environment.credentials else {
            return Self.storeUnavailable(request, scheme: .ntlm, environment)
        }
        self.boundIdentity = nil
        var acceptor = self.ntlm ?? NTLMAcceptor(settings: settings)
        var random = environment.makeRandom()
        let action = acceptor.messageReceived(message, now: Self.fileTime(environment.currentDate), random: &random)
        self.ntlm = acceptor
        switch action {
        case .sendChallenge(let challenge):
            if let refusal = self.enterHandshake(request, scheme: .ntlm, environment) { return refusal }
            return self.continueHandshake(request, scheme: wireScheme, token: challenge, environment)
        case .lookUpNTHash(let lookup):
            self.leaveHandshake(environment)
            let ticket: AuthThrottle.Ticket
            switch self.beginCheck(
                request,
                Record(user: nil, scheme: .ntlm, result: "none"),
                user: lookup.user,
                credential: .unrepeatable(),
                environment
            ) {
            case .granted(let granted): ticket = granted
            case .refused(let refusal):
                self.ntlm = nil
                return refusal
            }
            let wait = NTLMSecretsLookup(
                id: self.newCheckID(),
                request: request,
                lookup: lookup.id,
                user: lookup.user,
                ticket: ticket
            )
            if let cached = cache.cachedNTLMSecrets(name: lookup.user, now: request.started) {
                return self.finishNTLM(wait, lookup: cached, now: request.started, environment)
            }
            self.transition(to: .lookingUpNTLMSecrets(wait))
            return .lookUpNTLMSecrets(wait.id, name: lookup.user)
        case .refuse(let refusal):
            self.leaveHandshake(environment)
            return self.refuseNTLM(request, refusal, counted: nil, environment)
        case .accept, .acceptPrevious, .ignore:
            // Only the store's answer leads there.
            self.leaveHandshake(environment)
            return Self.storeUnavailable(request, scheme: .ntlm, environment)
        }
    }

    /// The store's answer for an NTLM user.
    mutating func ntlmSecretsFound(
        _ id: CheckID,
        lookup: NTLMLookup,
        now: NIODeadline,
        in environment: some GateEnvironment
    ) -> Action {
        guard case .lookingUpNTLMSecrets(let wait) = self.state, wait.id == id else {
            // Nobody waits for it any more: its throttle slot is given back.
            if let index = self.unwantedChecks.firstIndex(where: { $0.id == id }) {
                environment.checkAbandoned(self.unwantedChecks.remove(at: index).ticket)
            }
            return .none
        }
        self.transition(to: .idle)
        return self.finishNTLM(wait, lookup: lookup, now: now, environment)
    }

    /// The store answered: the AUTHENTICATE is verified against the user's NT hashes off the
    /// event loop (``Action/verifyNTLM(_:_:current:previous:)``); an unknown or unenrolled user
    /// against a decoy, so that it costs what a wrong password costs.
    private mutating func finishNTLM(
        _ wait: NTLMSecretsLookup,
        lookup: NTLMLookup,
        now: NIODeadline,
        _ environment: some GateEnvironment
    ) -> Action {
        var verification = NTLMVerification(wait: wait, secrets: nil, notEnrolled: nil)
        switch lookup {
        case .unavailable:
            environment.checkAbandoned(wait.ticket)
            self.ntlm = nil
            return Self.storeUnavailable(wait.request, scheme: .ntlm, environment)
        case .unknownUser:
            break
        case .notEnrolled(let user):
            verification.notEnrolled = user
        case .found(let found):
            verification.secrets = found
        }
        guard let pending = self.ntlm?.pendingVerification(for: wait.lookup) else {
            environment.checkAbandoned(wait.ticket)
            return .none
        }
        self.transition(to: .verifyingNTLM(verification))
        return .verifyNTLM(
            wait.id,
            pending,
            current: verification.secrets?.ntHash,
            previous: verification.secrets?.previousNTHash
        )
    }

    /// The NT hash check finished (`nil`: it could not run, the proxy is shutting down).
    mutating func ntlmVerified(
        _ id: CheckID,
        _ result: NTLMAcceptor.Verification?,
        now: NIODeadline,
        in environment: some GateEnvironment
    ) -> Action {
        guard case .verifyingNTLM(let verification) = self.state, verification.wait.id == id else {
            if let index = self.unwantedChecks.firstIndex(where: { $0.id == id }) {
                environment.checkAbandoned(self.unwantedChecks.remove(at: index).ticket)
            }
            return .none
        }
        self.transition(to: .idle)
        let wait = verification.wait
        guard let result, var acceptor = self.ntlm else {
            environment.checkAbandoned(wait.ticket)
            return Self.storeUnavailable(wait.request, scheme: .ntlm, environment)
        }
        let action = acceptor.verificationFinished(result, for: wait.lookup)
        self.ntlm = acceptor
        switch action {
        case .accept, .acceptPrevious:
            guard let secrets = verification.secrets else {
                environment.checkAbandoned(wait.ticket)
                return Self.storeUnavailable(wait.request, scheme: .ntlm, environment)
            }
            let outcome = secrets.standing.outcome(
                user: secrets.user,
                matchedCurrent: { if case .accept = action { return true } else { return false } }(),
                now: environment.currentDate
            )
            switch outcome {
            case .accepted(let user, let validFor, _):
                environment.checkSucceeded(wait.ticket, now: now)
                environment.credentials?.noteNTLMLogin(name: wait.user, user: user)
                return self.bindStoreUser(wait.request, user: user, scheme: .ntlm, validFor: validFor, environment)
            case .rejected(let reason):
                environment.checkAbandoned(wait.ticket)
                return self.noLongerValid(wait.request, reason: reason, user: secrets.user, scheme: .ntlm, environment)
            }
        case .refuse(let refusal):
            let counted = environment.checkFailed(wait.ticket, now: now)
            if let user = verification.notEnrolled {
                // Worded to the client like a wrong password (it must not learn the name
                // exists); the operator's log says what to do.
                return self.refuseNTLM(
                    wait.request,
                    .invalidCredentials(NTLMIdentity(user: user, domain: "")),
                    counted: counted,
                    logDetail: ["user": "\(user)", "detail": "no-nt-hash (add one with users passwd --ntlm)"],
                    environment
                )
            }
            return self.refuseNTLM(wait.request, refusal, counted: counted, environment)
        case .sendChallenge, .lookUpNTHash, .ignore:
            environment.checkAbandoned(wait.ticket)
            return .none
        }
    }

    private mutating func refuseNTLM(
        _ request: Request,
        _ refusal: NTLMRefusal,
        counted: (delay: TimeAmount, lockedOut: Bool)?,
        logDetail: Logger.Metadata = [:],
        _ environment: some GateEnvironment
    ) -> Action {
        var detail = logDetail
        if let claimed = refusal.claimed, detail["user"] == nil { detail["user"] = "\(claimed.user)" }
        let failure = AuthFailure(
            reason: refusal.reason,
            explanation: refusal.explanation,
            presentedScheme: AuthScheme.ntlm.rawValue
        )
        return self.reject(
            request,
            failure,
            user: refusal.claimed?.user,
            counted: counted,
            logDetail: detail,
            environment
        )
    }

    // MARK: - Handshakes in progress

    /// A 407 carrying the next leg's token. Not a failure: nothing is counted against the
    /// address, and the connection stays open for the next leg.
    private mutating func continueHandshake(
        _ request: Request,
        scheme: AuthScheme,
        token: [UInt8],
        _ environment: some GateEnvironment
    ) -> Action {
        let record = Record(user: nil, scheme: scheme, result: "continue")
        environment.metrics.authOutcome(scheme: scheme, reason: "continue")
        let response = ProxyResponse(
            status: .proxyAuthenticationRequired,
            proxyError: nil,
            details: "continue",
            message: "\(scheme.headerName) handshake in progress: answer the challenge on this connection.",
            extraHeaders: [("Proxy-Authenticate", "\(scheme.headerName) \(Data(token).base64EncodedString())")]
        )
        return .refuse(record, response, close: false)
    }

    /// Counts this connection among the handshakes in progress (`--max-pending-handshakes`),
    /// or the 503 when there are too many.
    private mutating func enterHandshake(
        _ request: Request,
        scheme: AuthScheme,
        _ environment: some GateEnvironment
    ) -> Action? {
        guard !self.inHandshake else { return nil }
        guard environment.beginHandshake() else {
            let record = Record(user: nil, scheme: scheme, result: AuthFailureReason.tooManyHandshakes.token)
            environment.metrics.authOutcome(scheme: scheme, reason: record.result)
            if environment.mayLog(.tooManyHandshakes) {
                environment.log(
                    .warning,
                    "too many Negotiate/NTLM handshakes in progress; refusing new ones",
                    metadata: ["client": "\(request.clientAddress)"]
                )
            }
            let response = ProxyResponse(
                status: .serviceUnavailable,
                proxyError: nil,
                details: AuthFailureReason.tooManyHandshakes.token,
                message: "too many authentications are in progress on this proxy; try again in a moment.",
                extraHeaders: [("Retry-After", "1")]
            )
            return .refuse(record, response, close: false)
        }
        self.inHandshake = true
        return nil
    }

    /// The connection closed: what the gate waited for is not wanted, and a handshake it was
    /// in the middle of no longer counts.
    mutating func connectionClosed(in environment: some GateEnvironment) {
        self.cancel()
        self.leaveHandshake(environment)
        self.ntlm = nil
        self.boundIdentity = nil
    }

    /// The connection's handshake ended (or the connection closed): no longer counted.
    mutating func leaveHandshake(_ environment: some GateEnvironment) {
        guard self.inHandshake else { return }
        self.inHandshake = false
        environment.endHandshake()
    }

    /// NTLM's clock: 100 ns since 1601.
    static func fileTime(_ date: Date) -> NTLMFileTime {
        NTLMFileTime(unixMilliseconds: UInt64(max(0, date.timeIntervalSince1970 * 1000)))
    }

    static func isConnectionBound(_ value: ByteBufferView) -> Bool {
        (value.count > 10 && FieldName.equals(value.prefix(10), "negotiate "))
            || (value.count > 5 && FieldName.equals(value.prefix(5), "ntlm "))
    }
}
