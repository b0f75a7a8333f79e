import CoreMetrics
import Foundation
import NIOCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A bounded queue of log lines that one thread of its own writes to a file descriptor.
///
/// A log destination that stops reading — a pipe nobody drains, a stalled log shipper, a full
/// disk behind NFS — must not stop the proxy: with lines written where they are logged, every
/// event loop blocked in `write(2)` once the 64 KiB pipe was full, and the proxy stopped
/// answering. Here the thread that logs only appends to a queue under a lock; the blocking
/// write is the writer thread's alone. The queue holds at most ``capacity`` bytes: a line that
/// does not fit is dropped and counted (``droppedLines``, and the counter given to
/// ``countDrops(in:)``), and once writing works again one line (from `dropReport`) says how
/// many were dropped.
public final class LogSink: @unchecked Sendable {
    /// Bytes the queue may hold by default: about 5,000 lines of 200 bytes.
    public static let defaultCapacity = 1 << 20
    /// Bytes the writer takes from the queue for one `write(2)`.
    static let batchBytes = 64 << 10

    private enum Entry {
        case line(String)
        /// Rendered on the writer thread, for work the logging thread should not do; the
        /// estimate is what the caller holds in memory until then.
        case deferred(estimate: Int, @Sendable () -> String)

        var bytes: Int {
            switch self {
            case .line(let line): return line.utf8.count
            case .deferred(let estimate, _): return estimate
            }
        }
    }

    /// The byte bound of the queue.
    public let capacity: Int
    private let dropReport: @Sendable (Int) -> String?
    private let ownsDescriptors: Bool
    /// Guards every `var` below except `descriptor`, which only the writer thread touches.
    private let condition = NSCondition()
    private var entries = CircularBuffer<Entry>()
    /// Bytes queued or being written: the memory this sink holds for lines not yet written.
    private var heldBytes = 0
    private var inFlight = false
    private var writerIdle = false
    private var stopped = false
    private var unreportedDrops = 0
    private var totalDrops = 0
    private var dropCounter: Counter?
    private var pendingDescriptor: CInt?
    private var descriptor: CInt

    /// - Parameters:
    ///   - fileDescriptor: where lines go (`STDERR_FILENO`, an open file, a pipe).
    ///   - ownsDescriptor: closed when replaced (``switchDestination(to:)``) or stopped.
    ///   - capacity: bytes the queue holds before lines are dropped.
    ///   - dropReport: the line written after lines were dropped, once writing works again
    ///     (`nil`: write none, e.g. when the report goes to another log).
    public init(
        fileDescriptor: CInt,
        ownsDescriptor: Bool = false,
        capacity: Int = LogSink.defaultCapacity,
        dropReport: @escaping @Sendable (Int) -> String? = {
            "\($0) log lines dropped: the log destination did not keep up\n"
        }
    ) {
        self.descriptor = fileDescriptor
        self.ownsDescriptors = ownsDescriptor
        self.capacity = capacity
        self.dropReport = dropReport
        Thread { [self] in self.run() }.start()
    }

    /// Queues a finished line (with its newline). Never blocks on the destination: returns
    /// `false` when the line was dropped because the queue is full.
    @discardableResult
    public func write(_ line: String) -> Bool {
        self.enqueue(.line(line))
    }

    /// Queues a line that the writer thread renders, so the caller pays only for handing over
    /// what it holds (`estimate`: those bytes). Returns `false` when it was dropped.
    @discardableResult
    public func write(estimate: Int, _ render: @escaping @Sendable () -> String) -> Bool {
        self.enqueue(.deferred(estimate: estimate, render))
    }

    private func enqueue(_ entry: Entry) -> Bool {
        let bytes = entry.bytes
        self.condition.lock()
        guard !self.stopped, self.heldBytes + bytes <= self.capacity else {
            self.unreportedDrops += 1
            self.totalDrops += 1
            let counter = self.dropCounter
            self.condition.unlock()
            counter?.increment()
            return false
        }
        self.entries.append(entry)
        self.heldBytes += bytes
        // Only the idle writer needs waking: a busy one comes back for the queue by itself.
        if self.writerIdle { self.condition.broadcast() }
        self.condition.unlock()
        return true
    }

    /// Lines dropped since the start.
    public var droppedLines: Int {
        self.condition.lock()
        defer { self.condition.unlock() }
        return self.totalDrops
    }

    /// Counts every dropped line in `counter` from now on, and those dropped before (the log
    /// starts before the metrics do).
    public func countDrops(in counter: Counter) {
        self.condition.lock()
        self.dropCounter = counter
        let earlier = self.totalDrops
        self.condition.unlock()
        if earlier > 0 { counter.increment(by: Int64(earlier)) }
    }

    /// Lines queued from now on go to `descriptor` (a log file opened again after logrotate
    /// moved it). The switch is the writer's, so this never waits for a stalled write.
    public func switchDestination(to descriptor: CInt) {
        self.condition.lock()
        let superseded = self.pendingDescriptor
        self.pendingDescriptor = descriptor
        if self.writerIdle { self.condition.broadcast() }
        self.condition.unlock()
        // Never written to: closing it cannot block.
        if let superseded, self.ownsDescriptors { close(superseded) }
    }

    /// Waits until every line queued so far is written, or `timeout` passes (a destination
    /// that does not read must not hold up shutdown). Returns whether everything was written.
    @discardableResult
    public func flush(timeout: TimeAmount) -> Bool {
        let deadline = Date(timeIntervalSinceNow: Double(timeout.nanoseconds) / 1e9)
        self.condition.lock()
        defer { self.condition.unlock() }
        while !self.entries.isEmpty || self.inFlight {
            if !self.condition.wait(until: deadline) { return false }
        }
        return true
    }

    /// Flushes (bounded by `timeout`), then ends the writer thread once the queue is empty; later
    /// lines are dropped. For tests and for sinks that are replaced; the process's own log
    /// only needs ``flush(timeout:)`` before it exits.
    public func stop(timeout: TimeAmount) {
        self.flush(timeout: timeout)
        self.condition.lock()
        self.stopped = true
        self.condition.broadcast()
        self.condition.unlock()
    }

    // MARK: - The writer thread

    private func run() {
        Self.ignoreBrokenPipes()
        // Batches leave most of the queue's bytes to the queue: a line is only dropped while
        // lines are still queued, so the report of the drops always has a write to follow.
        let batchLimit = max(1, min(Self.batchBytes, self.capacity / 4))
        var buffer: [UInt8] = []
        var lastWriteFailed = false
        while true {
            self.condition.lock()
            // Drops are reported by themselves only after a write that worked: a destination
            // that is gone must not turn the report into a busy loop.
            while self.entries.isEmpty && self.pendingDescriptor == nil && !self.stopped
                && (self.unreportedDrops == 0 || lastWriteFailed)
            {
                self.writerIdle = true
                self.condition.wait()
                self.writerIdle = false
            }
            if let fresh = self.pendingDescriptor {
                self.pendingDescriptor = nil
                if self.ownsDescriptors { close(self.descriptor) }
                self.descriptor = fresh
                lastWriteFailed = false
            }
            if self.entries.isEmpty && self.stopped {
                self.condition.unlock()
                break
            }
            var batch: [Entry] = []
            var batchBytes = 0
            while batchBytes < batchLimit, let entry = self.entries.popFirst() {
                batchBytes += entry.bytes
                batch.append(entry)
            }
            let drops = self.unreportedDrops
            self.unreportedDrops = 0
            self.inFlight = true
            self.condition.unlock()

            buffer.removeAll(keepingCapacity: true)
            for entry in batch {
                switch entry {
                case .line(let line): buffer.append(contentsOf: line.utf8)
                case .deferred(_, let render): buffer.append(contentsOf: render().utf8)
                }
            }
            // After the lines that were queued before the drops happened.
            if drops > 0, let report = self.dropReport(drops) { buffer.append(contentsOf: report.utf8) }
            let written = buffer.withUnsafeBytes { Self.writeAll(self.descriptor, $0) }
            lastWriteFailed = !written

            self.condition.lock()
            self.inFlight = false
            self.heldBytes -= batchBytes
            var counter: Counter?
            if !written {
                // Lost after all (the destination is gone): counted like the dropped ones, and
                // the report waits for a write that works.
                self.unreportedDrops += drops + batch.count
                self.totalDrops += batch.count
                counter = self.dropCounter
            }
            self.condition.broadcast()
            self.condition.unlock()
            if !written, !batch.isEmpty { counter?.increment(by: Int64(batch.count)) }
        }
        if self.ownsDescriptors { close(self.descriptor) }
    }

    /// Writes everything, however long the destination takes; `false` if it cannot be written.
    private static func writeAll(_ descriptor: CInt, _ bytes: UnsafeRawBufferPointer) -> Bool {
        guard var base = bytes.baseAddress else { return true }
        var left = bytes.count
        while left > 0 {
            #if canImport(Glibc)
                let n = Glibc.write(descriptor, base, left)
            #else
                let n = Darwin.write(descriptor, base, left)
            #endif
            if n > 0 {
                base += n
                left -= n
                continue
            }
            if n == 0 { return false }
            switch errno {
            case EINTR:
                continue
            case EAGAIN, EWOULDBLOCK:
                // A descriptor someone set non-blocking (a shared stderr): wait here, not spin.
                var wanted = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
                _ = poll(&wanted, 1, -1)
            default:
                return false
            }
        }
        return true
    }

    /// A reader that went away makes `write(2)` fail with EPIPE on this thread instead of
    /// killing the process with SIGPIPE: losing the log is no reason to stop proxying.
    private static func ignoreBrokenPipes() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }
}
