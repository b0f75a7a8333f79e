import Foundation
import NIOConcurrencyHelpers
import PortcullisAuth
import Testing

@testable import PortcullisStores

@Suite struct SQLiteStoreTests {
    /// A clock the test moves by hand: expiry and grace are tested without sleeping.
    final class Clock: Sendable {
        private let value = NIOLockedValueBox(Date(timeIntervalSince1970: 1_800_000_000))
        var now: Date { self.value.withLockedValue { $0 } }
        func advance(_ seconds: TimeInterval) { self.value.withLockedValue { $0 += seconds } }
    }

    private let actor = SQLiteStore.Actor(name: "tester", host: "test-host")

    private func makeStore(clock: Clock) throws -> (SQLiteStore, String) {
        let path = NSTemporaryDirectory() + "portcullis-test-\(UUID().uuidString).db"
        return (try SQLiteStore(path: path, realm: "R", now: { clock.now }), path)
    }

    @Test func addVerifyAndUnknownUsers() throws {
        let clock = Clock()
        let (store, path) = try makeStore(clock: clock)
        defer { unlink(path) }
        try store.add("alice", password: "right", cost: 4, by: actor)
        #expect(store.verify(user: "alice", password: "right") == .accepted(user: "alice", validFor: nil))
        #expect(store.verify(user: "alice", password: "wrong") == .rejected(.invalid))
        #expect(store.verify(user: "mallory", password: "right") == .rejected(.invalid))
        #expect(throws: StoreError.self) { try store.add("alice", password: "x", cost: 4, by: actor) }
        #expect(throws: StoreError.self) { try store.add("bad:name", password: "x", cost: 4, by: actor) }
    }

    @Test func digestSecretsOnlyForEnrolledUsersAndFollowEveryPasswordChange() throws {
        let clock = Clock()
        let (store, path) = try makeStore(clock: clock)
        defer { unlink(path) }
        let md5 = DigestAlgorithm(hash: .md5)
        let sha256 = DigestAlgorithm(hash: .sha256)
        try store.add("plain", password: "pw", cost: 4, by: actor)
        try store.add("dig", password: "one", groups: [], cost: 4, digest: true, by: actor)
        #expect(store.digestSecrets(name: "plain", isUserhash: false, hash: .md5) == .notEnrolled(user: "plain"))
        #expect(store.digestSecrets(name: "nobody", isUserhash: false, hash: .md5) == .unknownUser)
        guard case .found(let secrets) = store.digestSecrets(name: "dig", isUserhash: false, hash: .sha256) else {
            Issue.record("no secrets for an enrolled user")
            return
        }
        #expect(secrets.ha1 == sha256.hex("dig:R:one"))
        #expect(secrets.previousHA1 == nil)
        // RFC 7616 §3.4.4: looked up by H(user:realm), in either case of hex.
        let userhash = md5.hex("dig:R").uppercased()
        guard case .found(let byHash) = store.digestSecrets(name: userhash, isUserhash: true, hash: .md5) else {
            Issue.record("userhash lookup failed")
            return
        }
        #expect(byHash.user == "dig" && byHash.ha1 == md5.hex("dig:R:one"))
        // An enrolled user stays enrolled: the old password must not live on through Digest.
        try store.setPassword("dig", password: "two", cost: 4, by: actor)
        guard case .found(let changed) = store.digestSecrets(name: "dig", isUserhash: false, hash: .md5) else {
            Issue.record("enrollment lost on passwd")
            return
        }
        #expect(changed.ha1 == md5.hex("dig:R:two") && changed.previousHA1 == nil)
        try store.rotate("dig", password: "three", grace: 60, cost: 4, by: actor)
        guard case .found(let rotated) = store.digestSecrets(name: "dig", isUserhash: false, hash: .md5) else {
            Issue.record("enrollment lost on rotate")
            return
        }
        #expect(rotated.ha1 == md5.hex("dig:R:three") && rotated.previousHA1 == md5.hex("dig:R:two"))
        #expect(
            rotated.standing.outcome(user: "dig", matchedCurrent: false, now: clock.now)
                == .accepted(user: "dig", validFor: 60)
        )
        clock.advance(61)
        #expect(rotated.standing.outcome(user: "dig", matchedCurrent: false, now: clock.now) == .rejected(.rotatedOut))
        try store.setDisabled("dig", true, by: actor)
        guard case .found(let disabled) = store.digestSecrets(name: "dig", isUserhash: false, hash: .md5) else {
            Issue.record("disabled user not found")
            return
        }
        #expect(disabled.standing.outcome(user: "dig", matchedCurrent: true, now: clock.now) == .rejected(.disabled))
        #expect(try store.list().map(\.digest) == [true, false])
        try store.remove("dig", by: actor)
        #expect(store.digestSecrets(name: userhash, isUserhash: true, hash: .md5) == .unknownUser)
        // One nonce key per database, the same for every instance that opens it.
        let key = store.nonceKey()
        #expect(key?.count == 32)
        #expect(try SQLiteStore(path: path, realm: "R").nonceKey() == key)
    }

    @Test func rotationKeepsTheOldSecretForTheGraceOnly() throws {
        let clock = Clock()
        let (store, path) = try makeStore(clock: clock)
        defer { unlink(path) }
        try store.add("ci", password: "old", cost: 4, by: actor)
        try store.rotate("ci", password: "new", grace: 900, cost: 4, by: actor)
        #expect(store.verify(user: "ci", password: "new") == .accepted(user: "ci", validFor: nil))
        #expect(store.verify(user: "ci", password: "old") == .accepted(user: "ci", validFor: 900))
        clock.advance(899)
        #expect(store.verify(user: "ci", password: "old") == .accepted(user: "ci", validFor: 1))
        clock.advance(2)
        #expect(store.verify(user: "ci", password: "old") == .rejected(.rotatedOut))
        #expect(store.verify(user: "ci", password: "neither") == .rejected(.invalid))
        #expect(try store.list().first?.state == "active")
    }

    @Test func expiryAndDisableAreReasonsOnlyForTheRightPassword() throws {
        let clock = Clock()
        let (store, path) = try makeStore(clock: clock)
        defer { unlink(path) }
        try store.add("u", password: "pw", cost: 4, by: actor)
        try store.setExpiry("u", at: clock.now.addingTimeInterval(60), by: actor)
        #expect(store.verify(user: "u", password: "pw") == .accepted(user: "u", validFor: 60))
        clock.advance(61)
        #expect(store.verify(user: "u", password: "pw") == .rejected(.expired))
        #expect(store.verify(user: "u", password: "guess") == .rejected(.invalid))
        try store.setExpiry("u", at: nil, by: actor)
        try store.setDisabled("u", true, by: actor)
        #expect(store.verify(user: "u", password: "pw") == .rejected(.disabled))
        #expect(store.verify(user: "u", password: "guess") == .rejected(.invalid))
        #expect(try store.list().first?.state == "disabled")
    }

    @Test func everyChangeIsAuditedWithoutSecretsAndMovesTheGeneration() throws {
        let clock = Clock()
        let (store, path) = try makeStore(clock: clock)
        defer { unlink(path) }
        let before = store.generation
        try store.add("a", password: "s3cret-one", cost: 4, by: actor)
        try store.setPassword("a", password: "s3cret-two", cost: 4, by: actor)
        try store.remove("a", by: actor)
        #expect(store.generation > before)
        let audit = try store.audit()
        #expect(audit.map(\.action) == ["add", "passwd", "remove"])
        #expect(audit.allSatisfy { $0.actor == "tester" && $0.host == "test-host" && $0.realm == "R" })
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(bytes.range(of: Data("s3cret".utf8)) == nil, "a password is in the database file")
    }

    @Test func anotherProcessesChangeIsNoticedOnRefresh() throws {
        let clock = Clock()
        let (store, path) = try makeStore(clock: clock)
        defer { unlink(path) }
        let other = try SQLiteStore(path: path, realm: "R", now: { clock.now })
        let generation = store.generation
        try other.add("z", password: "p", cost: 4, by: actor)
        #expect(store.generation == generation)
        #expect(try store.refresh())
        #expect(store.generation > generation)
        #expect(try !store.refresh())
    }

    @Test func importAndExportHtpasswd() throws {
        let clock = Clock()
        let (store, path) = try makeStore(clock: clock)
        defer { unlink(path) }
        try store.add("kept", password: "p", cost: 4, by: actor)
        let bcrypt = try PasswordHash.bcrypt("pw", cost: 4).encoded
        let file = HtpasswdFile(contents: "kept:\(bcrypt)\nnew:\(bcrypt)\nsha:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
        let result = try store.importHtpasswd(file, by: actor)
        #expect(result.imported == 2 && result.skipped == ["kept"])
        #expect(store.verify(user: "new", password: "pw") == .accepted(user: "new", validFor: nil))
        let exported = try store.exportHtpasswd()
        #expect(exported.lines.count == 2 && exported.skipped == ["sha"])
    }
}
