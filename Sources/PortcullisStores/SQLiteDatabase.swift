import Foundation
import GRDB
import NIOPosix

/// The users of an embedded SQLite database (issue 4): the default store.
public typealias SQLiteStore = AccountStore<SQLiteDatabase>

extension AccountStore where Database == SQLiteDatabase {
    /// Opens (or creates) the database file and its tables.
    public convenience init(
        path: String,
        realm: String = "Portcullis",
        threadPool: NIOThreadPool = .singleton,
        now: @escaping @Sendable () -> Date = { Date() }
    ) async throws {
        let database = try await SQLiteDatabase.open(path: path, threadPool: threadPool)
        try await self.init(database: database, realm: realm, threadPool: threadPool, now: now)
    }

    public var path: String { self.database.path }
}

/// A SQLite file through GRDB: statements run on GRDB's own serial queue and are awaited, so
/// no caller's thread waits for the disk.
public final class SQLiteDatabase: SQLDatabase {
    public let path: String
    private let queue: DatabaseQueue

    public var dialect: SQLDialect { .sqlite }
    public var location: String { self.path }

    private init(path: String, queue: DatabaseQueue) {
        self.path = path
        self.queue = queue
    }

    /// Opens the file (creating it when missing) on `threadPool`: opening reads the file's
    /// header, which GRDB does not offer to await.
    public static func open(path: String, threadPool: NIOThreadPool = .singleton) async throws -> SQLiteDatabase {
        var options = Configuration()
        // Another process (`users`, a second proxy) holding the write lock is waited for this long.
        options.busyMode = .timeout(5)
        let configuration = options
        do {
            let queue = try await threadPool.runIfActive { try DatabaseQueue(path: path, configuration: configuration) }
            return SQLiteDatabase(path: path, queue: queue)
        } catch {
            throw StoreError("cannot open the user database \(path): \(Self.describe(error))")
        }
    }

    public func query(_ statement: SQLStatement) async throws -> [SQLRow] {
        try await self.queue.read { db in try Self.run(statement, in: db) }
    }

    /// An IMMEDIATE transaction (GRDB's default for writes): it takes the write lock first, so
    /// another process's change is waited for instead of failing half-way with SQLITE_BUSY.
    public func transaction(_ statements: [SQLStatement]) async throws -> [[SQLRow]] {
        try await self.queue.write { db in
            try statements.map { statement in
                let rows = try Self.run(statement, in: db)
                try statement.check?(rows)
                return rows
            }
        }
    }

    public func describe(_ error: any Error) -> String { Self.describe(error) }

    static func describe(_ error: any Error) -> String {
        if let error = error as? StoreError { return error.message }
        if let db = error as? DatabaseError { return db.message ?? "\(db.resultCode)" }
        return "\(error)"
    }

    private static func run(_ statement: SQLStatement, in db: Database) throws -> [SQLRow] {
        let arguments = StatementArguments(statement.arguments.map(\.databaseValue))
        return try Row.fetchAll(db, sql: statement.sql, arguments: arguments).map { row in
            SQLRow(
                row.databaseValues.map { value in
                    switch value.storage {
                    case .null: return .null
                    case .int64(let number): return .integer(number)
                    case .double(let number): return .real(number)
                    case .string(let text): return .text(text)
                    case .blob(let data): return .bytes(Array(data))
                    }
                }
            )
        }
    }
}

extension SQLValue {
    fileprivate var databaseValue: DatabaseValue {
        switch self {
        case .null: return .null
        case .integer(let number): return number.databaseValue
        case .real(let number): return number.databaseValue
        case .text(let text): return text.databaseValue
        case .bytes(let bytes): return Data(bytes).databaseValue
        case .bool(let flag): return flag.databaseValue
        }
    }
}
