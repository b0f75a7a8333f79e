import Foundation
import NIOConcurrencyHelpers
import PortcullisAuth
import PortcullisStores
import Testing

@testable import PortcullisPostgres

/// The SQLite store's tests against a real PostgreSQL server: the two stores must behave alike.
@Suite(.enabled(if: TestDatabase.base != nil, TestDatabase.skipReason))
struct PostgresStoreTests {
    /// A clock the test moves by hand: expiry and grace are tested without sleeping.
    final class Clock: Sendable {
        private let value = NIOLockedValueBox(Date(timeIntervalSince1970: 1_800_000_000))
        var now: Date { self.value.withLockedValue { $0 } }
        func advance(_ seconds: TimeInterval) { self.value.withLockedValue { $0 += seconds } }
    }

    private let actor = ChangeActor(name: "tester", host: "test-host")

    /// A store on a fresh database of its own; closed when the test is done.
    private func withStore(_ body: (PostgresStore, PostgresURL, Clock) throws -> Void) throws {
        try TestDatabase.withFresh { url in
            let clock = Clock()
            let store = try PostgresStore(url: url, realm: "R", now: { clock.now })
            defer { store.close() }
            try body(store, url, clock)
        }
    }

    @Test func addVerifyAndUnknownUsers() throws {
        try withStore { store, _, _ in
            try store.add("alice", password: "right", cost: 4, by: actor)
            #expect(store.verify(user: "alice", password: "right") == .accepted(user: "alice", validFor: nil))
            #expect(store.verify(user: "alice", password: "wrong") == .rejected(.invalid))
            #expect(store.verify(user: "mallory", password: "right") == .rejected(.invalid))
            #expect(throws: StoreError.self) { try store.add("alice", password: "x", cost: 4, by: actor) }
            #expect(throws: StoreError.self) { try store.add("bad:name", password: "x", cost: 4, by: actor) }
            #expect(store.userCount == 1)
            #expect(try store.list().first?.lastLoginAt != nil, "a login is recorded")
        }
    }

    @Test func usersAreUniquePerRealmNotPerDatabase() throws {
        try withStore { store, url, clock in
            let other = try PostgresStore(url: url, realm: "Other", now: { clock.now })
            defer { other.close() }
            try store.add("same", password: "in-r", cost: 4, by: actor)
            try other.add("same", password: "in-other", cost: 4, by: actor)
            #expect(store.verify(user: "same", password: "in-other") == .rejected(.invalid))
            #expect(other.verify(user: "same", password: "in-other") == .accepted(user: "same", validFor: nil))
            #expect(try other.list().map(\.realm) == ["Other"])
        }
    }

    @Test func digestSecretsOnlyForEnrolledUsersAndFollowEveryPasswordChange() throws {
        try withStore { store, url, clock in
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
            #expect(
                rotated.standing.outcome(user: "dig", matchedCurrent: false, now: clock.now) == .rejected(.rotatedOut)
            )
            try store.setDisabled("dig", true, by: actor)
            guard case .found(let disabled) = store.digestSecrets(name: "dig", isUserhash: false, hash: .md5) else {
                Issue.record("disabled user not found")
                return
            }
            #expect(
                disabled.standing.outcome(user: "dig", matchedCurrent: true, now: clock.now) == .rejected(.disabled)
            )
            #expect(try store.list().map(\.digest) == [true, false])
            try store.remove("dig", by: actor)
            #expect(store.digestSecrets(name: userhash, isUserhash: true, hash: .md5) == .unknownUser)
            #expect(try !TestDatabase.everything(url).contains(md5.hex("dig:R:three")), "HA1 rows outlived the user")
        }
    }

    @Test func oneNonceKeyForEveryInstanceEvenWhenTheyStartTogether() throws {
        try withStore { store, url, _ in
            let others = try (0..<3).map { _ in try PostgresStore(url: url, realm: "R") }
            defer { others.forEach { $0.close() } }
            let keys = NIOLockedValueBox<[[UInt8]?]>([])
            DispatchQueue.concurrentPerform(iterations: others.count) { i in
                let key = others[i].nonceKey()
                keys.withLockedValue { $0.append(key) }
            }
            let key = store.nonceKey()
            #expect(key?.count == 32)
            #expect(keys.withLockedValue { $0 }.allSatisfy { $0 == key })
        }
    }

    @Test func rotationKeepsTheOldSecretForTheGraceOnly() throws {
        try withStore { store, _, clock in
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
    }

    @Test func expiryAndDisableAreReasonsOnlyForTheRightPassword() throws {
        try withStore { store, _, clock in
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
    }

    @Test func everyChangeIsAuditedWithoutSecretsAndMovesTheGeneration() throws {
        try withStore { store, url, _ in
            let before = store.generation
            try store.add("a", password: "s3cret-one", groups: [], cost: 4, digest: true, by: actor)
            try store.setPassword("a", password: "s3cret-two", cost: 4, by: actor)
            #expect(try !TestDatabase.everything(url).contains("s3cret"), "a password is in the database")
            try store.remove("a", by: actor)
            #expect(store.generation > before)
            let audit = try store.audit()
            #expect(audit.map(\.action) == ["add", "passwd", "remove"])
            #expect(audit.allSatisfy { $0.actor == "tester" && $0.host == "test-host" && $0.realm == "R" })
            #expect(store.lastAudit?.action == "remove")
            #expect(try !TestDatabase.everything(url).contains("s3cret"), "a password is in the database")
        }
    }

    @Test func anotherInstancesChangeIsNoticedOnRefresh() throws {
        try withStore { store, url, clock in
            let other = try PostgresStore(url: url, realm: "R", now: { clock.now })
            defer { other.close() }
            let generation = store.generation
            try other.add("z", password: "p", cost: 4, by: actor)
            #expect(store.generation == generation)
            #expect(try store.refresh())
            #expect(store.generation > generation)
            #expect(try !store.refresh())
            #expect(store.verify(user: "z", password: "p") == .accepted(user: "z", validFor: nil))
        }
    }

    @Test func importAndExportHtpasswd() throws {
        try withStore { store, _, _ in
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

    @Test func instancesStartingTogetherOnAnEmptyDatabaseAllSucceed() throws {
        try TestDatabase.withFresh { url in
            let errors = NIOLockedValueBox<[String]>([])
            DispatchQueue.concurrentPerform(iterations: 4) { _ in
                do {
                    try PostgresStore(url: url, realm: "R").close()
                } catch {
                    errors.withLockedValue { $0.append("\(error)") }
                }
            }
            #expect(errors.withLockedValue { $0 } == [])
            // And once more on the existing tables: nothing to do, nothing fails.
            try PostgresStore(url: url, realm: "R").close()
        }
    }
}

/// Errors that need no server: one clear line, the password never in it.
@Suite struct PostgresStoreErrorTests {
    @Test func anUnreachableDatabaseIsOneLineWithoutThePassword() throws {
        let port = try Self.closedPort()
        let url = PostgresURL(
            host: "127.0.0.1",
            port: port,
            user: "portcullis",
            password: "hunter2-secret",
            database: "db"
        )
        do {
            _ = try PostgresStore(url: url, timeout: .seconds(2))
            Issue.record("opened a database nobody serves")
        } catch let error as StoreError {
            #expect(
                error.message
                    == "cannot reach the user database at postgres://portcullis:***@127.0.0.1:\(port)/db: connection refused"
            )
            #expect(!error.message.contains("hunter2"))
        }
    }

    @Test(.enabled(if: TestDatabase.base != nil, TestDatabase.skipReason))
    func aWrongPasswordSaysSoWithoutEitherPassword() throws {
        guard var url = TestDatabase.base else { return }
        url.password = "not-the-right-one"
        do {
            _ = try PostgresStore(url: url)
            Issue.record("logged in with a wrong password")
        } catch let error as StoreError {
            #expect(error.message.contains("password authentication failed"), "\(error.message)")
            #expect(!error.message.contains("not-the-right-one"))
        }
    }

    /// A loopback port nothing listens on (bound, then closed).
    static func closedPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
