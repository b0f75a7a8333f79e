import Foundation
import NIOConcurrencyHelpers
import PortcullisPostgres
import PortcullisStores
import Testing

/// The stores the contract tests (``AccountStoreTests``) run against: SQLite always, PostgreSQL
/// when a test server is there — always in CI, where
/// `aPostgresServerIsThereWhenTheRunRequiresOne` fails without one.
enum StoreKind: String, Sendable, CustomTestStringConvertible {
    case sqlite, postgres

    static var available: [StoreKind] { TestDatabase.base == nil ? [.sqlite] : [.sqlite, .postgres] }

    var testDescription: String { self.rawValue }
}

/// A clock the test moves by hand: expiry and grace are tested without sleeping.
final class TestClock: Sendable {
    private let value = NIOLockedValueBox(Date(timeIntervalSince1970: 1_800_000_000))
    var now: Date { self.value.withLockedValue { $0 } }
    func advance(_ seconds: TimeInterval) { self.value.withLockedValue { $0 += seconds } }
}

/// One store on a database of its own, and what a contract test needs around it.
struct StoreFixture: Sendable {
    var store: any UserAdministration
    var clock: TestClock
    /// Another instance on the same database (another proxy, or the `users` command).
    var open: @Sendable (_ realm: String) async throws -> any UserAdministration
    /// Every row of every table, as text: to look for what must not be there.
    var everything: @Sendable () async throws -> String
    /// Runs one statement on the database, beside the store.
    var execute: @Sendable (_ sql: String) async throws -> Void
    /// Reads with one statement, beside the store.
    var query: @Sendable (_ sql: String) async throws -> [SQLRow]
}

extension StoreKind {
    /// A store of this kind with the realm `R` on a new, empty database; closed afterwards.
    func withStore(_ body: (StoreFixture) async throws -> Void) async throws {
        let clock = TestClock()
        switch self {
        case .sqlite:
            let path = NSTemporaryDirectory() + "portcullis-test-\(UUID().uuidString).db"
            defer { unlink(path) }
            let store = try await SQLiteStore(path: path, realm: "R", now: { clock.now })
            try await body(
                StoreFixture(
                    store: store,
                    clock: clock,
                    open: { realm in try await SQLiteStore(path: path, realm: realm, now: { clock.now }) },
                    everything: { try await Self.everything(in: store.database) },
                    execute: { sql in _ = try await store.database.transaction([SQLStatement(sql)]) },
                    query: { sql in try await store.database.query(SQLStatement(sql)) }
                )
            )
        case .postgres:
            try await TestDatabase.withFresh { url in
                let opened = NIOLockedValueBox<[PostgresStore]>([])
                let store = try await PostgresStore(url: url, realm: "R", now: { clock.now })
                defer {
                    store.close()
                    for other in opened.withLockedValue({ $0 }) { other.close() }
                }
                try await body(
                    StoreFixture(
                        store: store,
                        clock: clock,
                        open: { realm in
                            let other = try await PostgresStore(url: url, realm: realm, now: { clock.now })
                            opened.withLockedValue { $0.append(other) }
                            return other
                        },
                        everything: { try await Self.everything(in: store.database) },
                        execute: { sql in _ = try await store.database.transaction([SQLStatement(sql)]) },
                        query: { sql in try await store.database.query(SQLStatement(sql)) }
                    )
                )
            }
        }
    }

    /// `open` makes a store on one database that starts empty (no tables); closed afterwards.
    func withEmptyDatabase(
        _ body: (_ open: @escaping @Sendable () async throws -> any UserAdministration) async throws -> Void
    ) async throws {
        switch self {
        case .sqlite:
            let path = NSTemporaryDirectory() + "portcullis-test-\(UUID().uuidString).db"
            defer { unlink(path) }
            try await body { try await SQLiteStore(path: path, realm: "R") }
        case .postgres:
            try await TestDatabase.withFresh { url in
                let opened = NIOLockedValueBox<[PostgresStore]>([])
                defer { for store in opened.withLockedValue({ $0 }) { store.close() } }
                try await body {
                    let store = try await PostgresStore(url: url, realm: "R")
                    opened.withLockedValue { $0.append(store) }
                    return store
                }
            }
        }
    }

    private static func everything(in database: some SQLDatabase) async throws -> String {
        var text = ""
        for table in ["users", "audit", "digest", "digest_latin1", "ntlm", "meta", "secrets", "schema_version"] {
            for row in try await database.query(SQLStatement("SELECT * FROM \(table)")) { text += "\(row.values)\n" }
        }
        return text
    }
}
