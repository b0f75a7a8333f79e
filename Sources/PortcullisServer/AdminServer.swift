import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus

/// The admin listener (`--admin HOST:PORT`): `/metrics` in the Prometheus text format,
/// `/healthz` (the process answers), `/readyz` (listeners up, users store readable) and, with a
/// user database, `POST /v1/tokens` (``TokenEndpoint``).
/// Loopback only unless `--allow-remote-admin`: metrics say a lot about who uses the proxy.
final class AdminServer: Sendable {
    private let registry: PrometheusCollectorRegistry
    private let readiness: @Sendable () -> (ready: Bool, reason: String)
    private let channel: any Channel

    private init(
        registry: PrometheusCollectorRegistry,
        readiness: @escaping @Sendable () -> (ready: Bool, reason: String),
        channel: any Channel
    ) {
        self.registry = registry
        self.readiness = readiness
        self.channel = channel
    }

    /// `socket`: an inherited socket already bound to `address` (socket activation), served as it is.
    static func start(
        at address: SocketAddress,
        socket: CInt? = nil,
        group: any EventLoopGroup,
        registry: PrometheusCollectorRegistry,
        tokens: TokenEndpoint? = nil,
        readiness: @escaping @Sendable () -> (ready: Bool, reason: String)
    ) async throws -> (AdminServer, SocketAddress?) {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(
                        AdminHandler(registry: registry, tokens: tokens, readiness: readiness)
                    )
                }
            }
        let channel =
            try await (socket.map { bootstrap.withBoundSocket($0) } ?? bootstrap.bind(to: address)).get()
        return (AdminServer(registry: registry, readiness: readiness, channel: channel), channel.localAddress)
    }

    func close() async {
        try? await self.channel.close()
    }
}

private final class AdminHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let registry: PrometheusCollectorRegistry
    private let tokens: TokenEndpoint?
    private let readiness: @Sendable () -> (ready: Bool, reason: String)
    /// A `POST /v1/tokens` whose body is arriving (at most ``TokenEndpoint/maximumBody`` kept).
    private var pendingPost: (head: HTTPRequestHead, body: [UInt8], tooLarge: Bool)?

    init(
        registry: PrometheusCollectorRegistry,
        tokens: TokenEndpoint?,
        readiness: @escaping @Sendable () -> (ready: Bool, reason: String)
    ) {
        self.registry = registry
        self.tokens = tokens
        self.readiness = readiness
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
            if head.method == .POST, path == "/v1/tokens", self.tokens != nil {
                self.pendingPost = (head, [], false)
                return
            }
            self.answer(context: context, head: head, path: path)
        case .body(let buffer):
            guard var post = self.pendingPost else { return }
            if post.body.count + buffer.readableBytes > TokenEndpoint.maximumBody {
                post.tooLarge = true
            } else {
                post.body += buffer.readableBytesView
            }
            self.pendingPost = post
        case .end:
            guard let post = self.pendingPost, let tokens = self.tokens else { return }
            self.pendingPost = nil
            if post.tooLarge {
                self.write(
                    context: context,
                    head: post.head,
                    TokenEndpoint.error(.payloadTooLarge, "the body is larger than 4 KiB")
                )
                return
            }
            // The password check and the database write are awaited off the event loop; the
            // answer is written back on it.
            let authorization = post.head.headers["Authorization"]
            let client = context.channel.remoteAddress?.ipAddress ?? "-"
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            context.eventLoop.makeFutureWithTask {
                await tokens.handle(authorization: authorization, body: post.body, client: client)
            }.whenSuccess { response in
                let (handler, context) = loopBound.value
                // A request pipelined behind this one waits in NIO's pipelining handler.
                handler.write(context: context, head: post.head, response)
            }
        }
    }

    private func answer(context: ChannelHandlerContext, head: HTTPRequestHead, path: String) {
        let status: HTTPResponseStatus
        let contentType: String
        var body = context.channel.allocator.buffer(capacity: 256)
        switch (head.method, path) {
        case (.GET, "/metrics"), (.HEAD, "/metrics"):
            status = .ok
            contentType = "text/plain; version=0.0.4; charset=utf-8"
            body.writeBytes(self.registry.emitToBuffer())
        case (.GET, "/healthz"), (.HEAD, "/healthz"):
            status = .ok
            contentType = "text/plain; charset=utf-8"
            body.writeString("ok\n")
        case (.GET, "/readyz"), (.HEAD, "/readyz"):
            let (ready, reason) = self.readiness()
            status = ready ? .ok : .serviceUnavailable
            contentType = "text/plain; charset=utf-8"
            body.writeString((ready ? "ready" : "not ready: \(reason)") + "\n")
        case (.GET, _), (.HEAD, _):
            status = .notFound
            contentType = "text/plain; charset=utf-8"
            body.writeString("not found: try /metrics, /healthz or /readyz\n")
        case (.POST, "/v1/tokens"):
            status = .notFound
            contentType = "text/plain; charset=utf-8"
            body.writeString(
                "tokens are issued by proxies whose users are in a user database (sqlite: or postgres://)\n"
            )
        default:
            status = .methodNotAllowed
            contentType = "text/plain; charset=utf-8"
            body.writeString("only GET and HEAD (and POST /v1/tokens)\n")
        }
        self.send(context: context, head: head, status: status, contentType: contentType, body: body, extra: [])
    }

    private func write(context: ChannelHandlerContext, head: HTTPRequestHead, _ response: TokenEndpoint.Response) {
        var body = context.channel.allocator.buffer(capacity: response.body.utf8.count)
        body.writeString(response.body)
        self.send(
            context: context,
            head: head,
            status: response.status,
            contentType: "application/json",
            body: body,
            extra: response.headers
        )
    }

    private func send(
        context: ChannelHandlerContext,
        head: HTTPRequestHead,
        status: HTTPResponseStatus,
        contentType: String,
        body: ByteBuffer,
        extra: [(String, String)]
    ) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: "\(body.readableBytes)")
        headers.add(name: "Cache-Control", value: "no-store")
        for (name, value) in extra { headers.add(name: name, value: value) }
        let keepAlive = head.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(
            self.wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))),
            promise: nil
        )
        if head.method != .HEAD {
            context.write(self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        context.writeAndFlush(self.wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            if !keepAlive { context.close(promise: nil) }
        }
    }
}
