import Crypto
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import PortcullisAuth

/// How a verifier's store calls are started and their answers brought back to an event loop:
/// a task each on a server (``TaskStoreWork``); in socket-free tests and the connection fuzzer,
/// a queue the caller runs when it chooses (which is how a password check can be made to finish
/// after its connection closed).
public protocol StoreWork: Sendable {
    /// Starts `body`; the future completes on `eventLoop`.
    func run<Value: Sendable>(
        on eventLoop: any EventLoop,
        _ body: @escaping @Sendable () async -> Value
    ) -> EventLoopFuture<Value>
    /// Starts `body` for work nobody waits for.
    func runDetached(_ body: @escaping @Sendable () async -> Void)
}

/// One unstructured task per store call. The store awaits its database and hashes passwords on
/// its own thread pool, so neither the event loop nor the task's thread is ever blocked.
public struct TaskStoreWork: StoreWork {
    public init() {}

    public func run<Value: Sendable>(
        on eventLoop: any EventLoop,
        _ body: @escaping @Sendable () async -> Value
    ) -> EventLoopFuture<Value> {
        let promise = eventLoop.makePromise(of: Value.self)
        Task { promise.succeed(await body()) }
        return promise.futureResult
    }

    public func runDetached(_ body: @escaping @Sendable () async -> Void) {
        Task { await body() }
    }
}

/// Verifies Basic credentials against a store, off the event loop, and caches successes.
///
/// The cache is keyed by an HMAC of the whole `Proxy-Authorization` value under a per-process
/// random key, so the plain credential never sits in the cache. An entry lives for ``ttl`` and
/// dies at once when the store's generation changes (file reloaded). Concurrent checks of the
/// same credential share one store call, so a burst of new connections pays bcrypt once.
public final class CredentialVerifier: Sendable {
    public struct Configuration: Sendable {
        public var ttl: TimeAmount
        public var maximumEntries: Int
        public init(ttl: TimeAmount = .minutes(5), maximumEntries: Int = 10_000) {
            self.ttl = ttl
            self.maximumEntries = maximumEntries
        }
    }

    /// HMAC-SHA256 of a credential under a per-process random key.
    public typealias CacheKey = Key256

    private struct Entry {
        var user: String
        /// The token's label, when the credential was a short-lived token.
        var token: String?
        /// When the credential itself stops working (expiry, grace, a token's end), if it does.
        var ends: NIODeadline?
        var expires: NIODeadline
        var generation: UInt64
    }

    /// A verification remembered: who, and through which token if one.
    public struct CachedLogin: Sendable, Equatable {
        public var user: String
        public var token: String?
        /// When the credential stops working, if it does.
        public var ends: NIODeadline?

        public init(user: String, token: String? = nil, ends: NIODeadline? = nil) {
            self.user = user
            self.token = token
            self.ends = ends
        }
    }

    private struct State {
        var entries: [CacheKey: Entry] = [:]
        var inFlight: [CacheKey: [EventLoopPromise<VerificationOutcome>]] = [:]
    }

    /// Which Digest secrets: a user (by name or user hash) and an algorithm.
    public struct DigestKey: Hashable, Sendable {
        public var name: String
        public var isUserhash: Bool
        public var hash: DigestAlgorithm.Hash

        public init(name: String, isUserhash: Bool, hash: DigestAlgorithm.Hash) {
            self.name = name
            self.isUserhash = isUserhash
            self.hash = hash
        }
    }

    private struct DigestEntry {
        var lookup: DigestLookup
        var expires: NIODeadline
        var generation: UInt64
        var loginNoted = false
    }

    private struct NTLMEntry {
        var lookup: NTLMLookup
        var expires: NIODeadline
        var generation: UInt64
        var loginNoted = false
    }

    public let store: any CredentialStore
    private let work: any StoreWork
    private let configuration: Configuration
    private let hmacKey = SymmetricKey(size: .bits256)
    private let state = NIOLockedValueBox(State())
    private let digestEntries = NIOLockedValueBox([DigestKey: DigestEntry]())
    /// By user name, as the store matches it; only names the store holds (see
    /// ``ntlmSecrets(name:on:)``).
    private let ntlmEntries = NIOLockedValueBox([String: NTLMEntry]())

    /// A verifier whose store calls run where `work` puts them (a task each by default).
    public init(
        store: any CredentialStore,
        work: any StoreWork = TaskStoreWork(),
        configuration: Configuration = .init()
    ) {
        self.store = store
        self.work = work
        self.configuration = configuration
    }

    /// The cache key of one `Proxy-Authorization` field value.
    public func cacheKey(forFieldValue value: String) -> CacheKey {
        let mac = HMAC<SHA256>.authenticationCode(for: Array(value.utf8), using: self.hmacKey)
        return mac.withUnsafeBytes { CacheKey($0) }
    }

    /// The user of a still-valid cached verification, without calling the store.
    public func cachedUser(for key: CacheKey, now: NIODeadline = .now()) -> String? {
        self.cachedLogin(for: key, now: now)?.user
    }

    /// A still-valid cached verification (user and token label), without calling the store.
    public func cachedLogin(for key: CacheKey, now: NIODeadline = .now()) -> CachedLogin? {
        let generation = self.store.generation
        return self.state.withLockedValue { state in
            guard let entry = state.entries[key] else { return nil }
            guard entry.expires > now, entry.generation == generation else {
                state.entries[key] = nil
                return nil
            }
            return CachedLogin(user: entry.user, token: entry.token, ends: entry.ends)
        }
    }

    /// Verifies with the store; the future completes on `eventLoop`.
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
        let job = self.work.run(on: eventLoop) {
            await store.verify(user: credentials.user, password: credentials.password)
        }
        job.whenComplete { result in
            let outcome: VerificationOutcome
            switch result {
            case .success(let value): outcome = value
            case .failure: outcome = .rejected(.unavailable)
            }
            let waiters = self.state.withLockedValue { state -> [EventLoopPromise<VerificationOutcome>] in
                if case .accepted(let user, let validFor, let token) = outcome {
                    // Never cache past the credential's own end (expiry, end of a rotation grace).
                    var ttl = self.configuration.ttl
                    let now = NIODeadline.now()
                    let ends = validFor.map { now + .nanoseconds(Int64($0 * 1e9)) }
                    if let validFor { ttl = min(ttl, .nanoseconds(Int64(validFor * 1e9))) }
                    self.insert(
                        Entry(user: user, token: token, ends: ends, expires: now + ttl, generation: generation),
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

    // MARK: - Digest secrets

    /// Digest answers differ on every request, so what is cached is the user's secrets (for
    /// ``Configuration/ttl``, dropped when the store changes); the answer itself is checked
    /// against them on the event loop — a few hashes, no I/O. The account rules (expiry,
    /// grace) are applied at each request with the time of that request.
    public func cachedDigestSecrets(_ key: DigestKey, now: NIODeadline = .now()) -> DigestLookup? {
        let generation = self.store.generation
        return self.digestEntries.withLockedValue { entries in
            guard let entry = entries[key] else { return nil }
            guard entry.expires > now, entry.generation == generation else {
                entries[key] = nil
                return nil
            }
            return entry.lookup
        }
    }

    /// Reads the secrets from the store; the future completes on `eventLoop`.
    public func digestSecrets(_ key: DigestKey, on eventLoop: any EventLoop) -> EventLoopFuture<DigestLookup> {
        let store = self.store
        let generation = store.generation
        return self.work.run(on: eventLoop) {
            await store.digestSecrets(name: key.name, isUserhash: key.isUserhash, hash: key.hash)
        }
        .recover { _ in .unavailable }
        .map { lookup in
            if lookup != .unavailable {
                self.digestEntries.withLockedValue { entries in
                    if entries.count >= self.configuration.maximumEntries { entries.removeAll(keepingCapacity: true) }
                    entries[key] = DigestEntry(
                        lookup: lookup,
                        expires: .now() + self.configuration.ttl,
                        generation: generation
                    )
                }
            }
            return lookup
        }
    }

    /// A Digest login succeeded: the store records it (for `users list`) once per cached entry,
    /// off the event loop, as a Basic login is recorded once per verification.
    public func noteDigestLogin(_ key: DigestKey, user: String) {
        let first = self.digestEntries.withLockedValue { entries -> Bool in
            guard entries[key]?.loginNoted == false else { return false }
            entries[key]?.loginNoted = true
            return true
        }
        guard first else { return }
        let store = self.store
        self.work.runDetached { await store.noteLogin(user, at: Date()) }
    }

    // MARK: - NT hashes

    /// As for Digest, what is cached is the user's secrets, never an answer (each NTLM answer is
    /// keyed by a fresh server challenge): for ``Configuration/ttl``, dropped when the store
    /// changes. The answer is checked against them on the event loop and the account rules are
    /// applied at each login with its own time.
    public func cachedNTLMSecrets(name: String, now: NIODeadline = .now()) -> NTLMLookup? {
        let generation = self.store.generation
        return self.ntlmEntries.withLockedValue { entries in
            guard let entry = entries[name] else { return nil }
            guard entry.expires > now, entry.generation == generation else {
                entries[name] = nil
                return nil
            }
            return entry.lookup
        }
    }

    /// Reads the NT hash from the store; the future completes on `eventLoop`. Only users the
    /// store holds are cached (`found`, `notEnrolled`): names a client invents are asked of the
    /// store each time (the login throttle bounds how often), so they can neither grow the
    /// table nor push real users out of it.
    /// Checks an NTLM answer against NT hashes the store gave (HMAC-MD5 over the handshake,
    /// RC4 for the MIC's key) where store calls run — a task, never an event loop — and answers
    /// on `eventLoop`.
    public func verifyNTLM(
        _ pending: NTLMAcceptor.PendingVerification,
        current: NTHash?,
        previous: NTHash?,
        on eventLoop: any EventLoop
    ) -> EventLoopFuture<NTLMAcceptor.Verification> {
        self.work.run(on: eventLoop) { NTLMAcceptor.verify(pending, ntHash: current, previous: previous) }
    }

    /// An account's standing, for an identity proved without a secret (a client certificate):
    /// asked where store calls run, answered on `eventLoop`. Not cached: a connection asks once
    /// and is bound to the answer until the store changes.
    public func account(named name: String, on eventLoop: any EventLoop) -> EventLoopFuture<AccountLookup> {
        let store = self.store
        return self.work.run(on: eventLoop) { await store.account(named: name) }.recover { _ in .unavailable }
    }

    public func ntlmSecrets(name: String, on eventLoop: any EventLoop) -> EventLoopFuture<NTLMLookup> {
        let store = self.store
        let generation = store.generation
        return self.work.run(on: eventLoop) {
            await store.ntlmSecrets(name: name)
        }
        .recover { _ in .unavailable }
        .map { lookup in
            switch lookup {
            case .found, .notEnrolled:
                self.ntlmEntries.withLockedValue { entries in
                    if entries.count >= self.configuration.maximumEntries, entries[name] == nil {
                        let now = NIODeadline.now()
                        entries = entries.filter { $0.value.expires > now }
                        if entries.count >= self.configuration.maximumEntries {
                            entries.removeAll(keepingCapacity: true)
                        }
                    }
                    entries[name] = NTLMEntry(
                        lookup: lookup,
                        expires: .now() + self.configuration.ttl,
                        generation: generation
                    )
                }
            case .unknownUser, .unavailable:
                break
            }
            return lookup
        }
    }

    /// An NTLM login succeeded: the store records it (for `users list`) once per cached entry,
    /// off the event loop, as for Digest.
    public func noteNTLMLogin(name: String, user: String) {
        let first = self.ntlmEntries.withLockedValue { entries -> Bool in
            guard entries[name]?.loginNoted == false else { return false }
            entries[name]?.loginNoted = true
            return true
        }
        guard first else { return }
        let store = self.store
        self.work.runDetached { await store.noteLogin(user, at: Date()) }
    }

    /// How many NT hash look-ups are cached (for tests of the bound).
    var cachedNTLMCount: Int { self.ntlmEntries.withLockedValue { $0.count } }

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
