import NIOCore

/// Idle keep-alive connections to origins, for one event loop (no locks: only that loop uses it).
final class UpstreamPool {
    struct Key: Hashable {
        var host: String
        var port: Int
        /// A connection to a parent proxy (absolute-form requests), not to an origin.
        var viaParent = false
    }

    private var idle: [Key: [UpstreamHandler]] = [:]
    private let maximumIdlePerOrigin: Int
    private let idleTimeout: TimeAmount
    private var sweeper: RepeatedTask?

    init(eventLoop: any EventLoop, maximumIdlePerOrigin: Int, idleTimeout: TimeAmount) {
        self.maximumIdlePerOrigin = maximumIdlePerOrigin
        self.idleTimeout = idleTimeout
        let interval = TimeAmount.nanoseconds(max(idleTimeout.nanoseconds / 2, TimeAmount.seconds(1).nanoseconds))
        let weakSelf = NIOLoopBound(WeakBox(self), eventLoop: eventLoop)
        self.sweeper = eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            // The loop's clock, the one acquire and release are given (a test's on an EmbeddedEventLoop).
            weakSelf.value.value?.closeExpired(now: eventLoop.now)
        }
    }

    /// The most recently used idle connection to `key` that is still fresh and that `admits`
    /// accepts for this request; connections it refuses stay idle for other requests.
    func acquire(
        _ key: Key,
        now: NIODeadline,
        where admits: (UpstreamHandler) -> Bool = { _ in true }
    ) -> UpstreamHandler? {
        let deadline = now - self.idleTimeout
        var refused: [UpstreamHandler] = []
        // Put back in their order (they were the most recent ones).
        defer { if !refused.isEmpty { self.idle[key, default: []].append(contentsOf: refused.reversed()) } }
        // Mutated in place (`default:` subscript): a copy of the list would cost an allocation
        // on every request. An empty list stays until the sweeper drops it.
        while let handler = self.idle[key, default: []].popLast() {
            guard handler.isUsable, handler.idleSince > deadline else {
                handler.close()
                continue
            }
            guard admits(handler) else {
                refused.append(handler)
                continue
            }
            return handler
        }
        return nil
    }

    /// Returns a connection whose exchange completed cleanly; closes it when the pool is full.
    func release(_ handler: UpstreamHandler, key: Key, now: NIODeadline) {
        guard handler.isUsable else {
            handler.close()
            return
        }
        // One lookup of the key's list (it is hashed on every request), checked and appended in place.
        guard Self.append(handler, to: &self.idle[key, default: []], limit: self.maximumIdlePerOrigin) else {
            handler.close()
            return
        }
        handler.idleSince = now
        handler.pool = self
        handler.poolKey = key
    }

    private static func append(_ handler: UpstreamHandler, to list: inout [UpstreamHandler], limit: Int) -> Bool {
        guard list.count < limit else { return false }
        list.append(handler)
        return true
    }

    /// Forgets a connection that closed while idle.
    func remove(_ handler: UpstreamHandler, key: Key) {
        guard let index = self.idle[key]?.firstIndex(where: { $0 === handler }) else { return }
        self.idle[key]?.remove(at: index)
    }

    private func closeExpired(now: NIODeadline) {
        let deadline = now - self.idleTimeout
        for (key, list) in self.idle {
            let (keep, expired) = (list.filter { $0.idleSince > deadline }, list.filter { $0.idleSince <= deadline })
            self.idle[key] = keep.isEmpty ? nil : keep
            for handler in expired { handler.close() }
        }
    }

    func shutdown() {
        self.sweeper?.cancel()
        for list in self.idle.values { for handler in list { handler.close() } }
        self.idle.removeAll()
    }
}

final class WeakBox<Value: AnyObject> {
    weak var value: Value?
    init(_ value: Value) { self.value = value }
}
