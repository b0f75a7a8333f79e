import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PortcullisStores
import PostgresNIO

/// The users of a PostgreSQL database (issue 4), shared by any number of proxies: the same
/// store as ``SQLiteStore`` (``AccountStore``), on postgres-nio.
public typealias PostgresStore = AccountStore<PostgresDatabase>

extension AccountStore where Database == PostgresDatabase {
    /// Connects, creates or upgrades the tables, and reads the change counter.
    /// - Parameters:
    ///   - timeout: the deadline of every query (and of connecting).
    ///   - logger: where losing and regaining the database is reported; `nil` for none (the
    ///     `users` command, whose errors are its one line of output).
    public convenience init(
        url: PostgresURL,
        realm: String = "Portcullis",
        timeout: TimeAmount = .seconds(5),
        logger: Logger? = nil,
        threadPool: NIOThreadPool = .singleton,
        now: @escaping @Sendable () -> Date = { Date() }
    ) async throws {
        let database = try await PostgresDatabase.connect(url: url, timeout: timeout, logger: logger)
        // A failed migration drops the last reference to `database`, which closes it.
        try await self.init(database: database, realm: realm, threadPool: threadPool, now: now)
    }

    public var url: PostgresURL { self.database.url }

    /// Whether the last query (the 2-second poll, ``refresh()``, at least) reached the database:
    /// what `/readyz` reports. Read from memory: `/readyz` is answered on an event loop.
    public var isReachable: Bool { self.database.isReachable }

    /// Stops the connection pool. Idempotent, never waits (also done when the store goes away).
    public func close() { self.database.close() }
}

/// A PostgreSQL database through postgres-nio's `PostgresClient`: a pool of at most 4
/// connections, whose `run()` is a task this object owns, and every query awaited with a
/// deadline (`timeout`, 5 s by default), so a dead database never holds a login for long.
///
/// **Change detection by polling, not LISTEN/NOTIFY.** The store's `refresh()` reads the one
/// `meta` row (a primary-key lookup) and the service calls it every 2 s: that costs one indexed
/// read per proxy every 2 s, works through pgbouncer in transaction-pooling mode (where LISTEN
/// does not), needs no dedicated connection that would itself have to be watched and
/// re-established, and cannot miss a notification sent while a proxy was disconnected.
///
/// **A lost database.** Queries fail after the deadline; the first failure is logged once
/// (never the password) and from then on the login path's statements (``SQLStatement/failsFast``)
/// fail at once instead of waiting, until a query succeeds again (the poll finds out). The
/// store's generation does not move meanwhile, so the proxy keeps serving users it verified
/// before. The pool reconnects by itself with backoff (capped at a minute by postgres-nio), so a
/// restarted server is picked up by the next poll after it accepts connections.
public final class PostgresDatabase: SQLDatabase {
    public let url: PostgresURL
    private let client: PostgresClient
    private let runTask: Task<Void, Never>
    private let timeout: TimeAmount
    private let logger: Logger?
    /// Whether the last query that could tell reached the database.
    private let reachable = NIOLockedValueBox(true)
    private let closed = NIOLockedValueBox(false)

    /// postgres-nio logs nothing of its own: the store logs what an operator needs, once.
    static let quiet = Logger(label: "portcullis.postgres.client", factory: { _ in SwiftLogNoOpLogHandler() })

    public var dialect: SQLDialect { .postgres }
    /// The URL without its password.
    public var location: String { self.url.redacted }
    public var isReachable: Bool { self.reachable.withLockedValue { $0 } }

    /// Checks that the database can be logged into, then starts the pool.
    ///
    /// The check is one direct connection: its errors are the precise reason the store cannot
    /// be used ("connection refused", "password authentication failed …"), where the pool would
    /// only keep retrying.
    public static func connect(
        url: PostgresURL,
        timeout: TimeAmount = .seconds(5),
        logger: Logger? = nil
    ) async throws -> PostgresDatabase {
        var direct = PostgresConnection.Configuration(
            host: url.host,
            port: url.port,
            username: url.user,
            password: url.password,
            database: url.database,
            tls: .disable
        )
        direct.options.connectTimeout = timeout
        let configuration = direct
        do {
            try await Self.withDeadline(timeout) {
                let connection = try await PostgresConnection.connect(
                    on: PostgresClient.defaultEventLoopGroup.any(),
                    configuration: configuration,
                    id: 0,
                    logger: Self.quiet
                )
                try? await connection.close()
            }
        } catch {
            throw StoreError("cannot reach the user database at \(url.redacted): \(Self.describe(error))")
        }
        return PostgresDatabase(url: url, timeout: timeout, logger: logger)
    }

    private init(url: PostgresURL, timeout: TimeAmount, logger: Logger?) {
        self.url = url
        self.timeout = timeout
        self.logger = logger
        var configuration = PostgresClient.Configuration(
            host: url.host,
            port: url.port,
            username: url.user,
            password: url.password,
            database: url.database,
            tls: .disable
        )
        configuration.options.connectTimeout = .nanoseconds(timeout.nanoseconds)
        configuration.options.minimumConnections = 0
        configuration.options.maximumConnections = 4
        configuration.options.additionalStartupParameters = [("application_name", "portcullis")]
        let client = PostgresClient(configuration: configuration, backgroundLogger: Self.quiet)
        self.client = client
        self.runTask = Task { await client.run() }
    }

    deinit { self.close() }

    /// Stops the pool: its connections close in the background. Idempotent, never waits.
    public func close() {
        let wasClosed = self.closed.withLockedValue { closed in
            defer { closed = true }
            return closed
        }
        if !wasClosed { self.runTask.cancel() }
    }

    public func query(_ statement: SQLStatement) async throws -> [SQLRow] {
        let query = Self.postgresQuery(statement)
        return try await self.perform(failsFast: statement.failsFast) { client in
            try await client.query(query, logger: Self.quiet).collect().map(Self.row)
        }
    }

    public func transaction(_ statements: [SQLStatement]) async throws -> [[SQLRow]] {
        let prepared = statements.map { (query: Self.postgresQuery($0), check: $0.check) }
        return try await self.perform(failsFast: statements.contains { $0.failsFast }) { client in
            try await client.withConnection { connection in
                try await connection.query("BEGIN", logger: Self.quiet)
                do {
                    var results: [[SQLRow]] = []
                    for statement in prepared {
                        let rows = try await connection.query(statement.query, logger: Self.quiet).collect()
                            .map(Self.row)
                        try statement.check?(rows)
                        results.append(rows)
                    }
                    try await connection.query("COMMIT", logger: Self.quiet)
                    return results
                } catch {
                    _ = try? await connection.query("ROLLBACK", logger: Self.quiet)
                    throw error
                }
            }
        }
    }

    public func describe(_ error: any Error) -> String { Self.describe(error) }

    /// Runs `body` with the client, bounded by the timeout, and keeps track of whether the
    /// database can be reached. `failsFast`: answer at once while the database is known to be
    /// lost (the login path must not wait for the whole deadline on every request; the 2-second
    /// poll finds out when it is back).
    private func perform<T: Sendable>(
        failsFast: Bool,
        _ body: @escaping @Sendable (PostgresClient) async throws -> T
    ) async throws -> T {
        if failsFast, !self.isReachable { throw StoreError("the user database \(self.location) cannot be reached") }
        let client = self.client
        do {
            let value = try await Self.withDeadline(self.timeout) { try await body(client) }
            self.noteReachable()
            return value
        } catch {
            if Self.isConnectionProblem(error) { self.noteLost(error) }
            throw error
        }
    }

    /// The database answered: if it had been lost, say once that it is back.
    private func noteReachable() {
        let wasLost = self.reachable.withLockedValue { reachable in
            defer { reachable = true }
            return !reachable
        }
        if wasLost { self.logger?.notice("user database reachable again", metadata: ["database": "\(self.location)"]) }
    }

    /// The database did not answer: said once per loss, not per request (never the password:
    /// ``location`` is the redacted URL and no error here quotes the configuration).
    private func noteLost(_ error: any Error) {
        let wasReachable = self.reachable.withLockedValue { reachable in
            defer { reachable = false }
            return reachable
        }
        guard wasReachable else { return }
        self.logger?.error(
            "lost the user database: logins not cached yet are refused until it is back (reconnecting)",
            metadata: ["database": "\(self.location)", "error": "\(Self.describe(error))"]
        )
    }

    // MARK: - Statements and rows

    /// `?` placeholders become `$1`, `$2`, … (the statements hold no `?` inside a literal).
    static func postgresQuery(_ statement: SQLStatement) -> PostgresQuery {
        var sql = ""
        var number = 0
        var inLiteral = false
        for character in statement.sql {
            if character == "'" { inLiteral.toggle() }
            if character == "?", !inLiteral {
                number += 1
                sql += "$\(number)"
            } else {
                sql.append(character)
            }
        }
        var binds = PostgresBindings(capacity: statement.arguments.count)
        for argument in statement.arguments {
            switch argument {
            case .null: binds.appendNull()
            case .integer(let value): binds.append(value)
            case .real(let value): binds.append(value)
            case .text(let value): binds.append(value)
            case .bytes(let value): binds.append(ByteBuffer(bytes: value))
            case .bool(let value): binds.append(value)
            }
        }
        return PostgresQuery(unsafeSQL: sql, binds: binds)
    }

    static func row(_ row: PostgresRow) throws -> SQLRow {
        SQLRow(try row.map(Self.value))
    }

    private static func value(_ cell: PostgresCell) throws -> SQLValue {
        guard cell.bytes != nil else { return .null }
        switch cell.dataType {
        case .bool: return .bool(try cell.decode(Bool.self))
        case .int2: return .integer(Int64(try cell.decode(Int16.self)))
        case .int4: return .integer(Int64(try cell.decode(Int32.self)))
        case .int8: return .integer(try cell.decode(Int64.self))
        case .float4: return .real(Double(try cell.decode(Float.self)))
        case .float8: return .real(try cell.decode(Double.self))
        case .bytea: return .bytes(Array(try cell.decode(ByteBuffer.self).readableBytesView))
        case .void: return .null
        default: return .text(try cell.decode(String.self))
        }
    }
}
