import NIOCore
import NIOPosix

/// How a client connection reaches an origin: what to connect to and how the new channel is set up.
package struct UpstreamConnectRequest {
    package var host: String
    package var port: Int
    /// A CONNECT tunnel (bulk bytes: larger receive buffers) rather than an HTTP/1.1 upstream.
    package var isTunnel: Bool
    package var connectTimeout: TimeAmount
    /// Resolves the host and drops the addresses the destination rules refuse.
    let resolver: PolicyResolver
}

/// Opens the connections to origins: sockets on a server (``SocketUpstreamConnector``),
/// channels scripted by the test in ``ConnectionHarness``.
package protocol UpstreamConnector: Sendable {
    /// A channel to the origin, set up by `initializer` before it becomes active.
    func connect(
        _ request: UpstreamConnectRequest,
        on eventLoop: any EventLoop,
        initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) -> EventLoopFuture<any Channel>
}

/// TCP through NIO's Happy Eyeballs connector, names resolved by the request's ``PolicyResolver``.
package struct SocketUpstreamConnector: UpstreamConnector {
    package init() {}

    package func connect(
        _ request: UpstreamConnectRequest,
        on eventLoop: any EventLoop,
        initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) -> EventLoopFuture<any Channel> {
        var bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(request.connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .resolver(request.resolver)
        if request.isTunnel {
            bootstrap = bootstrap.channelOption(.recvAllocator, value: Self.tunnelReceiveAllocator)
        }
        return bootstrap.channelInitializer(initializer).connect(host: request.host, port: request.port)
    }

    /// Bulk tunnels move more per read with larger buffers (fewer syscalls); the adaptive
    /// allocator still shrinks them for an idle or chatty tunnel.
    static let tunnelReceiveAllocator = AdaptiveRecvByteBufferAllocator(
        minimum: 64,
        initial: 16 * 1024,
        maximum: 256 * 1024
    )
}
