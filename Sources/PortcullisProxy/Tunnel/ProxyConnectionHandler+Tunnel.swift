import NIOCore

// CONNECT: after the gate, the connection becomes a byte tunnel to the origin.
extension ProxyConnectionHandler {
    func openTunnel(_ exchange: ProxyExchange, to authority: OriginAuthority, attempt: UInt64) {
        let (clientGlue, upstreamGlue) = TunnelGlueHandler.matchedPair()
        let glue = NIOLoopBound(upstreamGlue, eventLoop: self.context.eventLoop)
        let initializer: @Sendable (any Channel) -> EventLoopFuture<Void> = { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(glue.value)
            }
        }
        let connecting: EventLoopFuture<any Channel>
        if let (parents, allowed) = self.parents(for: authority) {
            if let refusal = self.parentRouteRefusal(exchange, to: authority) {
                connecting = self.context.eventLoop.makeFailedFuture(refusal)
            } else {
                connecting = self.parentConnector(parents, allowed: allowed)
                    .connectTunnel(
                        to: Self.connectTarget(authority),
                        via: exchange.head.values(named: "via"),
                        on: self.context.eventLoop,
                        initializer: initializer
                    )
                    .assumeIsolated()
                    .map { channel, index in
                        exchange.parentName = parents.parents[index].name
                        return channel
                    }
                    .nonisolated()
            }
        } else {
            connecting = self.connectUpstream(for: exchange, to: authority, isTunnel: true, initializer: initializer)
        }
        connecting.assumeIsolated().whenComplete { result in
            let now = self.currentTime
            switch result {
            case .success(let channel):
                switch self.machine.upstreamConnected(attempt: attempt, nil, now: now) {
                case .becomeTunnel(let exchange):
                    self.becomeTunnel(exchange, clientGlue: clientGlue, upstreamGlue: upstreamGlue, upstream: channel)
                default:
                    channel.close(promise: nil)
                }
            case .failure(let error):
                self.connectFailed(attempt: attempt, error: error, to: authority, now: now)
            }
        }
    }

    private func becomeTunnel(
        _ exchange: ProxyExchange,
        clientGlue: TunnelGlueHandler,
        upstreamGlue: TunnelGlueHandler,
        upstream: any Channel
    ) {
        guard let context = self.context else {
            upstream.close(promise: nil)
            return
        }
        self.stopTimer()
        var established = context.channel.allocator.buffer(capacity: 40)
        established.writeString("HTTP/1.\(exchange.isHTTP10 ? 0 : 1) 200 Connection established\r\n")
        exchange.writeProxyStatus(into: &established)
        exchange.writeAuthenticationInfo(into: &established)
        established.writeStaticString("\r\n")
        self.recordTunnel(
            exchange,
            establishedBytes: established.readableBytes,
            clientGlue: clientGlue,
            upstreamGlue: upstreamGlue,
            upstream: upstream
        )
        context.writeAndFlush(self.wrapOutboundOut(established), promise: nil)
        do {
            let sync = context.pipeline.syncOperations
            try sync.addHandlers(
                [IdleStateHandler(allTimeout: self.configuration.tunnelIdleTimeout), clientGlue],
                position: .after(self)
            )
            // Bytes the client sent right after the CONNECT head belong to the tunnel.
            let early = self.framer.takeBufferedBytes()
            if early.readableBytes > 0 {
                context.fireChannelRead(self.wrapInboundOut(early))
                context.fireChannelReadComplete()
            }
            // Bulk tunnels move more per read with larger buffers (fewer syscalls); the
            // adaptive allocator still shrinks them for an idle or chatty tunnel. Sockets only:
            // an HTTP/2 stream channel traps on the option (its frames are already read).
            if self.listener != .h2 {
                context.channel.setOption(.recvAllocator, value: SocketUpstreamConnector.tunnelReceiveAllocator)
                    .whenFailure { _ in }
            }
            // From here reads are gated by the glue.
            let channel = context.channel
            sync.removeHandler(context: context, promise: nil)
            channel.read()
        } catch {
            self.logger.debug("tunnel setup failed", metadata: ["error": "\(error)"])
            upstream.close(promise: nil)
            context.close(promise: nil)
        }
    }

    /// Counts the tunnel and writes its access-log line once both sides have closed, with the
    /// bytes that went each way (`establishedBytes`: the proxy's own 200 to the client).
    private func recordTunnel(
        _ exchange: ProxyExchange,
        establishedBytes: Int,
        clientGlue: TunnelGlueHandler,
        upstreamGlue: TunnelGlueHandler,
        upstream: any Channel
    ) {
        let metrics = self.shared.metrics
        let log = self.shared.accessLog
        let client = self.clientAddress
        let listener = self.listener
        let upstreamAddress = upstream.remoteAddress?.ipAddress
        exchange.status = 200
        exchange.logged = true
        metrics.request(connect: true, status: 200)
        metrics.activeTunnels.increment()
        let headBytes = exchange.head.bytes.readableBytes
        let target = exchange.head.target
        let closed = [self.context.channel.closeFuture, upstream.closeFuture]
        let eventLoop = self.context.eventLoop
        EventLoopFuture.andAllComplete(closed, on: eventLoop).assumeIsolated().whenComplete { _ in
            metrics.activeTunnels.decrement()
            let now = eventLoop.now
            let elapsed = now - exchange.started
            let fromClient = headBytes + clientGlue.bytesRead
            let toClient = establishedBytes + upstreamGlue.bytesRead
            metrics.requestDuration.recordNanoseconds(elapsed.nanoseconds)
            metrics.bytesFromClients.increment(by: Int64(fromClient))
            metrics.bytesToClients.increment(by: Int64(toClient))
            log?.write(
                AccessRecord(
                    start: exchange.startDate(now: now),
                    durationMs: Int(elapsed.nanoseconds / 1_000_000),
                    client: client,
                    user: exchange.user,
                    authScheme: exchange.authScheme,
                    authResult: exchange.authResult,
                    method: "CONNECT",
                    target: target,
                    status: 200,
                    bytesFromClient: fromClient,
                    bytesToClient: toClient,
                    upstream: upstreamAddress,
                    contentType: nil,
                    proxyStatus: nil,
                    isTunnel: true,
                    parent: exchange.parentName,
                    listener: listener,
                    token: exchange.token
                )
            )
        }
    }
}
