import CoreMetrics
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
/// By default every authenticated request is refused by a deny-all access rule (403), so no
/// origin is ever contacted: what is exercised is the client side — framing, pipelining, the 407
/// gate, the throttle, local responses, timers and closes. With ``Options/allowsRequests`` the
/// requests go on to origins scripted by the test (ConnectionHarness+Origins): each upstream
/// connection the proxy asks for is recorded and answered — an `EmbeddedChannel` on the same
/// loop, or an error — and the test plays the origin's part on it.
///
/// Both ends stand in for sockets where `EmbeddedChannel` does not (``SocketStandIn``): a read
/// request that reaches the socket is recorded (back-pressure is visible), after each read the
/// channel asks for the next one as `autoRead` does, and `close(mode: .output)` shuts only the
/// output (the lingering close), as a TCP socket's does.
package final class ConnectionHarness {
    /// Store calls queued until ``completeAll()``: the stand-in for the verifier's tasks.
    ///
    /// A call is started only by ``completeAll()``, as a task whose executor is this queue (a
    /// task executor preference), so the whole call runs there, on the caller's thread and in
    /// order — the stand-in store never suspends on anything else. What it does is as
    /// deterministic as the rest of the harness.
    package final class DeferredWork: StoreWork, @unchecked Sendable {
        private enum Item {
            case start(@Sendable () -> Void)
            case job(UnownedJob)
        }

        // @unchecked: `UnownedJob` is not Sendable; a job only ever runs once, taken out under the lock.
        private let queue = NIOLockedValueBox<[Item]>([])

        package init() {}

        package func run<Value: Sendable>(
            on eventLoop: any EventLoop,
            _ body: @escaping @Sendable () async -> Value
        ) -> EventLoopFuture<Value> {
            let promise = eventLoop.makePromise(of: Value.self)
            self.enqueue(.start { self.startTask { promise.succeed(await body()) } })
            return promise.futureResult
        }

        package func runDetached(_ body: @escaping @Sendable () async -> Void) {
            self.enqueue(.start { self.startTask(body) })
        }

        /// Store calls not started yet.
        package var pending: Int {
            self.queue.withLockedValue { queue in
                queue.count(where: { if case .start = $0 { true } else { false } })
            }
        }

        /// Runs every queued call to its end, oldest first, and those they queue in turn.
        package func completeAll() {
            while true {
                let items = self.queue.withLockedValue { queue -> [Item] in
                    defer { queue.removeAll() }
                    return queue
                }
                if items.isEmpty { return }
                for item in items {
                    switch item {
                    case .start(let start): start()
                    case .job(let job): self.runJob(job)
                    }
                }
            }
        }

        private func enqueue(_ item: Item) {
            self.queue.withLockedValue { $0.append(item) }
        }

        private func startTask(_ body: @escaping @Sendable () async -> Void) {
            if #available(macOS 15, *) {
                Task(executorPreference: self) { await body() }
            } else {
                // No task executors before macOS 15: the call runs on the global executor and
                // finishes whenever it does (Linux, where the harness runs, has them).
                Task { await body() }
            }
        }

        fileprivate func enqueueJob(_ job: UnownedJob) {
            self.enqueue(.job(job))
        }

        private func runJob(_ job: UnownedJob) {
            if #available(macOS 15, *) {
                job.runSynchronously(on: self.asUnownedTaskExecutor())
            }
        }
    }

    /// One user, `alice:secret`, compared in constant time, with Digest secrets for the realm
    /// `Portcullis` (by name or by user hash).
    final class OneUserStore: CredentialStore {
        func verify(user: String, password: String) async -> VerificationOutcome {
            let userOK = ConstantTime.equal(user, "alice")
            let passwordOK = ConstantTime.equal(password, "secret")
            return userOK && passwordOK ? .accepted(user: "alice") : .rejected(.invalid)
        }
        var generation: UInt64 { 1 }
        func digestSecrets(name: String, isUserhash: Bool, hash: DigestAlgorithm.Hash) async -> DigestLookup {
            let algorithm = DigestAlgorithm(hash: hash)
            let alice = isUserhash ? algorithm.hex("alice:Portcullis") : "alice"
            guard ConstantTime.equal(name, alice) else { return .unknownUser }
            return .found(DigestSecrets(user: "alice", ha1: algorithm.hex("alice:Portcullis:secret")))
        }
        func ntlmSecrets(name: String) async -> NTLMLookup {
            guard ConstantTime.equal(name, "alice") else { return .unknownUser }
            return .found(NTLMSecrets(user: "alice", ntHash: NTHash(password: "secret")))
        }
        func account(named name: String) async -> AccountLookup {
            ConstantTime.equal(name, "alice") ? .found(user: "alice", standing: AccountStanding()) : .unknownUser
        }
        func nonceKey() async -> [UInt8]? { nil }
        func noteLogin(_ user: String, at date: Date) async {}
    }

    /// The wall clock of the Digest nonces (milliseconds since 1970), moved by
    /// ``ConnectionHarness/advanceTime(by:)`` together with the event loop's clock.
    package final class WallClock: Sendable {
        private let milliseconds: NIOLockedValueBox<UInt64>

        /// - Parameter start: 2023-11-14, a fixed date: nothing depends on when the test runs.
        package init(start: UInt64 = 1_700_000_000_000) {
            self.milliseconds = NIOLockedValueBox(start)
        }

        package var now: UInt64 { self.milliseconds.withLockedValue { $0 } }

        package func advance(by amount: TimeAmount) {
            self.milliseconds.withLockedValue { $0 += UInt64(max(0, amount.nanoseconds / 1_000_000)) }
        }
    }

    /// What the shared context is made of. The defaults are the fuzzer's: both schemes, a low
    /// lockout threshold and a deny-all rule, so no origin is ever asked for.
    package struct Options {
        /// Failed logins before an address is locked out (low, so that lockouts happen within a
        /// fuzz input).
        package var lockoutThreshold = 4
        /// The 407 gate: Basic and Digest offered; `false`: no authentication at all.
        package var authenticates = true
        /// Requests pass the access rules and go on to the scripted origins; `false`: a deny-all
        /// rule answers 403 to each.
        package var allowsRequests = false
        /// Seconds a Digest nonce is good for (by ``WallClock``).
        package var nonceLifetime = 600
        /// Anything else (timeouts, limits), applied last.
        package var configure: (inout ProxyConfiguration) -> Void = { _ in }

        package init() {}

        /// Requests allowed through to scripted origins, with `configure` applied.
        package static func forwarding(
            authenticates: Bool = true,
            configure: @escaping (inout ProxyConfiguration) -> Void = { _ in }
        ) -> Options {
            var options = Options()
            options.lockoutThreshold = 1000
            options.authenticates = authenticates
            options.allowsRequests = true
            options.configure = configure
            return options
        }
    }

    /// What several connections share, as on a server: gate, verifier, throttle, tables, and
    /// the connector through which the proxy reaches the scripted origins.
    package struct Shared {
        package let context: ProxyContext
        package let work: DeferredWork
        package let connector: OriginConnector
        package let wallClock: WallClock

        /// - Parameter lockoutThreshold: low, so that lockouts happen within a fuzz input.
        package init(lockoutThreshold: Int = 4) {
            var options = Options()
            options.lockoutThreshold = lockoutThreshold
            self.init(options: options)
        }

        package init(options: Options) {
            let work = DeferredWork()
            let wallClock = WallClock()
            let connector = OriginConnector()
            var configuration = ProxyConfiguration()
            configuration.authSchemes = options.authenticates ? [.basic, .digest] : []
            configuration.authThrottle.threshold = options.lockoutThreshold
            configuration.maximumRequestBody = 1 << 16
            configuration.rejectedBodyDrainLimit = 4096
            configuration.policy =
                options.allowsRequests
                ? .allowAll : AccessPolicy(rules: [.init(name: "harness-deny-all", action: .deny)])
            options.configure(&configuration)
            let verifier = CredentialVerifier(store: OneUserStore(), work: work)
            self.context = ProxyContext(
                configuration: configuration,
                verifier: verifier,
                digest: DigestAuthority(
                    settings: .init(realm: configuration.realm, nonceLifetime: options.nonceLifetime),
                    key: Array(repeating: 7, count: 32),
                    clock: { wallClock.now }
                ),
                // Never started: names are not resolved here (the scripted connector takes
                // host and port as they are). The process-wide singleton pool reads as a leak
                // to LeakSanitizer.
                threadPool: NIOThreadPool(numberOfThreads: 1),
                logger: Logger(label: "harness", factory: { _ in SwiftLogNoOpLogHandler() }),
                metrics: ProxyMetrics(factory: NOOPMetricsHandler.instance),
                accessLog: nil,
                connector: connector
            )
            self.work = work
            self.connector = connector
            self.wallClock = wallClock
        }
    }

    package let loop: EmbeddedEventLoop
    package let channel: EmbeddedChannel
    package let shared: Shared
    private var pool: UpstreamPool?
    private let clientSocket = SocketStandIn()
    /// Every origin connection handed to the proxy, oldest first (open or closed).
    package private(set) var origins: [Origin] = []
    /// Everything the proxy wrote to the client so far.
    package private(set) var output = ByteBuffer()

    package init(shared: Shared, clientAddress: String = "192.0.2.7") throws {
        self.shared = shared
        self.loop = EmbeddedEventLoop()
        self.loop.advanceTime(to: Self.loopStart)
        self.channel = EmbeddedChannel(loop: self.loop)
        try self.channel.pipeline.syncOperations.addHandler(self.clientSocket)
        // Completes at once on an EmbeddedChannel: the connection is active from here on.
        self.channel.connect(to: try SocketAddress(ipAddress: clientAddress, port: 40_000), promise: nil)
        self.loop.run()
        let configuration = shared.context.configuration
        let pool = UpstreamPool(
            eventLoop: self.loop,
            maximumIdlePerOrigin: configuration.maximumIdleUpstreamPerOrigin,
            idleTimeout: configuration.upstreamIdleTimeout
        )
        self.pool = pool
        let handler = ProxyConnectionHandler(shared: shared.context, pool: pool, logger: shared.context.logger)
        try self.channel.pipeline.syncOperations.addHandler(handler)
        // A socket channel's first read, as autoRead asks for it once the channel is active.
        self.channel.read()
        self.settle()
    }

    /// Where the loop's clock starts. Not at 0: ``UpstreamPool`` takes an idle connection as
    /// fresh while `idleSince > now - idleTimeout`, which a clock under the idle timeout (30 s by
    /// default) never passes. Not much later either: ``CredentialVerifier`` dates its cache
    /// entries by the machine's uptime clock while the handler asks with the loop's.
    package static let loopStart = NIODeadline.uptimeNanoseconds(60_000_000_000)

    /// Bytes from the client, as one read — also when the proxy has not asked for one: a burst
    /// of reads can deliver more than the handler wanted (see ``clientReadRequested``).
    package func send(_ bytes: some Collection<UInt8>) throws {
        guard self.channel.isActive else { return }
        self.clientSocket.readDelivered()
        try self.channel.writeInbound(ByteBuffer(bytes: bytes))
        // autoRead: the channel asks for the next read after each one; the handler may hold it.
        if self.channel.isActive { self.channel.read() }
        self.settle()
    }

    package func send(_ text: String) throws { try self.send(Array(text.utf8)) }

    /// The password checks queued so far finish now (on the loop, as on a server).
    package func completeChecks() {
        self.shared.work.completeAll()
        self.settle()
    }

    /// Moves the event loop's clock (timers due by then fire, in order) and the Digest nonces'
    /// wall clock.
    package func advanceTime(by amount: TimeAmount) {
        self.shared.wallClock.advance(by: amount)
        self.loop.advanceTime(by: amount)
        self.settle()
    }

    /// The client stops sending (a half-close).
    package func clientHalfCloses() {
        guard self.channel.isActive else { return }
        self.channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        self.settle()
    }

    /// The connection goes away (client reset, or the server's own close).
    package func close() {
        if self.channel.isActive { self.channel.close(promise: nil) }
        self.settle()
    }

    /// The client's socket buffer fills up (`false`) or drains (`true`).
    package func setClientWritable(_ writable: Bool) {
        guard self.channel.isWritable != writable else { return }
        self.channel.isWritable = writable
        self.channel.pipeline.fireChannelWritabilityChanged()
        self.settle()
    }

    /// Whether the connection is open (also while its output is shut during a lingering close).
    package var isOpen: Bool { self.channel.isActive }

    /// Whether the proxy asked to read from the client and has not been given bytes since:
    /// `false` while it holds reads (back-pressure, or a request it is not ready for).
    package var clientReadRequested: Bool { self.clientSocket.readRequested }

    /// Whether the proxy shut its side of the connection (a FIN to the client) while still
    /// reading: the lingering close after a response that ends the connection.
    package var clientOutputClosed: Bool { self.clientSocket.outputClosed }

    /// Writes the proxy attempted after shutting its output (a socket fails them): always a bug.
    package var clientWritesAfterOutputClosed: Int { self.clientSocket.writesAfterOutputClosed }

    /// What the proxy wrote to the client, as text (responses are ASCII heads and short bodies).
    package var outputText: String { String(buffer: self.output) }

    /// What the proxy wrote to the client since the last call; ``output``, ``outputText`` and
    /// ``statuses`` start again from here.
    package func takeOutput() -> String {
        defer { self.output.clear() }
        return self.outputText
    }

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
        self.shared.connector.abandon(on: self.loop)
        for origin in self.origins { origin.close() }
        self.loop.run()
        self.pool?.shutdown()
        self.pool = nil
        _ = try? self.channel.finish(acceptAlreadyClosed: true)
        for origin in self.origins { _ = try? origin.channel.finish(acceptAlreadyClosed: true) }
        try? self.loop.syncShutdownGracefully()
    }

    /// Runs what the last step queued on the loop, then gathers what reached the client's and
    /// the origins' sockets.
    func settle() {
        self.loop.run()
        while let part = try? self.channel.readOutbound(as: ByteBuffer.self) {
            var part = part
            self.output.writeBuffer(&part)
        }
        for origin in self.origins { origin.collect() }
    }

    func adopt(_ origin: Origin) {
        self.origins.append(origin)
    }
}

/// The task executor of its calls: their jobs wait in the queue until ``completeAll()``.
@available(macOS 15, *)
extension ConnectionHarness.DeferredWork: TaskExecutor {
    package func enqueue(_ job: consuming ExecutorJob) {
        self.enqueueJob(UnownedJob(job))
    }
}
