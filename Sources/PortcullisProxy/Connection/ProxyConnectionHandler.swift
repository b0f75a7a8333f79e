import Foundation
import Logging
import NIOCore
import NIOExtras
import NIOPosix
import PortcullisAuth
import PortcullisStores

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
    private var pendingRead = false
    /// One timer per connection serves every deadline of the machine: it fires by the earliest
    /// and is re-armed lazily (scheduling and cancelling a task per request cost more than the
    /// rest of the gate).
    private var timer: Scheduled<Void>?
    private var timerFiresAt: NIODeadline?
    /// Inside a burst of reads from the client / the upstream: writes caused there are flushed
    /// once at the burst's readComplete instead of one syscall each.
    var readingClient = false
    var readingUpstream = false
    /// Completes when the current exchange's response has left (set when its write is tracked:
    /// a close waits for it).
    private var responseWritten: EventLoopFuture<Void>?
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

    /// The settings in force when this connection was accepted (a config reload applies to new
    /// connections; this one keeps its own).
    let configuration: ProxyConfiguration

    init(
        shared: ProxyContext,
        pool: UpstreamPool,
        logger: Logger
    ) {
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
                lingerAfterResponse: Self.lingerAfterResponse
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
        self.shared.metrics.activeConnections.increment()
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
            self.execute(self.machine.quiesce())
            return
        }
        if case .some(.inputClosed) = event as? ChannelEvent {
            self.execute(self.machine.clientInputEnded())
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

    // MARK: - Actions

    func execute(_ action: StateMachine.Action) {
        switch action {
        case .none:
            return
        case .sendBody(let upstream, let buffer):
            upstream.sendBody(buffer)
            return
        case .runGate(let exchange):
            self.startGate(exchange)
        case .respond(let response, let exchange, let close, let abandon, let then):
            if let abandon {
                abandon.detach()
                abandon.close()
            }
            self.writeLocalResponse(response, for: exchange, close: close, then: then)
        case .forward(let exchange, let authority, let pathAndQuery):
            self.forward(exchange, to: authority, pathAndQuery: pathAndQuery, now: self.currentTime)
        case .connect(let exchange, let authority, let attempt, let tunnel):
            if tunnel {
                self.openTunnel(exchange, to: authority, attempt: attempt)
            } else {
                self.connectUpstream(exchange, to: authority, attempt: attempt)
            }
        case .sendRequest(let exchange, let upstream):
            self.send(exchange, over: upstream, now: self.currentTime)
        case .discardConnection:
            // Closed by the caller, which holds the channel.
            return
        case .becomeTunnel:
            // Carried out by the tunnel's connect completion, which holds the channels.
            return
        case .finishRelay(let upstream, let release, let then):
            self.finishRelay(upstream, release: release, then: then)
        case .finish(let then):
            self.finish(then)
        case .close(let abandon, let afterResponse):
            if let abandon {
                abandon.detach()
                abandon.close()
            }
            self.closeChannel(afterResponse: afterResponse)
        case .closeNow:
            self.context?.close(promise: nil)
        case .lingerUntil:
            break
        }
        self.rearmTimer()
    }

    /// Writes the proxy's own response whole, then what the machine says follows it.
    private func writeLocalResponse(
        _ response: ProxyResponse,
        for exchange: ProxyExchange,
        close: Bool,
        then: StateMachine.AfterResponse
    ) {
        guard let context = self.context else { return }
        let bytes = response.serialized(
            httpMinorVersion: exchange.isHTTP10 ? 0 : 1,
            close: close,
            allocator: context.channel.allocator
        )
        exchange.status = Int(response.status.code)
        exchange.proxyStatus = response.proxyStatus
        exchange.bytesToClient += bytes.readableBytes
        self.writeLast(bytes, then: then)
        self.finish(then)
        self.resumeReadsIfPossible()
    }

    /// Writes a response's last bytes: tracked and flushed when a close may have to wait for
    /// them (closing at once would drop unwritten data), else left for the burst's flush.
    func writeLast(_ last: ByteBuffer?, then: StateMachine.AfterResponse) {
        guard let context = self.context else { return }
        switch then {
        case .close, .awaitRequestEnd(tracked: true):
            let promise = context.eventLoop.makePromise(of: Void.self)
            context.writeAndFlush(self.wrapOutboundOut(last ?? ByteBuffer()), promise: promise)
            self.responseWritten = promise.futureResult
        case .keepAlive, .awaitRequestEnd(tracked: false):
            if let last { context.write(self.wrapOutboundOut(last), promise: nil) }
        }
    }

    /// Ends the exchange as the machine decided: the access-log line, then the next request
    /// (or the close once the response has left).
    func finish(_ then: StateMachine.AfterResponse, now: NIODeadline? = nil) {
        switch then {
        case .awaitRequestEnd:
            return
        case .close(let exchange):
            self.logExchange(exchange, now: now)
            self.closeChannel(afterResponse: true)
        case .keepAlive(let exchange, let wasConnect):
            let now = now ?? self.currentTime
            self.logExchange(exchange, now: now)
            if !self.readingUpstream { self.context?.flush() }
            if wasConnect {
                // No tunnel: what the client sends next is a request again (a retry after a 407).
                self.framer.resumeAfterConnect()
            }
            self.rearmTimer()
            self.resumeReadsIfPossible()
        }
    }

    /// Closes the client connection as the machine decided (it is in `.closing` now); with
    /// `afterResponse`, once the last response has left.
    ///
    /// After a response the close is a lingering one: the output side closes first and what the
    /// client still sends (the rest of a body) is read and dropped for a moment; closing at once
    /// with unread input would reset the connection, and a reset can destroy the response
    /// before the client reads it. A client that never reads the response is cut off at the
    /// request-head deadline.
    private func closeChannel(afterResponse: Bool) {
        self.cancelGate()
        guard let context = self.context else { return }
        guard afterResponse else {
            self.cancelTimer()
            context.close(promise: nil)
            return
        }
        context.flush()
        self.machine.closeWaitsForResponse(now: self.currentTime)
        self.rearmTimer()
        let written = self.responseWritten ?? context.eventLoop.makeSucceededVoidFuture()
        written.assumeIsolated().whenComplete { [weak self] result in
            guard let self, self.context != nil else { return }
            let success: Bool
            if case .success = result { success = true } else { success = false }
            switch self.machine.responseLeft(success: success, now: self.currentTime) {
            case .lingerUntil:
                self.context?.close(mode: .output, promise: nil)
                self.rearmTimer()
                self.resumeReadsIfPossible()
            case .closeNow:
                self.context?.close(promise: nil)
            default:
                break
            }
        }
    }

    // MARK: - Timer

    /// Makes the timer fire by the machine's earliest deadline.
    func rearmTimer() {
        guard let deadline = self.machine.nextDeadline, let context = self.context else { return }
        if let firesAt = self.timerFiresAt, firesAt <= deadline, self.timer != nil { return }
        self.timer?.cancel()
        self.timerFiresAt = deadline
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [weak self] in
            self?.timerFired()
        }
    }

    /// The connection leaves this handler (a tunnel): no deadline of it applies any more.
    func stopTimer() {
        self.cancelTimer()
    }

    private func cancelTimer() {
        self.timer?.cancel()
        self.timer = nil
        self.timerFiresAt = nil
    }

    private func timerFired() {
        self.timer = nil
        self.timerFiresAt = nil
        guard let context = self.context, context.channel.isActive else { return }
        let action = self.machine.timerFired(now: self.currentTime, readsPaused: !self.readAllowed)
        if case .respond(let response, _, _, _, _) = action, response.status == .requestTimeout {
            self.logger.debug(
                "request not complete in time",
                metadata: ["client": "\(self.clientAddress)", "details": "\(response.details ?? "-")"]
            )
        }
        self.execute(action)
        self.rearmTimer()
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
