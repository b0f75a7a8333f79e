import NIOCore

/// Relays bytes between the two channels of a CONNECT tunnel.
///
/// One instance sits in each channel; they are partners. A side reads only while its partner
/// can take writes (back-pressure), a half-close is passed on as a half-close, and the tunnel
/// closes when both directions are done or either side fails. Shape taken from
/// swift-nio-examples' `GlueHandler`, plus half-close and byte counts.
final class TunnelGlueHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var partner: TunnelGlueHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    private var inputClosed = false
    private var outputClosed = false
    /// Bytes read from this side's channel.
    private(set) var bytesRead = 0

    static func matchedPair() -> (TunnelGlueHandler, TunnelGlueHandler) {
        let first = TunnelGlueHandler()
        let second = TunnelGlueHandler()
        first.partner = second
        second.partner = first
        return (first, second)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // The partner may have been asked to read before this side existed.
        if context.channel.isWritable {
            self.partner?.partnerBecameWritable()
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.partner = nil
    }

    // MARK: partner calls

    private func partnerWrite(_ buffer: ByteBuffer) {
        self.context?.write(self.wrapOutboundOut(buffer), promise: nil)
    }

    private func partnerFlush() {
        self.context?.flush()
    }

    private func partnerWriteEOF() {
        guard let context, !self.outputClosed else { return }
        self.outputClosed = true
        context.close(mode: .output, promise: nil)
        self.closeIfDone()
    }

    private func partnerCloseFull() {
        self.context?.close(promise: nil)
    }

    private func partnerBecameWritable() {
        if self.pendingRead, let context {
            self.pendingRead = false
            context.read()
        }
    }

    private var partnerWritable: Bool {
        self.partner?.context?.channel.isWritable ?? false
    }

    private func closeIfDone() {
        if self.inputClosed && self.outputClosed {
            self.context?.close(promise: nil)
            self.partner?.partnerCloseFull()
        }
    }

    // MARK: channel events

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = self.unwrapInboundIn(data)
        self.bytesRead += buffer.readableBytes
        self.partner?.partnerWrite(buffer)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.partner?.partnerFlush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.partner?.partnerCloseFull()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .some(.inputClosed) = event as? ChannelEvent {
            self.inputClosed = true
            self.partner?.partnerFlush()
            self.partner?.partnerWriteEOF()
            self.closeIfDone()
            return
        }
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            self.partner?.partnerBecameWritable()
        }
    }

    func read(context: ChannelHandlerContext) {
        if self.partnerWritable {
            context.read()
        } else {
            self.pendingRead = true
        }
    }
}
