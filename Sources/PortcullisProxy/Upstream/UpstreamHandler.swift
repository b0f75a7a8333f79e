import NIOCore

/// What an ``UpstreamHandler`` reports to the client connection that currently owns it.
protocol UpstreamOwner: AnyObject {
    func upstreamEvent(_ event: ResponseFramer.Event)
    func upstreamReadComplete()
    func upstreamWritabilityChanged(isWritable: Bool)
    /// The connection closed, or broke the protocol (`error` says why).
    func upstreamClosed(error: (any Error)?)
    var ownerIsWritable: Bool { get }
}

/// The last handler of an upstream HTTP/1.1 connection: frames the origin's responses with a
/// ``ResponseFramer``, relays them to its owner and reads only while the owner's client can
/// take more (back-pressure). Requests arrive serialized (``HeaderRewriter``) and go out as bytes.
final class UpstreamHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    weak var owner: (any UpstreamOwner)?
    weak var pool: UpstreamPool?
    var poolKey: UpstreamPool.Key?
    var idleSince = NIODeadline.now()
    /// Set once the connection must not be reused (error, `Connection: close`, half-sent request).
    var isReusable = true
    /// The owner's client speaks HTTP/1.0: chunked response bodies are decoded for it.
    var clientIsHTTP10 = false
    private(set) var context: ChannelHandlerContext?
    private var framer = ResponseFramer()
    private var events: [ResponseFramer.Event] = []
    private var pendingRead = false
    private var lastError: (any Error)?
    private var isActive = true
    /// The owner that received events in the current read burst: it still gets the
    /// readComplete (its cue to flush) if the exchange ended and detached inside the burst.
    private weak var burstOwner: (any UpstreamOwner)?

    /// The origin's IP address for the access log, made once per connection rather than per request.
    private(set) lazy var remoteIPAddress: String? = self.context?.channel.remoteAddress?.ipAddress
    /// The origin's address, for the access rules' check of a pooled connection.
    private(set) lazy var remoteAddress: SocketAddress? = self.context?.channel.remoteAddress

    var isUsable: Bool { self.isActive && self.isReusable && self.context?.channel.isActive == true }
    var isWritable: Bool { self.context?.channel.isWritable ?? false }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    /// Takes the connection for one exchange.
    func attach(to owner: any UpstreamOwner) {
        self.owner = owner
        self.pool = nil
        self.poolKey = nil
    }

    func detach() {
        self.owner = nil
        if self.pendingRead, let context {
            self.pendingRead = false
            context.read()
        }
    }

    /// Sends a serialized request head; the response to it is framed accordingly.
    func sendHead(_ bytes: ByteBuffer, isHEAD: Bool) {
        guard let context else { return }
        self.framer.expectResponse(toHead: isHEAD, dechunk: self.clientIsHTTP10)
        context.write(self.wrapOutboundOut(bytes), promise: nil)
    }

    /// Sends request body bytes as the client framed them (a chunked body stays chunked).
    func sendBody(_ buffer: ByteBuffer) {
        guard let context, buffer.readableBytes > 0 else { return }
        context.write(self.wrapOutboundOut(buffer), promise: nil)
    }

    func flush() {
        self.context?.flush()
    }

    func close() {
        self.isReusable = false
        self.context?.close(promise: nil)
    }

    /// Called by the owner when its client channel became writable again.
    func resumeReading() {
        if self.pendingRead, let context {
            self.pendingRead = false
            context.read()
        }
    }

    func read(context: ChannelHandlerContext) {
        if let owner, !owner.ownerIsWritable {
            self.pendingRead = true
        } else {
            context.read()
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = self.unwrapInboundIn(data)
        guard let owner else {
            // An idle connection must stay silent; anything else means it is out of sync.
            self.close()
            return
        }
        self.burstOwner = owner
        // Events are collected first and delivered after the framer is done with the bytes:
        // delivering one can start the next exchange on this very connection.
        var failure: (any Error)?
        do {
            try self.framer.feed(buffer) { self.events.append($0) }
        } catch {
            failure = error
        }
        if !self.framer.reusable { self.isReusable = false }
        self.deliverEvents(to: owner)
        if let failure {
            self.lastError = failure
            self.close()
        }
    }

    private func deliverEvents(to owner: any UpstreamOwner) {
        guard !self.events.isEmpty else { return }
        // Taken out whole (a delivery may feed new events in); the emptied array comes back
        // with its capacity, so a read burst allocates nothing here.
        var batch: [ResponseFramer.Event] = []
        swap(&batch, &self.events)
        for event in batch { owner.upstreamEvent(event) }
        if self.events.isEmpty {
            batch.removeAll(keepingCapacity: true)
            self.events = batch
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.endBurst()
    }

    /// Parts can also arrive outside a read (the last one of a close-delimited body on EOF):
    /// whoever got them must still be told to flush.
    private func endBurst() {
        let owner = self.burstOwner ?? self.owner
        self.burstOwner = nil
        owner?.upstreamReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.owner?.upstreamWritabilityChanged(isWritable: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    private func originFinishedSending() {
        self.isReusable = false
        // After a protocol error the framer stopped where the origin went wrong: that error is
        // what the client is told, not the "closed before a response" that an EOF now implies.
        if self.lastError == nil, self.framer.isAwaitingResponse {
            do {
                try self.framer.feedEOF { self.events.append($0) }
            } catch {
                self.lastError = error
            }
            if let owner = self.owner {
                self.burstOwner = owner
                self.deliverEvents(to: owner)
            }
            self.events.removeAll()
        }
        // Also when the connection was closed from inside a read (a response followed by bytes
        // nobody asked for): no readComplete follows, and the owner still has to flush.
        self.endBurst()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.originFinishedSending()
        self.isActive = false
        self.isReusable = false
        if let pool, let poolKey { pool.remove(self, key: poolKey) }
        let owner = self.owner
        self.owner = nil
        owner?.upstreamClosed(error: self.lastError)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .some(.inputClosed) = event as? ChannelEvent {
            // The origin finished sending; HTTP/1.1 gives us nothing more to do with this connection.
            self.originFinishedSending()
            context.close(promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if self.lastError == nil { self.lastError = error }
        self.isReusable = false
        context.close(promise: nil)
    }
}
