import Logging
import NIOCore
import NIOExtras
import NIOHTTP1
import NIOPosix
import PortcullisAuth
import PortcullisStores

/// Serves one client connection: gates each request, forwards it over a pooled upstream
/// connection or turns the connection into a CONNECT tunnel.
///
/// Requests are handled one at a time; pipelined requests wait in ``pipelined`` while reads stop.
/// Reads from the client stop whenever the upstream cannot take more (back-pressure); the
/// ``UpstreamHandler`` likewise reads only while this client is writable.
final class ProxyConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler, UpstreamOwner {
    typealias InboundIn = HTTPServerRequestPart
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
    }

    let shared: ProxyContext
    let pool: UpstreamPool
    var decoder: ByteToMessageHandler<HTTPRequestDecoder>
    var context: ChannelHandlerContext!
    var logger: Logger

    var phase: Phase = .idle
    var exchange: ProxyExchange?
    var pipelined: CircularBuffer<HTTPServerRequestPart> = CircularBuffer(initialCapacity: 0)
    var processingPipelined = false
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
    private var lastAuthorization: (value: String, key: CredentialVerifier.CacheKey)?
    var clientInputClosed = false

    init(
        shared: ProxyContext,
        pool: UpstreamPool,
        decoder: ByteToMessageHandler<HTTPRequestDecoder>,
        logger: Logger
    ) {
        self.shared = shared
        self.pool = pool
        self.decoder = decoder
        self.logger = logger
    }

    static func makeDecoder() -> ByteToMessageHandler<HTTPRequestDecoder> {
        ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes))
    }

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { self.armIdleTimer() }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.armIdleTimer()
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .tunnel = self.phase {
            // Bytes the client sent right after the CONNECT head, handed over by the decoder
            // as it leaves: pass them on to the tunnel.
            context.fireChannelRead(data)
            context.fireChannelReadComplete()
            return
        }
        let part = self.unwrapInboundIn(data)
        self.readingClient = true
        if !self.pipelined.isEmpty || (self.exchange?.requestEnded ?? false) {
            self.pipelined.append(part)
            return
        }
        self.handle(part)
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
                context.close(promise: nil)
            }
            return
        }
        if case .some(.inputClosed) = event as? ChannelEvent {
            self.clientInputClosed = true
            if let exchange = self.exchange, exchange.requestEnded {
                exchange.closeAfter = true
            } else {
                // Nothing in flight, or the client stopped sending half-way through a request.
                context.close(promise: nil)
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.cancelTimer()
        if case .forwarding(let upstream) = self.phase {
            upstream.detach()
            if !(self.exchange?.responseEnded ?? true) { upstream.close() }
        }
        self.exchange = nil
        self.phase = .idle
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is HTTPParserError || error is ByteToMessageDecoderError {
            // The decoder cannot continue after a parse error: answer if we still can, then close.
            if let exchange = self.exchange, exchange.responseStarted {
                context.close(promise: nil)
                return
            }
            let exchange =
                self.exchange
                ?? ProxyExchange(head: HTTPRequestHead(version: .http1_1, method: .GET, uri: "/"), quiescing: true)
            self.exchange = exchange
            exchange.closeAfter = true
            exchange.requestEnded = true
            self.logger.debug("malformed request", metadata: ["error": "\(error)"])
            self.sendLocalResponse(
                .badRequest("the request is not valid HTTP/1.1 (\(Self.describe(parserError: error)))."),
                for: exchange
            )
            return
        }
        self.logger.debug("client connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    private static func describe(parserError error: any Error) -> String {
        guard let parserError = error as? HTTPParserError else { return "malformed" }
        switch parserError {
        case .headerOverflow: return "header section too large"
        case .invalidVersion: return "unsupported HTTP version"
        case .invalidMethod: return "invalid method"
        case .invalidURL: return "invalid request target"
        case .invalidHeaderToken: return "invalid header field"
        case .invalidContentLength, .unexpectedContentLength: return "invalid Content-Length"
        case .invalidChunkSize: return "invalid chunked encoding"
        default: return "malformed"
        }
    }

    // MARK: - Read gating

    /// Whether the client connection may be read now. Reads stay on while a response is
    /// relayed (a keep-alive client sends nothing then, and turning read interest off and on
    /// costs two epoll_ctl calls a request); a pipelined request that does arrive is queued
    /// and stops further reads until it is served.
    var readAllowed: Bool {
        if !self.pipelined.isEmpty { return false }
        switch self.phase {
        case .idle, .localResponse:
            return true
        case .authenticating, .connecting, .tunnelConnecting, .tunnel:
            return false
        case .forwarding(let upstream):
            guard let exchange = self.exchange, !exchange.requestEnded else { return true }
            return upstream.isWritable
        }
    }

    func resumeReadsIfPossible() {
        if self.pendingRead, self.readAllowed {
            self.pendingRead = false
            self.context.read()
        }
    }

    // MARK: - Inbound parts

    func handle(_ part: HTTPServerRequestPart) {
        switch part {
        case .head(let head):
            self.idleDeadline = nil
            let exchange = ProxyExchange(head: head, quiescing: self.quiescing)
            self.exchange = exchange
            self.start(exchange)
        case .body(let buffer):
            guard let exchange = self.exchange else { return }
            exchange.requestBodyBytes += buffer.readableBytes
            switch self.phase {
            case .forwarding(let upstream):
                upstream.sendBody(buffer, chunked: exchange.upstreamChunked)
            case .authenticating, .connecting, .tunnelConnecting:
                exchange.buffered.append(part)
            case .localResponse:
                exchange.discardedBodyBytes += buffer.readableBytes
                if exchange.discardedBodyBytes > self.shared.configuration.rejectedBodyDrainLimit {
                    // Not worth reading more of a body nobody will see: give up the connection.
                    exchange.closeAfter = true
                    exchange.requestEnded = true
                    self.finishIfDone(exchange)
                }
            case .idle, .tunnel:
                break
            }
        case .end(let trailers):
            guard let exchange = self.exchange else { return }
            exchange.requestEnded = true
            switch self.phase {
            case .forwarding(let upstream):
                upstream.sendEnd(chunked: exchange.upstreamChunked, trailers: trailers)
            case .authenticating, .connecting, .tunnelConnecting:
                exchange.buffered.append(part)
            case .localResponse:
                self.finishIfDone(exchange)
            case .idle, .tunnel:
                break
            }
        }
    }

    private func start(_ exchange: ProxyExchange) {
        switch RequestTarget.parse(exchange.head.uri, isConnect: exchange.isConnect) {
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
            self.authorized(exchange)
            return
        }
        let values = exchange.head.headers["Proxy-Authorization"]
        var cacheKey: CredentialVerifier.CacheKey?
        if values.count == 1 {
            let key: CredentialVerifier.CacheKey
            if let last = self.lastAuthorization, last.value == values[0] {
                key = last.key
            } else {
                key = verifier.cacheKey(forFieldValue: values[0])
                self.lastAuthorization = (values[0], key)
            }
            // Still asked every time: the entry may have expired or the users file changed.
            if let user = verifier.cachedUser(for: key) {
                exchange.user = user
                self.authorized(exchange)
                return
            }
            cacheKey = key
        }
        switch self.shared.gate.evaluate(proxyAuthorization: values) {
        case .reject(let failure):
            self.reject(exchange, failure)
        case .verifyBasic(let credentials):
            self.phase = .authenticating
            verifier.verify(credentials, key: cacheKey!, on: self.context.eventLoop)
                .assumeIsolated()
                .whenSuccess { outcome in
                    guard self.exchange === exchange, case .authenticating = self.phase else { return }
                    switch outcome {
                    case .accepted(let user):
                        exchange.user = user
                        self.authorized(exchange)
                    case .rejected:
                        self.reject(
                            exchange,
                            AuthFailure(
                                reason: .invalidCredentials,
                                explanation: "unknown user or wrong password",
                                presentedScheme: "basic"
                            )
                        )
                    }
                }
        }
    }

    private func reject(_ exchange: ProxyExchange, _ failure: AuthFailure) {
        // The first 407 of a normal handshake (no credentials yet) is not worth an info line.
        self.logger.log(
            level: failure.reason == .missingCredentials ? .debug : .info,
            "authentication failed",
            metadata: [
                "client": "\(self.context.channel.remoteAddress?.description ?? "-")",
                "reason": "\(failure.reason.token)",
                "scheme": "\(failure.presentedScheme ?? "-")",
            ]
        )
        self.sendLocalResponse(
            .proxyAuthenticationRequired(failure, challenges: self.shared.gate.challenges),
            for: exchange
        )
    }

    private func authorized(_ exchange: ProxyExchange) {
        switch exchange.target {
        case .authority(let authority):
            guard self.shared.configuration.connectPorts.contains(authority.port) else {
                self.sendLocalResponse(
                    ProxyResponse(
                        status: .forbidden,
                        proxyError: "http_request_denied",
                        details: "CONNECT port not allowed",
                        message:
                            "CONNECT to port \(authority.port) is not allowed here (allowed: \(self.shared.configuration.connectPorts.sorted().map(String.init).joined(separator: ", ")); see --connect-ports)."
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
}
