import Logging
import NIOCore
import NIOHTTP2
import NIOSSL
import NIOTLS

/// The settings of the proxy's HTTP/2 connections (ALPN `h2` on a TLS listener).
public struct HTTP2Settings: Sendable, Hashable {
    /// Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    public var maximumConcurrentStreams = 100
    /// Each stream's receive window, so one bulk tunnel is not held to 64 KiB in flight.
    public var streamWindow = 1 << 20
    /// The connection's receive window, shared by its streams.
    public var connectionWindow = 16 << 20

    public init() {}
}

/// What a TLS connection becomes once ALPN has picked its protocol.
enum TLSConnectionSetup {
    /// The user a verified client certificate names, when `certificate` is offered.
    static func certificateUser(of channel: any Channel, shared: ProxyContext) -> String? {
        guard shared.gate.schemes.contains(.certificate),
            let certificate = try? channel.pipeline.syncOperations.nioSSL_peerCertificate()
        else { return nil }
        let user = shared.configuration.certificateUserFrom.user(in: certificate)
        if user == nil, shared.refusalLog.admit(.certificateWithoutUser, now: .now()) {
            shared.logger.info(
                "client certificate names no user",
                metadata: [
                    "client": "\(channel.remoteAddress?.ipAddress ?? "-")",
                    "field": "\(shared.configuration.certificateUserFrom.rawValue)",
                ]
            )
        }
        return user
    }

    /// HTTP/2: each stream gets an ``HTTP2StreamAdapter`` and a connection handler of its own.
    static func configureHTTP2(
        _ channel: any Channel,
        shared: ProxyContext,
        pool: NIOLoopBound<UpstreamPool>,
        logger: Logger,
        certificateUser: String?
    ) throws {
        let settings = shared.configuration.http2
        var connection = NIOHTTP2Handler.ConnectionConfiguration()
        connection.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: settings.maximumConcurrentStreams),
            HTTP2Setting(parameter: .initialWindowSize, value: settings.streamWindow),
            HTTP2Setting(parameter: .maxHeaderListSize, value: RequestFramer.maximumHeadSize),
        ]
        connection.targetWindowSize = settings.connectionWindow
        var stream = NIOHTTP2Handler.StreamConfiguration()
        stream.targetWindowSize = settings.streamWindow
        // The connection stays open while any stream may still use it: idle, it closes after
        // the longer of the client and tunnel idle timeouts.
        let idle = max(shared.configuration.clientIdleTimeout, shared.configuration.tunnelIdleTimeout)
        try channel.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: idle))
        try channel.pipeline.syncOperations.addHandler(HTTP2ConnectionCloser())
        try channel.pipeline.syncOperations.addHandler(TickFlushHandler())
        _ = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
            mode: .server,
            connectionConfiguration: connection,
            streamConfiguration: stream
        ) { streamChannel in
            streamChannel.eventLoop.makeCompletedFuture {
                try streamChannel.pipeline.syncOperations.addHandler(HTTP2StreamAdapter())
                // Streams run on their connection's event loop, the pool's.
                let handler = ProxyConnectionHandler(
                    shared: shared,
                    pool: pool.value,
                    logger: logger,
                    listener: .h2,
                    certificateUser: certificateUser
                )
                try streamChannel.pipeline.syncOperations.addHandler(handler)
            }
        }
        // The connection's window starts at 65535 whatever the settings say (RFC 9113 §6.9.2):
        // opened at once, so the first streams are not held to it.
        let increment = settings.connectionWindow - 65535
        if increment > 0 {
            channel.writeAndFlush(
                HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: increment)),
                promise: nil
            )
        }
    }
}

/// Holds a connection's flushes until the event loop has handled the I/O events it is working
/// through, then flushes once. An HTTP/2 connection's streams finish on their upstream
/// connections' reads, each of which flushes; fifty responses ready in one pass of the loop
/// then leave in one TLS write instead of fifty (each a system call and a wake-up of the client).
final class TickFlushHandler: ChannelOutboundHandler {
    typealias OutboundIn = NIOAny

    private var flushPending = false

    func flush(context: ChannelHandlerContext) {
        guard !self.flushPending else { return }
        self.flushPending = true
        // Tasks run after the loop's current batch of I/O events.
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.execute {
            let (handler, context) = bound.value
            handler.flushPending = false
            context.flush()
        }
    }
}

/// Closes an HTTP/2 connection when nothing more can happen on it: on an idle event (from an
/// `IdleStateHandler` in front of it); when the client's input ends (HTTP/2 has no half-close:
/// a client that closed its side is gone, and its tunnels with it — left open, the socket sat in
/// CLOSE-WAIT until the idle timeout); and once a GOAWAY for an error has been written (RFC 9113
/// §5.4.1: the endpoint MUST then close the TCP connection; NIOHTTP2 writes it and leaves the
/// closing to the application). It sits between NIOSSL and NIOHTTP2's handler and reads the
/// frame headers of what NIOHTTP2 writes (``HTTP2FrameWatch``).
final class HTTP2ConnectionCloser: ChannelDuplexHandler {
    typealias InboundIn = NIOAny
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var watch = HTTP2FrameWatch()

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
            return
        }
        if case .some(.inputClosed) = event as? ChannelEvent {
            context.fireUserInboundEventTriggered(event)
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let bytes = self.unwrapOutboundIn(data)
        guard self.watch.consume(bytes) else {
            context.write(data, promise: promise)
            return
        }
        // The GOAWAY leaves first (the flush that follows it sends it), then the connection closes.
        let written = promise ?? context.eventLoop.makePromise()
        context.write(data, promise: written)
        written.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }
}

/// Follows the frames in an HTTP/2 byte stream written in pieces of any size (RFC 9113 §4.1: a
/// 9-byte header — 24-bit length, type, flags, stream — then the payload) and reports a GOAWAY
/// whose error code is not NO_ERROR.
struct HTTP2FrameWatch {
    private static let headerLength = 9
    private static let goAway: UInt8 = 0x7

    /// Bytes of the frame header read so far.
    private var header: [UInt8] = []
    /// Payload bytes of the current frame still to come.
    private var remaining = 0
    /// In a GOAWAY: its first 8 payload bytes (last stream id, error code).
    private var goAwayPayload: [UInt8]?
    private(set) var sawErrorGoAway = false

    /// Reads `bytes`; true when they complete a GOAWAY for an error (once).
    mutating func consume(_ bytes: ByteBuffer) -> Bool {
        var reported = false
        var view = bytes.readableBytesView[...]
        while !view.isEmpty {
            if self.header.count < Self.headerLength {
                let take = min(Self.headerLength - self.header.count, view.count)
                self.header.append(contentsOf: view.prefix(take))
                view = view.dropFirst(take)
                guard self.header.count == Self.headerLength else { continue }
                self.remaining = Int(self.header[0]) << 16 | Int(self.header[1]) << 8 | Int(self.header[2])
                self.goAwayPayload = self.header[3] == Self.goAway ? [] : nil
                if self.remaining == 0 { self.frameEnded() }
                continue
            }
            let take = min(self.remaining, view.count)
            if var payload = self.goAwayPayload, payload.count < 8 {
                payload.append(contentsOf: view.prefix(min(take, 8 - payload.count)))
                self.goAwayPayload = payload
                if payload.count == 8, !self.sawErrorGoAway, payload[4..<8] != [0, 0, 0, 0] {
                    self.sawErrorGoAway = true
                    reported = true
                }
            }
            view = view.dropFirst(take)
            self.remaining -= take
            if self.remaining == 0 { self.frameEnded() }
        }
        return reported
    }

    private mutating func frameEnded() {
        self.header.removeAll(keepingCapacity: true)
        self.goAwayPayload = nil
    }
}

/// Closes a TLS connection whose handshake has not completed in time; leaves once it has.
final class TLSHandshakeTimeoutHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let timeout: TimeAmount
    private var deadline: Scheduled<Void>?

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.arm(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.arm(context: context)
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.deadline?.cancel()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        context.fireUserInboundEventTriggered(event)
        // After passing the event on: a removed handler's context reaches nothing.
        if case .some(.handshakeCompleted) = event as? TLSUserEvent {
            self.deadline?.cancel()
            self.deadline = nil
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }

    private func arm(context: ChannelHandlerContext) {
        guard self.deadline == nil else { return }
        let channel = context.channel
        self.deadline = context.eventLoop.scheduleTask(in: self.timeout) { channel.close(promise: nil) }
    }
}
