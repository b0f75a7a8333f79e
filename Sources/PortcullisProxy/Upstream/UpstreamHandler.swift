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

/// The last handler of an upstream HTTP/1.1 connection: relays the origin's responses to its
/// owner and reads only while the owner's client can take more (back-pressure). Requests arrive
/// serialized (``HeaderRewriter``) and go out as bytes.
///
/// Every decision (framing, reuse, held reads, what the owner is told) is made by
/// ``UpstreamConnectionStateMachine``; this handler turns channel events and its owner's calls
/// into the machine's events, and its actions into channel and owner calls.
final class UpstreamHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    weak var pool: UpstreamPool?
    var poolKey: UpstreamPool.Key?
    var idleSince = NIODeadline.now()
    /// A parent proxy authenticated this connection itself (NTLM): requests on it need no
    /// `Proxy-Authorization` of their own.
    var parentConnectionAuthenticated = false
    /// The owner's client speaks HTTP/1.0: chunked response bodies are decoded for it.
    var clientIsHTTP10 = false
    private(set) var context: ChannelHandlerContext?
    private var machine = UpstreamConnectionStateMachine()
    /// The events of one read, delivered once the framer is done with its bytes. Reused: a read
    /// allocates nothing here.
    private var events: [ResponseFramer.Event] = []

    /// The origin's IP address for the access log, made once per connection rather than per request.
    private(set) lazy var remoteIPAddress: String? = self.context?.channel.remoteAddress?.ipAddress
    /// The origin's address, for the access rules' check of a pooled connection.
    private(set) lazy var remoteAddress: SocketAddress? = self.context?.channel.remoteAddress

    /// The client connection whose exchange this connection serves.
    var owner: (any UpstreamOwner)? { self.machine.owner }

    /// False once the connection must not be reused (error, `Connection: close`, a close-delimited
    /// body, bytes past a response).
    var isReusable: Bool { self.machine.isReusable }

    var isUsable: Bool { self.machine.isReusable && self.context?.channel.isActive == true }
    var isWritable: Bool { self.context?.channel.isWritable ?? false }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    // MARK: - The owner's calls

    /// Takes the connection for one exchange.
    func attach(to owner: any UpstreamOwner) {
        self.machine.attached(to: owner)
        self.pool = nil
        self.poolKey = nil
    }

    func detach() {
        if self.machine.detached() == .read { self.context?.read() }
    }

    /// Sends a serialized request head; the response to it is framed accordingly.
    func sendHead(_ bytes: ByteBuffer, isHEAD: Bool) {
        guard let context else { return }
        self.machine.headSent(isHEAD: isHEAD, dechunk: self.clientIsHTTP10)
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

    /// The origin's response head says it closes the connection after this response
    /// (`Connection: close`, HTTP/1.0): the pool must not keep it.
    func originWillClose() {
        self.machine.originWillClose()
    }

    func close() {
        if self.machine.closeRequested() == .close { self.context?.close(promise: nil) }
    }

    /// Called by the owner when its client channel became writable again.
    func resumeReading() {
        if self.machine.ownerBecameWritable() == .read { self.context?.read() }
    }

    // MARK: - Channel events

    func read(context: ChannelHandlerContext) {
        let ownerIsWritable = self.machine.owner?.ownerIsWritable ?? true
        if self.machine.readRequested(ownerIsWritable: ownerIsWritable) == .read { context.read() }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.machine.bytesRead(self.unwrapInboundIn(data), into: &self.events) {
        case .close:
            context.close(promise: nil)
        case .deliver(let owner, let thenClose):
            self.deliverEvents(to: owner)
            if thenClose { context.close(promise: nil) }
        }
    }

    /// Delivered only after the machine is done with the bytes: delivering one can start the
    /// next exchange on this very connection (or close it).
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
        self.machine.readComplete()?.upstreamReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.machine.owner?.upstreamWritabilityChanged(isWritable: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .some(.inputClosed) = event as? ChannelEvent {
            // The origin finished sending; HTTP/1.1 gives us nothing more to do with this connection.
            self.originFinishedSending()
            if self.machine.closeRequested() == .close { context.close(promise: nil) }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.originFinishedSending()
        let action = self.machine.channelInactive()
        if let pool, let poolKey { pool.remove(self, key: poolKey) }
        if case .reportClosed(let owner, let error) = action {
            owner.upstreamClosed(error: error)
        }
    }

    private func originFinishedSending() {
        if case .deliver(let owner) = self.machine.inputClosed(into: &self.events) {
            self.deliverEvents(to: owner)
        }
        // Also when nothing was delivered: parts can arrive outside a read (the end of a
        // close-delimited body on EOF), or the connection was closed from inside a read (a
        // response followed by bytes nobody asked for) and no readComplete follows; whoever got
        // them must still flush.
        self.machine.readComplete()?.upstreamReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if self.machine.errorCaught(error) == .close { context.close(promise: nil) }
    }
}
