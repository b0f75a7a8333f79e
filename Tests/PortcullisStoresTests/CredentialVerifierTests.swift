import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PortcullisAuth
import Testing

@testable import PortcullisStores

/// A store that counts calls and can change generation, to observe the cache. Its answers
/// wait until the test opens its gate.
final class CountingStore: CredentialStore {
    let calls = NIOLockedValueBox(0)
    let gen = NIOLockedValueBox<UInt64>(1)
    private let gate = NIOLockedValueBox<(open: Bool, waiting: [CheckedContinuation<Void, Never>])>((false, []))

    func verify(user: String, password: String) async -> VerificationOutcome {
        self.calls.withLockedValue { $0 += 1 }
        await withCheckedContinuation { continuation in
            let open = self.gate.withLockedValue { gate in
                if !gate.open { gate.waiting.append(continuation) }
                return gate.open
            }
            if open { continuation.resume() }
        }
        return password == "right" ? .accepted(user: user) : .rejected(.invalid)
    }

    var generation: UInt64 { self.gen.withLockedValue { $0 } }

    /// Lets every waiting and later call answer.
    func openGate() {
        let waiting = self.gate.withLockedValue { gate in
            gate.open = true
            defer { gate.waiting = [] }
            return gate.waiting
        }
        for continuation in waiting { continuation.resume() }
    }
}

@Suite struct CredentialVerifierTests {
    private func withVerifier(
        ttl: TimeAmount = .minutes(5),
        _ body: (CredentialVerifier, CountingStore, any EventLoop) async throws -> Void
    ) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let store = CountingStore()
        let verifier = CredentialVerifier(store: store, configuration: .init(ttl: ttl))
        do {
            try await body(verifier, store, group.next())
        } catch {
            try await group.shutdownGracefully()
            throw error
        }
        try await group.shutdownGracefully()
    }

    @Test func successIsCachedAndFailureIsNot() async throws {
        try await withVerifier { verifier, store, loop in
            store.openGate()
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
            store.openGate()
            let key = verifier.cacheKey(forFieldValue: "Basic x")
            _ = try await verifier.verify(.init(user: "u", password: "right"), key: key, on: loop).get()
            #expect(verifier.cachedUser(for: key) == "u")
            store.gen.withLockedValue { $0 += 1 }
            #expect(verifier.cachedUser(for: key) == nil)
        }
    }

    @Test func anExpiredEntryIsNotUsed() async throws {
        try await withVerifier(ttl: .seconds(30)) { verifier, store, loop in
            store.openGate()
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
            store.openGate()
            for future in futures {
                let outcome = try await future.get()
                #expect(outcome == .accepted(user: "u"))
            }
            #expect(store.calls.withLockedValue { $0 } == 1)
        }
    }

    @Test func keysDifferPerValueAndAreStable() {
        let verifier = CredentialVerifier(store: CountingStore())
        #expect(verifier.cacheKey(forFieldValue: "a") == verifier.cacheKey(forFieldValue: "a"))
        #expect(verifier.cacheKey(forFieldValue: "a") != verifier.cacheKey(forFieldValue: "b"))
    }
}
