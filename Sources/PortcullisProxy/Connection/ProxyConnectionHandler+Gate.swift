import Foundation
import Logging
import NIOCore
import PortcullisAuth
import PortcullisStores

// The 407 gate of one request: credential cache, address lockout, verification, Digest nonce,
// account standing, access rules, per-user limits. It ends in exactly one of
// ``ProxyConnectionHandler/gateAllowed(_:)`` or ``ProxyConnectionHandler/gateRefused(_:_:)``.
extension ProxyConnectionHandler {
    /// The connection closes (or the exchange ended without the gate): what the gate still
    /// waits for is not wanted any more.
    func cancelGate() {
        self.gate.cancel()
    }

    func authenticate(_ exchange: ProxyExchange) {
        guard self.shared.authenticationEnabled, let verifier = self.shared.verifier else {
            exchange.authResult = "none"
            self.authorized(exchange)
            return
        }
        let head = exchange.head
        let throttle = self.shared.throttle
        // Asked before the credential cache: a locked address gets 429 whatever it sends, so
        // the lockout tells no right password from a wrong one (finding 10).
        let lock = throttle.check(address: self.clientAddress, now: exchange.started)
        var cacheKey: CredentialVerifier.CacheKey?
        // The single Proxy-Authorization value, if there is exactly one.
        let single = head.proxyAuthorization.map { head.value($0) }
        let singleIsDigest = single.map(Self.isDigest) ?? false
        // Digest answers differ on every request (nc, cnonce): they have their own path.
        if let value = single, !singleIsDigest {
            let key: CredentialVerifier.CacheKey
            if let last = self.lastAuthorization, last.value.elementsEqual(value) {
                key = last.key
            } else {
                key = verifier.cacheKey(forFieldValue: String(decoding: value, as: UTF8.self))
                self.lastAuthorization = (Array(value), key)
            }
            cacheKey = key
            // Still asked every time: the entry may have expired or the users file changed. While
            // the address is locked, only the credential this very connection already proved
            // passes (it tells the client nothing it did not know).
            if case .allowed = lock, let user = verifier.cachedUser(for: key, now: exchange.started) {
                self.shared.metrics.cacheHits.increment()
                self.provenKey = key
                self.accepted(exchange, user: user)
                return
            }
            if case .lockedOut = lock, self.provenKey == key,
                let user = verifier.cachedUser(for: key, now: exchange.started)
            {
                self.accepted(exchange, user: user)
                return
            }
            self.shared.metrics.cacheMisses.increment()
        }
        if case .lockedOut(let remaining) = lock {
            self.refuseLockedOut(exchange, retryAfter: remaining)
            return
        }
        let decision: GateDecision
        // Digest answers are read from the field's bytes: no String is made of them.
        if let value = single, singleIsDigest,
            let digest = self.shared.gate.evaluateDigest(
                fieldValue: value.withContiguousStorageIfAvailable { Array($0) } ?? Array(value)
            )
        {
            decision = digest
        } else {
            decision = self.shared.gate.evaluate(proxyAuthorization: head.values(named: "proxy-authorization"))
        }
        switch decision {
        case .reject(let failure):
            self.reject(exchange, failure, fingerprint: cacheKey.map(AuthThrottle.Fingerprint.init))
        case .verifyDigest(let authorization):
            guard let authority = self.shared.digest else { return }
            self.verifyDigest(exchange, authorization, verifier: verifier, authority: authority)
        case .verifyBasic(let credentials):
            guard let key = cacheKey else { return }
            // A slot for this check, or 429 unchecked: checks in flight count against the
            // lockout like failures (finding 8).
            guard let ticket = self.beginCheck(exchange, user: credentials.user, credential: .init(key)) else {
                return
            }
            self.gateSuspended(exchange)
            let verifyStarted = self.currentTime
            verifier.verify(credentials, key: key, on: self.context.eventLoop)
                .assumeIsolated()
                .whenSuccess { outcome in
                    // The throttle learns the outcome even when the connection is gone: a
                    // slot is given back exactly once, and a wrong guess still counts.
                    let now = self.currentTime
                    var failure: (delay: TimeAmount, lockedOut: Bool)?
                    switch outcome {
                    case .accepted:
                        throttle.succeeded(ticket, now: now)
                    case .rejected(.invalid):
                        failure = throttle.failed(ticket, now: now)
                    case .rejected:
                        throttle.abandoned(ticket)
                    }
                    guard self.gateResumed(exchange) else { return }
                    switch outcome {
                    case .accepted(let user, _):
                        self.shared.metrics.verifyDuration.recordNanoseconds((now - verifyStarted).nanoseconds)
                        self.provenKey = key
                        self.accepted(exchange, user: user)
                    case .rejected(.unavailable):
                        self.storeUnavailable(exchange, scheme: "basic")
                    case .rejected(let reason) where reason != .invalid:
                        self.noLongerValid(exchange, reason: reason, user: credentials.user, scheme: "basic")
                    case .rejected:
                        self.reject(
                            exchange,
                            AuthFailure(
                                reason: .invalidCredentials,
                                explanation: "unknown user or wrong password",
                                presentedScheme: "basic"
                            ),
                            user: credentials.user,
                            counted: failure
                        )
                    }
                }
        }
    }

    /// A throttle slot for checking a credential, or `nil` after answering the 429 that stands
    /// in for the check (address locked out, or too many checks of it in flight).
    func beginCheck(
        _ exchange: ProxyExchange,
        user: String?,
        credential: AuthThrottle.Fingerprint
    ) -> AuthThrottle.Ticket? {
        switch self.shared.throttle.begin(
            address: self.clientAddress,
            user: user,
            credential: credential,
            now: exchange.started
        ) {
        case .proceed(let ticket):
            return ticket
        case .lockedOut(let remaining):
            self.refuseLockedOut(exchange, retryAfter: remaining)
            return nil
        case .busy(let retryAfter):
            self.refuseBusy(exchange, retryAfter: retryAfter)
            return nil
        }
    }

    /// 429 for a locked-out address, whatever it sent; the connection closes.
    func refuseLockedOut(_ exchange: ProxyExchange, retryAfter: TimeAmount) {
        if self.mayLog(.addressLockedOut) {
            self.logger.info(
                "login refused: address locked out",
                metadata: ["client": "\(self.clientAddress)", "reason": "\(AuthFailureReason.lockedOut.token)"]
            )
        }
        exchange.closeAfter = true
        exchange.authResult = AuthFailureReason.lockedOut.token
        self.shared.metrics.authOutcome(scheme: exchange.authScheme ?? "none", reason: exchange.authResult)
        self.noteChallengeLoop(exchange, reason: .lockedOut)
        self.gateRefused(exchange, .lockedOut(retryAfter: retryAfter))
    }

    /// 429 for a check that would take the address past its lockout threshold if every check
    /// in flight failed: tried again a moment later, it is checked.
    func refuseBusy(_ exchange: ProxyExchange, retryAfter: TimeAmount) {
        exchange.authResult = "too-many-logins-in-flight"
        self.shared.metrics.authOutcome(scheme: "basic", reason: exchange.authResult)
        self.gateRefused(exchange, .tooManyLoginsInFlight(retryAfter: retryAfter))
    }

    /// Not the client's fault: no 407 (it would ask for a password again) but a 503.
    func storeUnavailable(_ exchange: ProxyExchange, scheme: String) {
        exchange.authScheme = scheme
        exchange.authResult = RejectionReason.unavailable.rawValue
        self.shared.metrics.authOutcome(scheme: scheme, reason: exchange.authResult)
        if self.mayLog(.storeUnavailable) {
            self.logger.error("user store unavailable", metadata: ["client": "\(self.clientAddress)"])
        }
        self.gateRefused(
            exchange,
            ProxyResponse(
                status: .serviceUnavailable,
                proxyError: nil,
                details: RejectionReason.unavailable.rawValue,
                message: "the proxy cannot read its user store right now; try again shortly.",
                extraHeaders: [("Retry-After", "5")]
            )
        )
    }

    static func isDigest(_ value: ByteBufferView) -> Bool {
        guard value.count > 7 else { return false }
        return FieldName.equals(value.prefix(7), "digest ")
    }

    func accepted(_ exchange: ProxyExchange, user: String, scheme: String = "basic") {
        exchange.user = user
        exchange.authScheme = scheme
        exchange.authResult = "ok"
        self.digestFailuresInARow = 0
        self.shared.metrics.authOutcome(scheme: scheme, reason: "ok")
        self.shared.loopDetector.succeeded(client: self.loopKey(exchange))
        self.authorized(exchange)
    }

    /// The right password of an expired, disabled or rotated-out credential: a 407 that says the
    /// credential is no longer valid (without saying which), the exact reason in the log and the
    /// metrics, and no count towards the login lockout — the client knew the password.
    func noLongerValid(_ exchange: ProxyExchange, reason: RejectionReason, user: String, scheme: String) {
        exchange.authScheme = scheme
        exchange.authResult = reason.rawValue
        self.shared.metrics.authOutcome(scheme: scheme, reason: reason.rawValue)
        self.noteChallengeLoop(exchange, reason: .credentialsNoLongerValid)
        self.sendReject(
            logDetail: ["user": "\(user)", "detail": "\(reason.rawValue)"],
            exchange,
            AuthFailure(
                reason: .credentialsNoLongerValid,
                explanation:
                    "this credential is no longer valid (it has expired, was disabled or was replaced); ask for a new one",
                presentedScheme: scheme
            )
        )
    }

    /// A client for loop detection: its address and user agent (a browser and a script on one
    /// machine are different clients).
    func loopKey(_ exchange: ProxyExchange) -> ChallengeLoopDetector.Client {
        let head = exchange.head
        let agent = head.lines.first { FieldName.equals(head.name($0), "user-agent") }.map { head.value($0) }
        return ChallengeLoopDetector.Client(
            address: self.clientAddress,
            userAgent: agent ?? ByteBuffer().readableBytesView
        )
    }

    func noteChallengeLoop(_ exchange: ProxyExchange, reason: AuthFailureReason) {
        let offered = self.configuration.authSchemes.map { $0.rawValue.capitalized }
        guard
            let loop = self.shared.loopDetector.challenged(
                client: self.loopKey(exchange),
                reason: reason,
                schemeSent: exchange.authScheme,
                offered: offered
            )
        else { return }
        self.shared.metrics.challengeLoops.increment()
        guard self.mayLog(.challengeLoop) else { return }
        self.logger.warning(
            "challenge loop",
            metadata: [
                "client": "\(self.clientAddress)",
                "user_agent":
                    "\(AccessRecord.safe(String((exchange.head.values(named: "user-agent").first ?? "-").prefix(200))))",
                "challenges_in_a_row": "\(loop.count)",
                "offered": "\(offered.joined(separator: ","))",
                "client_sent": "\(loop.schemesSent.joined(separator: ","))",
                "cause": "\(loop.cause)",
            ]
        )
    }

    /// A 407 for a credential that failed. Failures that count towards the lockout (invalid or
    /// malformed credentials) are counted here unless the caller already did (`counted`, from
    /// the ticket of its check); `fingerprint` recognises a repeated credential.
    func reject(
        _ exchange: ProxyExchange,
        _ failure: AuthFailure,
        user: String? = nil,
        fingerprint: AuthThrottle.Fingerprint? = nil,
        counted: (delay: TimeAmount, lockedOut: Bool)? = nil,
        logDetail: Logger.Metadata = [:]
    ) {
        exchange.authScheme = failure.presentedScheme
        exchange.authResult = failure.reason.token
        self.shared.metrics.authOutcome(scheme: failure.presentedScheme ?? "none", reason: failure.reason.token)
        self.noteChallengeLoop(exchange, reason: failure.reason)
        guard failure.reason == .invalidCredentials || failure.reason == .malformedCredentials else {
            self.sendReject(logDetail: logDetail, exchange, failure)
            return
        }
        // The next success on this connection is noted again.
        self.digestSuccessNoted = nil
        let throttle = self.shared.throttle
        var outcome = counted
        if outcome == nil {
            guard let ticket = self.beginCheck(exchange, user: user, credential: fingerprint ?? .unrepeatable()) else {
                return
            }
            outcome = throttle.failed(ticket, now: exchange.started)
        }
        let (delay, lockedOut) = outcome ?? (.zero, false)
        if lockedOut {
            self.shared.metrics.lockouts.increment()
            if self.mayLog(.lockoutStarted) {
                self.logger.warning(
                    "client address locked out after repeated failed logins",
                    metadata: [
                        "client": "\(self.clientAddress)",
                        "failures": "\(throttle.settings.threshold)",
                        "lockout": "\(StateMachine.seconds(throttle.settings.lockout))",
                    ]
                )
            }
        }
        guard delay > .zero else {
            self.sendReject(logDetail: logDetail, exchange, failure)
            return
        }
        self.gateSuspended(exchange)
        self.context.eventLoop.assumeIsolated().scheduleTask(in: delay) {
            guard self.gateResumed(exchange) else { return }
            self.sendReject(logDetail: logDetail, exchange, failure)
        }
    }

    /// - Parameter logDetail: extra log metadata (the exact reason behind a generic one).
    func sendReject(logDetail: Logger.Metadata = [:], _ exchange: ProxyExchange, _ failure: AuthFailure) {
        self.shared.metrics.challenges.increment()
        if failure.presentedScheme == "digest" {
            // A client that cannot get Digest right (a bug, a stale nonce it never renews) must
            // not spin on one connection forever.
            self.digestFailuresInARow += 1
            if self.digestFailuresInARow > ProxyConnectionHandler.digestFailuresBeforeClose {
                exchange.closeAfter = true
                if self.mayLog(.digestFailures) {
                    self.logger.warning(
                        "closing a connection after repeated failed Digest answers",
                        metadata: [
                            "client": "\(self.clientAddress)",
                            "failures_in_a_row": "\(self.digestFailuresInARow)",
                            "reason": "\(failure.reason.token)",
                        ]
                    )
                }
            }
        }
        // The first 407 of a normal handshake (no credentials yet) is not worth an info line;
        // the others are summarized past a few per interval (a flood must not flood the log).
        let level: Logger.Level = failure.reason == .missingCredentials ? .debug : .info
        if level == .debug || self.mayLog(.authenticationFailed) {
            var metadata: Logger.Metadata = [
                "client": "\(self.clientAddress)",
                "reason": "\(failure.reason.token)",
                "scheme": "\(failure.presentedScheme ?? "-")",
            ]
            metadata.merge(logDetail) { $1 }
            self.logger.log(level: level, "authentication failed", metadata: metadata)
        }
        self.gateRefused(
            exchange,
            .proxyAuthenticationRequired(
                failure,
                challenges: self.shared.gate.challenges(
                    digest: self.shared.digest?.challenges(stale: failure.reason == .staleNonce) ?? []
                )
            )
        )
    }

    func authorized(_ exchange: ProxyExchange) {
        if let denial = self.policyDenial(exchange) ?? self.limitDenial(exchange) {
            self.gateRefused(exchange, denial)
            return
        }
        self.gateAllowed(exchange)
    }

    /// The 429 or 413 for a request over a per-user limit or the body limit, if it is.
    func limitDenial(_ exchange: ProxyExchange) -> ProxyResponse? {
        if let limit = self.configuration.maximumRequestBody, case .length(let n) = exchange.head.framing,
            n > limit
        {
            exchange.closeAfter = true
            self.shared.metrics.refused("request body too large")
            return .bodyTooLarge(limit: limit)
        }
        guard let limits = self.shared.userLimits, let user = exchange.user else { return nil }
        let verdict = limits.admit(user: user, connection: ObjectIdentifier(self), address: self.clientAddress)
        guard verdict != .allowed else {
            self.limitedUsers.insert(user)
            return nil
        }
        self.shared.metrics.refused(verdict.details)
        if self.mayLog(.userLimit) {
            self.logger.info(
                "request over a user limit",
                metadata: ["client": "\(self.clientAddress)", "user": "\(user)", "limit": "\(verdict.details)"]
            )
        }
        return ProxyResponse(
            status: .tooManyRequests,
            proxyError: nil,
            details: verdict.details,
            message: verdict.message
        )
    }

    /// The 403 for a request the access rules do not allow, if they do not.
    func policyDenial(_ exchange: ProxyExchange) -> ProxyResponse? {
        let policy = self.shared.policy
        guard !policy.rules.isEmpty else { return nil }
        let host: String
        let port: Int
        switch exchange.target {
        case .authority(let authority), .absolute(let authority, _):
            host = authority.host
            port = authority.port
        default:
            return nil
        }
        let method = String(decoding: exchange.head.methodBytes, as: UTF8.self)
        guard case .denied(let rule) = policy.decide(user: exchange.user, host: host, port: port, method: method)
        else { return nil }
        let why = rule.map { "rule \($0)" } ?? "no rule allows this request"
        self.shared.metrics.refused("policy")
        if self.mayLog(.policyDenial) {
            self.logger.info(
                "request denied by policy",
                metadata: [
                    "client": "\(self.clientAddress)", "user": "\(exchange.user ?? "-")", "rule": "\(rule ?? "-")",
                ]
            )
        }
        return ProxyResponse(
            status: .forbidden,
            proxyError: "http_request_denied",
            details: "policy: \(why)",
            message:
                "\(method) to \(host):\(port) is not allowed for \(exchange.user.map { "user \"\($0)\"" } ?? "this client") (\(why))."
        )
    }

}

// MARK: - Digest (RFC 7616)

extension ProxyConnectionHandler {
    /// Checks what needs no secret (realm, algorithm, uri), then the user's secrets, cached or
    /// read on the thread pool.
    func verifyDigest(
        _ exchange: ProxyExchange,
        _ authorization: DigestAuthorization,
        verifier: CredentialVerifier,
        authority: DigestAuthority
    ) {
        let settings = authority.settings
        guard authorization.realmIs(authority.realmBytes) else {
            self.reject(
                exchange,
                AuthFailure(
                    reason: .invalidCredentials,
                    explanation:
                        "the Digest answer is for another realm; answer the challenge for realm \"\(settings.realm)\"",
                    presentedScheme: "digest"
                )
            )
            return
        }
        guard settings.algorithms.contains(authorization.algorithm) else {
            self.reject(
                exchange,
                AuthFailure(
                    reason: .malformedCredentials,
                    explanation:
                        "the Digest algorithm \(authorization.algorithm) is not offered here (offered: \(settings.algorithms.map(\.description).joined(separator: ", ")))",
                    presentedScheme: "digest"
                )
            )
            return
        }
        guard
            DigestAuthority.uriMatches(
                authorization,
                requestTarget: exchange.head.target,
                isConnect: exchange.isConnect
            )
        else {
            // RFC 7616 §3.4.6: an answer computed for another request is a bad request.
            exchange.authScheme = "digest"
            exchange.authResult = "digest-uri-mismatch"
            self.shared.metrics.authOutcome(scheme: "digest", reason: exchange.authResult)
            self.gateRefused(
                exchange,
                ProxyResponse(
                    status: .badRequest,
                    proxyError: "http_request_error",
                    details: "digest-uri-mismatch",
                    message:
                        "the uri parameter of the Digest answer does not name this request's target (use the request target, or its path for absolute-form requests)."
                )
            )
            return
        }
        let key: CredentialVerifier.DigestKey
        if let last = self.lastDigestKey, last.key.isUserhash == authorization.userhash,
            last.key.hash == authorization.algorithm.hash, authorization.usernameIs(last.name)
        {
            key = last.key
        } else {
            key = CredentialVerifier.DigestKey(
                name: authorization.username,
                isUserhash: authorization.userhash,
                hash: authorization.algorithm.hash
            )
            self.lastDigestKey = (authorization.usernameBytes, key)
        }
        if let cached = verifier.cachedDigestSecrets(key) {
            self.shared.metrics.cacheHits.increment()
            self.finishDigest(exchange, authorization, key: key, lookup: cached, authority: authority)
            return
        }
        self.shared.metrics.cacheMisses.increment()
        self.gateSuspended(exchange)
        verifier.digestSecrets(key, on: self.context.eventLoop).assumeIsolated().whenSuccess { lookup in
            guard self.gateResumed(exchange) else { return }
            self.finishDigest(exchange, authorization, key: key, lookup: lookup, authority: authority)
        }
    }

    /// The answer against the secrets, then the nonce, then the account rules.
    func finishDigest(
        _ exchange: ProxyExchange,
        _ authorization: DigestAuthorization,
        key: CredentialVerifier.DigestKey,
        lookup: DigestLookup,
        authority: DigestAuthority
    ) {
        // Asked again: the address may have been locked while these secrets were looked up,
        // and answers checked after that must not tell right from wrong.
        if case .lockedOut(let remaining) = self.shared.throttle.check(
            address: self.clientAddress,
            now: exchange.started
        ) {
            self.refuseLockedOut(exchange, retryAfter: remaining)
            return
        }
        let wrong = AuthFailure(
            reason: .invalidCredentials,
            explanation: "unknown user or wrong password",
            presentedScheme: "digest"
        )
        // A hashed name is not a name: it is never logged nor used to slow down a user.
        let claimed = authorization.userhash ? nil : authorization.username
        let secrets: DigestSecrets
        switch lookup {
        case .unavailable:
            self.storeUnavailable(exchange, scheme: "digest")
            return
        case .unknownUser:
            self.reject(
                exchange,
                wrong,
                user: claimed,
                logDetail: authorization.userhash
                    ? [
                        "detail":
                            "the user hash matches no user with Digest secrets for \(authorization.algorithm.hash.rawValue)"
                    ]
                    : [:]
            )
            return
        case .notEnrolled(let user):
            // Worded to the client like a wrong password (it must not learn the name exists);
            // the operator's log says what to do.
            self.reject(
                exchange,
                wrong,
                user: user,
                logDetail: ["user": "\(user)", "detail": "no-digest-secret (add one with users passwd --digest)"]
            )
            return
        case .found(let found):
            secrets = found
        }
        let method = exchange.head.methodBytes
        let hashes: DigestAuthority.RequestHashes
        if let last = self.lastRequestHashes,
            method.withContiguousStorageIfAvailable({ last.matches(authorization, method: $0) }) == true
        {
            hashes = last
        } else {
            hashes = authority.requestHashes(authorization, method: Array(method))
            self.lastRequestHashes = hashes
        }
        var ha1 = secrets.ha1
        var matchedCurrent = true
        if !authority.responseMatches(authorization, ha1: ha1, hashes: hashes) {
            guard let previous = secrets.previousHA1,
                authority.responseMatches(authorization, ha1: previous, hashes: hashes)
            else {
                self.reject(exchange, wrong, user: secrets.user)
                return
            }
            ha1 = previous
            matchedCurrent = false
        }
        // The client knows the secret. A nonce that is not good any more (or an opaque that is
        // not ours) only needs a new nonce: stale=true, and clients retry on their own.
        let verdict: DigestAuthority.NonceVerdict =
            !authorization.opaqueIsAbsentOr(authority.opaqueBytes)
            ? .stale("opaque not issued by this proxy")
            : authority.checkNonce(of: authorization)
        guard case .valid(let age) = verdict else {
            if case .stale(let why) = verdict {
                exchange.authScheme = "digest"
                exchange.authResult = AuthFailureReason.staleNonce.token
                self.shared.metrics.authOutcome(scheme: "digest", reason: exchange.authResult)
                self.noteChallengeLoop(exchange, reason: .staleNonce)
                self.sendReject(
                    logDetail: ["user": "\(secrets.user)", "detail": "\(why)"],
                    exchange,
                    AuthFailure(
                        reason: .staleNonce,
                        explanation: "the Digest nonce is no longer valid; answer the new challenge (stale=true)",
                        presentedScheme: "digest"
                    )
                )
            }
            return
        }
        switch secrets.standing.outcome(user: secrets.user, matchedCurrent: matchedCurrent, now: Date()) {
        case .accepted(let user, _):
            exchange.authenticationInfo = authority.authenticationInfoBytes(
                authorization,
                ha1: ha1,
                nonceAge: age,
                hashes: hashes
            )
            // Once per connection and user, as Basic's cached path does: not a lock each
            // on every request.
            if self.digestSuccessNoted != key {
                self.digestSuccessNoted = key
                // The user's own failures at this address are forgiven (a mistyped password).
                let throttle = self.shared.throttle
                if case .proceed(let ticket) = throttle.begin(
                    address: self.clientAddress,
                    user: user,
                    credential: .unrepeatable(),
                    now: exchange.started
                ) {
                    throttle.succeeded(ticket, now: exchange.started)
                }
                self.shared.verifier?.noteDigestLogin(key, user: user)
            }
            self.accepted(exchange, user: user, scheme: "digest")
        case .rejected(let reason):
            self.noLongerValid(exchange, reason: reason, user: secrets.user, scheme: "digest")
        }
    }
}
