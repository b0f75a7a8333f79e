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
    var clientInputClosed = false
    /// The 407 gate's own state and per-connection memory.
    var gate = GateStateMachine()
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
        self.cancelGate()
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
        self.cancelGate()
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
        self.startGate(exchange)
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

    // MARK: - The gate's outcomes (see ProxyConnectionHandler+Gate)

    /// The gate let `exchange` through (credentials, access rules and limits): on to its origin.
    func gateAllowed(_ exchange: ProxyExchange) {
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

    /// The gate answers `exchange` itself (407, 429, 403, 503…); `exchange.closeAfter` says
    /// whether the connection closes after it.
    func gateRefused(_ exchange: ProxyExchange, _ response: ProxyResponse) {
        self.sendLocalResponse(response, for: exchange)
    }

    /// The gate waits for work off the event loop (a password check, a store lookup) or a delay.
    func gateSuspended(_ exchange: ProxyExchange) {
        self.phase = .authenticating
    }

    /// Whether the gate's work for `exchange`, now finished, is still wanted: not once the
    /// client left or the exchange ended otherwise.
    func gateResumed(_ exchange: ProxyExchange) -> Bool {
        guard self.exchange === exchange, case .authenticating = self.phase else { return false }
        return true
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
