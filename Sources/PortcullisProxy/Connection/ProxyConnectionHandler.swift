import Foundation
import Logging
import NIOCore
import PortcullisKerberos

/// Serves one client connection: translates channel events into events of its
/// ``ProxyConnectionStateMachine`` and carries out the machine's actions — the gate, the
/// forwarding over a pooled upstream connection, the tunnel, the proxy's own responses, closes.
///
/// Requests are read by our own ``RequestFramer``; a pipelined request waits there as bytes,
/// and reads stop, until the one before it is answered. Reads from the client stop whenever
/// the upstream cannot take more (back-pressure); the ``UpstreamHandler`` likewise reads only
/// while this client is writable.
final class ProxyConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler, UpstreamOwner {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    typealias StateMachine = ProxyConnectionStateMachine<UpstreamHandler>

    let shared: ProxyContext
    let pool: UpstreamPool
    var framer = RequestFramer()
    var context: ChannelHandlerContext!
    var logger: Logger
    var machine: StateMachine

    /// Inside ``parseAvailable()``: a nested call (from an action it runs) leaves the work to it.
    private var parsing = false
    var pendingRead = false
    /// One timer per connection serves every deadline of the machine: it fires by the earliest
    /// and is re-armed lazily (scheduling and cancelling a task per request cost more than the
    /// rest of the gate).
    var timer: Scheduled<Void>?
    var timerFiresAt: NIODeadline?
    /// Inside a burst of reads from the client / the upstream: writes caused there are flushed
    /// once at the burst's readComplete instead of one syscall each.
    var readingClient = false
    var readingUpstream = false
    /// Completes when the current exchange's response has left (set when its write is tracked:
    /// a close waits for it).
    var responseWritten: EventLoopFuture<Void>?
    /// The 407 gate's own state and per-connection memory.
    var gate = GateStateMachine()
    /// This connection's Kerberos security context while a Negotiate handshake is under way.
    var negotiateContext: NegotiateContext?
    /// The user a verified client certificate names (TLS listeners with `--tls-client-ca`).
    var certificateUser: String?
    /// An upstream connection an origin authenticated with NTLM/Negotiate: this client
    /// connection's alone (see ``ProxyExchange/pinsUpstream``).
    var pinnedUpstream: (key: UpstreamPool.Key, upstream: UpstreamHandler)?
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

    /// The settings in force when this connection was accepted (a config reload applies to new
    /// connections; this one keeps its own).
    let configuration: ProxyConfiguration

    /// The kind of listener the connection came in on.
    let listener: ListenerKind

    init(
        shared: ProxyContext,
        pool: UpstreamPool,
        logger: Logger,
        listener: ListenerKind = .tcp,
        certificateUser: String? = nil
    ) {
        self.listener = listener
        self.certificateUser = certificateUser
        self.shared = shared
        let configuration = shared.configuration
        self.configuration = configuration
        self.pool = pool
        self.logger = logger
        self.machine = StateMachine(
            settings: .init(
                requestHeadTimeout: configuration.requestHeadTimeout,
                requestBodyTimeout: configuration.requestBodyTimeout,
                clientIdleTimeout: configuration.clientIdleTimeout,
                upstreamResponseTimeout: configuration.upstreamResponseTimeout,
                maximumRequestBody: configuration.maximumRequestBody,
                rejectedBodyDrainLimit: configuration.rejectedBodyDrainLimit,
                connectPorts: configuration.connectPorts,
                lingerAfterResponse: Self.lingerAfterResponse,
                servesDocuments: shared.servedDocument != nil
            ),
            // Counted from the connection's activation (`connectionActive`).
            now: .uptimeNanoseconds(0)
        )
    }

    /// How long a closing connection still reads (and drops) what the client sends.
    static let lingerAfterResponse: TimeAmount = .seconds(2)

    /// The event loop's clock: real time on a server, the test's time on an `EmbeddedEventLoop`.
    var currentTime: NIODeadline { self.context?.eventLoop.now ?? .now() }

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.clientAddress = context.channel.remoteAddress?.ipAddress ?? "-"
        // An HTTP/2 stream is not a connection: its TLS connection was counted.
        if self.listener != .h2 { self.shared.metrics.activeConnections.increment() }
        if context.channel.isActive { self.activate() }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.activate()
        context.fireChannelActive()
    }

    private func activate() {
        self.machine.connectionActive(now: self.currentTime)
        self.rearmTimer()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.machine.state {
        case .tunnel:
            // Read before this handler left the pipeline: the tunnel's bytes.
            context.fireChannelRead(data)
            return
        case .closing, .closed:
            return
        case .idle, .exchange:
            break
        }
        self.framer.append(self.unwrapInboundIn(data))
        self.readingClient = true
        self.parseAvailable()
        if case .idle(.waiting) = self.machine.state, self.framer.bufferedBytes > 0 {
            // A head has started to arrive: it gets its own deadline instead of the idle one.
            self.machine.requestHeadBegan(now: self.currentTime)
            self.rearmTimer()
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.readingClient = false
        self.machine.upstream?.flush()
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
        if context.channel.isWritable { self.machine.upstream?.resumeReading() }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            self.execute(self.machine.quiesce(now: self.currentTime))
            // A connection that has not sent a request yet gets a shorter deadline.
            self.rearmTimer()
            return
        }
        if case .some(.inputClosed) = event as? ChannelEvent {
            self.execute(self.machine.clientInputEnded())
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if self.listener != .h2 { self.shared.metrics.activeConnections.decrement() }
        // The context holds this handler: keeping it here too would be a cycle that outlives the
        // connection (it did: ~3.4 KiB per connection, found by bench/extras.py's RSS figures).
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.cancelTimer()
        self.closeGate()
        let (unlogged, upstream, midResponse) = self.machine.channelClosed()
        if let unlogged, !unlogged.logged {
            // The client went away mid-exchange: still one line in the log.
            self.logExchange(unlogged)
        }
        if let limits = self.shared.userLimits {
            for user in self.limitedUsers { limits.release(user: user, connection: ObjectIdentifier(self)) }
            self.limitedUsers.removeAll()
        }
        if let upstream {
            upstream.detach()
            if midResponse { upstream.close() }
        }
        self.pinnedUpstream?.upstream.close()
        self.pinnedUpstream = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.logger.debug("client connection error", metadata: ["error": "\(error)"])
        self.execute(self.machine.close())
    }

    /// Whether a per-client log line of `kind` may be written now: past a few per interval the
    /// rest are counted and summarized (``RefusalLogLimiter``).
    func mayLog(_ kind: RefusalLogLimiter.Kind) -> Bool {
        self.shared.refusalLog.admit(kind, now: self.currentTime)
    }

    // MARK: - Reading and parsing the client

    /// Whether the client connection may be read now (see ``ProxyConnectionStateMachine/readGate``).
    var readAllowed: Bool {
        switch self.machine.readGate {
        case .open: return true
        case .closed: return false
        case .openIfNothingBuffered: return self.framer.bufferedBytes == 0
        case .openIfWritable(let upstream): return upstream.isWritable
        }
    }

    func resumeReadsIfPossible() {
        self.parseAvailable()
        if self.pendingRead, self.readAllowed, let context = self.context {
            self.pendingRead = false
            context.read()
        }
    }

    /// Hands the framer's events to the machine for as long as they can be acted on.
    func parseAvailable() {
        guard !self.parsing, self.context != nil else { return }
        self.parsing = true
        var handled = false
        defer {
            self.parsing = false
            // Outside a read burst nothing else will flush what the events wrote upstream.
            if handled, !self.readingClient { self.machine.upstream?.flush() }
        }
        while self.readyForNextEvent {
            let event: RequestFramer.Event?
            do {
                event = try self.framer.next()
            } catch {
                self.logger.debug("malformed request", metadata: ["reason": "\(error.reason)"])
                let response = ProxyResponse(
                    status: error.status,
                    proxyError: "http_request_error",
                    details: error.reason,
                    message: "the request is not valid HTTP/1.1 (\(error.reason))."
                )
                self.execute(self.machine.refuse(response, now: self.currentTime))
                return
            }
            guard let event else { return }
            handled = true
            switch event {
            case .head(let head):
                let now = self.currentTime
                self.responseWritten = nil
                let record = ProxyExchange(head: head, started: now)
                self.execute(self.machine.requestHead(record, now: now))
            case .body(let buffer):
                self.execute(self.machine.requestBody(buffer, now: self.currentTime))
            case .end:
                self.execute(self.machine.requestEnd(now: self.currentTime))
            }
        }
    }

    private var readyForNextEvent: Bool {
        switch self.machine.parseGate {
        case .open: return true
        case .closed: return false
        case .openIfNothingBuffered: return self.framer.bufferedBytes == 0
        case .openIfWritable(let upstream): return upstream.isWritable
        }
    }

    // MARK: - The gate's outcomes (see ProxyConnectionHandler+Gate)

    /// The gate let `exchange` through (credentials, access rules and limits): on to its origin.
    func gateAllowed(_ exchange: ProxyExchange) {
        let now = self.currentTime
        switch self.machine.gateAllowed(now: now) {
        case .forward(let exchange, let authority, let pathAndQuery):
            self.forward(exchange, to: authority, pathAndQuery: pathAndQuery, now: now)
        case let action:
            self.execute(action)
        }
    }

    /// The gate answers the request itself (407, 429, 403, 503…); `close`: the connection closes
    /// after it (a lockout, a client that keeps failing Digest).
    func gateRefused(_ response: ProxyResponse, close: Bool) {
        self.execute(self.machine.gateRefused(response, close: close, now: self.currentTime))
    }

}
