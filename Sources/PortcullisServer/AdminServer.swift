import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus

/// The admin listener (`--admin HOST:PORT`): `/metrics` in the Prometheus text format,
/// `/healthz` (the process answers) and `/readyz` (listeners up, users store readable).
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

    static func start(
        at address: SocketAddress,
        group: any EventLoopGroup,
        registry: PrometheusCollectorRegistry,
        readiness: @escaping @Sendable () -> (ready: Bool, reason: String)
    ) async throws -> (AdminServer, SocketAddress?) {
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(
                        AdminHandler(registry: registry, readiness: readiness)
                    )
                }
            }
            .bind(to: address)
            .get()
        return (AdminServer(registry: registry, readiness: readiness, channel: channel), channel.localAddress)
    }

    func close() async {
        try? await self.channel.close()
    }
}

private final class AdminHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let registry: PrometheusCollectorRegistry
    private let readiness: @Sendable () -> (ready: Bool, reason: String)

    init(registry: PrometheusCollectorRegistry, readiness: @escaping @Sendable () -> (ready: Bool, reason: String)) {
        self.registry = registry
        self.readiness = readiness
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = self.unwrapInboundIn(data) else { return }
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
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
        default:
            status = .methodNotAllowed
            contentType = "text/plain; charset=utf-8"
            body.writeString("only GET and HEAD\n")
        }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: "\(body.readableBytes)")
        headers.add(name: "Cache-Control", value: "no-store")
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
