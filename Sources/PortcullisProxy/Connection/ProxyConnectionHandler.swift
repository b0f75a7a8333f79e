import Foundation
import Logging
import NIOCore
import NIOExtras
import NIOPosix
import PortcullisAuth
import PortcullisStores

/// Serves one client connection: gates each request, forwards it over a pooled upstream
/// connection or turns the connection into a CONNECT tunnel.
///
/// Requests are read by our own ``RequestFramer`` and handled one at a time; a pipelined
/// request waits there as bytes, and reads stop, until the one before it is answered.
/// Reads from the client stop whenever the upstream cannot take more (back-pressure); the
/// ``UpstreamHandler`` likewise reads only while this client is writable.
final class ProxyConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler, UpstreamOwner {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Phase {
        case idle
        case authenticating
        case connecting
        case forwarding(UpstreamHandler)
        case localResponse
        case tunnelConnecting
        case tunnel
        /// The connection is closing (or closed): nothing more is parsed, read or answered, and
        /// a completion that arrives now (a password check, a connect, a timer) finds no
        /// exchange to act on.
        case closing
    }

    let shared: ProxyContext
    let pool: UpstreamPool
    var framer = RequestFramer()
    var context: ChannelHandlerContext!
    var logger: Logger

    var phase: Phase = .idle
    var exchange: ProxyExchange?
    /// Inside ``parseAvailable()``: a nested call (from a handler it runs) leaves the work to it.
    private var parsing = false
    private var pendingRead = false
    /// One timer per connection serves every deadline; see ProxyConnectionHandler+Timers.
    var timer: Scheduled<Void>?
    var timerFiresAt: NIODeadline?
    var idleDeadline: NIODeadline?
    var quiescing = false
    /// Inside a burst of reads from the client / the upstream: writes caused there are flushed
    /// once at the burst's readComplete instead of one syscall each.
    var readingClient = false
    var readingUpstream = false
    /// The last `Proxy-Authorization` value on this connection and its cache key: keep-alive
    /// clients repeat the same value, and the HMAC behind the key cost ~7 % of a request.
    private var lastAuthorization: (value: [UInt8], key: CredentialVerifier.CacheKey)?
    /// The cache key of the Basic credential this connection last proved with a check: while
    /// its address is locked out, this credential alone still passes here.
    var provenKey: CredentialVerifier.CacheKey?
    /// 407s answered to Digest credentials on this connection since its last success.
    var digestFailuresInARow = 0
    /// H(A2) of this connection's last Digest request (clients repeat requests).
    var lastRequestHashes: DigestAuthority.RequestHashes?
    /// The user name of this connection's last Digest answer and its cache key.
    var lastDigestKey: (name: [UInt8], key: CredentialVerifier.DigestKey)?
    /// The key whose Digest success this connection last reported to the throttle and store.
    var digestSuccessNoted: CredentialVerifier.DigestKey?
    /// More 407s than this to Digest answers in a row and the connection is closed.
    static let digestFailuresBeforeClose = 5
    var clientInputClosed = false
    /// The last request head sent upstream and response head sent to the client: once their
    /// bytes have left, nothing else holds them and the next head is built in the same memory
    /// (two allocations less per request).
    var upstreamHeadBuffer = ByteBuffer()
    var clientHeadBuffer = ByteBuffer()
    /// `clientHeadBuffer` holds a response head (and maybe its body) not yet written.
    var clientHeadHeld = false
    /// The client's IP address, for the login throttle.
    var clientAddress = "-"
    /// Users whose per-user limits count this connection (released when it closes).
    var limitedUsers: Set<String> = []
    /// When the request head that started arriving must be complete (slowloris guard).
    var headDeadline: NIODeadline?

    /// The settings in force when this connection was accepted (a config reload applies to new
    /// connections; this one keeps its own).
    let configuration: ProxyConfiguration

    init(
        shared: ProxyContext,
        pool: UpstreamPool,
        logger: Logger
    ) {
        self.shared = shared
        self.configuration = shared.configuration
        self.pool = pool
        self.logger = logger
    }

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.clientAddress = context.channel.remoteAddress?.ipAddress ?? "-"
        self.shared.metrics.activeConnections.increment()
        if context.channel.isActive { self.armIdleTimer() }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.armIdleTimer()
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.phase {
        case .tunnel:
            // Read before this handler left the pipeline: the tunnel's bytes.
            context.fireChannelRead(data)
            return
        case .closing:
            return
        default:
            break
        }
        self.framer.append(self.unwrapInboundIn(data))
        self.readingClient = true
        self.parseAvailable()
        if self.exchange == nil, self.headDeadline == nil, self.framer.bufferedBytes > 0 {
            // A head has started to arrive: it gets its own deadline instead of the idle one.
            let deadline = self.currentTime + self.configuration.requestHeadTimeout
            self.headDeadline = deadline
            self.idleDeadline = nil
            self.ensureTimer(firesBy: deadline)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.readingClient = false
        if case .forwarding(let upstream) = self.phase {
            upstream.flush()
        }
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if self.readAllowed {
            context.read()
        } else {
            self.pendingRead = true
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, case .forwarding(let upstream) = self.phase {
            upstream.resumeReading()
        }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            self.quiescing = true
            if let exchange = self.exchange {
                exchange.closeAfter = true
            } else {
                self.closeConnection()
            }
            return
        }
        if case .some(.inputClosed) = event as? ChannelEvent {
            self.clientInputClosed = true
            if case .closing = self.phase {
                context.close(promise: nil)
                return
            }
            if let exchange = self.exchange, exchange.requestEnded {
                exchange.closeAfter = true
            } else {
                // Nothing in flight, or the client stopped sending half-way through a request.
                self.closeConnection()
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.shared.metrics.activeConnections.decrement()
        // The context holds this handler: keeping it here too would be a cycle that outlives the
        // connection (it did: ~3.4 KiB per connection, found by bench/extras.py's RSS figures).
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.cancelTimer()
        if let exchange = self.exchange, !exchange.logged {
            // The client went away mid-exchange: still one line in the log.
            self.logExchange(exchange)
        }
        if let limits = self.shared.userLimits {
            for user in self.limitedUsers { limits.release(user: user, connection: ObjectIdentifier(self)) }
            self.limitedUsers.removeAll()
        }
        if case .forwarding(let upstream) = self.phase {
            upstream.detach()
            if !(self.exchange?.responseEnded ?? true) { upstream.close() }
        }
        self.exchange = nil
        self.phase = .closing
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.logger.debug("client connection error", metadata: ["error": "\(error)"])
        self.closeConnection()
    }

    /// Closes the client connection; with `written` (a response's last bytes), once they have
    /// left. From here on nothing is parsed or answered: a completion that arrives later (a
    /// password check, a connect, a timer) finds `.closing` and does nothing.
    ///
    /// After a response the close is a lingering one: the output side closes first and what the
    /// client still sends (the rest of a body) is read and dropped for up to
    /// ``lingerAfterResponse``; closing at once with unread input would reset the connection,
    /// and a reset can destroy the response before the client reads it. A client that never
    /// reads the response is cut off at the request-head deadline.
    func closeConnection(after written: EventLoopFuture<Void>? = nil) {
        if case .closing = self.phase { return }
        if case .forwarding(let upstream) = self.phase {
            upstream.detach()
            upstream.close()
        }
        self.phase = .closing
        self.cancelTimer()
        guard let context = self.context else { return }
        guard let written else {
            context.close(promise: nil)
            return
        }
        context.flush()
        self.ensureTimer(firesBy: self.currentTime + self.configuration.requestHeadTimeout)
        written.assumeIsolated().whenComplete { [weak self] result in
            guard let self, let context = self.context else { return }
            guard case .success = result, !self.clientInputClosed else {
                context.close(promise: nil)
                return
            }
            context.close(mode: .output, promise: nil)
            self.ensureTimer(firesBy: self.currentTime + Self.lingerAfterResponse)
            self.resumeReadsIfPossible()
        }
    }

    /// Whether a per-client log line of `kind` may be written now: past a few per interval the
    /// rest are counted and summarized (``RefusalLogLimiter``).
    func mayLog(_ kind: RefusalLogLimiter.Kind) -> Bool {
        self.shared.refusalLog.admit(kind, now: self.currentTime)
    }

    /// The event loop's clock: real time on a server, the test's time on an `EmbeddedEventLoop`.
    var currentTime: NIODeadline { self.context?.eventLoop.now ?? .now() }

    /// How long a closing connection still reads (and drops) what the client sends.
    static let lingerAfterResponse: TimeAmount = .seconds(2)

    /// A request that cannot be parsed: answer if we still can, then close (the framer cannot
    /// know where the next request would begin).
    private func refuse(_ error: RequestFramer.RequestError) {
        self.logger.debug("malformed request", metadata: ["reason": "\(error.reason)"])
        self.refuse(
            with: ProxyResponse(
                status: error.status,
                proxyError: "http_request_error",
                details: error.reason,
                message: "the request is not valid HTTP/1.1 (\(error.reason))."
            )
        )
    }

    /// Answers without a usable request (or in the middle of one) and closes.
    func refuse(with response: ProxyResponse) {
        if let exchange = self.exchange, exchange.responseStarted {
            self.closeConnection()
            return
        }
        let exchange = self.exchange ?? ProxyExchange(head: .unparsable, quiescing: true, started: self.currentTime)
        self.exchange = exchange
        exchange.closeAfter = true
        exchange.requestEnded = true
        self.sendLocalResponse(response, for: exchange)
    }

    // MARK: - Read gating

    /// Whether the client connection may be read now. Reads stay on while a response is
    /// relayed (a keep-alive client sends nothing then, and turning read interest off and on
    /// costs two epoll_ctl calls a request); a pipelined request that does arrive is queued
    /// and stops further reads until it is served.
    var readAllowed: Bool {
        switch self.phase {
        case .idle, .localResponse:
            // A pipelined request already read waits until this one is answered.
            if let exchange = self.exchange, exchange.requestEnded { return self.framer.bufferedBytes == 0 }
            return true
        case .closing:
            // What a client sends after the response is read and dropped (a lingering close).
            return true
        case .authenticating, .connecting, .tunnelConnecting, .tunnel:
            return false
        case .forwarding(let upstream):
            guard let exchange = self.exchange, !exchange.requestEnded else { return self.framer.bufferedBytes == 0 }
            return upstream.isWritable
        }
    }

    /// Whether the framer's next event can be handled now: body bytes only once they can go
    /// somewhere, the next request's head only once the current one is answered.
    private var readyForNextEvent: Bool {
        switch self.phase {
        case .idle, .localResponse:
            return !(self.exchange?.requestEnded ?? false)
        case .authenticating, .connecting, .tunnelConnecting, .tunnel, .closing:
            return false
        case .forwarding(let upstream):
            guard let exchange = self.exchange, !exchange.requestEnded else { return false }
            return upstream.isWritable
        }
    }

    func resumeReadsIfPossible() {
        self.parseAvailable()
        if self.pendingRead, self.readAllowed, let context = self.context {
            self.pendingRead = false
            context.read()
        }
    }

    // MARK: - Inbound events

    /// Hands the framer's events to ``handle(_:)`` for as long as they can be acted on.
    func parseAvailable() {
        guard !self.parsing, self.context != nil else { return }
        self.parsing = true
        var handled = false
        defer {
            self.parsing = false
            // Outside a read burst nothing else will flush what the events wrote upstream.
            if handled, !self.readingClient, case .forwarding(let upstream) = self.phase { upstream.flush() }
        }
        while self.readyForNextEvent {
            let event: RequestFramer.Event?
            do {
                event = try self.framer.next()
            } catch {
                self.refuse(error)
                return
            }
            guard let event else { return }
            handled = true
            self.handle(event)
        }
    }

    private func handle(_ event: RequestFramer.Event) {
        switch event {
        case .head(let head):
            self.idleDeadline = nil
            self.headDeadline = nil
            let exchange = ProxyExchange(head: head, quiescing: self.quiescing, started: self.currentTime)
            self.exchange = exchange
            if head.framing != .none, !exchange.isConnect {
                // The body must keep arriving (slow-body guard); see ProxyConnectionHandler+Timers.
                let deadline = exchange.started + self.configuration.requestBodyTimeout
                exchange.bodyDeadline = deadline
                self.ensureTimer(firesBy: deadline)
            }
            self.start(exchange)
        case .body(let buffer):
            guard let exchange = self.exchange else { return }
            exchange.bodyProgressed = true
            exchange.requestBodyBytes += buffer.readableBytes
            if let limit = self.configuration.maximumRequestBody, exchange.requestBodyBytes > limit,
                case .forwarding = self.phase
            {
                // A chunked body that grew past the limit: stop it before it all reaches the origin.
                exchange.closeAfter = true
                exchange.requestEnded = true
                self.sendLocalResponse(.bodyTooLarge(limit: limit), for: exchange)
                return
            }
            switch self.phase {
            case .forwarding(let upstream):
                upstream.sendBody(buffer)
            case .localResponse:
                exchange.discardedBodyBytes += buffer.readableBytes
                if exchange.discardedBodyBytes > self.configuration.rejectedBodyDrainLimit {
                    // Not worth reading more of a body nobody will see: give up the connection.
                    exchange.closeAfter = true
                    exchange.requestEnded = true
                    self.finishIfDone(exchange)
                }
            case .idle, .authenticating, .connecting, .tunnelConnecting, .tunnel, .closing:
                break
            }
        case .end:
            guard let exchange = self.exchange else { return }
            exchange.requestEnded = true
            exchange.bodyDeadline = nil
            if case .localResponse = self.phase { self.finishIfDone(exchange) }
        }
    }

    private func start(_ exchange: ProxyExchange) {
        switch RequestTarget.parse(exchange.head.target, isConnect: exchange.isConnect) {
        case .success(.origin), .success(.asterisk):
            self.sendLocalResponse(
                .badRequest(
                    "this is a forward proxy: send absolute-form requests (GET http://host/path HTTP/1.1) or CONNECT host:port."
                ),
                for: exchange
            )
            return
        case .failure(let error):
            self.sendLocalResponse(.badRequest(Self.describe(targetError: error)), for: exchange)
            return
        case .success(let target):
            exchange.target = target
        }
        self.authenticate(exchange)
    }

    private static func describe(targetError: RequestTarget.ParseError) -> String {
        switch targetError {
        case .unsupportedScheme(let scheme):
            return
                "the \(scheme) scheme is not forwarded; use CONNECT for https (clients do this when given an http:// proxy URL)."
        case .userinfoNotAllowed: return "the request target must not contain user information (user@host)."
        case .invalidHost: return "the request target has no valid host."
        case .invalidPort: return "the request target has an invalid host or port."
        case .connectNeedsAuthority: return "CONNECT takes host:port as its target."
        case .malformed: return "the request target is not an absolute http:// URI."
        }
    }

    // MARK: - The 407 gate

    private func authenticate(_ exchange: ProxyExchange) {
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
            self.phase = .authenticating
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
                    guard self.exchange === exchange, case .authenticating = self.phase else { return }
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
    private func beginCheck(
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
    private func refuseLockedOut(_ exchange: ProxyExchange, retryAfter: TimeAmount) {
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
        self.sendLocalResponse(.lockedOut(retryAfter: retryAfter), for: exchange)
    }

    /// 429 for a check that would take the address past its lockout threshold if every check
    /// in flight failed: tried again a moment later, it is checked.
    private func refuseBusy(_ exchange: ProxyExchange, retryAfter: TimeAmount) {
        exchange.authResult = "too-many-logins-in-flight"
        self.shared.metrics.authOutcome(scheme: "basic", reason: exchange.authResult)
        self.sendLocalResponse(.tooManyLoginsInFlight(retryAfter: retryAfter), for: exchange)
    }

    /// Not the client's fault: no 407 (it would ask for a password again) but a 503.
    private func storeUnavailable(_ exchange: ProxyExchange, scheme: String) {
        exchange.authScheme = scheme
        exchange.authResult = RejectionReason.unavailable.rawValue
        self.shared.metrics.authOutcome(scheme: scheme, reason: exchange.authResult)
        if self.mayLog(.storeUnavailable) {
            self.logger.error("user store unavailable", metadata: ["client": "\(self.clientAddress)"])
        }
        self.sendLocalResponse(
            ProxyResponse(
                status: .serviceUnavailable,
                proxyError: nil,
                details: RejectionReason.unavailable.rawValue,
                message: "the proxy cannot read its user store right now; try again shortly.",
                extraHeaders: [("Retry-After", "5")]
            ),
            for: exchange
        )
    }

    private static func isDigest(_ value: ByteBufferView) -> Bool {
        guard value.count > 7 else { return false }
        return FieldName.equals(value.prefix(7), "digest ")
    }

    private func accepted(_ exchange: ProxyExchange, user: String, scheme: String = "basic") {
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
    private func noLongerValid(_ exchange: ProxyExchange, reason: RejectionReason, user: String, scheme: String) {
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
    private func loopKey(_ exchange: ProxyExchange) -> ChallengeLoopDetector.Client {
        let head = exchange.head
        let agent = head.lines.first { FieldName.equals(head.name($0), "user-agent") }.map { head.value($0) }
        return ChallengeLoopDetector.Client(
            address: self.clientAddress,
            userAgent: agent ?? ByteBuffer().readableBytesView
        )
    }

    private func noteChallengeLoop(_ exchange: ProxyExchange, reason: AuthFailureReason) {
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
    private func reject(
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
                        "lockout": "\(Self.seconds(throttle.settings.lockout))",
                    ]
                )
            }
        }
        guard delay > .zero else {
            self.sendReject(logDetail: logDetail, exchange, failure)
            return
        }
        self.phase = .authenticating
        self.context.eventLoop.assumeIsolated().scheduleTask(in: delay) {
            guard self.exchange === exchange, case .authenticating = self.phase else { return }
            self.sendReject(logDetail: logDetail, exchange, failure)
        }
    }

    /// - Parameter logDetail: extra log metadata (the exact reason behind a generic one).
    private func sendReject(logDetail: Logger.Metadata = [:], _ exchange: ProxyExchange, _ failure: AuthFailure) {
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
        self.sendLocalResponse(
            .proxyAuthenticationRequired(
                failure,
                challenges: self.shared.gate.challenges(
                    digest: self.shared.digest?.challenges(stale: failure.reason == .staleNonce) ?? []
                )
            ),
            for: exchange
        )
    }

    private func authorized(_ exchange: ProxyExchange) {
        if let denial = self.policyDenial(exchange) ?? self.limitDenial(exchange) {
            self.sendLocalResponse(denial, for: exchange)
            return
        }
        switch exchange.target {
        case .authority(let authority):
            guard self.configuration.connectPorts.contains(authority.port) else {
                self.sendLocalResponse(
                    ProxyResponse(
                        status: .forbidden,
                        proxyError: "http_request_denied",
                        details: "CONNECT port not allowed",
                        message:
                            "CONNECT to port \(authority.port) is not allowed here (allowed: \(self.configuration.connectPorts.sorted().map(String.init).joined(separator: ", ")); see --connect-ports)."
                    ),
                    for: exchange
                )
                return
            }
            self.openTunnel(exchange, to: authority)
        case .absolute(let authority, let pathAndQuery):
            self.forward(exchange, to: authority, pathAndQuery: pathAndQuery)
        default:
            break
        }
    }

    /// The 429 or 413 for a request over a per-user limit or the body limit, if it is.
    private func limitDenial(_ exchange: ProxyExchange) -> ProxyResponse? {
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
    private func policyDenial(_ exchange: ProxyExchange) -> ProxyResponse? {
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

    // MARK: - Access log and request metrics

    /// One access-log line and the request metrics for an exchange that ended (or was cut off).
    func logExchange(_ exchange: ProxyExchange, now: NIODeadline? = nil) {
        let now = now ?? self.currentTime
        guard !exchange.logged else { return }
        exchange.logged = true
        let metrics = self.shared.metrics
        let elapsed = now - exchange.started
        metrics.request(connect: exchange.isConnect, status: exchange.status)
        metrics.requestDuration.recordNanoseconds(elapsed.nanoseconds)
        metrics.bytesFromClients.increment(by: Int64(exchange.head.bytes.readableBytes + exchange.requestBodyBytes))
        metrics.bytesToClients.increment(by: Int64(exchange.bytesToClient))
        guard let log = self.shared.accessLog else { return }
        let method = String(decoding: exchange.head.methodBytes, as: UTF8.self)
        log.write(
            AccessRecord(
                start: exchange.startDate(now: now),
                durationMs: Int(elapsed.nanoseconds / 1_000_000),
                client: self.clientAddress,
                user: exchange.user,
                authScheme: exchange.authScheme,
                authResult: exchange.authResult,
                method: method.isEmpty ? "-" : method,
                target: Self.redactedTarget(exchange.head.target),
                status: exchange.status,
                bytesFromClient: exchange.head.bytes.readableBytes + exchange.requestBodyBytes,
                bytesToClient: exchange.bytesToClient,
                upstream: exchange.upstreamAddress,
                contentType: exchange.contentType,
                proxyStatus: exchange.proxyStatus,
                isTunnel: false
            )
        )
    }

    /// A target with any user info (`http://user:pw@host/`, refused with 400 but still logged)
    /// replaced, so no password reaches the log.
    static func redactedTarget(_ target: String) -> String {
        guard let at = target.firstIndex(of: "@") else { return target }
        let schemeEnd = target.range(of: "://")?.upperBound ?? target.startIndex
        let authorityEnd =
            target[schemeEnd...].firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) ?? target.endIndex
        guard at > schemeEnd, at < authorityEnd else { return target }
        return String(target[..<schemeEnd]) + "***" + String(target[at...])
    }
}

// MARK: - Digest (RFC 7616)

extension ProxyConnectionHandler {
    /// Checks what needs no secret (realm, algorithm, uri), then the user's secrets, cached or
    /// read on the thread pool.
    fileprivate func verifyDigest(
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
            self.sendLocalResponse(
                ProxyResponse(
                    status: .badRequest,
                    proxyError: "http_request_error",
                    details: "digest-uri-mismatch",
                    message:
                        "the uri parameter of the Digest answer does not name this request's target (use the request target, or its path for absolute-form requests)."
                ),
                for: exchange
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
        self.phase = .authenticating
        verifier.digestSecrets(key, on: self.context.eventLoop).assumeIsolated().whenSuccess { lookup in
            guard self.exchange === exchange, case .authenticating = self.phase else { return }
            self.finishDigest(exchange, authorization, key: key, lookup: lookup, authority: authority)
        }
    }

    /// The answer against the secrets, then the nonce, then the account rules.
    private func finishDigest(
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
