import Crypto
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PortcullisAuth

/// Verifies Basic credentials against a store on a thread pool and caches successes.
///
/// The cache is keyed by an HMAC of the whole `Proxy-Authorization` value under a per-process
/// random key, so the plain credential never sits in the cache. An entry lives for ``ttl`` and
/// dies at once when the store's generation changes (file reloaded). Concurrent checks of the
/// same credential share one thread-pool job, so a burst of new connections pays bcrypt once.
public final class CredentialVerifier: Sendable {
    public struct Configuration: Sendable {
        public var ttl: TimeAmount
        public var maximumEntries: Int
        public init(ttl: TimeAmount = .minutes(5), maximumEntries: Int = 10_000) {
            self.ttl = ttl
            self.maximumEntries = maximumEntries
        }
    }

    public typealias CacheKey = SIMD32<UInt8>

    private struct Entry {
        var user: String
        var expires: NIODeadline
        var generation: UInt64
    }

    private struct State {
        var entries: [CacheKey: Entry] = [:]
        var inFlight: [CacheKey: [EventLoopPromise<VerificationOutcome>]] = [:]
    }

    public let store: any CredentialStore
    private let threadPool: NIOThreadPool
    private let configuration: Configuration
    private let hmacKey = SymmetricKey(size: .bits256)
    private let state = NIOLockedValueBox(State())

    public init(store: any CredentialStore, threadPool: NIOThreadPool, configuration: Configuration = .init()) {
        self.store = store
        self.threadPool = threadPool
        self.configuration = configuration
    }

    /// The cache key of one `Proxy-Authorization` field value.
    public func cacheKey(forFieldValue value: String) -> CacheKey {
        let mac = HMAC<SHA256>.authenticationCode(for: Array(value.utf8), using: self.hmacKey)
        var key = CacheKey()
        mac.withUnsafeBytes { bytes in
            for i in 0..<32 { key[i] = bytes[i] }
        }
        return key
    }

    /// The user of a still-valid cached verification, without touching the thread pool.
    public func cachedUser(for key: CacheKey, now: NIODeadline = .now()) -> String? {
        let generation = self.store.generation
        return self.state.withLockedValue { state in
            guard let entry = state.entries[key] else { return nil }
            guard entry.expires > now, entry.generation == generation else {
                state.entries[key] = nil
                return nil
            }
            return entry.user
        }
    }

    /// Verifies on the thread pool; the future completes on `eventLoop`.
    public func verify(
        _ credentials: BasicCredentials,
        key: CacheKey,
        on eventLoop: any EventLoop
    ) -> EventLoopFuture<VerificationOutcome> {
        let promise = eventLoop.makePromise(of: VerificationOutcome.self)
        let isFirst = self.state.withLockedValue { state -> Bool in
            if state.inFlight[key] != nil {
                state.inFlight[key]!.append(promise)
                return false
            }
            state.inFlight[key] = [promise]
            return true
        }
        guard isFirst else { return promise.futureResult }

        let store = self.store
        let generation = store.generation
        let job = self.threadPool.runIfActive(eventLoop: eventLoop) {
            store.verify(user: credentials.user, password: credentials.password)
        }
        job.whenComplete { result in
            let outcome: VerificationOutcome
            switch result {
            case .success(let value): outcome = value
            case .failure: outcome = .rejected(.unavailable)
            }
            let waiters = self.state.withLockedValue { state -> [EventLoopPromise<VerificationOutcome>] in
                if case .accepted(let user, let validFor) = outcome {
                    // Never cache past the credential's own end (expiry, end of a rotation grace).
                    var ttl = self.configuration.ttl
                    if let validFor { ttl = min(ttl, .nanoseconds(Int64(validFor * 1e9))) }
                    self.insert(
                        Entry(user: user, expires: .now() + ttl, generation: generation),
                        key: key,
                        into: &state
                    )
                }
                return state.inFlight.removeValue(forKey: key) ?? []
            }
            for waiter in waiters { waiter.succeed(outcome) }
        }
        return promise.futureResult
    }

    /// Drops every cached verification (for example after the users changed).
    public func invalidateAll() {
        self.state.withLockedValue { $0.entries.removeAll() }
    }

    public var cachedCount: Int { self.state.withLockedValue { $0.entries.count } }

    private func insert(_ entry: Entry, key: CacheKey, into state: inout State) {
        if state.entries.count >= self.configuration.maximumEntries {
            let now = NIODeadline.now()
            state.entries = state.entries.filter { $0.value.expires > now }
            if state.entries.count >= self.configuration.maximumEntries {
                // Still full of live entries: forget them all rather than grow; the cost is one
                // re-verification per active credential.
                state.entries.removeAll(keepingCapacity: true)
            }
        }
        state.entries[key] = entry
    }
}
