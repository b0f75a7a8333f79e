import NIOCore
import NIOPosix

// CONNECT: after the gate, the connection becomes a byte tunnel to the origin.
extension ProxyConnectionHandler {
    func openTunnel(_ exchange: ProxyExchange, to authority: OriginAuthority) {
        self.phase = .tunnelConnecting
        let (clientGlue, upstreamGlue) = TunnelGlueHandler.matchedPair()
        self.makeBootstrap()
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(upstreamGlue)
                }
            }
            .connect(host: authority.host, port: authority.port)
            .assumeIsolated()
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    guard self.exchange === exchange, case .tunnelConnecting = self.phase,
                        self.context.channel.isActive
                    else {
                        channel.close(promise: nil)
                        return
                    }
                    self.becomeTunnel(exchange, clientGlue: clientGlue, upstream: channel)
                case .failure(let error):
                    guard self.exchange === exchange, case .tunnelConnecting = self.phase else { return }
                    self.logger.debug(
                        "tunnel connect failed",
                        metadata: ["origin": "\(authority.host):\(authority.port)", "error": "\(error)"]
                    )
                    self.sendLocalResponse(.upstreamConnectFailure(error, target: authority), for: exchange)
                }
            }
    }

    private func becomeTunnel(_ exchange: ProxyExchange, clientGlue: TunnelGlueHandler, upstream: any Channel) {
        let context = self.context!
        self.phase = .tunnel
        self.exchange = nil
        self.cancelTimer()
        var established = context.channel.allocator.buffer(capacity: 40)
        established.writeString("HTTP/1.\(exchange.isHTTP10 ? 0 : 1) 200 Connection established\r\n\r\n")
        context.writeAndFlush(self.wrapOutboundOut(established), promise: nil)
        do {
            let sync = context.pipeline.syncOperations
            try sync.addHandlers(
                [IdleStateHandler(allTimeout: self.shared.configuration.tunnelIdleTimeout), clientGlue],
                position: .after(self)
            )
            // Bytes the client sent right after the CONNECT head belong to the tunnel.
            let early = self.framer.takeBufferedBytes()
            if early.readableBytes > 0 {
                context.fireChannelRead(self.wrapInboundOut(early))
                context.fireChannelReadComplete()
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
}
