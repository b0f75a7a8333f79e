import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOPosix
import PortcullisAuth
import PortcullisStores

/// One client connection driven without sockets or threads: the real connection handler in an
/// `EmbeddedChannel`, the event loop's clock moved by the caller, and password checks that
/// finish only when the caller says so — before the client's next bytes, or after the
/// connection closed. Used by the socket-free tests of the connection and by the connection
/// fuzzer (``FuzzEntry``).
///
/// Every authenticated request is refused by a deny-all access rule (403), so no origin is
/// ever contacted: what is exercised is the client side — framing, pipelining, the 407 gate,
/// the throttle, local responses, timers and closes.
package final class ConnectionHarness {
    /// Blocking work queued until ``completeAll()``: the stand-in for the verifier's thread pool.
    package final class DeferredWork: BlockingWork {
        private let queue = NIOLockedValueBox<[@Sendable () -> Void]>([])

        package init() {}

        package func run<Value: Sendable>(
            on eventLoop: any EventLoop,
            _ body: @escaping @Sendable () throws -> Value
        ) -> EventLoopFuture<Value> {
            let promise = eventLoop.makePromise(of: Value.self)
            self.queue.withLockedValue { $0.append { promise.completeWith(Result { try body() }) } }
            return promise.futureResult
        }

        package func runDetached(_ body: @escaping @Sendable () -> Void) {
            self.queue.withLockedValue { $0.append(body) }
        }

        package var pending: Int { self.queue.withLockedValue { $0.count } }

        /// Runs every queued job, oldest first, and those they queue in turn.
        package func completeAll() {
            while true {
                let jobs = self.queue.withLockedValue { queue -> [@Sendable () -> Void] in
                    defer { queue.removeAll() }
                    return queue
                }
                if jobs.isEmpty { return }
                for job in jobs { job() }
            }
        }
    }

    /// One user, `alice:secret`, compared in constant time; no Digest secrets.
    final class OneUserStore: CredentialStore {
        func verify(user: String, password: String) -> VerificationOutcome {
            let userOK = ConstantTime.equal(user, "alice")
            let passwordOK = ConstantTime.equal(password, "secret")
            return userOK && passwordOK ? .accepted(user: "alice") : .rejected(.invalid)
        }
        var generation: UInt64 { 1 }
        func digestSecrets(name: String, isUserhash: Bool, hash: DigestAlgorithm.Hash) -> DigestLookup { .unknownUser }
        func nonceKey() -> [UInt8]? { nil }
        func noteLogin(_ user: String, at date: Date) {}
    }

    /// What several connections share, as on a server: gate, verifier, throttle, tables.
    package struct Shared {
        package let context: ProxyContext
        package let work: DeferredWork

        /// - Parameter lockoutThreshold: low, so that lockouts happen within a fuzz input.
        package init(lockoutThreshold: Int = 4) {
            let work = DeferredWork()
            var configuration = ProxyConfiguration()
            configuration.authSchemes = [.basic, .digest]
            configuration.authThrottle.threshold = lockoutThreshold
            configuration.maximumRequestBody = 1 << 16
            configuration.rejectedBodyDrainLimit = 4096
            configuration.policy = AccessPolicy(rules: [.init(name: "harness-deny-all", action: .deny)])
            let verifier = CredentialVerifier(store: OneUserStore(), work: work)
            self.context = ProxyContext(
                configuration: configuration,
                verifier: verifier,
                digest: DigestAuthority(settings: .init(realm: "Portcullis"), key: Array(repeating: 7, count: 32)),
                // Never started: the deny-all rule stops every request before a name is resolved.
                // (The process-wide singleton pool reads as a leak to LeakSanitizer.)
                threadPool: NIOThreadPool(numberOfThreads: 1),
                logger: Logger(label: "harness", factory: { _ in SwiftLogNoOpLogHandler() })
            )
            self.work = work
        }
    }

    package let loop: EmbeddedEventLoop
    package let channel: EmbeddedChannel
    package let shared: Shared
    private var pool: UpstreamPool?
    /// Everything the proxy wrote to the client so far.
    package private(set) var output = ByteBuffer()

    package init(shared: Shared, clientAddress: String = "192.0.2.7") throws {
        self.shared = shared
        self.loop = EmbeddedEventLoop()
        self.channel = EmbeddedChannel(loop: self.loop)
        // Completes at once on an EmbeddedChannel: the connection is active from here on.
        self.channel.connect(to: try SocketAddress(ipAddress: clientAddress, port: 40_000), promise: nil)
        self.loop.run()
        let pool = UpstreamPool(eventLoop: self.loop, maximumIdlePerOrigin: 1, idleTimeout: .seconds(30))
        self.pool = pool
        let handler = ProxyConnectionHandler(shared: shared.context, pool: pool, logger: shared.context.logger)
        try self.channel.pipeline.syncOperations.addHandler(handler)
    }

    /// Bytes from the client, as one read.
    package func send(_ bytes: some Collection<UInt8>) throws {
        guard self.channel.isActive else { return }
        try self.channel.writeInbound(ByteBuffer(bytes: bytes))
        self.collect()
    }

    package func send(_ text: String) throws { try self.send(Array(text.utf8)) }

    /// The password checks queued so far finish now (on the loop, as on a server).
    package func completeChecks() {
        self.shared.work.completeAll()
        self.loop.run()
        self.collect()
    }

    package func advanceTime(by amount: TimeAmount) {
        self.loop.advanceTime(by: amount)
        self.collect()
    }

    /// The client stops sending (a half-close).
    package func clientHalfCloses() {
        guard self.channel.isActive else { return }
        self.channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        self.loop.run()
        self.collect()
    }

    /// The connection goes away (client reset, or the server's own close).
    package func close() {
        if self.channel.isActive { self.channel.close(promise: nil) }
        self.loop.run()
        self.collect()
    }

    package var isOpen: Bool { self.channel.isActive }

    /// What the proxy wrote to the client, as text (responses are ASCII heads and short bodies).
    package var outputText: String { String(buffer: self.output) }

    /// The status codes of the responses written so far, in order.
    package var statuses: [Int] {
        let text = self.outputText
        var codes: [Int] = []
        var rest = Substring(text)
        while let range = rest.range(of: "HTTP/1.") {
            let line = rest[range.lowerBound...].prefix(12)
            if line.count == 12, let code = Int(line.dropFirst(9)) { codes.append(code) }
            rest = rest[range.upperBound...]
        }
        return codes
    }

    /// Closes what is left and finishes every queued check (they may outlive the connection),
    /// so nothing is left pending on this loop.
    package func finish() {
        self.close()
        self.shared.work.completeAll()
        self.loop.run()
        self.pool?.shutdown()
        self.pool = nil
        _ = try? self.channel.finish(acceptAlreadyClosed: true)
        try? self.loop.syncShutdownGracefully()
    }

    private func collect() {
        while let part = try? self.channel.readOutbound(as: ByteBuffer.self) {
            var part = part
            self.output.writeBuffer(&part)
        }
    }
}
