import Foundation
import NIOConcurrencyHelpers
import NIOPosix
import PortcullisAuth

/// Users in a SQL database: the account rules, written once for SQLite (``SQLiteStore``, the
/// embedded default) and PostgreSQL (`PostgresStore`, shared by any number of proxies). The
/// database only runs statements (``SQLDatabase``); the schema is ``AccountSchema``.
///
/// The rules: a wrong password and an unknown user are one reason, and cost the same (an unknown
/// user is checked against a decoy bcrypt hash); the right password of a disabled or expired
/// account, or a rotated-out previous one, says so; a success says how long it stays valid, so a
/// cache never outlives expiry or grace. Every change is one transaction with its audit row and a
/// bump of `meta.version`, which moves ``generation`` in every proxy that polls ``refresh()``.
///
/// Database I/O is awaited; password hashing (bcrypt, tens of milliseconds of CPU) runs on
/// `threadPool`, never on an event loop or Swift's cooperative pool.
public final class AccountStore<Database: SQLDatabase>: UserAdministration {
    public let database: Database
    public let realm: String
    let threadPool: NIOThreadPool
    let now: @Sendable () -> Date
    private let version = NIOLockedValueBox<(seen: Int64, generation: UInt64)>((0, 1))
    /// Verified against when the user is unknown. Made on first need, so `users` commands and
    /// start-up do not pay a bcrypt for it.
    private let decoyBox = NIOLockedValueBox<PasswordHash?>(nil)
    private let lastAuditBox = NIOLockedValueBox<AuditEntry?>(nil)
    /// The token key and the tokens that can still work (``AccountStore/verifyToken(user:secret:)``).
    let tokenCache = NIOLockedValueBox(TokenCache())

    /// Creates or upgrades the tables, then reads the change counter.
    public init(
        database: Database,
        realm: String = "Portcullis",
        threadPool: NIOThreadPool = .singleton,
        now: @escaping @Sendable () -> Date = { Date() }
    ) async throws {
        self.database = database
        self.realm = realm
        self.threadPool = threadPool
        self.now = now
        do {
            // A database already at this version is not migrated again: its DDL (even `CREATE …
            // IF NOT EXISTS`) needs the tables' owner on PostgreSQL, which a proxy's role with
            // only the rights it uses is not.
            let current = try? await database.query(SQLStatement("SELECT max(version) FROM schema_version"))
            if current?.first?.integer(0) != Int64(AccountSchema.version) {
                _ = try await database.transaction(AccountSchema.migration(database.dialect))
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError("cannot open the user database \(database.location): \(database.describe(error))")
        }
        _ = try? await self.refresh()
    }

    public var location: String { self.database.location }

    // MARK: - CredentialStore

    public var generation: UInt64 { self.version.withLockedValue { $0.generation } }

    /// Reads the change counter; a change made anywhere (this process, another proxy, the
    /// `users` command) moves ``generation``, which drops cached verifications.
    @discardableResult
    public func refresh() async throws -> Bool {
        let rows: [SQLRow]
        do {
            rows = try await self.database.query(SQLStatement("SELECT value FROM meta WHERE key = 'version'"))
        } catch {
            throw StoreError("cannot read the user database \(self.location): \(self.database.describe(error))")
        }
        let seen = rows.first?.integer(0) ?? 0
        await self.flushTokenUse()
        return self.version.withLockedValue { state in
            guard seen != state.seen else { return false }
            state = (seen, state.generation + 1)
            return true
        }
    }

    public func verify(user: String, password: String) async -> VerificationOutcome {
        // A short-lived token as the password: its MAC, then the cached tokens table; no bcrypt.
        if let outcome = await self.verifyToken(user: user, secret: password) { return outcome }
        var statement = SQLStatement(
            "SELECT hash, expires_at, disabled, previous_hash, previous_valid_until FROM users WHERE realm = ? AND name = ?",
            [.text(self.realm), .text(user)]
        )
        statement.failsFast = true
        let row: SQLRow?
        do {
            row = try await self.database.query(statement).first
        } catch {
            return .rejected(.unavailable)
        }
        guard let row, let hash = row.text(0).flatMap(PasswordHash.init) else {
            if let decoy = await self.decoy() { _ = await decoy.verify(password, on: self.threadPool) }
            return .rejected(.invalid)
        }
        let matchedCurrent: Bool
        if await hash.verify(password, on: self.threadPool) {
            matchedCurrent = true
        } else if let previous = row.text(3).flatMap(PasswordHash.init),
            await previous.verify(password, on: self.threadPool)
        {
            matchedCurrent = false
        } else {
            return .rejected(.invalid)
        }
        let now = self.now()
        let standing = Self.standing(disabled: row.bool(2), expires: row.real(1), previousUntil: row.real(4))
        let outcome = standing.outcome(user: user, matchedCurrent: matchedCurrent, now: now)
        if case .accepted = outcome { await self.noteLogin(user, at: now) }
        return outcome
    }

    public func digestSecrets(name: String, isUserhash: Bool, hash: DigestAlgorithm.Hash) async -> DigestLookup {
        let lookup = await self.loginRow(
            """
            SELECT u.name, u.expires_at, u.disabled, u.previous_valid_until, d.ha1, d.previous_ha1,
                   l.ha1, l.previous_ha1
            FROM users u LEFT JOIN digest d
              ON d.realm = u.realm AND d.name = u.name AND d.algorithm = ?
            LEFT JOIN digest_latin1 l
              ON l.realm = d.realm AND l.name = d.name AND l.algorithm = d.algorithm
            WHERE u.realm = ? AND \(isUserhash ? "d.userhash" : "u.name") = ?
            LIMIT 1
            """,
            [.text(hash.rawValue), .text(self.realm), .text(isUserhash ? name.lowercased() : name)]
        )
        guard case .found(let user, let standing, let row) = lookup else {
            return lookup == .unavailable ? .unavailable : .unknownUser
        }
        guard let ha1 = row.text(4) else { return .notEnrolled(user: user) }
        return .found(
            DigestSecrets(
                user: user,
                ha1: ha1,
                previousHA1: row.text(5),
                latin1HA1: row.text(6),
                previousLatin1HA1: row.text(7),
                standing: standing
            )
        )
    }

    public func ntlmSecrets(name: String) async -> NTLMLookup {
        let lookup = await self.loginRow(
            """
            SELECT u.name, u.expires_at, u.disabled, u.previous_valid_until, n.nt_hash, n.previous_nt_hash
            FROM users u LEFT JOIN ntlm n ON n.realm = u.realm AND n.name = u.name
            WHERE u.realm = ? AND u.name = ?
            """,
            [.text(self.realm), .text(name)]
        )
        guard case .found(let user, let standing, let row) = lookup else {
            return lookup == .unavailable ? .unavailable : .unknownUser
        }
        // A value that is no NT hash (edited by hand) opens nothing: as if not enrolled.
        guard let ntHash = row.text(4).flatMap(NTHash.init(hex:)) else { return .notEnrolled(user: user) }
        return .found(
            NTLMSecrets(
                user: user,
                ntHash: ntHash,
                previousNTHash: row.text(5).flatMap(NTHash.init(hex:)),
                standing: standing
            )
        )
    }

    public func account(named name: String) async -> AccountLookup {
        switch await self.loginRow(
            "SELECT name, expires_at, disabled, previous_valid_until FROM users WHERE realm = ? AND name = ?",
            [.text(self.realm), .text(name)]
        ) {
        case .found(let user, let standing, _): return .found(user: user, standing: standing)
        case .unknownUser: return .unknownUser
        case .unavailable: return .unavailable
        }
    }

    /// One user's row on the login path (failing fast: a lost database must not make a login
    /// wait). The query's first four columns are the account's: name, expires_at, disabled,
    /// previous_valid_until; the caller reads its secrets from the columns after them.
    private enum LoginRow: Equatable {
        case found(user: String, standing: AccountStanding, row: SQLRow)
        case unknownUser
        case unavailable
    }

    private func loginRow(_ sql: String, _ arguments: [SQLValue]) async -> LoginRow {
        var statement = SQLStatement(sql, arguments)
        statement.failsFast = true
        let row: SQLRow?
        do {
            row = try await self.database.query(statement).first
        } catch {
            return .unavailable
        }
        guard let row, let user = row.text(0) else { return .unknownUser }
        return .found(
            user: user,
            standing: Self.standing(disabled: row.bool(2), expires: row.real(1), previousUntil: row.real(3)),
            row: row
        )
    }

    /// The Digest nonce key, made on first need and kept in the database, so every proxy on it
    /// accepts the others' nonces (and a restart does not make every client log in again).
    /// Instances that start together all end up with the one key whose insert won.
    public func nonceKey() async -> [UInt8]? {
        await self.sharedSecret(named: "digest-nonce")
    }

    /// A random 32-byte key kept in `secrets` under `name`, made by whichever proxy needs it
    /// first: the insert that wins is the one everybody reads back.
    func sharedSecret(named name: String) async -> [UInt8]? {
        var generator = SystemRandomNumberGenerator()
        let candidate = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let results = try? await self.database.transaction([
            SQLStatement(
                "INSERT INTO secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                [.text(name), .bytes(candidate)]
            ),
            SQLStatement("SELECT value FROM secrets WHERE name = ?", [.text(name)]),
        ])
        return results?.last?.first?.bytes(0)
    }

    /// Records a successful login for `users list`. Best effort: a busy or lost database never
    /// fails a login.
    public func noteLogin(_ user: String, at date: Date) async {
        var statement = SQLStatement(
            "UPDATE users SET last_login_at = ? WHERE realm = ? AND name = ?",
            [.real(date.timeIntervalSince1970), .text(self.realm), .text(user)]
        )
        statement.failsFast = true
        _ = try? await self.database.transaction([statement])
    }

    static func standing(disabled: Bool, expires: Double?, previousUntil: Double?) -> AccountStanding {
        AccountStanding(
            disabled: disabled,
            expiresAt: expires.map(Date.init(timeIntervalSince1970:)),
            previousValidUntil: previousUntil.map(Date.init(timeIntervalSince1970:))
        )
    }

    private func decoy() async -> PasswordHash? {
        if let decoy = self.decoyBox.withLockedValue({ $0 }) { return decoy }
        let made = try? await PasswordHash.bcrypt("decoy-\(UUID().uuidString)", cost: 10, on: self.threadPool)
        return self.decoyBox.withLockedValue { decoy in
            if decoy == nil { decoy = made }
            return decoy
        }
    }

    // MARK: - Changes

    /// The audit entry of the last change this instance made (for the JSON-lines audit file).
    public var lastAudit: AuditEntry? { self.lastAuditBox.withLockedValue { $0 } }

    /// One change, its audit row and the version bump, in one transaction: all or nothing.
    /// Returns the rows of `statements`.
    ///
    /// A change whose deadline passed while a remote database was still working on it may yet
    /// be committed (as with any client that gives up waiting): the error says the database did
    /// not answer in time, and `users list` or `users audit` tells what happened.
    @discardableResult
    func change(
        _ actor: ChangeActor,
        action: String,
        name: String,
        detail: String = "",
        at now: Double,
        _ statements: [SQLStatement]
    ) async throws -> [[SQLRow]] {
        let audit = SQLStatement(
            "INSERT INTO audit (at, actor, host, action, realm, name, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                .real(now), .text(actor.name), .text(actor.host), .text(action), .text(self.realm), .text(name),
                .text(detail),
            ]
        )
        let bump = SQLStatement("UPDATE meta SET value = value + 1 WHERE key = 'version'")
        let results: [[SQLRow]]
        do {
            results = try await self.database.transaction(statements + [audit, bump])
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError("cannot change the user database \(self.location): \(self.database.describe(error))")
        }
        _ = try? await self.refresh()
        let entry = AuditEntry(
            at: Date(timeIntervalSince1970: now),
            actor: actor.name,
            host: actor.host,
            action: action,
            realm: self.realm,
            name: name,
            detail: detail
        )
        self.lastAuditBox.withLockedValue { $0 = entry }
        return Array(results.prefix(statements.count))
    }

    /// Reads for `users` and start-up; errors say which database could not be read.
    func read(_ statement: SQLStatement) async throws -> [SQLRow] {
        do {
            return try await self.database.query(statement)
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError("cannot read the user database \(self.location): \(self.database.describe(error))")
        }
    }
}
