import Logging
import NIOCore
import PortcullisAuth
import PortcullisStores

// The gate's answers to credentials it does not accept: 407 (held back by the tarpit when the
// address or the user name is being guessed at), 429 for a locked or busy address, 503 when the
// users cannot be read; and what each one tells the throttle, the loop detector and the log.
extension GateStateMachine {
    /// A throttle slot for checking a credential, or the 429 that stands in for the check.
    enum CheckSlot {
        case granted(AuthThrottle.Ticket)
        case refused(Action)
    }

    /// Reserves a slot for a check (address locked out, or too many checks of it in flight:
    /// refused unchecked).
    func beginCheck(
        _ request: Request,
        _ record: Record,
        user: String?,
        credential: AuthThrottle.Fingerprint,
        _ environment: some GateEnvironment
    ) -> CheckSlot {
        switch environment.beginCheck(
            address: request.clientAddress,
            user: user,
            credential: credential,
            now: request.started
        ) {
        case .proceed(let ticket):
            return .granted(ticket)
        case .lockedOut(let remaining):
            return .refused(self.refuseLockedOut(request, record, retryAfter: remaining, environment))
        case .busy(let retryAfter):
            return .refused(Self.refuseBusy(record, retryAfter: retryAfter, environment))
        }
    }

    /// A 407 for a credential that failed. Failures that count towards the lockout (invalid or
    /// malformed credentials) are counted here unless the check already did (`counted`, from
    /// its ticket); `fingerprint` recognises a repeated credential.
    mutating func reject(
        _ request: Request,
        _ failure: AuthFailure,
        user: String? = nil,
        fingerprint: AuthThrottle.Fingerprint? = nil,
        counted: (delay: TimeAmount, lockedOut: Bool)? = nil,
        logDetail: Logger.Metadata = [:],
        _ environment: some GateEnvironment
    ) -> Action {
        let record = Record(user: nil, scheme: failure.presentedScheme, result: failure.reason.token)
        environment.metrics.authOutcome(scheme: failure.presentedScheme ?? "none", reason: failure.reason.token)
        self.noteChallengeLoop(request, record, reason: failure.reason, environment)
        guard failure.reason == .invalidCredentials || failure.reason == .malformedCredentials else {
            return self.sendReject(
                record,
                failure,
                clientAddress: request.clientAddress,
                logDetail: logDetail,
                environment
            )
        }
        // The next success on this connection is noted again.
        self.digestSuccessNoted = nil
        var outcome = counted
        if outcome == nil {
            switch self.beginCheck(request, record, user: user, credential: fingerprint ?? .unrepeatable(), environment)
            {
            case .granted(let ticket): outcome = environment.checkFailed(ticket, now: request.started)
            case .refused(let refusal): return refusal
            }
        }
        let (delay, lockedOut) = outcome ?? (.zero, false)
        if lockedOut {
            environment.metrics.lockouts.increment()
            if environment.mayLog(.lockoutStarted) {
                let settings = environment.throttleSettings
                environment.log(
                    .warning,
                    "client address locked out after repeated failed logins",
                    metadata: [
                        "client": "\(request.clientAddress)",
                        "failures": "\(settings.threshold)",
                        "lockout": "\(ProxyResponse.seconds(settings.lockout))",
                    ]
                )
            }
        }
        guard delay > .zero else {
            return self.sendReject(
                record,
                failure,
                clientAddress: request.clientAddress,
                logDetail: logDetail,
                environment
            )
        }
        return self.holdBack(
            HeldRefusal(
                id: self.newCheckID(),
                clientAddress: request.clientAddress,
                record: record,
                failure: failure,
                logDetail: logDetail
            ),
            for: delay
        )
    }

    /// The 407 itself, with fresh challenges.
    /// - Parameter logDetail: extra log metadata (the exact reason behind a generic one).
    mutating func sendReject(
        _ record: Record,
        _ failure: AuthFailure,
        clientAddress: String,
        logDetail: Logger.Metadata,
        _ environment: some GateEnvironment
    ) -> Action {
        environment.metrics.challenges.increment()
        var close = false
        if failure.presentedScheme == AuthScheme.digest.rawValue {
            self.digestFailuresInARow += 1
            if self.digestFailuresInARow > Self.digestFailuresBeforeClose {
                close = true
                if environment.mayLog(.digestFailures) {
                    environment.log(
                        .warning,
                        "closing a connection after repeated failed Digest answers",
                        metadata: [
                            "client": "\(clientAddress)",
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
        if level == .debug || environment.mayLog(.authenticationFailed) {
            var metadata: Logger.Metadata = [
                "client": "\(clientAddress)",
                "reason": "\(failure.reason.token)",
                "scheme": "\(failure.presentedScheme ?? "-")",
            ]
            metadata.merge(logDetail) { $1 }
            environment.log(level, "authentication failed", metadata: metadata)
        }
        let challenges = environment.gate.challenges(
            digest: environment.digest?.challenges(stale: failure.reason == .staleNonce) ?? []
        )
        return .refuse(record, .proxyAuthenticationRequired(failure, challenges: challenges), close: close)
    }

    /// 429 for a locked-out address, whatever it sent; the connection closes.
    func refuseLockedOut(
        _ request: Request,
        _ record: Record,
        retryAfter: TimeAmount,
        _ environment: some GateEnvironment
    ) -> Action {
        if environment.mayLog(.addressLockedOut) {
            environment.log(
                .info,
                "login refused: address locked out",
                metadata: [
                    "client": "\(request.clientAddress)", "reason": "\(AuthFailureReason.lockedOut.token)",
                ]
            )
        }
        var record = record
        record.result = AuthFailureReason.lockedOut.token
        environment.metrics.authOutcome(scheme: record.scheme ?? "none", reason: record.result)
        self.noteChallengeLoop(request, record, reason: .lockedOut, environment)
        return .refuse(record, .lockedOut(retryAfter: retryAfter), close: true)
    }

    /// 429 for a check that would take the address past its lockout threshold if every check
    /// in flight failed: tried again a moment later, it is checked.
    static func refuseBusy(_ record: Record, retryAfter: TimeAmount, _ environment: some GateEnvironment) -> Action {
        var record = record
        record.result = "too-many-logins-in-flight"
        environment.metrics.authOutcome(scheme: .basic, reason: record.result)
        return .refuse(record, .tooManyLoginsInFlight(retryAfter: retryAfter), close: false)
    }

    /// Not the client's fault: no 407 (it would ask for a password again) but a 503.
    static func storeUnavailable(
        _ request: Request,
        scheme: AuthScheme,
        _ environment: some GateEnvironment
    ) -> Action {
        let record = Record(user: nil, scheme: scheme, result: RejectionReason.unavailable.rawValue)
        environment.metrics.authOutcome(scheme: scheme, reason: record.result)
        if environment.mayLog(.storeUnavailable) {
            environment.log(.error, "user store unavailable", metadata: ["client": "\(request.clientAddress)"])
        }
        let response = ProxyResponse(
            status: .serviceUnavailable,
            proxyError: nil,
            details: RejectionReason.unavailable.rawValue,
            message: "the proxy cannot read its user store right now; try again shortly.",
            extraHeaders: [("Retry-After", "5")]
        )
        return .refuse(record, response, close: false)
    }

    /// The right password of an expired, disabled or rotated-out credential: a 407 that says the
    /// credential is no longer valid (without saying which), the exact reason in the log and the
    /// metrics, and no count towards the login lockout — the client knew the password.
    mutating func noLongerValid(
        _ request: Request,
        reason: RejectionReason,
        user: String,
        scheme: AuthScheme,
        _ environment: some GateEnvironment
    ) -> Action {
        let record = Record(user: nil, scheme: scheme, result: reason.rawValue)
        environment.metrics.authOutcome(scheme: scheme, reason: reason.rawValue)
        self.noteChallengeLoop(request, record, reason: .credentialsNoLongerValid, environment)
        return self.sendReject(
            record,
            AuthFailure(
                reason: .credentialsNoLongerValid,
                explanation:
                    "this credential is no longer valid (it has expired, was disabled or was replaced); ask for a new one",
                presentedScheme: scheme.rawValue
            ),
            clientAddress: request.clientAddress,
            logDetail: ["user": "\(user)", "detail": "\(reason.rawValue)"],
            environment
        )
    }

    /// A client for loop detection: its address and user agent (a browser and a script on one
    /// machine are different clients).
    static func loopClient(_ request: Request) -> ChallengeLoopDetector.Client {
        let head = request.head
        let agent = head.lines.first { FieldName.equals(head.name($0), "user-agent") }.map { head.value($0) }
        return ChallengeLoopDetector.Client(
            address: request.clientAddress,
            userAgent: agent ?? ByteBuffer().readableBytesView
        )
    }

    /// Counts a 407 (or a 429 in its place) towards the client's challenge loop, and warns
    /// once when it completes one.
    func noteChallengeLoop(
        _ request: Request,
        _ record: Record,
        reason: AuthFailureReason,
        _ environment: some GateEnvironment
    ) {
        let offered = environment.offeredSchemeNames
        guard
            let loop = environment.challengeSent(
                to: Self.loopClient(request),
                reason: reason,
                schemeSent: record.scheme,
                offered: offered
            )
        else { return }
        environment.metrics.challengeLoops.increment()
        guard environment.mayLog(.challengeLoop) else { return }
        environment.log(
            .warning,
            "challenge loop",
            metadata: [
                "client": "\(request.clientAddress)",
                "user_agent":
                    "\(AccessRecord.safe(String((request.head.values(named: "user-agent").first ?? "-").prefix(200))))",
                "challenges_in_a_row": "\(loop.count)",
                "offered": "\(offered.joined(separator: ","))",
                "client_sent": "\(loop.schemesSent.joined(separator: ","))",
                "cause": "\(loop.cause)",
            ]
        )
    }
}
