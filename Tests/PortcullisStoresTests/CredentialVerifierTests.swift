import Foundation
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

    let ntlmCalls = NIOLockedValueBox(0)
    let down = NIOLockedValueBox(false)
    let logins = NIOLockedValueBox<[String]>([])

    /// Users whose names start with `u` are enrolled for NTLM, with `p` are not; no one else exists.
    func account(named name: String) async -> AccountLookup {
        if self.down.withLockedValue({ $0 }) { return .unavailable }
        return .unknownUser
    }

    func ntlmSecrets(name: String) async -> NTLMLookup {
        self.ntlmCalls.withLockedValue { $0 += 1 }
        if self.down.withLockedValue({ $0 }) { return .unavailable }
        switch name.first {
        case "u": return .found(NTLMSecrets(user: name, ntHash: NTHash(password: name)))
        case "p": return .notEnrolled(user: name)
        default: return .unknownUser
        }
    }

    func noteLogin(_ user: String, at date: Date) async {
        self.logins.withLockedValue { $0.append(user) }
    }

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
        maximumEntries: Int = 10_000,
        work: any StoreWork = TaskStoreWork(),
        _ body: (CredentialVerifier, CountingStore, any EventLoop) async throws -> Void
    ) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let store = CountingStore()
        let verifier = CredentialVerifier(
            store: store,
            work: work,
            configuration: .init(ttl: ttl, maximumEntries: maximumEntries)
        )
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

    @Test func ntHashesAreCachedUntilTheStoreChanges() async throws {
        try await withVerifier { verifier, store, loop in
            #expect(verifier.cachedNTLMSecrets(name: "u1") == nil)
            let found = try await verifier.ntlmSecrets(name: "u1", on: loop).get()
            #expect(found == .found(NTLMSecrets(user: "u1", ntHash: NTHash(password: "u1"))))
            #expect(verifier.cachedNTLMSecrets(name: "u1") == found)
            _ = try await verifier.ntlmSecrets(name: "p1", on: loop).get()
            #expect(verifier.cachedNTLMSecrets(name: "p1") == .notEnrolled(user: "p1"))
            #expect(store.ntlmCalls.withLockedValue { $0 } == 2)
            store.gen.withLockedValue { $0 += 1 }
            #expect(verifier.cachedNTLMSecrets(name: "u1") == nil)
            #expect(verifier.cachedNTLMSecrets(name: "p1") == nil)
        }
    }

    @Test func anExpiredNTHashEntryIsNotUsed() async throws {
        try await withVerifier(ttl: .seconds(30)) { verifier, store, loop in
            _ = try await verifier.ntlmSecrets(name: "u1", on: loop).get()
            #expect(verifier.cachedNTLMSecrets(name: "u1", now: .now() + .seconds(31)) == nil)
        }
    }

    @Test func unknownUsersAndAnUnavailableStoreAreNotCachedForNTLM() async throws {
        try await withVerifier { verifier, store, loop in
            let unknown = try await verifier.ntlmSecrets(name: "x1", on: loop).get()
            #expect(unknown == .unknownUser)
            #expect(verifier.cachedNTLMSecrets(name: "x1") == nil)
            store.down.withLockedValue { $0 = true }
            let unavailable = try await verifier.ntlmSecrets(name: "u1", on: loop).get()
            #expect(unavailable == .unavailable)
            #expect(verifier.cachedNTLMSecrets(name: "u1") == nil)
            #expect(verifier.cachedNTLMCount == 0)
        }
    }

    @Test func theNTHashCacheStaysBoundedWhateverNamesAreSent() async throws {
        try await withVerifier(maximumEntries: 8) { verifier, store, loop in
            // Invented names take no place at all.
            for i in 0..<1000 { _ = try await verifier.ntlmSecrets(name: "x\(i)", on: loop).get() }
            #expect(verifier.cachedNTLMCount == 0)
            // Real users beyond the bound push the others out, never grow the table.
            for i in 0..<100 {
                _ = try await verifier.ntlmSecrets(name: "u\(i)", on: loop).get()
                #expect(verifier.cachedNTLMCount <= 8)
            }
            #expect(verifier.cachedNTLMSecrets(name: "u99") != nil)
        }
    }

    @Test func anNTLMLoginIsNotedOncePerCachedEntry() async throws {
        let work = QueuedStoreWork()
        try await withVerifier(work: work) { verifier, store, loop in
            _ = try await verifier.ntlmSecrets(name: "u1", on: loop).get()
            verifier.noteNTLMLogin(name: "u1", user: "u1")
            verifier.noteNTLMLogin(name: "u1", user: "u1")
            await work.runKept()
            #expect(store.logins.withLockedValue { $0 } == ["u1"])
        }
    }

    @Test func keysDifferPerValueAndAreStable() {
        let verifier = CredentialVerifier(store: CountingStore())
        #expect(verifier.cacheKey(forFieldValue: "a") == verifier.cacheKey(forFieldValue: "a"))
        #expect(verifier.cacheKey(forFieldValue: "a") != verifier.cacheKey(forFieldValue: "b"))
    }
}

/// Store calls as tasks, as on a server; work nobody waits for is kept until the test runs it.
final class QueuedStoreWork: StoreWork {
    private let detached = NIOLockedValueBox<[@Sendable () async -> Void]>([])

    func run<Value: Sendable>(
        on eventLoop: any EventLoop,
        _ body: @escaping @Sendable () async -> Value
    ) -> EventLoopFuture<Value> {
        TaskStoreWork().run(on: eventLoop, body)
    }

    func runDetached(_ body: @escaping @Sendable () async -> Void) {
        self.detached.withLockedValue { $0.append(body) }
    }

    /// Runs the work kept so far.
    func runKept() async {
        let kept = self.detached.withLockedValue { work in
            defer { work = [] }
            return work
        }
        for body in kept { await body() }
    }
}
