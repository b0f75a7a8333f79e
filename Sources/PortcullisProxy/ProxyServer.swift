import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOPosix
import NIOSSL
import NIOTLS

/// The proxy's listeners and their connections.
public final class ProxyServer: Sendable {
    private let shared: ProxyContext
    private let group: MultiThreadedEventLoopGroup
    /// One per listener: a helper collects the children of exactly one server channel.
    private let quiescers = NIOLockedValueBox<[ServerQuiescingHelper]>([])
    private let channels = NIOLockedValueBox<[any Channel]>([])
    /// Listeners on sockets handed over at start: their listen queue outlives this process's close.
    private let inheritedChannels = NIOLockedValueBox<Set<ObjectIdentifier>>([])
    private let pools = NIOLockedValueBox<[ObjectIdentifier: NIOLoopBound<UpstreamPool>]>([:])

    public init(context: ProxyContext, group: MultiThreadedEventLoopGroup) {
        self.shared = context
        self.group = group
    }

    /// Binds every plain-HTTP address; fails (and binds nothing that stays open) if any bind fails.
    public func start(listening addresses: [SocketAddress]) async throws -> [SocketAddress] {
        try await self.start(addresses.map { Listener(address: $0, kind: .tcp) }).map(\.address)
    }

    /// Binds every listener (a TLS one needs the context's ``ProxyContext/tls``); fails (and
    /// binds nothing that stays open) if any bind fails. Returns the bound addresses.
    public func start(_ listeners: [Listener]) async throws -> [Listener] {
        var bound: [Listener] = []
        do {
            for listener in listeners {
                let quiesce = ServerQuiescingHelper(group: self.group)
                self.quiescers.withLockedValue { $0.append(quiesce) }
                let bootstrap = try self.makeBootstrap(
                    quiesce: quiesce,
                    kind: listener.kind,
                    name: listener.socket.map { "inherited socket \($0)" } ?? "\(listener.address)"
                )
                let channel: any Channel
                if let socket = listener.socket {
                    channel = try await bootstrap.withBoundSocket(socket).get()
                } else {
                    channel = try await bootstrap.bind(to: listener.address).get()
                }
                self.channels.withLockedValue { $0.append(channel) }
                if listener.socket != nil {
                    self.inheritedChannels.withLockedValue { _ = $0.insert(ObjectIdentifier(channel)) }
                }
                if let local = channel.localAddress { bound.append(Listener(address: local, kind: listener.kind)) }
            }
        } catch {
            for channel in self.channels.withLockedValue({ $0 }) { try? await channel.close() }
            throw error
        }
        return bound
    }

    private func makeBootstrap(
        quiesce: ServerQuiescingHelper,
        kind: ListenerKind,
        name: String
    ) throws -> ServerBootstrap {
        let shared = self.shared
        let tls: ProxyTLS?
        switch kind {
        case .tcp:
            tls = nil
        case .tls:
            guard let configured = shared.tls else { throw ProxyTLSMissing() }
            tls = configured
        case .h2:
            // HTTP/2 is negotiated on a TLS listener, not listened for.
            guard let configured = shared.tls else { throw ProxyTLSMissing() }
            tls = configured
        }
        return ServerBootstrap(group: self.group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        quiesce.makeServerChannelHandler(channel: channel)
                    )
                    // Out of descriptors: pause accepting a second at a time, not spin.
                    try channel.pipeline.syncOperations.addHandler(AcceptPause(logger: shared.logger, listener: name))
                }
            }
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let address = channel.remoteAddress?.ipAddress ?? "-"
                    let decision = shared.admission.admit(address)
                    guard decision == .admitted else {
                        // A client can open connections to be refused as fast as it likes.
                        if shared.refusalLog.admit(.connectionRefused, now: NIODeadline.now()) {
                            shared.logger.info(
                                "connection refused",
                                metadata: ["client": "\(address)", "reason": "\(decision)"]
                            )
                        }
                        try channel.pipeline.syncOperations.addHandler(RefusalHandler(decision))
                        return
                    }
                    channel.closeFuture.whenComplete { _ in shared.admission.release(address) }
                    shared.metrics.connectionAccepted(on: kind)
                    let pool = self.pool(for: channel.eventLoop)
                    var logger = shared.logger
                    if let remote = channel.remoteAddress { logger[metadataKey: "client"] = "\(remote)" }
                    guard let tls else {
                        try channel.pipeline.syncOperations.addHandler(ListenerProtocolGuard(listenerSpeaksTLS: false))
                        let handler = ProxyConnectionHandler(shared: shared, pool: pool, logger: logger, listener: .tcp)
                        try channel.pipeline.syncOperations.addHandler(handler)
                        return
                    }
                    // The certificate in force now; a reload applies to later connections.
                    try channel.pipeline.syncOperations.addHandler(ListenerProtocolGuard(listenerSpeaksTLS: true))
                    try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls.context))
                    try channel.pipeline.syncOperations.addHandler(
                        TLSHandshakeTimeoutHandler(timeout: shared.configuration.requestHeadTimeout)
                    )
                    // Once the handshake is done ALPN says what the connection speaks.
                    let boundPool = NIOLoopBound(pool, eventLoop: channel.eventLoop)
                    let negotiation = ApplicationProtocolNegotiationHandler { result, channel in
                        channel.eventLoop.makeCompletedFuture {
                            let user = TLSConnectionSetup.certificateUser(of: channel, shared: shared)
                            if case .negotiated("h2") = result {
                                try TLSConnectionSetup.configureHTTP2(
                                    channel,
                                    shared: shared,
                                    pool: boundPool,
                                    logger: logger,
                                    certificateUser: user
                                )
                            } else {
                                let handler = ProxyConnectionHandler(
                                    shared: shared,
                                    pool: boundPool.value,
                                    logger: logger,
                                    listener: .tls,
                                    certificateUser: user
                                )
                                try channel.pipeline.syncOperations.addHandler(handler)
                            }
                        }
                    }
                    try channel.pipeline.syncOperations.addHandler(negotiation)
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

    /// Stops accepting and lets connections finish their current exchange, for at most `grace`;
    /// what is still open then is closed with the event loops (tunnels included). Cancelling the
    /// calling task ends the wait at once.
    public func shutdown(grace: TimeAmount) async {
        let loop = self.group.next()
        let drained = await self.closeListeners(on: loop)
        let done = loop.makePromise(of: Void.self)
        EventLoopFuture.andAllComplete(drained, on: loop).cascade(to: done)
        let timeout = loop.scheduleTask(in: grace) {
            done.succeed(())
        }
        // A second SIGTERM cancels the drain: stop waiting for the connections now.
        await withTaskCancellationHandler {
            try? await done.futureResult.get()
        } onCancel: {
            done.succeed(())
        }
        timeout.cancel()
        // A helper fails its promise when it goes away; let that happen while the loops run.
        self.quiescers.withLockedValue { $0.removeAll() }
        // Stop the pools' sweepers and close idle upstream connections while the loops still run.
        let pools = self.pools.withLockedValue { Array($0.values) }
        for pool in pools {
            try? await pool.eventLoop.submit { pool.value.shutdown() }.get()
        }
    }
}

extension ProxyServer {
    /// Stops accepting, takes what waits in the kernel's listen queue, lets every accepted
    /// connection finish its set-up, then closes each listener and quiesces its connections
    /// (the quiescing helper). Returns the futures that complete when each listener's connections
    /// have all closed.
    ///
    /// NIO's accept handler sets a connection up on the connection's event loop and, back on the
    /// listener's, drops it if the listener closed meanwhile — unanswered, its request unread, a
    /// reset for the client. And a connection whose handshake completed but that was not accepted
    /// yet is reset by the kernel when the listener closes. So: reads stop; then, one read at a
    /// time, what is queued is accepted and set up; a listener closes in the same task that finds
    /// no connection accepted since its last read (after at most 1 s of rounds, anyway): only a
    /// connection arriving in that instant can still meet the close.
    func closeListeners(on loop: any EventLoop) async -> [EventLoopFuture<Void>] {
        let listeners = Array(
            zip(self.quiescers.withLockedValue { $0 }, self.channels.withLockedValue { $0 })
        )
        for (_, listener) in listeners {
            try? await listener.eventLoop.submit {
                listener.pipeline.fireUserInboundEventTriggered(AcceptPause.Stop())
            }.get()
            try? await listener.setOption(.autoRead, value: false).get()
        }
        await self.setUpsFinished(listeners.map(\.1))
        // A handed-over socket stays open in whoever else holds it (the replacement process, the
        // service manager): what is queued waits for them, so its listener closes now.
        let inherited = self.inheritedChannels.withLockedValue { $0 }
        var drained: [EventLoopFuture<Void>] = []
        for (quiesce, listener) in listeners where inherited.contains(ObjectIdentifier(listener)) {
            let promise = loop.makePromise(of: Void.self)
            quiesce.initiateShutdown(promise: promise)
            drained.append(promise.futureResult)
        }
        let deadline = NIODeadline.now() + .seconds(1)
        var open = listeners.filter { !inherited.contains(ObjectIdentifier($0.1)) }
        while !open.isEmpty {
            var counts: [Int] = []
            for (_, listener) in open {
                counts.append(await self.acceptedCount(listener))
                listener.eventLoop.execute { listener.read() }
            }
            // The loop handles the listener's readiness before the tasks queued after the read.
            await self.setUpsFinished(open.map(\.1))
            var stillOpen: [(ServerQuiescingHelper, any Channel)] = []
            for ((quiesce, listener), before) in zip(open, counts) {
                let promise = loop.makePromise(of: Void.self)
                let closed = try? await listener.eventLoop.submit { () -> Bool in
                    let pause = try? listener.pipeline.syncOperations.handler(type: AcceptPause.self)
                    guard pause?.accepted ?? before == before || NIODeadline.now() >= deadline else { return false }
                    // On the listener's loop: the helper closes it now, in this task.
                    quiesce.initiateShutdown(promise: promise)
                    return true
                }.get()
                if closed == nil {
                    // The loop is gone (it cannot be, short of a shutdown race): close anyway.
                    quiesce.initiateShutdown(promise: promise)
                    drained.append(promise.futureResult)
                } else if closed == true {
                    drained.append(promise.futureResult)
                } else {
                    promise.succeed(())
                    stillOpen.append((quiesce, listener))
                }
            }
            open = stillOpen
        }
        return drained
    }

    /// Tasks run in order on each loop: a set-up queued before this barrier has run after it,
    /// and its hop back to the listener's loop was queued before the second one.
    private func setUpsFinished(_ listeners: [any Channel]) async {
        for listener in listeners {
            try? await listener.eventLoop.submit {}.get()
        }
        for loop in self.group.makeIterator() {
            try? await loop.submit {}.get()
        }
        for listener in listeners {
            try? await listener.eventLoop.submit {}.get()
        }
    }

    private func acceptedCount(_ listener: any Channel) async -> Int {
        (try? await listener.eventLoop.submit {
            try listener.pipeline.syncOperations.handler(type: AcceptPause.self).accepted
        }.get()) ?? 0
    }
}

/// A TLS listener was asked for without a certificate and key.
struct ProxyTLSMissing: Error, CustomStringConvertible {
    var description: String { "a TLS listener needs --tls-cert and --tls-key" }
}
