import Logging
import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// On a listener: when accepting fails for want of descriptors or memory (EMFILE, ENFILE,
/// ENOBUFS, ENOMEM), stops accepting for ``pause`` and tries again, instead of the busy loop NIO
/// runs otherwise — the listening socket stays readable, and NIO's `AcceptBackoffHandler` delays
/// only reads that go through the pipeline, which a failed accept never starts (measured: 165,840
/// failed accepts and two thirds of a core in 3 s). Connections already open keep working; the
/// ones waiting in the listen queue are accepted as soon as descriptors free up.
///
/// Says so once per burst: the first failure, then one line when a connection is accepted again,
/// with how many attempts failed and for how long.
final class AcceptPause: ChannelInboundHandler {
    typealias InboundIn = any Channel
    typealias InboundOut = any Channel

    /// Sent through a listener's pipeline when the server stops accepting for good (drain).
    struct Stop: Sendable {}

    static let pause: TimeAmount = .seconds(1)

    private let logger: Logger
    private let listener: String
    private var burst: (started: NIODeadline, failures: Int)?
    private var resume: Scheduled<Void>?
    private var stopped = false
    /// Connections accepted on this listener (the drain reads it to know the queue is empty).
    private(set) var accepted = 0

    init(logger: Logger, listener: String) {
        self.logger = logger
        self.listener = listener
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.accepted &+= 1
        if let burst = self.burst {
            self.burst = nil
            let seconds = Double((NIODeadline.now() - burst.started).nanoseconds / 1_000_000) / 1000
            self.logger.notice(
                "accepting connections again",
                metadata: [
                    "listener": "\(self.listener)",
                    "failed_accepts": "\(burst.failures)",
                    "seconds": "\(seconds)",
                ]
            )
        }
        context.fireChannelRead(data)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let io = error as? IOError, Self.isShortage(io) else {
            context.fireErrorCaught(error)
            return
        }
        if var burst = self.burst {
            burst.failures += 1
            self.burst = burst
        } else {
            self.burst = (.now(), 1)
            self.logger.warning(
                "cannot accept connections: out of descriptors or memory; accepting paused a second at a time until they free up (raise the descriptor limit, LimitNOFILE=, or lower --max-connections)",
                metadata: ["listener": "\(self.listener)", "error": "\(io)"]
            )
        }
        guard !self.stopped, self.resume == nil else { return }
        context.channel.setOption(.autoRead, value: false).whenComplete { _ in }
        let channel = context.channel
        self.resume = context.eventLoop.assumeIsolated().scheduleTask(in: Self.pause) { [weak self] in
            guard let self else { return }
            self.resume = nil
            if !self.stopped { channel.setOption(.autoRead, value: true).whenComplete { _ in } }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is Stop {
            self.stopped = true
            self.resume?.cancel()
            self.resume = nil
        }
        context.fireUserInboundEventTriggered(event)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.resume?.cancel()
        self.resume = nil
    }

    /// The accept errors that say the process is short of something that frees up.
    static func isShortage(_ error: IOError) -> Bool {
        switch error.errnoCode {
        case EMFILE, ENFILE, ENOBUFS, ENOMEM: true
        default: false
        }
    }
}
