import Foundation
import PortcullisStores
import Testing

/// What only the SQLite store has: a file. (What every store does is ``AccountStoreTests``.)
@Suite struct SQLiteDatabaseTests {
    private let actor = ChangeActor(name: "tester", host: "test-host")

    private func withPath(_ body: (String) async throws -> Void) async throws {
        let path = NSTemporaryDirectory() + "portcullis-test-\(UUID().uuidString).db"
        defer { unlink(path) }
        try await body(path)
    }

    @Test func noPasswordIsAnywhereInTheFile() async throws {
        try await self.withPath { path in
            let store = try await SQLiteStore(path: path, realm: "R")
            try await store.add("a", password: "s3cret-one", groups: [], cost: 4, digest: true, ntlm: true, by: actor)
            try await store.setPassword("a", password: "s3cret-two", cost: 4, by: actor)
            try await store.remove("a", by: actor)
            let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
            #expect(bytes.range(of: Data("s3cret".utf8)) == nil, "a password is in the database file")
        }
    }

    /// Files made before the schema was shared were migrated by GRDB ("v1", "v2-digest"): they
    /// open as they are, with their users, and get the tables added since.
    @Test func aFileOfAnEarlierVersionOpensWithItsUsers() async throws {
        try await self.withPath { path in
            let old = try await SQLiteDatabase.open(path: path)
            let hash = try PasswordHash.bcrypt("old-pass", cost: 4).encoded
            _ = try await old.transaction(
                Self.earlierSchema.map { SQLStatement($0) } + [
                    SQLStatement(
                        "INSERT INTO users (realm, name, hash, created_at, updated_at) VALUES ('R', 'old', ?, 1, 1)",
                        [.text(hash)]
                    )
                ]
            )
            let store = try await SQLiteStore(path: path, realm: "R")
            #expect(await store.verify(user: "old", password: "old-pass") == .accepted(user: "old", validFor: nil))
            try await store.add("new", password: "new-pass", groups: [], cost: 4, digest: true, by: actor)
            #expect(try await store.list().map(\.name) == ["new", "old"])
            try await store.setPassword("old", password: "nt-pass", cost: 4, digest: false, ntlm: true, by: actor)
            #expect(try await store.list().map(\.ntlm) == [false, true])
            let version = try await old.query(SQLStatement("SELECT version FROM schema_version"))
            #expect(version == [SQLRow([.integer(3)])])
        }
    }

    /// The tables as GRDB's migrator made them, with its own bookkeeping.
    private static let earlierSchema = [
        "CREATE TABLE grdb_migrations (identifier TEXT NOT NULL PRIMARY KEY)",
        "INSERT INTO grdb_migrations VALUES ('v1'), ('v2-digest')",
        """
        CREATE TABLE users (realm TEXT NOT NULL, name TEXT NOT NULL, hash TEXT NOT NULL,
            groups TEXT NOT NULL DEFAULT '', created_at DOUBLE NOT NULL, updated_at DOUBLE NOT NULL,
            expires_at DOUBLE, disabled INTEGER NOT NULL DEFAULT 0, previous_hash TEXT,
            previous_valid_until DOUBLE, last_login_at DOUBLE, PRIMARY KEY (realm, name))
        """,
        """
        CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at DOUBLE NOT NULL, actor TEXT NOT NULL,
            host TEXT NOT NULL, action TEXT NOT NULL, realm TEXT NOT NULL, name TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '')
        """,
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "INSERT INTO meta (key, value) VALUES ('version', 1)",
        """
        CREATE TABLE digest (realm TEXT NOT NULL, name TEXT NOT NULL, algorithm TEXT NOT NULL,
            userhash TEXT NOT NULL, ha1 TEXT NOT NULL, previous_ha1 TEXT, PRIMARY KEY (realm, name, algorithm),
            FOREIGN KEY (realm, name) REFERENCES users (realm, name) ON DELETE CASCADE)
        """,
        "CREATE INDEX digest_by_userhash ON digest (realm, algorithm, userhash)",
        "CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
    ]
}
