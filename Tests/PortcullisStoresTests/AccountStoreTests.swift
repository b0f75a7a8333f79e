import Foundation
import NIOConcurrencyHelpers
import PortcullisAuth
import PortcullisStores
import Testing

/// The contract of a user database, written once and run against every ``StoreKind``: SQLite
/// and PostgreSQL must behave alike.
@Suite struct AccountStoreTests {
    private let actor = ChangeActor(name: "tester", host: "test-host")

    @Test(arguments: StoreKind.available)
    func addVerifyAndUnknownUsers(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            let store = f.store
            try await store.add("alice", password: "right", cost: 4, by: actor)
            #expect(await store.verify(user: "alice", password: "right") == .accepted(user: "alice", validFor: nil))
            #expect(await store.verify(user: "alice", password: "wrong") == .rejected(.invalid))
            #expect(await store.verify(user: "mallory", password: "right") == .rejected(.invalid))
            await #expect(throws: StoreError("user alice already exists")) {
                try await store.add("alice", password: "x", cost: 4, by: actor)
            }
            await #expect(throws: StoreError.self) {
                try await store.add("bad:name", password: "x", cost: 4, by: actor)
            }
            await #expect(throws: StoreError("no user bob")) { try await store.remove("bob", by: actor) }
            #expect(try await store.userCount == 1)
            #expect(try await store.list().first?.lastLoginAt == f.clock.now, "a login is recorded")
        }
    }

    @Test(arguments: StoreKind.available)
    func usersAreUniquePerRealmNotPerDatabase(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            let other = try await f.open("Other")
            try await f.store.add("same", password: "in-r", cost: 4, by: actor)
            try await other.add("same", password: "in-other", cost: 4, by: actor)
            #expect(await f.store.verify(user: "same", password: "in-other") == .rejected(.invalid))
            #expect(await other.verify(user: "same", password: "in-other") == .accepted(user: "same", validFor: nil))
            #expect(try await other.list().map(\.realm) == ["Other"])
        }
    }

    @Test(arguments: StoreKind.available)
    func digestSecretsOnlyForEnrolledUsersAndFollowEveryPasswordChange(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            let (store, clock) = (f.store, f.clock)
            let md5 = DigestAlgorithm(hash: .md5)
            let sha256 = DigestAlgorithm(hash: .sha256)
            try await store.add("plain", password: "pw", cost: 4, by: actor)
            try await store.add("dig", password: "one", groups: [], cost: 4, digest: true, by: actor)
            #expect(
                await store.digestSecrets(name: "plain", isUserhash: false, hash: .md5) == .notEnrolled(user: "plain")
            )
            #expect(await store.digestSecrets(name: "nobody", isUserhash: false, hash: .md5) == .unknownUser)
            let secrets = try #require(
                await Self.found(store.digestSecrets(name: "dig", isUserhash: false, hash: .sha256))
            )
            #expect(secrets.ha1 == sha256.hex("dig:R:one") && secrets.previousHA1 == nil)
            // RFC 7616 §3.4.4: looked up by H(user:realm), in either case of hex.
            let userhash = md5.hex("dig:R").uppercased()
            let byHash = try #require(
                await Self.found(store.digestSecrets(name: userhash, isUserhash: true, hash: .md5))
            )
            #expect(byHash.user == "dig" && byHash.ha1 == md5.hex("dig:R:one"))
            // An enrolled user stays enrolled: the old password must not live on through Digest.
            try await store.setPassword("dig", password: "two", cost: 4, by: actor)
            let changed = try #require(
                await Self.found(store.digestSecrets(name: "dig", isUserhash: false, hash: .md5))
            )
            #expect(changed.ha1 == md5.hex("dig:R:two") && changed.previousHA1 == nil)
            try await store.rotate("dig", password: "three", grace: 60, cost: 4, by: actor)
            let rotated = try #require(
                await Self.found(store.digestSecrets(name: "dig", isUserhash: false, hash: .md5))
            )
            #expect(rotated.ha1 == md5.hex("dig:R:three") && rotated.previousHA1 == md5.hex("dig:R:two"))
            #expect(
                rotated.standing.outcome(user: "dig", matchedCurrent: false, now: clock.now)
                    == .accepted(user: "dig", validFor: 60)
            )
            clock.advance(61)
            #expect(
                rotated.standing.outcome(user: "dig", matchedCurrent: false, now: clock.now) == .rejected(.rotatedOut)
            )
            // A password change of a user who never enrolled enrols nobody.
            try await store.setPassword("plain", password: "pw2", cost: 4, by: actor)
            #expect(
                await store.digestSecrets(name: "plain", isUserhash: false, hash: .md5) == .notEnrolled(user: "plain")
            )
            try await store.setDisabled("dig", true, by: actor)
            let disabled = try #require(
                await Self.found(store.digestSecrets(name: "dig", isUserhash: false, hash: .md5))
            )
            #expect(
                disabled.standing.outcome(user: "dig", matchedCurrent: true, now: clock.now) == .rejected(.disabled)
            )
            #expect(try await store.list().map(\.digest) == [true, false])
            try await store.remove("dig", by: actor)
            #expect(await store.digestSecrets(name: userhash, isUserhash: true, hash: .md5) == .unknownUser)
            #expect(try await !f.everything().contains(md5.hex("dig:R:three")), "HA1 rows outlived the user")
        }
    }

    /// Java's HttpURLConnection hashes the Latin-1 bytes of `user:realm:password`: a password
    /// whose Latin-1 and UTF-8 bytes differ also keeps that HA1, which follows every change.
    @Test(arguments: StoreKind.available)
    func aLatin1HA1IsKeptOnlyWhenItDiffersAndFollowsThePassword(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            let store = f.store
            let sha256 = DigestAlgorithm(hash: .sha256)
            func latin1(_ text: String) -> String { sha256.hex(bytes: text.unicodeScalars.map { UInt8($0.value) }) }
            func secrets(_ name: String) async throws -> DigestSecrets {
                let lookup = await store.digestSecrets(name: name, isUserhash: false, hash: .sha256)
                guard let found = Self.found(lookup) else { throw StoreError("no Digest secrets for \(name)") }
                return found
            }
            try await store.add("java", password: "pässwörd", groups: [], cost: 4, digest: true, by: actor)
            try await store.add("ascii", password: "plain", groups: [], cost: 4, digest: true, by: actor)
            try await store.add("euro", password: "prix€", groups: [], cost: 4, digest: true, by: actor)
            let java = try await secrets("java")
            #expect(java.ha1 == sha256.hex("java:R:pässwörd"))
            #expect(java.latin1HA1 == latin1("java:R:pässwörd") && java.latin1HA1 != java.ha1)
            // Never stored when the bytes agree, or when there are no Latin-1 bytes.
            #expect(try await secrets("ascii").latin1HA1 == nil)
            #expect(try await secrets("euro").latin1HA1 == nil)
            #expect(try await f.everything().components(separatedBy: latin1("java:R:pässwörd")).count == 2)
            // A rotation keeps the previous one for its grace, like the HA1.
            try await store.rotate("java", password: "nöu", grace: 60, cost: 4, by: actor)
            var rotated = try await secrets("java")
            #expect(rotated.latin1HA1 == latin1("java:R:nöu"))
            #expect(rotated.previousLatin1HA1 == latin1("java:R:pässwörd"))
            // Rotated to a password without one: the current goes, the previous stays for the grace.
            try await store.rotate("java", password: "ascii-now", grace: 60, cost: 4, by: actor)
            rotated = try await secrets("java")
            #expect(rotated.latin1HA1 == nil && rotated.previousLatin1HA1 == latin1("java:R:nöu"))
            // A password change ends any grace: nothing Latin-1 is left.
            try await store.setPassword("java", password: "again", cost: 4, by: actor)
            let changed = try await secrets("java")
            #expect(changed.latin1HA1 == nil && changed.previousLatin1HA1 == nil)
            #expect(try await !f.everything().contains(latin1("java:R:nöu")))
            // A user not enrolled for Digest gets none.
            try await store.add("basic", password: "pässwörd", cost: 4, by: actor)
            #expect(try await !f.everything().contains(latin1("basic:R:pässwörd")))
            try await store.setPassword("ascii", password: "é", cost: 4, by: actor)
            #expect(try await secrets("ascii").latin1HA1 == latin1("ascii:R:é"))
            try await store.remove("ascii", by: actor)
            #expect(try await !f.everything().contains(latin1("ascii:R:é")), "Latin-1 HA1 rows outlived the user")
        }
    }

    /// A client certificate's user: the account as stored, with its standing; nothing else.
    @Test(arguments: StoreKind.available)
    func anAccountIsFoundByItsExactNameWithItsStanding(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            let store = f.store
            try await store.add("carol", password: "pw", cost: 4, by: actor)
            #expect(await store.account(named: "carol") == .found(user: "carol", standing: AccountStanding()))
            #expect(await store.account(named: "Carol") == .unknownUser, "a name matches as stored, as for Basic")
            #expect(await store.account(named: "nobody") == .unknownUser)
            try await store.setDisabled("carol", true, by: actor)
            #expect(
                await store.account(named: "carol") == .found(user: "carol", standing: AccountStanding(disabled: true))
            )
            let end = Date(timeIntervalSince1970: 1_900_000_000)
            try await store.setDisabled("carol", false, by: actor)
            try await store.setExpiry("carol", at: end, by: actor)
            #expect(
                await store.account(named: "carol") == .found(user: "carol", standing: AccountStanding(expiresAt: end))
            )
        }
    }

    @Test(arguments: StoreKind.available)
    func ntHashOnlyForEnrolledUsersAndFollowsEveryPasswordChange(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            let store = f.store
            try await store.add("plain", password: "pw", cost: 4, by: actor)
            try await store.add("nt", password: "one", groups: [], cost: 4, digest: false, ntlm: true, by: actor)
            #expect(await store.ntlmSecrets(name: "plain") == .notEnrolled(user: "plain"))
            #expect(await store.ntlmSecrets(name: "nobody") == .unknownUser)
            #expect(await store.ntlmSecrets(name: "NT") == .unknownUser, "a name matches as stored, as for Basic")
            #expect(
                await store.ntlmSecrets(name: "nt") == .found(NTLMSecrets(user: "nt", ntHash: NTHash(password: "one")))
            )
            // Enrolled for NTLM is not enrolled for Digest.
            #expect(await store.digestSecrets(name: "nt", isUserhash: false, hash: .md5) == .notEnrolled(user: "nt"))
            // An enrolled user stays enrolled: the old password must not live on through NTLM.
            try await store.setPassword("nt", password: "two", cost: 4, by: actor)
            #expect(
                await store.ntlmSecrets(name: "nt") == .found(NTLMSecrets(user: "nt", ntHash: NTHash(password: "two")))
            )
            // A password change of a user who never enrolled enrols nobody; one with --ntlm does.
            try await store.setPassword("plain", password: "pw2", cost: 4, by: actor)
            #expect(await store.ntlmSecrets(name: "plain") == .notEnrolled(user: "plain"))
            try await store.setPassword("plain", password: "pw3", cost: 4, digest: false, ntlm: true, by: actor)
            #expect(await Self.found(store.ntlmSecrets(name: "plain"))?.ntHash == NTHash(password: "pw3"))
            try await store.add("dig", password: "d", groups: [], cost: 4, digest: true, by: actor)
            let listed = try await store.list()
            #expect(listed.map(\.name) == ["dig", "nt", "plain"])
            #expect(listed.map(\.ntlm) == [false, true, true] && listed.map(\.digest) == [true, false, false])
        }
    }

    @Test(arguments: StoreKind.available)
    func rotationKeepsThePreviousNTHashForTheGraceAndAPasswordChangeDropsIt(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            let (store, clock) = (f.store, f.clock)
            try await store.add("nt", password: "one", groups: [], cost: 4, digest: false, ntlm: true, by: actor)
            try await store.rotate("nt", password: "two", grace: 60, cost: 4, by: actor)
            let rotated = try #require(await Self.found(store.ntlmSecrets(name: "nt")))
            #expect(rotated.ntHash == NTHash(password: "two") && rotated.previousNTHash == NTHash(password: "one"))
            #expect(
                rotated.standing.outcome(user: "nt", matchedCurrent: false, now: clock.now)
                    == .accepted(user: "nt", validFor: 60)
            )
            clock.advance(61)
            #expect(
                rotated.standing.outcome(user: "nt", matchedCurrent: false, now: clock.now) == .rejected(.rotatedOut)
            )
            try await store.rotate("nt", password: "three", grace: 60, cost: 4, digest: false, ntlm: true, by: actor)
            #expect(store.lastAudit?.detail == "grace=60s ntlm")
            #expect(await Self.found(store.ntlmSecrets(name: "nt"))?.previousNTHash == NTHash(password: "two"))
            // A password change ends the grace at once, through NTLM as through Basic.
            try await store.setPassword("nt", password: "four", cost: 4, by: actor)
            let changed = try #require(await Self.found(store.ntlmSecrets(name: "nt")))
            #expect(changed == NTLMSecrets(user: "nt", ntHash: NTHash(password: "four")))
        }
    }

    @Test(arguments: StoreKind.available)
    func theNTHashComesWithTheAccountsStanding(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            let (store, clock) = (f.store, f.clock)
            try await store.add("nt", password: "pw", groups: [], cost: 4, digest: false, ntlm: true, by: actor)
            func outcome() async -> VerificationOutcome? {
                await Self.found(store.ntlmSecrets(name: "nt")).map {
                    $0.standing.outcome(user: $0.user, matchedCurrent: true, now: clock.now)
                }
            }
            try await store.setDisabled("nt", true, by: actor)
            #expect(await outcome() == .rejected(.disabled))
            try await store.setDisabled("nt", false, by: actor)
            try await store.setExpiry("nt", at: clock.now.addingTimeInterval(60), by: actor)
            #expect(await outcome() == .accepted(user: "nt", validFor: 60))
            clock.advance(61)
            #expect(await outcome() == .rejected(.expired))
        }
    }

    @Test(arguments: StoreKind.available)
    func removingAUserRemovesItsNTHash(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            let store = f.store
            let hex = NTHash(password: "cascade-pw").hex
            try await store.add("nt", password: "cascade-pw", groups: [], cost: 4, digest: false, ntlm: true, by: actor)
            #expect(try await f.everything().contains(hex))
            try await store.remove("nt", by: actor)
            #expect(await store.ntlmSecrets(name: "nt") == .unknownUser)
            #expect(try await !f.everything().contains(hex), "the NT hash outlived the user")
            // The name taken again is a new account, not enrolled.
            try await store.add("nt", password: "other", cost: 4, by: actor)
            #expect(await store.ntlmSecrets(name: "nt") == .notEnrolled(user: "nt"))
        }
    }

    @Test(arguments: StoreKind.available)
    func aVersion1DatabaseIsUpgradedInPlace(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            try await f.store.add("old", password: "old-pass", cost: 4, by: actor)
            try await f.execute("DROP TABLE ntlm")
            try await f.execute("DROP TABLE digest_latin1")
            try await f.execute("UPDATE schema_version SET version = 1")
            let upgraded = try await f.open("R")
            #expect(try await f.query("SELECT version FROM schema_version") == [SQLRow([.integer(3)])])
            #expect(await upgraded.verify(user: "old", password: "old-pass") == .accepted(user: "old", validFor: nil))
            #expect(await upgraded.ntlmSecrets(name: "old") == .notEnrolled(user: "old"))
            try await upgraded.setPassword("old", password: "new", cost: 4, digest: false, ntlm: true, by: actor)
            #expect(await Self.found(upgraded.ntlmSecrets(name: "old"))?.ntHash == NTHash(password: "new"))
        }
    }

    /// A database already at this version is opened without its DDL, which on PostgreSQL needs
    /// the tables' owner (a proxy's least-privilege role is not): an index dropped by hand stays
    /// dropped until the version says a migration is due.
    @Test(arguments: StoreKind.available)
    func aDatabaseAtThisVersionIsNotMigratedAgain(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            let lookup =
                kind == .sqlite
                ? "SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'tokens_by_name'"
                : "SELECT indexname FROM pg_indexes WHERE indexname = 'tokens_by_name'"
            try await f.execute("DROP INDEX tokens_by_name")
            let reopened = try await f.open("R")
            #expect(try await f.query(lookup).isEmpty)
            try await reopened.add("still", password: "works", cost: 4, by: actor)
            try await f.execute("UPDATE schema_version SET version = 2")
            _ = try await f.open("R")
            #expect(try await f.query(lookup).count == 1)
        }
    }

    /// Version 2 had no Latin-1 HA1s: the table is added, and a Digest user gets one with the
    /// next password that needs it (the old password is not known to make it sooner).
    @Test(arguments: StoreKind.available)
    func aVersion2DatabaseGetsTheLatin1Table(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            try await f.store.add("dig", password: "pässe", groups: [], cost: 4, digest: true, by: actor)
            try await f.execute("DROP TABLE digest_latin1")
            try await f.execute("UPDATE schema_version SET version = 2")
            let upgraded = try await f.open("R")
            #expect(try await f.query("SELECT version FROM schema_version") == [SQLRow([.integer(3)])])
            let before = await Self.found(upgraded.digestSecrets(name: "dig", isUserhash: false, hash: .md5))
            #expect(before?.ha1 == DigestAlgorithm(hash: .md5).hex("dig:R:pässe") && before?.latin1HA1 == nil)
            try await upgraded.setPassword("dig", password: "nöw", cost: 4, by: actor)
            let after = await Self.found(upgraded.digestSecrets(name: "dig", isUserhash: false, hash: .md5))
            #expect(after?.latin1HA1 == DigestAlgorithm(hash: .md5).hex(bytes: [UInt8]("dig:R:n".utf8) + [0xF6, 0x77]))
        }
    }

    @Test(arguments: StoreKind.available)
    func oneNonceKeyForEveryInstanceEvenWhenTheyStartTogether(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            var others: [any UserAdministration] = []
            for _ in 0..<3 { others.append(try await f.open("R")) }
            let keys = await withTaskGroup(of: [UInt8]?.self) { group in
                for other in others { group.addTask { await other.nonceKey() } }
                return await group.reduce(into: []) { $0.append($1) }
            }
            let key = await f.store.nonceKey()
            #expect(key?.count == 32)
            #expect(keys.count == 3 && keys.allSatisfy { $0 == key })
        }
    }

    @Test(arguments: StoreKind.available)
    func rotationKeepsTheOldSecretForTheGraceOnly(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            let (store, clock) = (f.store, f.clock)
            try await store.add("ci", password: "old", cost: 4, by: actor)
            try await store.rotate("ci", password: "new", grace: 900, cost: 4, by: actor)
            #expect(await store.verify(user: "ci", password: "new") == .accepted(user: "ci", validFor: nil))
            #expect(await store.verify(user: "ci", password: "old") == .accepted(user: "ci", validFor: 900))
            #expect(try await store.list().first?.state == "rotating")
            clock.advance(899)
            #expect(await store.verify(user: "ci", password: "old") == .accepted(user: "ci", validFor: 1))
            clock.advance(2)
            #expect(await store.verify(user: "ci", password: "old") == .rejected(.rotatedOut))
            #expect(await store.verify(user: "ci", password: "neither") == .rejected(.invalid))
            #expect(try await store.list().first?.state == "active")
            // A password change ends the grace at once.
            try await store.rotate("ci", password: "newer", grace: 900, cost: 4, by: actor)
            try await store.setPassword("ci", password: "newest", cost: 4, by: actor)
            #expect(await store.verify(user: "ci", password: "newer") == .rejected(.invalid))
        }
    }

    @Test(arguments: StoreKind.available)
    func expiryAndDisableAreReasonsOnlyForTheRightPassword(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            let (store, clock) = (f.store, f.clock)
            try await store.add("u", password: "pw", cost: 4, by: actor)
            try await store.setExpiry("u", at: clock.now.addingTimeInterval(60), by: actor)
            #expect(await store.verify(user: "u", password: "pw") == .accepted(user: "u", validFor: 60))
            clock.advance(61)
            #expect(await store.verify(user: "u", password: "pw") == .rejected(.expired))
            #expect(await store.verify(user: "u", password: "guess") == .rejected(.invalid))
            #expect(try await store.list().first?.state == "expired")
            try await store.setExpiry("u", at: nil, by: actor)
            try await store.setDisabled("u", true, by: actor)
            #expect(await store.verify(user: "u", password: "pw") == .rejected(.disabled))
            #expect(await store.verify(user: "u", password: "guess") == .rejected(.invalid))
            #expect(try await store.list().first?.state == "disabled")
            try await store.setDisabled("u", false, by: actor)
            #expect(await store.verify(user: "u", password: "pw") == .accepted(user: "u", validFor: nil))
        }
    }

    @Test(arguments: StoreKind.available)
    func everyChangeIsAuditedWithoutSecretsAndMovesTheGeneration(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            let store = f.store
            let before = store.generation
            try await store.add(
                "a",
                password: "s3cret-one",
                groups: ["ops"],
                cost: 4,
                digest: true,
                ntlm: true,
                by: actor
            )
            try await store.setPassword("a", password: "s3cret-two", cost: 4, digest: false, ntlm: true, by: actor)
            #expect(try await !f.everything().contains("s3cret"), "a password is in the database")
            try await store.remove("a", by: actor)
            #expect(store.generation > before)
            let audit = try await store.audit()
            #expect(audit.map(\.action) == ["add", "passwd", "remove"])
            #expect(audit.map(\.detail) == ["groups=ops digest ntlm", "ntlm", ""])
            let hashes = ["s3cret-one", "s3cret-two"].map { NTHash(password: $0).hex }
            #expect(!hashes.contains { "\(audit)".contains($0) }, "an NT hash is in the audit trail")
            #expect(audit.allSatisfy { $0.actor == "tester" && $0.host == "test-host" && $0.realm == "R" })
            #expect(store.lastAudit?.action == "remove")
            // A refused change leaves no trace.
            let generation = store.generation
            await #expect(throws: StoreError.self) { try await store.setDisabled("a", true, by: actor) }
            #expect(try await store.audit().count == 3)
            #expect(try await !store.refresh() && store.generation == generation)
            #expect(try await !f.everything().contains("s3cret"), "a password is in the database")
        }
    }

    @Test(arguments: StoreKind.available)
    func anotherInstancesChangeIsNoticedOnRefresh(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            let store = f.store
            let other = try await f.open("R")
            let generation = store.generation
            try await other.add("z", password: "p", cost: 4, by: actor)
            #expect(store.generation == generation)
            #expect(try await store.refresh())
            #expect(store.generation > generation)
            #expect(try await !store.refresh())
            #expect(await store.verify(user: "z", password: "p") == .accepted(user: "z", validFor: nil))
        }
    }

    @Test(arguments: StoreKind.available)
    func importAndExportHtpasswd(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            let store = f.store
            try await store.add("kept", password: "p", cost: 4, by: actor)
            let bcrypt = try PasswordHash.bcrypt("pw", cost: 4).encoded
            let file = HtpasswdFile(contents: "kept:\(bcrypt)\nnew:\(bcrypt)\nsha:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
            let result = try await store.importHtpasswd(file, by: actor)
            #expect(result.imported == 2 && result.skipped == ["kept"])
            #expect(await store.verify(user: "new", password: "pw") == .accepted(user: "new", validFor: nil))
            let exported = try await store.exportHtpasswd()
            #expect(exported.lines.map { $0.prefix(while: { $0 != ":" }) } == ["kept", "new"])
            #expect(exported.skipped == ["sha"])
        }
    }

    @Test(arguments: StoreKind.available)
    func instancesStartingTogetherOnAnEmptyDatabaseAllSucceed(_ kind: StoreKind) async throws {
        try await kind.withEmptyDatabase { open in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<4 { group.addTask { _ = try await open() } }
                try await group.waitForAll()
            }
            // And once more on the existing tables: nothing to do, nothing fails.
            _ = try await open()
        }
    }

    @Test(arguments: StoreKind.available)
    func aSchemaNewerThanThisVersionIsRefused(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            try await f.execute("UPDATE schema_version SET version = 99")
            await #expect(throws: StoreError.self) { _ = try await f.open("R") }
            do {
                _ = try await f.open("R")
            } catch let error as StoreError {
                #expect(error.message.contains("schema version 99, newer than this portcullis understands"))
            }
        }
    }

    private static func found(_ lookup: DigestLookup) -> DigestSecrets? {
        guard case .found(let secrets) = lookup else { return nil }
        return secrets
    }

    private static func found(_ lookup: NTLMLookup) -> NTLMSecrets? {
        guard case .found(let secrets) = lookup else { return nil }
        return secrets
    }
}
