import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PortcullisAuth
import PortcullisStores
import PostgresNIO

/// Users in a PostgreSQL database (issue 4), shared by any number of proxies: the same tables,
/// columns and semantics as ``SQLiteStore`` (one transaction per change with its audit row and
/// a bump of `meta.version`; a decoy bcrypt for unknown users; Digest HA1 values per algorithm,
/// which are password-equivalent for the realm).
///
/// **Blocking by design.** Like every ``CredentialStore`` it is called from a thread pool or
/// the `users` command, never from an event loop; postgres-nio's async API is bridged by
/// ``BlockingBridge``, which runs the client on its own event loop and gives every query a
/// deadline (`timeout`, 5 s by default), so a dead database never holds a thread forever.
///
/// **Change detection by polling, not LISTEN/NOTIFY.** ``refresh()`` reads the one `meta`
/// row (a primary-key lookup) and the service calls it every 2 s: that costs one indexed read
/// per proxy every 2 s, works through pgbouncer in transaction-pooling mode (where LISTEN does
/// not), needs no dedicated connection that would itself have to be watched and re-established,
/// and cannot miss a notification sent while a proxy was disconnected: whenever the counter
/// moved, ``generation`` moves and every cached verification is dropped.
///
/// **A lost database.** Queries fail after the deadline; the first failure is logged once
/// (never the password) and from then on ``verify(user:password:)`` and
/// ``digestSecrets(name:isUserhash:hash:)`` answer `unavailable` at once instead of waiting,
/// until a ``refresh()`` succeeds again. ``generation`` does not move meanwhile, so the proxy
/// keeps serving users it verified before. The client's pool reconnects by itself with
/// backoff (capped at a minute by postgres-nio), so a restarted server is picked up by the next
/// poll after it accepts connections.
public final class PostgresStore: UserAdministration {
    public let url: PostgresURL
    public let realm: String
    private let bridge: BlockingBridge
    private let client: PostgresClient
    private let runTask: Task<Void, Never>
    private let now: @Sendable () -> Date
    private let logger: Logger?
    private let version = NIOLockedValueBox<(seen: Int64, generation: UInt64)>((0, 1))
    /// Whether the last query that could tell reached the database.
    private let reachable = NIOLockedValueBox(true)
    private let closed = NIOLockedValueBox(false)
    /// Verified against when the user is unknown, made on first need (as in ``SQLiteStore``).
    private let decoyBox = NIOLockedValueBox<PasswordHash?>(nil)
    private let lastAuditBox = NIOLockedValueBox<AuditEntry?>(nil)

    /// postgres-nio logs nothing of its own: the store logs what an operator needs, once.
    static let quiet = Logger(label: "portcullis.postgres.client", factory: { _ in SwiftLogNoOpLogHandler() })

    /// Connects, creates or upgrades the tables, and reads the change counter. Blocking.
    /// - Parameters:
    ///   - timeout: the deadline of every query (and of connecting).
    ///   - logger: where losing and regaining the database is reported; `nil` for none (the
    ///     `users` command, whose errors are its one line of output).
    public init(
        url: PostgresURL,
        realm: String = "Portcullis",
        timeout: TimeAmount = .seconds(5),
        logger: Logger? = nil,
        now: @escaping @Sendable () -> Date = { Date() }
    ) throws {
        self.url = url
        self.realm = realm
        self.now = now
        self.logger = logger
        self.bridge = BlockingBridge(timeout: timeout)
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
        let client = PostgresClient(
            configuration: configuration,
            eventLoopGroup: self.bridge.group,
            backgroundLogger: Self.quiet
        )
        self.client = client
        self.runTask = self.bridge.start { await client.run() }
        do {
            try self.prepare(configuration)
        } catch {
            self.close()
            throw error
        }
        _ = try? self.refresh()
    }

    deinit { self.close() }

    /// One direct connection for the migration: its errors are the precise reason the store
    /// cannot be used ("connection refused", "password authentication failed …"), where the
    /// pool would only keep retrying.
    private func prepare(_ configuration: PostgresClient.Configuration) throws {
        var direct = PostgresConnection.Configuration(
            host: configuration.host ?? self.url.host,
            port: configuration.port ?? self.url.port,
            username: self.url.user,
            password: self.url.password,
            database: self.url.database,
            tls: .disable
        )
        direct.options.connectTimeout = .nanoseconds(self.bridge.timeout.nanoseconds)
        let configuration = direct
        let loop = self.bridge.loop
        do {
            try self.bridge.run {
                let connection = try await PostgresConnection.connect(
                    on: loop,
                    configuration: configuration,
                    id: 0,
                    logger: Self.quiet
                )
                do {
                    try await PostgresSchema.migrate(connection, logger: Self.quiet)
                } catch {
                    try? await connection.close()
                    throw MigrationFailure(underlying: error)
                }
                try? await connection.close()
            }
        } catch let failure as MigrationFailure {
            if let error = failure.underlying as? StoreError { throw error }
            throw StoreError(
                "cannot prepare the user database at \(self.location): \(Self.describe(failure.underlying))"
            )
        } catch {
            throw StoreError("cannot reach the user database at \(self.location): \(Self.describe(error))")
        }
    }

    private struct MigrationFailure: Error { var underlying: any Error }

    /// Stops the client, then its event loop. Idempotent, never blocks (also done on `deinit`):
    /// the pool closes its connections in the background and the loop stops after it.
    public func close() {
        let wasClosed = self.closed.withLockedValue { closed in
            defer { closed = true }
            return closed
        }
        guard !wasClosed else { return }
        self.runTask.cancel()
        let (runTask, bridge) = (self.runTask, self.bridge)
        Task.detached {
            await runTask.value
            bridge.shutdown()
        }
    }

    /// The URL without its password.
    public var location: String { self.url.redacted }

    /// Whether the last poll (``refresh()``) reached the database: what `/readyz` reports. Read
    /// from memory, because `/readyz` is answered on an event loop that must never wait for the
    /// database.
    public var isReachable: Bool { self.reachable.withLockedValue { $0 } }

    // MARK: - CredentialStore

    public var generation: UInt64 { self.version.withLockedValue { $0.generation } }

    /// Reads the change counter; a change made by any proxy or `users` command moves
    /// ``generation``, which drops cached verifications. Blocking, bounded by the timeout.
    @discardableResult
    public func refresh() throws -> Bool {
        let client = self.client
        let seen: Int64
        do {
            seen = try self.bridge.run {
                var value: Int64 = 0
                for try await row in try await client.query("SELECT value FROM meta WHERE key = 'version'").decode(
                    Int64.self
                ) {
                    value = row
                }
                return value
            }
        } catch {
            self.noteLost(error)
            throw StoreError("cannot read the user database \(self.location): \(Self.describe(error))")
        }
        self.noteReachable()
        return self.version.withLockedValue { state in
            guard seen != state.seen else { return false }
            state = (seen, state.generation + 1)
            return true
        }
    }

    public func verify(user: String, password: String) -> VerificationOutcome {
        let row: UserRow?
        do {
            row = try self.fetchOne(
                """
                SELECT hash, expires_at, disabled, previous_hash, previous_valid_until
                FROM users WHERE realm = \(self.realm) AND name = \(user)
                """,
                fastFail: true
            ) { row in
                let (hash, expires, disabled, previousHash, previousUntil) = try row.decode(
                    (String, Double?, Bool, String?, Double?).self
                )
                return UserRow(
                    hash: hash,
                    previousHash: previousHash,
                    standing: Self.standing(disabled, expires, previousUntil)
                )
            }
        } catch {
            return .rejected(.unavailable)
        }
        guard let row, let hash = PasswordHash(row.hash) else {
            _ = self.decoy?.verify(password)
            return .rejected(.invalid)
        }
        let matchedCurrent: Bool
        if hash.verify(password) {
            matchedCurrent = true
        } else if let previous = row.previousHash.flatMap(PasswordHash.init), previous.verify(password) {
            matchedCurrent = false
        } else {
            return .rejected(.invalid)
        }
        let now = self.now()
        let outcome = row.standing.outcome(user: user, matchedCurrent: matchedCurrent, now: now)
        if case .accepted = outcome { self.noteLogin(user, at: now) }
        return outcome
    }

    public func digestSecrets(name: String, isUserhash: Bool, hash: DigestAlgorithm.Hash) -> DigestLookup {
        let key = isUserhash ? name.lowercased() : name
        let column = isUserhash ? "d.userhash" : "u.name"
        do {
            let found = try self.fetchOne(
                """
                SELECT u.name, u.expires_at, u.disabled, u.previous_valid_until, d.ha1, d.previous_ha1
                FROM users u LEFT JOIN digest d
                  ON d.realm = u.realm AND d.name = u.name AND d.algorithm = \(hash.rawValue)
                WHERE u.realm = \(self.realm) AND \(unescaped: column) = \(key)
                LIMIT 1
                """,
                fastFail: true
            ) { row -> DigestLookup in
                let (user, expires, disabled, previousUntil, ha1, previousHA1) = try row.decode(
                    (String, Double?, Bool, Double?, String?, String?).self
                )
                guard let ha1 else { return .notEnrolled(user: user) }
                let standing = Self.standing(disabled, expires, previousUntil)
                return .found(DigestSecrets(user: user, ha1: ha1, previousHA1: previousHA1, standing: standing))
            }
            return found ?? .unknownUser
        } catch {
            return .unavailable
        }
    }

    /// The Digest nonce key, shared by every proxy on this database. `INSERT … ON CONFLICT DO
    /// NOTHING` then `SELECT`: instances that start together all end up with the one key that
    /// won, whichever it was.
    public func nonceKey() -> [UInt8]? {
        var generator = SystemRandomNumberGenerator()
        let candidate = ByteBuffer(bytes: (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) })
        return try? self.perform { client in
            try await client.query(
                "INSERT INTO secrets (name, value) VALUES ('digest-nonce', \(candidate)) ON CONFLICT (name) DO NOTHING"
            )
            var key: [UInt8]?
            for try await value in try await client.query("SELECT value FROM secrets WHERE name = 'digest-nonce'")
                .decode(ByteBuffer.self)
            {
                key = Array(value.readableBytesView)
            }
            return key
        }
    }

    /// Records a successful login for `users list`. Best effort: a slow or lost database never
    /// fails a login.
    public func noteLogin(_ user: String, at now: Date) {
        let (realm, when) = (self.realm, now.timeIntervalSince1970)
        _ = try? self.perform(fastFail: true) { client in
            try await client.query(
                "UPDATE users SET last_login_at = \(when) WHERE realm = \(realm) AND name = \(user)"
            )
        }
    }

    private struct UserRow: Sendable {
        var hash: String
        var previousHash: String?
        var standing: AccountStanding
    }

    private static func standing(_ disabled: Bool, _ expires: Double?, _ previousUntil: Double?) -> AccountStanding {
        AccountStanding(
            disabled: disabled,
            expiresAt: expires.map(Date.init(timeIntervalSince1970:)),
            previousValidUntil: previousUntil.map(Date.init(timeIntervalSince1970:))
        )
    }

    private var decoy: PasswordHash? {
        self.decoyBox.withLockedValue { decoy in
            if decoy == nil { decoy = try? PasswordHash.bcrypt("decoy-\(UUID().uuidString)", cost: 10) }
            return decoy
        }
    }

    // MARK: - Administration (the `users` command)

    public func add(
        _ name: String,
        password: String,
        groups: [String],
        cost: Int,
        digest: Bool,
        by actor: ChangeActor
    ) throws {
        try SQLiteStore.checkName(name)
        let hash = try PasswordHash.bcrypt(password, cost: cost)
        var detail = groups.isEmpty ? [] : ["groups=\(groups.joined(separator: ","))"]
        if digest { detail.append("digest") }
        let enrollment = digest ? DigestEnrollment.make(name: name, realm: self.realm, password: password) : []
        let (realm, encoded, groupList) = (self.realm, hash.encoded, groups.joined(separator: ","))
        try self.change(actor, action: "add", name: name, detail: detail.joined(separator: " ")) { db, now in
            if try await Self.exists(db, realm, name) { throw StoreError("user \(name) already exists") }
            do {
                try await db.query(
                    """
                    INSERT INTO users (realm, name, hash, groups, created_at, updated_at)
                    VALUES (\(realm), \(name), \(encoded), \(groupList), \(now), \(now))
                    """,
                    logger: Self.quiet
                )
            } catch let error as PSQLError where error.serverInfo?[.sqlState] == "23505" {
                // Added by someone else between the check and the insert.
                throw StoreError("user \(name) already exists")
            }
            try await Self.storeDigest(db, realm, name, enrollment, keepPrevious: false)
        }
    }

    public func setPassword(_ name: String, password: String, cost: Int, digest: Bool, by actor: ChangeActor) throws {
        let hash = try PasswordHash.bcrypt(password, cost: cost)
        let enrollment = DigestEnrollment.make(name: name, realm: self.realm, password: password)
        let (realm, encoded) = (self.realm, hash.encoded)
        try self.change(actor, action: "passwd", name: name, detail: digest ? "digest" : "") { db, now in
            try await Self.requireUser(db, realm, name)
            try await db.query(
                """
                UPDATE users SET hash = \(encoded), previous_hash = NULL, previous_valid_until = NULL, updated_at = \(now)
                WHERE realm = \(realm) AND name = \(name)
                """,
                logger: Self.quiet
            )
            let enrolled = try await Self.isDigestEnrolled(db, realm, name)
            if digest || enrolled {
                try await Self.storeDigest(db, realm, name, enrollment, keepPrevious: false)
            }
        }
    }

    /// A new secret; the old one keeps working until `grace` has passed (through Digest too).
    public func rotate(
        _ name: String,
        password: String,
        grace: TimeInterval,
        cost: Int,
        digest: Bool,
        by actor: ChangeActor
    ) throws {
        let hash = try PasswordHash.bcrypt(password, cost: cost)
        let enrollment = DigestEnrollment.make(name: name, realm: self.realm, password: password)
        let (realm, encoded) = (self.realm, hash.encoded)
        let detail = "grace=\(Int(grace))s" + (digest ? " digest" : "")
        try self.change(actor, action: "rotate", name: name, detail: detail) { db, now in
            try await Self.requireUser(db, realm, name)
            try await db.query(
                """
                UPDATE users SET previous_hash = hash, previous_valid_until = \(now + grace), hash = \(encoded),
                    updated_at = \(now)
                WHERE realm = \(realm) AND name = \(name)
                """,
                logger: Self.quiet
            )
            let enrolled = try await Self.isDigestEnrolled(db, realm, name)
            if digest || enrolled {
                try await Self.storeDigest(db, realm, name, enrollment, keepPrevious: true)
            }
        }
    }

    /// Writes the HA1 of every supported algorithm; `keepPrevious` moves the current ones to
    /// `previous_ha1` (rotation), else the previous ones are cleared (a password change ends any
    /// grace at once, through Digest as through Basic).
    private static func storeDigest(
        _ db: PostgresConnection,
        _ realm: String,
        _ name: String,
        _ enrollment: [DigestEnrollment],
        keepPrevious: Bool
    ) async throws {
        for entry in enrollment {
            try await db.query(
                """
                INSERT INTO digest (realm, name, algorithm, userhash, ha1, previous_ha1)
                VALUES (\(realm), \(name), \(entry.hash.rawValue), \(entry.userhash), \(entry.ha1), NULL)
                ON CONFLICT (realm, name, algorithm) DO UPDATE SET
                    previous_ha1 = CASE WHEN \(keepPrevious) THEN digest.ha1 ELSE NULL END,
                    ha1 = excluded.ha1, userhash = excluded.userhash
                """,
                logger: Self.quiet
            )
        }
    }

    private static func isDigestEnrolled(_ db: PostgresConnection, _ realm: String, _ name: String) async throws
        -> Bool
    {
        try await !db.query(
            "SELECT 1 FROM digest WHERE realm = \(realm) AND name = \(name) LIMIT 1",
            logger: Self.quiet
        ).collect().isEmpty
    }

    public func setDisabled(_ name: String, _ disabled: Bool, by actor: ChangeActor) throws {
        let realm = self.realm
        try self.change(actor, action: disabled ? "disable" : "enable", name: name) { db, now in
            try await Self.requireUser(db, realm, name)
            try await db.query(
                "UPDATE users SET disabled = \(disabled), updated_at = \(now) WHERE realm = \(realm) AND name = \(name)",
                logger: Self.quiet
            )
        }
    }

    public func setExpiry(_ name: String, at date: Date?, by actor: ChangeActor) throws {
        let detail = date.map { "at=\(ISO8601DateFormatter().string(from: $0))" } ?? "never"
        let (realm, expires) = (self.realm, date?.timeIntervalSince1970)
        try self.change(actor, action: "expire", name: name, detail: detail) { db, now in
            try await Self.requireUser(db, realm, name)
            try await db.query(
                "UPDATE users SET expires_at = \(expires), updated_at = \(now) WHERE realm = \(realm) AND name = \(name)",
                logger: Self.quiet
            )
        }
    }

    /// Removes the user; its Digest secrets go with it (`ON DELETE CASCADE`).
    public func remove(_ name: String, by actor: ChangeActor) throws {
        let realm = self.realm
        try self.change(actor, action: "remove", name: name) { db, _ in
            try await Self.requireUser(db, realm, name)
            try await db.query("DELETE FROM users WHERE realm = \(realm) AND name = \(name)", logger: Self.quiet)
        }
    }

    /// Copies every user of an htpasswd file with a hash this store can verify; existing users
    /// are left alone. Returns (imported, skipped names).
    public func importHtpasswd(_ file: HtpasswdFile, by actor: ChangeActor) throws -> (imported: Int, skipped: [String])
    {
        let realm = self.realm
        let entries = file.entries.sorted(by: { $0.key < $1.key }).map { ($0.key, $0.value.encoded) }
        return try self.change(actor, action: "import", name: "*", detail: "htpasswd") { db, now in
            var imported = 0
            var skipped: [String] = []
            for (name, hash) in entries {
                if try await Self.exists(db, realm, name) {
                    skipped.append(name)
                    continue
                }
                try await db.query(
                    """
                    INSERT INTO users (realm, name, hash, created_at, updated_at)
                    VALUES (\(realm), \(name), \(hash), \(now), \(now))
                    """,
                    logger: Self.quiet
                )
                imported += 1
            }
            return (imported, skipped)
        }
    }

    /// `name:hash` lines for every user with a bcrypt hash (what Apache and Squid read).
    public func exportHtpasswd() throws -> (lines: [String], skipped: [String]) {
        let rows = try self.fetchAll(
            "SELECT name, hash FROM users WHERE realm = \(self.realm) ORDER BY name COLLATE \"C\""
        ) { row in try row.decode((String, String).self) }
        var lines: [String] = []
        var skipped: [String] = []
        for (name, hash) in rows {
            if PasswordHash(hash)?.format == .bcrypt { lines.append("\(name):\(hash)") } else { skipped.append(name) }
        }
        return (lines, skipped)
    }

    public func list() throws -> [UserInfo] {
        let now = self.now()
        // COLLATE "C": byte order, as SQLite sorts, whatever the database's locale.
        return try self.fetchAll(
            """
            SELECT u.name, u.realm, u.groups, u.created_at, u.updated_at, u.expires_at, u.disabled,
                   u.previous_valid_until, u.last_login_at,
                   EXISTS (SELECT 1 FROM digest d WHERE d.realm = u.realm AND d.name = u.name) AS enrolled
            FROM users u WHERE u.realm = \(self.realm) ORDER BY u.name COLLATE "C"
            """
        ) { row in
            let (name, realm, groups, created, updated, expires, disabled, previousUntil, lastLogin, enrolled) =
                try row.decode((String, String, String, Double, Double, Double?, Bool, Double?, Double?, Bool).self)
            let standing = Self.standing(disabled, expires, previousUntil)
            return UserInfo(
                name: name,
                realm: realm,
                groups: groups.split(separator: ",").map(String.init),
                state: UserInfo.state(standing: standing, now: now),
                digest: enrolled,
                createdAt: Date(timeIntervalSince1970: created),
                updatedAt: Date(timeIntervalSince1970: updated),
                expiresAt: standing.expiresAt,
                previousValidUntil: standing.previousValidUntil.flatMap { $0 > now ? $0 : nil },
                lastLoginAt: lastLogin.map(Date.init(timeIntervalSince1970:))
            )
        }
    }

    public func audit() throws -> [AuditEntry] {
        try self.fetchAll("SELECT at, actor, host, action, realm, name, detail FROM audit ORDER BY id") { row in
            let (at, actor, host, action, realm, name, detail) = try row.decode(
                (Double, String, String, String, String, String, String).self
            )
            return AuditEntry(
                at: Date(timeIntervalSince1970: at),
                actor: actor,
                host: host,
                action: action,
                realm: realm,
                name: name,
                detail: detail
            )
        }
    }

    public var userCount: Int {
        let count = try? self.fetchOne("SELECT count(*) FROM users WHERE realm = \(self.realm)") { row in
            try row.decode(Int64.self)
        }
        return Int(count.flatMap { $0 } ?? 0)
    }

    /// The audit entry of the last change this instance made (for the JSON-lines audit file).
    public private(set) var lastAudit: AuditEntry? {
        get { self.lastAuditBox.withLockedValue { $0 } }
        set { self.lastAuditBox.withLockedValue { $0 = newValue } }
    }

    /// One change, its audit row and the version bump, in one transaction: all or nothing.
    ///
    /// A change whose deadline passed while the database was still working on it may yet be
    /// committed (as with any client that gives up waiting): the error says the database did
    /// not answer in time, and `users list` or `users audit` tells what happened.
    @discardableResult
    private func change<T: Sendable>(
        _ actor: ChangeActor,
        action: String,
        name: String,
        detail: String = "",
        _ body: @escaping @Sendable (PostgresConnection, Double) async throws -> T
    ) throws -> T {
        let now = self.now().timeIntervalSince1970
        let realm = self.realm
        let result: T
        do {
            result = try self.perform { client in
                try await client.withConnection { db in
                    try await db.query("BEGIN", logger: Self.quiet)
                    do {
                        let value = try await body(db, now)
                        try await db.query(
                            """
                            INSERT INTO audit (at, actor, host, action, realm, name, detail)
                            VALUES (\(now), \(actor.name), \(actor.host), \(action), \(realm), \(name), \(detail))
                            """,
                            logger: Self.quiet
                        )
                        try await db.query(
                            "UPDATE meta SET value = value + 1 WHERE key = 'version'",
                            logger: Self.quiet
                        )
                        try await db.query("COMMIT", logger: Self.quiet)
                        return value
                    } catch {
                        _ = try? await db.query("ROLLBACK", logger: Self.quiet)
                        throw error
                    }
                }
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError("cannot change the user database \(self.location): \(Self.describe(error))")
        }
        _ = try? self.refresh()
        self.lastAudit = AuditEntry(
            at: Date(timeIntervalSince1970: now),
            actor: actor.name,
            host: actor.host,
            action: action,
            realm: self.realm,
            name: name,
            detail: detail
        )
        return result
    }

    private static func exists(_ db: PostgresConnection, _ realm: String, _ name: String) async throws -> Bool {
        try await !db.query("SELECT 1 FROM users WHERE realm = \(realm) AND name = \(name)", logger: Self.quiet)
            .collect().isEmpty
    }

    private static func requireUser(_ db: PostgresConnection, _ realm: String, _ name: String) async throws {
        guard try await Self.exists(db, realm, name) else { throw StoreError("no user \(name)") }
    }

    // MARK: - Queries through the bridge

    /// Runs `body` with the client, bounded by the timeout, and keeps track of whether the
    /// database can be reached. `fastFail`: answer at once while the database is known to be
    /// lost (the login path must not hold a thread-pool thread for the whole deadline on every
    /// request; the 2-second poll finds out when it is back).
    private func perform<T: Sendable>(
        fastFail: Bool = false,
        _ body: @escaping @Sendable (PostgresClient) async throws -> T
    ) throws -> T {
        if fastFail, !self.isReachable { throw StoreError("the user database \(self.location) cannot be reached") }
        let client = self.client
        do {
            let value = try self.bridge.run { try await body(client) }
            self.noteReachable()
            return value
        } catch {
            if Self.isConnectionProblem(error) { self.noteLost(error) }
            throw error
        }
    }

    private func fetchAll<T: Sendable>(
        _ query: PostgresQuery,
        fastFail: Bool = false,
        _ decode: @escaping @Sendable (PostgresRow) throws -> T
    ) throws -> [T] {
        do {
            return try self.perform(fastFail: fastFail) { client in
                try await client.query(query).collect().map(decode)
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError("cannot read the user database \(self.location): \(Self.describe(error))")
        }
    }

    private func fetchOne<T: Sendable>(
        _ query: PostgresQuery,
        fastFail: Bool = false,
        _ decode: @escaping @Sendable (PostgresRow) throws -> T
    ) throws -> T? {
        try self.fetchAll(query, fastFail: fastFail, decode).first
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

    /// Errors that mean "the database is not there" rather than "this query is wrong".
    static func isConnectionProblem(_ error: any Error) -> Bool {
        switch error {
        case is BlockingBridge.TimedOut:
            return true
        case let error as PSQLError:
            switch error.code {
            case .connectionError, .serverClosedConnection, .clientClosedConnection, .uncleanShutdown, .poolClosed,
                .queryCancelled:
                return true
            case .server:
                // Class 08 (connection exception), 57P0x (shut down, cannot connect now), 53 (resources).
                let state = error.serverInfo?[.sqlState] ?? ""
                return state.hasPrefix("08") || state.hasPrefix("57P") || state.hasPrefix("53")
            default:
                return false
            }
        default:
            // postgres-nio's pool reports "cannot connect" with its own error type, which it
            // does not export.
            return String(describing: type(of: error)).contains("ConnectionPoolError")
        }
    }

    /// One line for a message: never the URL, never a password (postgres-nio's own
    /// descriptions are deliberately generic, so the useful part is dug out here).
    static func describe(_ error: any Error) -> String {
        switch error {
        case let error as BlockingBridge.TimedOut:
            return error.description
        case let error as StoreError:
            return error.message
        case let error as PSQLError:
            if let message = error.serverInfo?[.message] { return message }
            if let underlying = error.underlying { return Self.describe(underlying) }
            switch error.code {
            case .serverClosedConnection: return "the server closed the connection"
            case .clientClosedConnection, .uncleanShutdown: return "the connection was closed"
            case .poolClosed: return "the store is closed"
            case .queryCancelled: return "the query was cancelled"
            default: return "database error \(error.code)"
            }
        case let error as NIOConnectionError:
            if let first = error.connectionErrors.first { return Self.describe(first.error) }
            return "cannot resolve \(error.host)"
        case let error as IOError:
            return String(cString: strerror(error.errnoCode)).lowercased()
        case let error as ChannelError:
            if case .connectTimeout = error { return "connecting timed out" }
            return "\(error)"
        case let error as PostgresDecodingError:
            return "unexpected data in column \(error.columnName) (is this a portcullis database?)"
        default:
            if Self.isConnectionProblem(error) { return "cannot connect (retrying)" }
            return "\(error)"
        }
    }
}
