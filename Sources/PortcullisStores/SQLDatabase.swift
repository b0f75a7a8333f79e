/// A value bound to a statement or read from a row: the few kinds the account tables hold.
public enum SQLValue: Sendable, Hashable {
    case null
    case integer(Int64)
    case real(Double)
    case text(String)
    case bytes([UInt8])
    case bool(Bool)
}

/// One row of a result, by column position.
public struct SQLRow: Sendable, Hashable {
    public var values: [SQLValue]

    public init(_ values: [SQLValue]) { self.values = values }

    func text(_ column: Int) -> String? {
        guard case .text(let text) = self.value(column) else { return nil }
        return text
    }

    /// Seconds since 1970 (timestamps), or any number.
    func real(_ column: Int) -> Double? {
        switch self.value(column) {
        case .real(let value): return value
        case .integer(let value): return Double(value)
        default: return nil
        }
    }

    func integer(_ column: Int) -> Int64? {
        switch self.value(column) {
        case .integer(let value): return value
        case .real(let value): return Int64(exactly: value)
        default: return nil
        }
    }

    /// PostgreSQL answers `boolean`, SQLite an integer.
    func bool(_ column: Int) -> Bool {
        switch self.value(column) {
        case .bool(let value): return value
        case .integer(let value): return value != 0
        default: return false
        }
    }

    func bytes(_ column: Int) -> [UInt8]? {
        guard case .bytes(let bytes) = self.value(column) else { return nil }
        return bytes
    }

    private func value(_ column: Int) -> SQLValue {
        column < self.values.count ? self.values[column] : .null
    }
}

/// One statement, written once for every database: `?` placeholders (a runner that numbers its
/// parameters rewrites them) and no literal holding a `?`.
public struct SQLStatement: Sendable {
    public var sql: String
    public var arguments: [SQLValue]
    /// Looks at the statement's rows inside the transaction; what it throws rolls the
    /// transaction back and is what the caller gets (e.g. "no user bob" when an `UPDATE …
    /// RETURNING` found nobody).
    public var check: (@Sendable ([SQLRow]) throws -> Void)?
    /// On the login path: a database known to be lost fails at once instead of making a login
    /// wait for the whole deadline.
    public var failsFast = false

    public init(_ sql: String, _ arguments: [SQLValue] = [], check: (@Sendable ([SQLRow]) throws -> Void)? = nil) {
        self.sql = sql
        self.arguments = arguments
        self.check = check
    }

    /// The same statement, failing when it returns no row.
    func requiringRow(_ error: StoreError) -> SQLStatement {
        var statement = self
        statement.check = { rows in if rows.isEmpty { throw error } }
        return statement
    }
}

/// What a database engine supplies to ``AccountStore``: a read, and statements in one
/// transaction. Everything else — the account rules, the schema, the audit rows, the version
/// bump — is the store's, written once.
public protocol SQLDatabase: Sendable {
    var dialect: SQLDialect { get }
    /// Where the database is, for messages (a path, or a URL without its password).
    var location: String { get }
    /// Runs one statement that only reads.
    func query(_ statement: SQLStatement) async throws -> [SQLRow]
    /// Runs `statements` in one transaction, in order, each statement's `check` on its rows;
    /// any error rolls all of them back. Returns each statement's rows.
    func transaction(_ statements: [SQLStatement]) async throws -> [[SQLRow]]
    /// One line for a message about `error` (never a password).
    func describe(_ error: any Error) -> String
}

/// Where the two databases' SQL differs, in the few places the account tables need: the rest of
/// every statement is the same text for both.
public struct SQLDialect: Sendable {
    /// The column type of a flag, and its false value.
    public var boolean: String
    public var falseValue: String
    public var bytes: String
    /// An audit row's id: numbered by the database, in insertion order.
    public var serialKey: String
    /// Sorts text by bytes whatever the database's locale (what `users list` shows).
    public var byteOrder: String
    /// Taken first in the migration's transaction, so that proxies starting together on an empty
    /// database migrate one after the other; `nil` when the transaction itself serialises them.
    public var migrationLock: String?

    public static let sqlite = SQLDialect(
        boolean: "INTEGER",
        falseValue: "0",
        bytes: "BLOB",
        serialKey: "INTEGER PRIMARY KEY AUTOINCREMENT",
        byteOrder: "COLLATE BINARY",
        // Write transactions are BEGIN IMMEDIATE: the second waits (busy timeout) for the first.
        migrationLock: nil
    )

    public static let postgres = SQLDialect(
        boolean: "boolean",
        falseValue: "false",
        bytes: "bytea",
        serialKey: "bigserial PRIMARY KEY",
        byteOrder: "COLLATE \"C\"",
        // Any number will do as long as every portcullis uses the same one ("portcull").
        migrationLock: "SELECT pg_advisory_xact_lock(\(0x706F_7274_6375_6C6C as Int64))"
    )
}
