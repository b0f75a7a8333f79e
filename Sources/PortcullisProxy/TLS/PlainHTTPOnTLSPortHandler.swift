import NIOCore

/// First on a TLS listener's connections: a client that speaks plain HTTP to it (a proxy URL
/// written `http://` for an `https://` port) gets a plain-text 400 that says so, and the
/// connection closes, instead of a TLS alert it cannot read. Anything that starts like a TLS
/// record (a handshake, 0x16) passes on, and this handler leaves the pipeline.
final class PlainHTTPOnTLSPortHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    static let tlsHandshakeRecord: UInt8 = 0x16

    static let body =
        "This port of the proxy speaks TLS: use an https:// proxy URL (curl: --proxy https://HOST:PORT) to reach it.\n"

    static let response =
        "HTTP/1.1 400 Bad Request\r\n"
        + "Content-Type: text/plain; charset=utf-8\r\n"
        + "Proxy-Status: portcullis; error=http_protocol_error; details=\"plain HTTP on a TLS port\"\r\n"
        + "Connection: close\r\n"
        + "Content-Length: \(body.utf8.count)\r\n\r\n" + body

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = self.unwrapInboundIn(data)
        guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return }
        guard first == Self.tlsHandshakeRecord else {
            context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: Self.response)))
                .assumeIsolated()
                .whenComplete { _ in context.close(promise: nil) }
            return
        }
        context.fireChannelRead(data)
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}

/// First on a plain listener's connections: a client that starts a TLS handshake (an https://
/// proxy URL for a plain port) gets a plain-text 400 and the connection closes at once — its TLS
/// stack reports a wrong version or record instead of waiting for the head deadline. Anything
/// else passes on, and this handler leaves the pipeline.
final class TLSOnPlainPortHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    static let body = "This port of the proxy speaks plain HTTP: use an http:// proxy URL to reach it.\n"

    static let response =
        "HTTP/1.1 400 Bad Request\r\n"
        + "Content-Type: text/plain; charset=utf-8\r\n"
        + "Proxy-Status: portcullis; error=http_protocol_error; details=\"TLS on a plain HTTP port\"\r\n"
        + "Connection: close\r\n"
        + "Content-Length: \(body.utf8.count)\r\n\r\n" + body

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = self.unwrapInboundIn(data)
        guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return }
        guard first != PlainHTTPOnTLSPortHandler.tlsHandshakeRecord else {
            context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: Self.response)))
                .assumeIsolated()
                .whenComplete { _ in context.close(promise: nil) }
            return
        }
        context.fireChannelRead(data)
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
