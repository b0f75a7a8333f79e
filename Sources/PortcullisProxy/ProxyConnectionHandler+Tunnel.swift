import NIOCore
import NIOHTTP1
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
        established.writeString("HTTP/1.\(exchange.head.version.minor == 0 ? 0 : 1) 200 Connection established\r\n\r\n")
        context.writeAndFlush(self.wrapOutboundOut(established), promise: nil)
        do {
            let sync = context.pipeline.syncOperations
            try sync.addHandlers(
                [IdleStateHandler(allTimeout: self.shared.configuration.tunnelIdleTimeout), clientGlue],
                position: .after(self)
            )
            // The decoder hands any bytes it already holds (sent right after the CONNECT head)
            // down the pipeline as it leaves; channelRead passes them to the glue.
            // The decoder leaves on a later tick, handing over the bytes it holds (sent right
            // after the CONNECT head); channelRead passes them to the glue. Only then does this
            // handler leave and reads resume, now gated by the glue.
            sync.removeHandler(self.decoder).assumeIsolated().whenComplete { _ in
                let channel = context.channel
                context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
                channel.read()
            }
        } catch {
            self.logger.debug("tunnel setup failed", metadata: ["error": "\(error)"])
            upstream.close(promise: nil)
            context.close(promise: nil)
        }
    }

    /// After a CONNECT that did not become a tunnel (407, 403, 502…), the request decoder has
    /// stopped parsing (it treats CONNECT as a protocol switch). A fresh decoder takes over so
    /// the client can retry on this connection — the retry-after-407 that hangs elsewhere.
    func resetDecoder() {
        let old = self.decoder
        let fresh = Self.makeDecoder()
        self.decoder = fresh
        let channel = self.context.channel
        let pipeline = self.context.pipeline
        self.context.eventLoop.assumeIsolated().execute {
            do {
                try pipeline.syncOperations.addHandler(fresh, position: .after(old))
                // The old decoder forwards its unparsed bytes to the next handler: the new decoder.
                pipeline.syncOperations.removeHandler(old, promise: nil)
            } catch {
                channel.close(promise: nil)
            }
        }
    }
}
