import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PortcullisAuth
import Testing

@testable import PortcullisStores

/// A store that counts calls and can change generation, to observe the cache.
final class CountingStore: CredentialStore, @unchecked Sendable {
    let calls = NIOLockedValueBox(0)
    let gen = NIOLockedValueBox<UInt64>(1)
    let gateOpen = ConditionLock(value: 0)

    func verify(user: String, password: String) -> VerificationOutcome {
        self.calls.withLockedValue { $0 += 1 }
        self.gateOpen.lock(whenValue: 1)
        self.gateOpen.unlock()
        return password == "right" ? .accepted(user: user) : .rejected(.invalid)
    }

    var generation: UInt64 { self.gen.withLockedValue { $0 } }
}

@Suite struct CredentialVerifierTests {
    private func withVerifier(
        ttl: TimeAmount = .minutes(5),
        _ body: (CredentialVerifier, CountingStore, any EventLoop) async throws -> Void
    ) async throws {
        let pool = NIOThreadPool(numberOfThreads: 2)
        pool.start()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let store = CountingStore()
        let verifier = CredentialVerifier(store: store, threadPool: pool, configuration: .init(ttl: ttl))
        do {
            try await body(verifier, store, group.next())
        } catch {
            try await group.shutdownGracefully()
            try await pool.shutdownGracefully()
            throw error
        }
        try await group.shutdownGracefully()
        try await pool.shutdownGracefully()
    }

    @Test func successIsCachedAndFailureIsNot() async throws {
        try await withVerifier { verifier, store, loop in
            store.gateOpen.lock()
            store.gateOpen.unlock(withValue: 1)
            let good = verifier.cacheKey(forFieldValue: "Basic good")
            let bad = verifier.cacheKey(forFieldValue: "Basic bad")
            #expect(verifier.cachedUser(for: good) == nil)
            let accepted = try await verifier.verify(.init(user: "u", password: "right"), key: good, on: loop).get()
            #expect(accepted == .accepted(user: "u"))
            #expect(verifier.cachedUser(for: good) == "u")
            let rejected = try await verifier.verify(.init(user: "u", password: "wrong"), key: bad, on: loop).get()
            #expect(rejected == .rejected(.invalid))
            #expect(verifier.cachedUser(for: bad) == nil)
        }
    }

    @Test func aStoreChangeInvalidatesTheCache() async throws {
        try await withVerifier { verifier, store, loop in
            store.gateOpen.lock()
            store.gateOpen.unlock(withValue: 1)
            let key = verifier.cacheKey(forFieldValue: "Basic x")
            _ = try await verifier.verify(.init(user: "u", password: "right"), key: key, on: loop).get()
            #expect(verifier.cachedUser(for: key) == "u")
            store.gen.withLockedValue { $0 += 1 }
            #expect(verifier.cachedUser(for: key) == nil)
        }
    }

    @Test func anExpiredEntryIsNotUsed() async throws {
        try await withVerifier(ttl: .seconds(30)) { verifier, store, loop in
            store.gateOpen.lock()
            store.gateOpen.unlock(withValue: 1)
            let key = verifier.cacheKey(forFieldValue: "Basic x")
            _ = try await verifier.verify(.init(user: "u", password: "right"), key: key, on: loop).get()
            #expect(verifier.cachedUser(for: key, now: .now() + .seconds(31)) == nil)
        }
    }

    @Test func concurrentChecksOfOneCredentialShareOneStoreCall() async throws {
        try await withVerifier { verifier, store, loop in
            let key = verifier.cacheKey(forFieldValue: "Basic same")
            // The store blocks until the gate opens, so all ten requests are in flight together.
            let futures = (0..<10).map { _ in
                verifier.verify(.init(user: "u", password: "right"), key: key, on: loop)
            }
            store.gateOpen.lock()
            store.gateOpen.unlock(withValue: 1)
            for future in futures {
                let outcome = try await future.get()
                #expect(outcome == .accepted(user: "u"))
            }
            #expect(store.calls.withLockedValue { $0 } == 1)
        }
    }

    @Test func keysDifferPerValueAndAreStable() {
        let pool = NIOThreadPool(numberOfThreads: 1)
        let verifier = CredentialVerifier(store: CountingStore(), threadPool: pool)
        #expect(verifier.cacheKey(forFieldValue: "a") == verifier.cacheKey(forFieldValue: "a"))
        #expect(verifier.cacheKey(forFieldValue: "a") != verifier.cacheKey(forFieldValue: "b"))
    }
}
