import NIOCore

/// First on every client connection: its first byte says whether the client speaks TLS (a
/// handshake record, 0x16) or plain HTTP. A client that speaks the other protocol than the
/// listener's — an `http://` proxy URL for a TLS port, or `https://` for a plain one — gets a
/// plain-text 400 that says which URL to use, and the connection closes at once (a TLS client's
/// stack then reports a wrong record instead of waiting for a head deadline). Otherwise the
/// bytes pass on and this handler leaves the pipeline.
final class ListenerProtocolGuard: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    static let tlsHandshakeRecord: UInt8 = 0x16

    private let listenerSpeaksTLS: Bool

    init(listenerSpeaksTLS: Bool) {
        self.listenerSpeaksTLS = listenerSpeaksTLS
    }

    static func response(details: String, body: String) -> String {
        "HTTP/1.1 400 Bad Request\r\n"
            + "Content-Type: text/plain; charset=utf-8\r\n"
            + "Proxy-Status: portcullis; error=http_protocol_error; details=\"\(details)\"\r\n"
            + "Connection: close\r\n"
            + "Content-Length: \(body.utf8.count)\r\n\r\n" + body
    }

    static let plainHTTPOnTLSPort = response(
        details: "plain HTTP on a TLS port",
        body: "This port of the proxy speaks TLS: use an https:// proxy URL (curl: --proxy https://HOST:PORT) to reach it.\n"
    )

    static let tlsOnPlainPort = response(
        details: "TLS on a plain HTTP port",
        body: "This port of the proxy speaks plain HTTP: use an http:// proxy URL to reach it.\n"
    )

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = self.unwrapInboundIn(data)
        guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return }
        let clientSpeaksTLS = first == Self.tlsHandshakeRecord
        guard clientSpeaksTLS == self.listenerSpeaksTLS else {
            let answer = self.listenerSpeaksTLS ? Self.plainHTTPOnTLSPort : Self.tlsOnPlainPort
            context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: answer)))
                .assumeIsolated()
                .whenComplete { _ in context.close(promise: nil) }
            return
        }
        context.fireChannelRead(data)
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
