import NIOCore
import PortcullisAuth
import PortcullisStores

// Digest (RFC 7616): what needs no secret (realm, algorithm, uri), then the user's secrets,
// cached or read from the store, then the answer, the nonce and the account's standing.
extension GateStateMachine {
    mutating func verifyDigest(
        _ request: Request,
        _ authorization: DigestAuthorization,
        authority: DigestAuthority,
        _ cache: some GateCredentialCache,
        _ environment: some GateEnvironment
    ) -> Action {
        let settings = authority.settings
        guard authorization.realmIs(authority.realmBytes) else {
            let failure = AuthFailure(
                reason: .invalidCredentials,
                explanation:
                    "the Digest answer is for another realm; answer the challenge for realm \"\(settings.realm)\"",
                presentedScheme: AuthScheme.digest.rawValue
            )
            return self.reject(request, failure, environment)
        }
        guard settings.algorithms.contains(authorization.algorithm) else {
            let failure = AuthFailure(
                reason: .malformedCredentials,
                explanation:
                    "the Digest algorithm \(authorization.algorithm) is not offered here (offered: \(settings.algorithms.map(\.description).joined(separator: ", ")))",
                presentedScheme: AuthScheme.digest.rawValue
            )
            return self.reject(request, failure, environment)
        }
        guard
            DigestAuthority.uriMatches(
                authorization,
                requestTarget: request.head.target,
                isConnect: request.head.method == .connect
            )
        else {
            // RFC 7616 §3.4.6: an answer computed for another request is a bad request.
            let record = Record(user: nil, scheme: .digest, result: "digest-uri-mismatch")
            environment.metrics.authOutcome(scheme: .digest, reason: record.result)
            let response = ProxyResponse(
                status: .badRequest,
                proxyError: "http_request_error",
                details: "digest-uri-mismatch",
                message:
                    "the uri parameter of the Digest answer does not name this request's target (use the request target, or its path for absolute-form requests)."
            )
            return .refuse(record, response, close: false)
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
        if let cached = cache.cachedDigestSecrets(key, now: request.started) {
            environment.metrics.cacheHits.increment()
            return self.finishDigest(
                request,
                authorization,
                key: key,
                lookup: cached,
                authority: authority,
                now: request.started,
                environment
            )
        }
        environment.metrics.cacheMisses.increment()
        return self.lookUpSecrets(
            DigestSecretsLookup(
                id: self.newCheckID(),
                request: request,
                authorization: authorization,
                key: key,
                authority: authority
            )
        )
    }

    /// The answer against the secrets, then the nonce, then the account's standing.
    mutating func finishDigest(
        _ request: Request,
        _ authorization: DigestAuthorization,
        key: CredentialVerifier.DigestKey,
        lookup: DigestLookup,
        authority: DigestAuthority,
        now: NIODeadline,
        _ environment: some GateEnvironment
    ) -> Action {
        // Asked again: the address may have been locked while these secrets were looked up,
        // and answers checked after that must not tell right from wrong.
        if case .lockedOut(let remaining) = environment.lockout(of: request.clientAddress, now: now) {
            return self.refuseLockedOut(request, .unauthenticated, retryAfter: remaining, environment)
        }
        let wrong = AuthFailure(
            reason: .invalidCredentials,
            explanation: "unknown user or wrong password",
            presentedScheme: AuthScheme.digest.rawValue
        )
        // A hashed name is not a name: it is never logged nor used to slow down a user.
        let claimed = authorization.userhash ? nil : authorization.username
        let secrets: DigestSecrets
        switch lookup {
        case .unavailable:
            return Self.storeUnavailable(request, scheme: .digest, environment)
        case .unknownUser:
            return self.reject(
                request,
                wrong,
                user: claimed,
                logDetail: authorization.userhash
                    ? [
                        "detail":
                            "the user hash matches no user with Digest secrets for \(authorization.algorithm.hash.rawValue)"
                    ]
                    : [:],
                environment
            )
        case .notEnrolled(let user):
            // Worded to the client like a wrong password (it must not learn the name exists);
            // the operator's log says what to do.
            return self.reject(
                request,
                wrong,
                user: user,
                logDetail: ["user": "\(user)", "detail": "no-digest-secret (add one with users passwd --digest)"],
                environment
            )
        case .found(let found):
            secrets = found
        }
        let method = request.head.methodBytes
        let hashes: DigestAuthority.RequestHashes
        if let last = self.lastRequestHashes,
            method.withContiguousStorageIfAvailable({ last.matches(authorization, method: $0) }) == true
        {
            hashes = last
        } else {
            hashes = authority.requestHashes(authorization, method: Array(method))
            self.lastRequestHashes = hashes
        }
        // The password's HA1, its Latin-1 one (Java), then those of the previous password.
        let ha1: String
        let matchedCurrent: Bool
        if authority.responseMatches(authorization, ha1: secrets.ha1, hashes: hashes) {
            (ha1, matchedCurrent) = (secrets.ha1, true)
        } else if let latin1 = secrets.latin1HA1, authority.responseMatches(authorization, ha1: latin1, hashes: hashes)
        {
            (ha1, matchedCurrent) = (latin1, true)
        } else if let previous = secrets.previousHA1,
            authority.responseMatches(authorization, ha1: previous, hashes: hashes)
        {
            (ha1, matchedCurrent) = (previous, false)
        } else if let previous = secrets.previousLatin1HA1,
            authority.responseMatches(authorization, ha1: previous, hashes: hashes)
        {
            (ha1, matchedCurrent) = (previous, false)
        } else {
            return self.reject(request, wrong, user: secrets.user, environment)
        }
        // The client knows the secret. A nonce that is not good any more (or an opaque that is
        // not ours) only needs a new nonce: stale=true, and clients retry on their own.
        let verdict: DigestAuthority.NonceVerdict =
            !authorization.opaqueIsAbsentOr(authority.opaqueBytes)
            ? .stale("opaque not issued by this proxy")
            : authority.checkNonce(of: authorization)
        let nonceAge: Int
        switch verdict {
        case .valid(let age):
            nonceAge = age
        case .stale(let why):
            let record = Record(user: nil, scheme: .digest, result: AuthFailureReason.staleNonce.token)
            environment.metrics.authOutcome(scheme: .digest, reason: record.result)
            self.noteChallengeLoop(request, record, reason: .staleNonce, environment)
            return self.sendReject(
                record,
                AuthFailure(
                    reason: .staleNonce,
                    explanation: "the Digest nonce is no longer valid; answer the new challenge (stale=true)",
                    presentedScheme: AuthScheme.digest.rawValue
                ),
                clientAddress: request.clientAddress,
                logDetail: ["user": "\(secrets.user)", "detail": "\(why)"],
                environment
            )
        }
        let standing = secrets.standing.outcome(
            user: secrets.user,
            matchedCurrent: matchedCurrent,
            now: environment.currentDate
        )
        switch standing {
        case .accepted(let user, let validFor, _):
            let info = authority.authenticationInfoBytes(authorization, ha1: ha1, nonceAge: nonceAge, hashes: hashes)
            // Once per connection and user, as Basic's cached path does: not a lock each on
            // every request.
            if self.digestSuccessNoted != key {
                self.digestSuccessNoted = key
                // The user's own failures at this address are forgiven (a mistyped password).
                if case .proceed(let ticket) = environment.beginCheck(
                    address: request.clientAddress,
                    user: user,
                    credential: .unrepeatable(),
                    now: request.started
                ) {
                    environment.checkSucceeded(ticket, now: request.started)
                }
                environment.credentials?.noteDigestLogin(key, user: user)
            }
            return self.accepted(
                request,
                user: user,
                scheme: .digest,
                validFor: validFor.map { .nanoseconds(Int64($0 * 1e9)) },
                authenticationInfo: .authenticationInfo(info),
                environment
            )
        case .rejected(let reason):
            return self.noLongerValid(request, reason: reason, user: secrets.user, scheme: .digest, environment)
        }
    }
}
