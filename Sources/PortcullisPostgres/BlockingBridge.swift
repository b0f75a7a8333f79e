import NIOCore
import NIOPosix

/// Runs postgres-nio's async API for a blocking caller, with a deadline.
///
/// The store's API is synchronous by design (``CredentialStore``): it is called from an
/// `NIOThreadPool` thread or from the `users` command's main thread, never from an event loop.
/// Blocking such a caller while the work runs is safe because nothing the work needs runs on
/// the caller's thread: the work is a `Task` whose executor is this bridge's own event loop
/// (one thread, private to the store), so it needs neither the caller's thread nor a thread of
/// Swift's cooperative pool (which tests, or any async caller, may be blocking at that moment).
///
/// Every call has a deadline: a dead or hung database answers ``TimedOut`` after `timeout`
/// and the caller's thread is free again; the abandoned task is cancelled, which also cancels
/// its wait for a pooled connection.
final class BlockingBridge: Sendable {
    struct TimedOut: Error, CustomStringConvertible {
        var timeout: TimeAmount
        var description: String { "no answer within \(self.timeout.nanoseconds / 1_000_000_000) s" }
    }

    let group: MultiThreadedEventLoopGroup
    let loop: any EventLoop
    let timeout: TimeAmount
    private let executor: (any Sendable)?

    init(timeout: TimeAmount) {
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.loop = self.group.next()
        self.timeout = timeout
        if #available(macOS 15, iOS 18, tvOS 18, watchOS 11, *) {
            self.executor = EventLoopTaskExecutor(self.loop)
        } else {
            self.executor = nil
        }
    }

    /// Starts `body` on the bridge's executor and returns at once (the client's `run()`).
    func start(_ body: @escaping @Sendable () async -> Void) -> Task<Void, Never> {
        if #available(macOS 15, iOS 18, tvOS 18, watchOS 11, *), let executor = self.executor as? EventLoopTaskExecutor
        {
            return Task(executorPreference: executor) { await body() }
        }
        return Task { await body() }
    }

    /// Runs `body` and blocks until it is done or `timeout` has passed. Never call it from an
    /// event loop (it would stall every connection on that loop).
    func run<T: Sendable>(timeout: TimeAmount? = nil, _ body: @escaping @Sendable () async throws -> T) throws -> T {
        let limit = timeout ?? self.timeout
        let promise = self.loop.makePromise(of: T.self)
        let task = self.start {
            do {
                promise.succeed(try await body())
            } catch {
                promise.fail(error)
            }
        }
        // Whichever completes the promise first wins; NIO ignores the later completion.
        let timer = self.loop.scheduleTask(in: limit) {
            promise.fail(TimedOut(timeout: limit))
            task.cancel()
        }
        defer { timer.cancel() }
        return try promise.futureResult.wait()
    }

    /// Stops the event loop without waiting for it (safe from `deinit`).
    func shutdown() {
        self.group.shutdownGracefully { _ in }
    }
}

/// A task executor that runs jobs on one event loop: the bridge's async work never waits for
/// a thread of the cooperative pool.
@available(macOS 15, iOS 18, tvOS 18, watchOS 11, *)
final class EventLoopTaskExecutor: TaskExecutor, Sendable {
    private let loop: any EventLoop

    init(_ loop: any EventLoop) { self.loop = loop }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        self.loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
