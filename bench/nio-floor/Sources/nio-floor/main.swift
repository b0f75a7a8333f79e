// nio-floor LISTEN_PORT ORIGIN_PORT: relays every connection accepted on 127.0.0.1:LISTEN_PORT
// to its own connection to 127.0.0.1:ORIGIN_PORT. The channel settings are Portcullis' (one event
// loop per core, TCP_NODELAY both ways, flush once per read burst, reads gated by the partner's
// writability), so the difference between the two is what Portcullis does per request.
import NIOCore
import NIOPosix

final class RelayHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    var partner: RelayHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    /// Bytes that arrived before the partner connection was up.
    private var early: [ByteBuffer] = []

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.partner = nil
    }

    func pair(with other: RelayHandler) {
        self.partner = other
        other.partner = self
        for buffer in other.early { self.context?.write(NIOAny(buffer), promise: nil) }
        other.early.removeAll()
        self.context?.flush()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if let partner, let target = partner.context {
            target.write(data, promise: nil)
        } else {
            self.early.append(self.unwrapInboundIn(data))
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.partner?.context?.flush()
    }

    func read(context: ChannelHandlerContext) {
        if self.partner?.context?.channel.isWritable ?? true {
            context.read()
        } else {
            self.pendingRead = true
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, let partner, partner.pendingRead {
            partner.pendingRead = false
            partner.context?.read()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.partner?.context?.close(promise: nil)
        self.partner = nil
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

let arguments = CommandLine.arguments
guard arguments.count == 3, let listenPort = Int(arguments[1]), let originPort = Int(arguments[2]) else {
    print("usage: nio-floor LISTEN_PORT ORIGIN_PORT")
    exit(2)
}
let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
let server = try ServerBootstrap(group: group)
    .serverChannelOption(.backlog, value: 1024)
    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
    .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
    .childChannelInitializer { client in
        let clientSide = RelayHandler()
        do {
            try client.pipeline.syncOperations.addHandler(clientSide)
        } catch {
            return client.eventLoop.makeFailedFuture(error)
        }
        let upstreamSide = RelayHandler()
        ClientBootstrap(group: client.eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { upstream in
                upstream.eventLoop.makeCompletedFuture {
                    try upstream.pipeline.syncOperations.addHandler(upstreamSide)
                }
            }
            .connect(host: "127.0.0.1", port: originPort)
            .whenComplete { result in
                switch result {
                case .success: upstreamSide.pair(with: clientSide)
                case .failure: client.close(promise: nil)
                }
            }
        return client.eventLoop.makeSucceededVoidFuture()
    }
    .bind(host: "127.0.0.1", port: listenPort)
    .wait()
print("nio-floor relaying 127.0.0.1:\(listenPort) to 127.0.0.1:\(originPort)")
try server.closeFuture.wait()
