import Logging
import NIOCore
import PortcullisAuth
import PortcullisStores

/// The 407 gate of one client connection: decides each request's way through the checks, says
/// what to wait for, and keeps what the connection remembers between requests.
///
/// A request meets the checks in one order: the address lockout (asked before the credential
/// cache, so that a locked address learns nothing from a right password), the credential
/// cache, the credential itself (Basic checked off the event loop; Digest against the user's
/// secrets, then its nonce), the account's standing, the access rules, the per-user limits.
///
/// While the gate waits — for a password check, a store lookup, or the tarpit's delay before a
/// 407 — its state holds that one step and a ``CheckID``. A completion whose id the state does
/// not hold (late, repeated, or after ``cancel()``) finds nothing to act on: it gets
/// ``Action/none``. The one thing such a completion still does is tell the login throttle how
/// a Basic check ended, exactly once, so that its slot is given back and a wrong guess counts.
///
/// The handler carries out the ``Action``s; time comes in with the events; the shared tables,
/// metrics and the log are reached through a ``GateEnvironment``.
struct GateStateMachine {
    /// Names one wait of the gate: a completion carries it back.
    struct CheckID: Hashable, Sendable {
        var value: UInt64
    }

    /// What the gate needs to know of a request.
    struct Request {
        var head: RequestHead
        var target: RequestTarget
        /// When its head was read: the time of its cache and throttle decisions.
        var started: NIODeadline
        var clientAddress: String
    }

    /// What the access log and the metrics say of a request's authentication.
    struct Record: Equatable {
        var user: String?
        /// The same user's other spelling, which `--policy` rules may name too: a Kerberos
        /// principal's local name (`alice` for `alice@EXAMPLE.ORG`) or, under `--strip-realm`,
        /// the principal.
        var otherName: String?
        /// The scheme the client presented (`basic`, `digest`, a registered other), if any.
        var scheme: String?
        /// `none`, `ok` or a reason token.
        var result: String
        /// The label (or `id=…`) of the short-lived token the user logged in with.
        var token: String?
        /// Seconds until the credential ends, when that is within the expiry warning.
        var expiresIn: Int?

        init(user: String?, otherName: String? = nil, scheme: String?, result: String) {
            self.user = user
            self.otherName = otherName
            self.scheme = scheme
            self.result = result
        }

        /// A decision on credentials of a scheme the proxy offers.
        init(user: String?, otherName: String? = nil, scheme: AuthScheme, result: String) {
            self.init(user: user, otherName: otherName, scheme: scheme.rawValue, result: result)
        }

        /// Nothing presented yet, or nothing asked for.
        static var unauthenticated: Record { Record(user: nil, scheme: nil, result: "none") }
    }

    enum Action {
        /// On to the origin. `authenticationInfo`: a header for the response (Digest's
        /// `Proxy-Authentication-Info`, Negotiate's final token).
        case allow(Record, authenticationInfo: SuccessHeader?)
        /// The gate answers the request; with `close`, the connection closes after it.
        case refuse(Record, ProxyResponse, close: Bool)
        /// Check a Basic password off the event loop; its outcome goes to
        /// ``GateStateMachine/basicCheckFinished(_:outcome:now:in:)``.
        case verifyBasic(CheckID, BasicCredentials, key: CredentialVerifier.CacheKey)
        /// Read a user's Digest secrets from the store; they go to
        /// ``GateStateMachine/digestSecretsFound(_:lookup:now:in:)``.
        case lookUpDigestSecrets(CheckID, CredentialVerifier.DigestKey)
        /// Wait, then ``GateStateMachine/delayElapsed(_:in:)``.
        case wait(CheckID, TimeAmount)
        /// Run one Negotiate leg (GSSAPI) off the event loop; its step goes to
        /// ``GateStateMachine/negotiateLegFinished(_:step:in:)``.
        case acceptNegotiate(CheckID, [UInt8])
        /// Read a user's NT hashes from the store; they go to
        /// ``GateStateMachine/ntlmSecretsFound(_:lookup:now:in:)``.
        case lookUpNTLMSecrets(CheckID, name: String)
        /// Check an NTLM answer against the user's NT hashes off the event loop; the result goes
        /// to ``GateStateMachine/ntlmVerified(_:_:now:in:)``.
        case verifyNTLM(CheckID, NTLMAcceptor.PendingVerification, current: NTHash?, previous: NTHash?)
        /// Read the standing of the account a client certificate names; it goes to
        /// ``GateStateMachine/accountFound(_:lookup:in:)``.
        case lookUpAccount(CheckID, name: String)
        /// Look up a user's groups in the directory (`name`: as the directory knows the user;
        /// kept as `user`'s); then ``GateStateMachine/groupsFound(_:in:)``.
        case lookUpGroups(CheckID, name: String, user: String)
        case none
    }

    enum State {
        case idle
        case verifyingBasic(BasicCheck)
        case lookingUpDigestSecrets(DigestSecretsLookup)
        /// A failed login's 407, held back while the address or the user name is being guessed at.
        case tarpit(HeldRefusal)
        case acceptingNegotiate(NegotiateLeg)
        case lookingUpNTLMSecrets(NTLMSecretsLookup)
        case verifyingNTLM(NTLMVerification)
        case lookingUpAccount(AccountWait)
        case lookingUpGroups(GroupsWait)
    }

    struct BasicCheck {
        var id: CheckID
        var request: Request
        /// The name presented (never the password: it is not kept past the check's start).
        var user: String
        /// Basic, or Bearer (a token, checked by the store the same way).
        var scheme: AuthScheme
        var key: CredentialVerifier.CacheKey
        /// The throttle's slot for this check.
        var ticket: AuthThrottle.Ticket
    }

    struct DigestSecretsLookup {
        var id: CheckID
        var request: Request
        var authorization: DigestAuthorization
        var key: CredentialVerifier.DigestKey
        var authority: DigestAuthority
    }

    struct HeldRefusal {
        var id: CheckID
        var clientAddress: String
        var record: Record
        var failure: AuthFailure
        var logDetail: Logger.Metadata
    }

    private(set) var state: State = .idle
    private var nextCheck: UInt64 = 0
    /// Basic checks still running whose request is no longer waited for: the throttle learns
    /// their outcome all the same.
    var unwantedChecks: [(id: CheckID, ticket: AuthThrottle.Ticket)] = []

    // What the connection remembers between requests.

    /// The last `Proxy-Authorization` value and its cache key: keep-alive clients repeat the
    /// same value, and the HMAC behind the key cost ~7 % of a request.
    var lastAuthorization: (value: [UInt8], key: CredentialVerifier.CacheKey)?
    /// The cache key of the Basic credential this connection last proved: while its address is
    /// locked out, this credential alone still passes here (it tells the client nothing new).
    var provenKey: CredentialVerifier.CacheKey?
    /// 407s answered to Digest credentials since the last success.
    var digestFailuresInARow = 0
    /// H(A2) of the last Digest request (clients repeat requests).
    var lastRequestHashes: DigestAuthority.RequestHashes?
    /// The user name of the last Digest answer and its cache key.
    var lastDigestKey: (name: [UInt8], key: CredentialVerifier.DigestKey)?
    /// The key whose Digest success was last reported to the throttle and the store.
    var digestSuccessNoted: CredentialVerifier.DigestKey?
    /// NTLM's handshake on this connection (its three messages belong to one connection).
    var ntlm: NTLMAcceptor?
    /// Who this connection proved to be with Negotiate or NTLM.
    var boundIdentity: BoundIdentity?
    /// Whether this connection is counted among the handshakes in progress.
    var inHandshake = false
    /// More 407s than this to Digest answers in a row and the connection is closed: a client
    /// that cannot get Digest right (a bug, a stale nonce it never renews) must not spin on one
    /// connection forever.
    static let digestFailuresBeforeClose = 5

    init() {}

    // MARK: - Events

    /// A request's head was read and its target parsed. A request starts only once the one
    /// before it was answered; one that starts anyway leaves behind what the gate waited for.
    mutating func startRequest(_ request: Request, in environment: some GateEnvironment) -> Action {
        self.cancel()
        guard let cache = environment.credentials else {
            return self.authorized(request, .unauthenticated, authenticationInfo: nil, environment)
        }
        // A verified client certificate speaks for the whole connection, whatever the headers.
        if let name = environment.certificateUser, environment.gate.schemes.contains(.certificate) {
            return self.startCertificate(request, name: name, in: environment)
        }
        // Asked before the credential cache: a locked address gets 429 whatever it sends, so
        // the lockout tells no right password from a wrong one.
        // The single Proxy-Authorization value, if there is exactly one.
        let single = request.head.proxyAuthorization.map { request.head.value($0) }
        if single == nil, request.head.values(named: "proxy-authorization").isEmpty,
            let bound = self.continueBound(request, in: environment)
        {
            return bound
        }
        let lock = environment.lockout(of: request.clientAddress, now: request.started)
        var cacheKey: CredentialVerifier.CacheKey?
        let singleIsDigest = single.map(Self.isDigest) ?? false
        // Negotiate and NTLM tokens differ on every leg: nothing to look up in the cache.
        let singleIsBound = single.map(Self.isConnectionBound) ?? false
        // Digest answers differ on every request (nc, cnonce): they have their own path.
        if let value = single, !singleIsDigest, !singleIsBound {
            let key = self.cacheKey(of: value, cache)
            cacheKey = key
            // Still asked every time: the entry may have expired or the users changed. Only
            // where Basic is offered (not on plain text under --basic-requires-tls).
            let presented = Self.isBearer(value) ? AuthScheme.bearer : .basic
            let basicHere = environment.gate.schemes.contains(presented)
            if basicHere, case .allowed = lock, let login = cache.cachedLogin(for: key, now: request.started) {
                environment.metrics.cacheHits.increment()
                self.provenKey = key
                return self.acceptedFromCache(request, login, scheme: presented, environment)
            }
            if basicHere, case .lockedOut = lock, self.provenKey == key,
                let login = cache.cachedLogin(for: key, now: request.started)
            {
                return self.acceptedFromCache(request, login, scheme: presented, environment)
            }
            environment.metrics.cacheMisses.increment()
        }
        if case .lockedOut(let remaining) = lock {
            return self.refuseLockedOut(request, .unauthenticated, retryAfter: remaining, environment)
        }
        let decision: GateDecision
        // Digest answers are read from the field's bytes: no String is made of them.
        if let value = single, singleIsDigest,
            let digest = environment.gate.evaluateDigest(
                fieldValue: value.withContiguousStorageIfAvailable { Array($0) } ?? Array(value)
            )
        {
            decision = digest
        } else {
            decision = environment.gate.evaluate(
                proxyAuthorization: request.head.values(named: "proxy-authorization")
            )
        }
        switch decision {
        case .negotiate(let token):
            // The token that bound this connection, sent again: still bound (not a replay).
            if let bound = self.boundIdentity, bound.scheme == .negotiate, bound.establishingToken == token,
                let continued = self.continueBound(request, in: environment)
            {
                return continued
            }
            return self.startNegotiate(request, token: token, in: environment)
        case .ntlm(let message, let wireScheme):
            return self.startNTLM(request, message: message, wireScheme: wireScheme, in: environment)
        case .reject(let failure):
            return self.reject(request, failure, fingerprint: cacheKey.map(AuthThrottle.Fingerprint.init), environment)
        case .verifyDigest(let authorization):
            // Digest is only parsed when it is offered, and it is only offered with an authority;
            // were it not, a 503 rather than a request left waiting for ever.
            guard let authority = environment.digest else {
                return Self.storeUnavailable(request, scheme: .digest, environment)
            }
            return self.verifyDigest(request, authorization, authority: authority, cache, environment)
        case .verifyBasic(let credentials), .verifyBearer(let credentials):
            let scheme: AuthScheme
            if case .verifyBearer = decision { scheme = .bearer } else { scheme = .basic }
            // A single Basic value always has its key by now (else a 503, not a request left waiting).
            guard let key = cacheKey else { return Self.storeUnavailable(request, scheme: scheme, environment) }
            // A slot for this check, or 429 unchecked: checks in flight count against the
            // lockout like failures.
            let ticket: AuthThrottle.Ticket
            switch self.beginCheck(
                request,
                .unauthenticated,
                user: credentials.user,
                credential: .init(key),
                environment
            ) {
            case .granted(let granted): ticket = granted
            case .refused(let refusal): return refusal
            }
            let id = self.newCheckID()
            self.state = .verifyingBasic(
                BasicCheck(id: id, request: request, user: credentials.user, scheme: scheme, key: key, ticket: ticket)
            )
            return .verifyBasic(id, credentials, key: key)
        }
    }

    /// A Basic password check finished. The throttle learns its outcome whether or not the
    /// request still waits for it.
    mutating func basicCheckFinished(
        _ id: CheckID,
        outcome: VerificationOutcome,
        now: NIODeadline,
        in environment: some GateEnvironment
    ) -> Action {
        guard case .verifyingBasic(let check) = self.state, check.id == id else {
            if let index = self.unwantedChecks.firstIndex(where: { $0.id == id }) {
                let ticket = self.unwantedChecks.remove(at: index).ticket
                _ = Self.settle(ticket, outcome, now: now, environment)
            }
            return .none
        }
        self.state = .idle
        let counted = Self.settle(check.ticket, outcome, now: now, environment)
        switch outcome {
        case .accepted(let user, let validFor, let token):
            environment.metrics.verifyDuration.recordNanoseconds((now - check.request.started).nanoseconds)
            self.provenKey = check.key
            return self.accepted(
                check.request,
                user: user,
                scheme: check.scheme,
                token: token,
                validFor: validFor.map { .nanoseconds(Int64($0 * 1e9)) },
                authenticationInfo: nil,
                environment
            )
        case .rejected(.unavailable):
            return Self.storeUnavailable(check.request, scheme: check.scheme, environment)
        case .rejected(.invalid):
            return self.reject(
                check.request,
                AuthFailure(
                    reason: .invalidCredentials,
                    explanation: check.scheme == .bearer
                        ? "the token is not valid here" : "unknown user or wrong password",
                    presentedScheme: check.scheme.rawValue
                ),
                user: check.user,
                counted: counted,
                environment
            )
        case .rejected(let reason):
            return self.noLongerValid(
                check.request,
                reason: reason,
                user: check.user,
                scheme: check.scheme,
                environment
            )
        }
    }

    /// A user's Digest secrets were read from the store.
    mutating func digestSecretsFound(
        _ id: CheckID,
        lookup: DigestLookup,
        now: NIODeadline,
        in environment: some GateEnvironment
    ) -> Action {
        guard case .lookingUpDigestSecrets(let wait) = self.state, wait.id == id else { return .none }
        self.state = .idle
        return self.finishDigest(
            wait.request,
            wait.authorization,
            key: wait.key,
            lookup: lookup,
            authority: wait.authority,
            now: now,
            environment
        )
    }

    /// The tarpit's delay is over: the 407 it held back goes out.
    mutating func delayElapsed(_ id: CheckID, in environment: some GateEnvironment) -> Action {
        guard case .tarpit(let held) = self.state, held.id == id else { return .none }
        self.state = .idle
        return self.sendReject(
            held.record,
            held.failure,
            clientAddress: held.clientAddress,
            logDetail: held.logDetail,
            environment
        )
    }

    /// The exchange ended or the connection closed: what the gate waits for is not wanted any
    /// more. A Basic check still running keeps its throttle slot until its outcome is known.
    mutating func cancel() {
        switch self.state {
        case .idle:
            return
        case .verifyingBasic(let check):
            self.unwantedChecks.append((check.id, check.ticket))
        case .lookingUpNTLMSecrets(let wait):
            self.unwantedChecks.append((wait.id, wait.ticket))
        case .verifyingNTLM(let verification):
            self.unwantedChecks.append((verification.wait.id, verification.wait.ticket))
        case .lookingUpDigestSecrets, .tarpit, .acceptingNegotiate, .lookingUpAccount, .lookingUpGroups:
            break
        }
        self.state = .idle
    }

    // MARK: - Steps

    mutating func newCheckID() -> CheckID {
        self.nextCheck &+= 1
        return CheckID(value: self.nextCheck)
    }

    /// Where the scheme extensions (other files) begin and end their waits.
    mutating func transition(to state: State) {
        self.state = state
    }

    /// Into the tarpit: the 407 goes out when the delay is over.
    mutating func holdBack(_ refusal: HeldRefusal, for delay: TimeAmount) -> Action {
        self.state = .tarpit(refusal)
        return .wait(refusal.id, delay)
    }

    /// Waits for the user's Digest secrets from the store.
    mutating func lookUpSecrets(_ lookup: DigestSecretsLookup) -> Action {
        self.state = .lookingUpDigestSecrets(lookup)
        return .lookUpDigestSecrets(lookup.id, lookup.key)
    }

    /// The cache key of a Basic field value: the last one's again when the client repeats it.
    private mutating func cacheKey(
        of value: ByteBufferView,
        _ credentials: some GateCredentialCache
    ) -> CredentialVerifier.CacheKey {
        if let last = self.lastAuthorization, last.value.elementsEqual(value) { return last.key }
        let key = credentials.cacheKey(forFieldValue: String(decoding: value, as: UTF8.self))
        self.lastAuthorization = (Array(value), key)
        return key
    }

    /// Tells the throttle how a check ended; for a wrong password, how long to hold the 407
    /// back and whether it locked the address.
    private static func settle(
        _ ticket: AuthThrottle.Ticket,
        _ outcome: VerificationOutcome,
        now: NIODeadline,
        _ environment: some GateEnvironment
    ) -> (delay: TimeAmount, lockedOut: Bool)? {
        switch outcome {
        case .accepted:
            environment.checkSucceeded(ticket, now: now)
            return nil
        case .rejected(.invalid):
            return environment.checkFailed(ticket, now: now)
        case .rejected:
            // Not a guess (the store was down, or the right password of a closed account).
            environment.checkAbandoned(ticket)
            return nil
        }
    }

    static func isDigest(_ value: ByteBufferView) -> Bool {
        guard value.count > 7 else { return false }
        return FieldName.equals(value.prefix(7), "digest ")
    }

    /// A Basic or Bearer credential the cache still vouches for.
    private mutating func acceptedFromCache(
        _ request: Request,
        _ login: CredentialVerifier.CachedLogin,
        scheme: AuthScheme,
        _ environment: some GateEnvironment
    ) -> Action {
        self.accepted(
            request,
            user: login.user,
            scheme: scheme,
            token: login.token,
            validFor: login.ends.map { $0 - request.started },
            authenticationInfo: nil,
            environment
        )
    }

    static func isBearer(_ value: ByteBufferView) -> Bool {
        guard value.count > 7 else { return false }
        return FieldName.equals(value.prefix(7), "bearer ")
    }
}
