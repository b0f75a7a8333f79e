import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// Scripted origins for ConnectionHarness: every upstream connection the proxy asks for is
// recorded and waits for the test to answer it; an accepted one is an EmbeddedChannel on the
// harness's loop, on which the test plays the origin.

/// What the proxy asked to connect to.
package struct OriginRequest: Hashable, Sendable, CustomStringConvertible {
    package var host: String
    package var port: Int
    /// A CONNECT tunnel rather than an HTTP/1.1 upstream connection.
    package var isTunnel: Bool

    package init(host: String, port: Int, isTunnel: Bool = false) {
        self.host = host
        self.port = port
        self.isTunnel = isTunnel
    }

    package var description: String { "\(self.host):\(self.port)\(self.isTunnel ? " (tunnel)" : "")" }
}

/// The harness's ``UpstreamConnector``: connects nothing by itself. Each request is recorded
/// and waits until the test accepts it (``ConnectionHarness/acceptConnect(remoteAddress:)``) or
/// fails it (``ConnectionHarness/failConnect(with:)``); one left waiting fails with
/// `ChannelError.connectTimeout` once the loop's clock passes its connect timeout, as
/// `ClientBootstrap` does. Names are not resolved, so neither the destination rules nor DNS
/// take part: a test fails the connect with the `ResolutionError` it wants to see.
package final class OriginConnector: UpstreamConnector {
    struct Attempt: Sendable {
        var id: Int
        var loop: ObjectIdentifier
        var request: OriginRequest
        var promise: EventLoopPromise<any Channel>
        var initializer: @Sendable (any Channel) -> EventLoopFuture<Void>
    }

    private struct State {
        var nextID = 0
        var log: [(loop: ObjectIdentifier, request: OriginRequest)] = []
        var waiting: [Attempt] = []
    }

    private let state = NIOLockedValueBox(State())

    package init() {}

    package func connect(
        _ request: UpstreamConnectRequest,
        on eventLoop: any EventLoop,
        initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) -> EventLoopFuture<any Channel> {
        guard eventLoop is EmbeddedEventLoop else {
            return eventLoop.makeFailedFuture(ChannelError.operationUnsupported)
        }
        let promise = eventLoop.makePromise(of: (any Channel).self)
        let loop = ObjectIdentifier(eventLoop as AnyObject)
        let origin = OriginRequest(host: request.host, port: request.port, isTunnel: request.isTunnel)
        let id = self.state.withLockedValue { state -> Int in
            state.nextID += 1
            state.log.append((loop, origin))
            state.waiting.append(
                Attempt(id: state.nextID, loop: loop, request: origin, promise: promise, initializer: initializer)
            )
            return state.nextID
        }
        let timeout = request.connectTimeout
        eventLoop.scheduleTask(in: timeout) {
            self.take(id: id)?.promise.fail(ChannelError.connectTimeout(timeout))
        }
        return promise.futureResult
    }

    /// Every connection asked for on `loop`, answered or not, in order.
    func requests(on loop: EmbeddedEventLoop) -> [OriginRequest] {
        let id = ObjectIdentifier(loop)
        return self.state.withLockedValue { $0.log.filter { $0.loop == id }.map(\.request) }
    }

    /// The connections on `loop` still waiting for an answer.
    func waiting(on loop: EmbeddedEventLoop) -> [OriginRequest] {
        let id = ObjectIdentifier(loop)
        return self.state.withLockedValue { $0.waiting.filter { $0.loop == id }.map(\.request) }
    }

    /// The oldest attempt on `loop` still waiting, now taken out of the queue.
    func takeOldest(on loop: EmbeddedEventLoop) -> Attempt? {
        let id = ObjectIdentifier(loop)
        return self.state.withLockedValue { state in
            guard let index = state.waiting.firstIndex(where: { $0.loop == id }) else { return nil }
            return state.waiting.remove(at: index)
        }
    }

    private func take(id: Int) -> Attempt? {
        self.state.withLockedValue { state in
            guard let index = state.waiting.firstIndex(where: { $0.id == id }) else { return nil }
            return state.waiting.remove(at: index)
        }
    }

    /// Fails what still waits on `loop` (the harness is finishing): no promise is left behind.
    func abandon(on loop: EmbeddedEventLoop) {
        while let attempt = self.takeOldest(on: loop) {
            attempt.promise.fail(ChannelError.ioOnClosedChannel)
        }
    }
}

extension ConnectionHarness {
    package struct HarnessError: Error, CustomStringConvertible {
        package var description: String
    }

    /// Every upstream connection the proxy asked for on this connection, in order.
    package var connects: [OriginRequest] { self.shared.connector.requests(on: self.loop) }

    /// The connections the proxy asked for that the test has not answered yet.
    package var pendingConnects: [OriginRequest] { self.shared.connector.waiting(on: self.loop) }

    /// Answers the oldest waiting connect: a new origin connection, set up by the proxy's own
    /// initializer and active (its handlers saw `channelActive`) before the proxy gets it.
    @discardableResult
    package func acceptConnect(remoteAddress: String = "203.0.113.80") throws -> Origin {
        guard let attempt = self.shared.connector.takeOldest(on: self.loop) else {
            throw HarnessError(description: "no connect is waiting (asked for: \(self.connects))")
        }
        let channel = EmbeddedChannel(loop: self.loop)
        let socket = SocketStandIn()
        try channel.pipeline.syncOperations.addHandler(socket)
        var failure: (any Error)?
        attempt.initializer(channel).assumeIsolated().whenFailure { failure = $0 }
        self.loop.run()
        if let failure {
            attempt.promise.fail(failure)
            self.settle()
            throw HarnessError(description: "the proxy's channel initializer failed: \(failure)")
        }
        channel.connect(to: try SocketAddress(ipAddress: remoteAddress, port: attempt.request.port), promise: nil)
        // autoRead: a socket channel asks for its first read once active, before the bootstrap
        // hands it over.
        channel.read()
        let origin = Origin(request: attempt.request, channel: channel, socket: socket, harness: self)
        self.adopt(origin)
        attempt.promise.succeed(channel)
        self.settle()
        return origin
    }

    /// Fails the oldest waiting connect with `error` (refused: `IOError(errnoCode: ECONNREFUSED,
    /// reason: "connect")`; timeout: `ChannelError.connectTimeout`; DNS or destination rules: a
    /// `ResolutionError`).
    package func failConnect(with error: any Error) throws {
        guard let attempt = self.shared.connector.takeOldest(on: self.loop) else {
            throw HarnessError(description: "no connect is waiting (asked for: \(self.connects))")
        }
        attempt.promise.fail(error)
        self.settle()
    }

    /// One origin connection as the test drives it.
    package final class Origin {
        package let request: OriginRequest
        package let channel: EmbeddedChannel
        private let socket: SocketStandIn
        private weak var harness: ConnectionHarness?
        /// Everything the proxy sent to this origin so far (flushed bytes only).
        package private(set) var received = ByteBuffer()

        init(request: OriginRequest, channel: EmbeddedChannel, socket: SocketStandIn, harness: ConnectionHarness) {
            self.request = request
            self.channel = channel
            self.socket = socket
            self.harness = harness
        }

        package var receivedText: String { String(buffer: self.received) }

        /// Returns what the proxy sent since the last call and forgets it.
        package func takeReceived() -> String {
            defer { self.received.clear() }
            return self.receivedText
        }

        /// Bytes from the origin, as one read (whether or not the proxy asked; see ``readRequested``).
        package func send(_ bytes: some Collection<UInt8>) throws {
            guard self.channel.isActive else { return }
            self.socket.readDelivered()
            try self.channel.writeInbound(ByteBuffer(bytes: bytes))
            if self.channel.isActive { self.channel.read() }
            self.harness?.settle()
        }

        package func send(_ text: String) throws { try self.send(Array(text.utf8)) }

        /// The origin is done sending (a FIN); the connection stays open for the other direction.
        package func finishSending() {
            guard self.channel.isActive else { return }
            self.channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
            self.harness?.settle()
        }

        /// The connection is gone, without an error (closed both ways).
        package func close() {
            if self.channel.isActive { self.channel.close(promise: nil) }
            self.harness?.settle()
        }

        /// The origin resets the connection: a read fails with `ECONNRESET`, then the channel
        /// closes, as a socket channel does.
        package func reset() {
            guard self.channel.isActive else { return }
            self.channel.pipeline.fireErrorCaught(
                IOError(errnoCode: ECONNRESET, reason: "read(descriptor:pointer:size:)")
            )
            if self.channel.isActive { self.channel.close(promise: nil) }
            self.harness?.settle()
        }

        /// The origin's socket buffer fills up (`false`) or drains (`true`).
        package func setWritable(_ writable: Bool) {
            guard self.channel.isActive, self.channel.isWritable != writable else { return }
            self.channel.isWritable = writable
            self.channel.pipeline.fireChannelWritabilityChanged()
            self.harness?.settle()
        }

        package var isOpen: Bool { self.channel.isActive }

        /// Whether the proxy asked to read from this origin and has not been given bytes since.
        package var readRequested: Bool { self.socket.readRequested }

        /// Whether the proxy shut its output towards this origin (a tunnel passing on a half-close).
        package var outputClosed: Bool { self.socket.outputClosed }

        func collect() {
            while let part = try? self.channel.readOutbound(as: ByteBuffer.self) {
                var part = part
                self.received.writeBuffer(&part)
            }
        }
    }
}

/// The socket end of an `EmbeddedChannel`, first in its pipeline, for what a socket does and
/// `EmbeddedChannel` does not: it records read requests (an `EmbeddedChannel` ignores them, so
/// back-pressure could not be seen), and `close(mode: .output)` shuts the output only — the
/// channel stays active and readable, and later writes fail — where `EmbeddedChannel` closes
/// both ways.
final class SocketStandIn: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = ByteBuffer

    /// A read reached the socket and no bytes were delivered since.
    private(set) var readRequested = false
    private(set) var outputClosed = false
    private(set) var writesAfterOutputClosed = 0

    /// Bytes are being delivered: the read that was asked for is used up.
    func readDelivered() {
        self.readRequested = false
    }

    func read(context: ChannelHandlerContext) {
        self.readRequested = true
        context.read()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard !self.outputClosed else {
            self.writesAfterOutputClosed += 1
            promise?.fail(ChannelError.outputClosed)
            return
        }
        context.write(data, promise: promise)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .output else {
            context.close(mode: mode, promise: promise)
            return
        }
        guard !self.outputClosed else {
            promise?.fail(ChannelError.outputClosed)
            return
        }
        self.outputClosed = true
        promise?.succeed(())
    }
}
