import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOHTTP1
import NIOPosix

/// The proxy's listeners and their connections.
public final class ProxyServer: Sendable {
    private let shared: ProxyContext
    private let group: MultiThreadedEventLoopGroup
    private let quiesce: ServerQuiescingHelper
    private let channels = NIOLockedValueBox<[any Channel]>([])
    private let pools = NIOLockedValueBox<[ObjectIdentifier: NIOLoopBound<UpstreamPool>]>([:])

    public init(context: ProxyContext, group: MultiThreadedEventLoopGroup) {
        self.shared = context
        self.group = group
        self.quiesce = ServerQuiescingHelper(group: group)
    }

    /// Binds every address; fails (and binds nothing that stays open) if any bind fails.
    public func start(listening addresses: [SocketAddress]) async throws -> [SocketAddress] {
        var bound: [SocketAddress] = []
        do {
            for address in addresses {
                let channel = try await self.makeBootstrap().bind(to: address).get()
                self.channels.withLockedValue { $0.append(channel) }
                if let local = channel.localAddress { bound.append(local) }
            }
        } catch {
            for channel in self.channels.withLockedValue({ $0 }) { try? await channel.close() }
            throw error
        }
        return bound
    }

    private func makeBootstrap() -> ServerBootstrap {
        let shared = self.shared
        return ServerBootstrap(group: self.group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        self.quiesce.makeServerChannelHandler(channel: channel)
                    )
                }
            }
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let pool = self.pool(for: channel.eventLoop)
                    let decoder = ProxyConnectionHandler.makeDecoder()
                    var logger = shared.logger
                    if let remote = channel.remoteAddress { logger[metadataKey: "client"] = "\(remote)" }
                    let handler = ProxyConnectionHandler(
                        shared: shared,
                        pool: pool,
                        decoder: decoder,
                        logger: logger
                    )
                    try channel.pipeline.syncOperations.addHandlers([decoder, handler])
                }
            }
    }

    private func pool(for eventLoop: any EventLoop) -> UpstreamPool {
        let id = ObjectIdentifier(eventLoop as AnyObject)
        if let existing = self.pools.withLockedValue({ $0[id] }) {
            return existing.value
        }
        let configuration = self.shared.configuration
        let pool = UpstreamPool(
            eventLoop: eventLoop,
            maximumIdlePerOrigin: configuration.maximumIdleUpstreamPerOrigin,
            idleTimeout: configuration.upstreamIdleTimeout
        )
        let bound = NIOLoopBound(pool, eventLoop: eventLoop)
        self.pools.withLockedValue { $0[id] = bound }
        return pool
    }

    /// Stops accepting, lets connections finish their current exchange, and after `grace`
    /// closes whatever is still open (tunnels included).
    public func shutdown(grace: TimeAmount) async {
        let promise = self.group.next().makePromise(of: Void.self)
        self.quiesce.initiateShutdown(promise: promise)
        let timeout = self.group.next().scheduleTask(in: grace) {
            promise.succeed(())
        }
        try? await promise.futureResult.get()
        timeout.cancel()
        // Stop the pools' sweepers and close idle upstream connections while the loops still run.
        let pools = self.pools.withLockedValue { Array($0.values) }
        for pool in pools {
            try? await pool.eventLoop.submit { pool.value.shutdown() }.get()
        }
    }
}
