import Foundation
import PortcullisAuth
import PortcullisStores
import Testing

@testable import PortcullisLDAP

/// Local users and the directory together: which answers, in which order, and what a store that
/// cannot be read does to the outcome.
@Suite struct ChainedStoreTests {
    final class Fixed: CredentialStore {
        let outcome: VerificationOutcome
        let calls = NIOLockedCounter()
        init(_ outcome: VerificationOutcome) { self.outcome = outcome }
        var generation: UInt64 { 7 }
        func verify(user: String, password: String) async -> VerificationOutcome {
            self.calls.increment()
            return self.outcome
        }
        func digestSecrets(name: String, isUserhash: Bool, hash: DigestAlgorithm.Hash) async -> DigestLookup {
            .unknownUser
        }
        func ntlmSecrets(name: String) async -> NTLMLookup { .unknownUser }
        func account(named name: String) async -> AccountLookup { .unknownUser }
        func nonceKey() async -> [UInt8]? { nil }
        func noteLogin(_ user: String, at date: Date) async {}
    }

    final class NIOLockedCounter: @unchecked Sendable {
        private let lock = NSLock()
        private var value = 0
        func increment() { self.lock.withLock { self.value += 1 } }
        var count: Int { self.lock.withLock { self.value } }
    }

    static let ok = VerificationOutcome.accepted(user: "u")
    static let invalid = VerificationOutcome.rejected(.invalid)
    static let down = VerificationOutcome.rejected(.unavailable)
    static let disabled = VerificationOutcome.rejected(.disabled)

    @Test(arguments: [
        // (first asked, second asked, outcome, whether the second was asked)
        (ok, invalid, ok, false),
        (invalid, ok, ok, true),
        (invalid, invalid, invalid, true),
        (disabled, ok, disabled, false),  // a closed account is final
        (down, ok, ok, true),  // the other one can still say yes
        (down, invalid, down, true),  // but not no: the unread one might have said yes
        (invalid, down, down, true),
    ])
    func outcomes(first: VerificationOutcome, second: VerificationOutcome, expected: VerificationOutcome, asked: Bool)
        async
    {
        for directoryFirst in [false, true] {
            let a = Fixed(first)
            let b = Fixed(second)
            let store =
                directoryFirst
                ? ChainedStore(local: b, directory: a, directoryFirst: true)
                : ChainedStore(local: a, directory: b)
            #expect(await store.verify(user: "u", password: "p") == expected, "directory first: \(directoryFirst)")
            #expect(b.calls.count == (asked ? 1 : 0))
        }
    }

    @Test func aTokenIsNeverSentToTheDirectory() async {
        let token = AccessToken(id: Array(0..<12), user: "u", expires: 4_000_000_000)
            .encoded(key: [UInt8](repeating: 1, count: 32))
        let local = Fixed(.accepted(user: "u", token: "job"))
        let directory = Fixed(Self.ok)
        let store = ChainedStore(local: local, directory: directory, directoryFirst: true)
        #expect(await store.verify(user: "u", password: token) == .accepted(user: "u", token: "job"))
        #expect(directory.calls.count == 0)
        // Revoked: final, the directory is not asked either.
        let revoked = ChainedStore(local: Fixed(.rejected(.tokenRevoked)), directory: directory, directoryFirst: true)
        #expect(await revoked.verify(user: "u", password: token) == .rejected(.tokenRevoked))
        #expect(directory.calls.count == 0)
    }
}
