import Foundation
import GRDB
import NIOConcurrencyHelpers
import PortcullisAuth

/// Users in an embedded SQLite database (issue 4): the default store. Everything here blocks
/// (SQLite I/O, bcrypt) and runs on the thread pool or in the `users` command, never on an
/// event loop.
///
/// Schema (one database per realm set): `users` (name unique per realm, bcrypt hash, groups,
/// created/updated, `expires_at`, `disabled`, the previous hash with its own `previous_valid_until`
/// for rotation grace, `last_login_at`), `audit` (who changed what, when, from where — never a
/// secret), `digest` (per algorithm: the user hash and HA1 of users enrolled for Digest, and the
/// previous HA1 during a rotation's grace), `secrets` (the Digest nonce key), and `meta.version`,
/// bumped by every change so that running proxies notice changes made by another process (the
/// `users` command) and drop cached verifications.
public final class SQLiteStore: UserAdministration {
    public let path: String
    public let realm: String
    private let db: DatabaseQueue
    private let now: @Sendable () -> Date
    private let version = NIOLockedValueBox<(seen: Int64, generation: UInt64)>((0, 1))
    /// Verified against when the user is unknown: an unknown user costs what a wrong password
    /// costs. Made on first need, so `users` commands and start-up do not pay a bcrypt for it.
    private let decoyBox = NIOLockedValueBox<PasswordHash?>(nil)

    public init(path: String, realm: String = "Portcullis", now: @escaping @Sendable () -> Date = { Date() }) throws {
        self.path = path
        self.realm = realm
        self.now = now
        var configuration = Configuration()
        configuration.busyMode = .timeout(5)
        do {
            self.db = try DatabaseQueue(path: path, configuration: configuration)
            try Self.migrator.migrate(self.db)
        } catch {
            throw StoreError("cannot open the user database \(path): \(Self.describe(error))")
        }
        _ = try? self.refresh()
    }

    private static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE users (
                        realm TEXT NOT NULL,
                        name TEXT NOT NULL,
                        hash TEXT NOT NULL,
                        groups TEXT NOT NULL DEFAULT '',
                        created_at DOUBLE NOT NULL,
                        updated_at DOUBLE NOT NULL,
                        expires_at DOUBLE,
                        disabled INTEGER NOT NULL DEFAULT 0,
                        previous_hash TEXT,
                        previous_valid_until DOUBLE,
                        last_login_at DOUBLE,
                        PRIMARY KEY (realm, name)
                    );
                    CREATE TABLE audit (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        at DOUBLE NOT NULL,
                        actor TEXT NOT NULL,
                        host TEXT NOT NULL,
                        action TEXT NOT NULL,
                        realm TEXT NOT NULL,
                        name TEXT NOT NULL,
                        detail TEXT NOT NULL DEFAULT ''
                    );
                    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                    INSERT INTO meta (key, value) VALUES ('version', 1);
                    """
            )
        }
        migrator.registerMigration("v2-digest") { db in
            try db.execute(
                sql: """
                    CREATE TABLE digest (
                        realm TEXT NOT NULL,
                        name TEXT NOT NULL,
                        algorithm TEXT NOT NULL,
                        userhash TEXT NOT NULL,
                        ha1 TEXT NOT NULL,
                        previous_ha1 TEXT,
                        PRIMARY KEY (realm, name, algorithm),
                        FOREIGN KEY (realm, name) REFERENCES users (realm, name) ON DELETE CASCADE
                    );
                    CREATE INDEX digest_by_userhash ON digest (realm, algorithm, userhash);
                    CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
                    """
            )
        }
        return migrator
    }

    public var location: String { self.path }

    // MARK: - CredentialStore

    public var generation: UInt64 { self.version.withLockedValue { $0.generation } }

    /// Reads the change counter; a change made anywhere (this process or the `users` command)
    /// moves ``generation``, which drops cached verifications. Blocking.
    @discardableResult
    public func refresh() throws -> Bool {
        let seen = try self.db.read { db in
            try Int64.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'version'") ?? 0
        }
        return self.version.withLockedValue { state in
            guard seen != state.seen else { return false }
            state = (seen, state.generation + 1)
            return true
        }
    }

    public func verify(user: String, password: String) -> VerificationOutcome {
        let row: Row?
        do {
            row = try self.db.read { db in
                try Row.fetchOne(
                    db,
                    sql:
                        "SELECT hash, expires_at, disabled, previous_hash, previous_valid_until FROM users WHERE realm = ? AND name = ?",
                    arguments: [self.realm, user]
                )
            }
        } catch {
            return .rejected(.unavailable)
        }
        guard let row, let hash = PasswordHash(row["hash"] as String) else {
            _ = self.decoy?.verify(password)
            return .rejected(.invalid)
        }
        let matchedCurrent: Bool
        if hash.verify(password) {
            matchedCurrent = true
        } else if let previous = (row["previous_hash"] as String?).flatMap(PasswordHash.init),
            previous.verify(password)
        {
            matchedCurrent = false
        } else {
            return .rejected(.invalid)
        }
        let now = self.now()
        let outcome = Self.standing(row).outcome(user: user, matchedCurrent: matchedCurrent, now: now)
        if case .accepted = outcome { self.noteLogin(user, at: now) }
        return outcome
    }

    public func digestSecrets(name: String, isUserhash: Bool, hash: DigestAlgorithm.Hash) -> DigestLookup {
        do {
            return try self.db.read { db in
                let row = try Row.fetchOne(
                    db,
                    sql: """
                        SELECT u.name, u.expires_at, u.disabled, u.previous_valid_until, d.ha1, d.previous_ha1
                        FROM users u LEFT JOIN digest d
                          ON d.realm = u.realm AND d.name = u.name AND d.algorithm = ?
                        WHERE u.realm = ? AND \(isUserhash ? "d.userhash = ?" : "u.name = ?")
                        """,
                    arguments: [hash.rawValue, self.realm, isUserhash ? name.lowercased() : name]
                )
                guard let row else { return .unknownUser }
                let user: String = row["name"]
                guard let ha1 = row["ha1"] as String? else { return .notEnrolled(user: user) }
                return .found(
                    DigestSecrets(user: user, ha1: ha1, previousHA1: row["previous_ha1"], standing: Self.standing(row))
                )
            }
        } catch {
            return .unavailable
        }
    }

    /// The Digest nonce key, made on first need and kept in the database, so every proxy that
    /// opens this file accepts the others' nonces (and a restart does not make every client
    /// log in again).
    public func nonceKey() -> [UInt8]? {
        try? self.db.write { db in
            if let existing = try Data.fetchOne(db, sql: "SELECT value FROM secrets WHERE name = 'digest-nonce'") {
                return Array(existing)
            }
            var generator = SystemRandomNumberGenerator()
            let key = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
            try db.execute(sql: "INSERT INTO secrets (name, value) VALUES ('digest-nonce', ?)", arguments: [Data(key)])
            return key
        }
    }

    /// Records a successful login for `users list`. Best effort: a busy database never fails
    /// a login.
    public func noteLogin(_ user: String, at now: Date) {
        try? self.db.write { db in
            try db.execute(
                sql: "UPDATE users SET last_login_at = ? WHERE realm = ? AND name = ?",
                arguments: [now.timeIntervalSince1970, self.realm, user]
            )
        }
    }

    private static func standing(_ row: Row) -> AccountStanding {
        AccountStanding(
            disabled: (row["disabled"] as Int64? ?? 0) != 0,
            expiresAt: (row["expires_at"] as Double?).map(Date.init(timeIntervalSince1970:)),
            previousValidUntil: (row["previous_valid_until"] as Double?).map(Date.init(timeIntervalSince1970:))
        )
    }

    private var decoy: PasswordHash? {
        self.decoyBox.withLockedValue { decoy in
            if decoy == nil { decoy = try? PasswordHash.bcrypt("decoy-\(UUID().uuidString)", cost: 10) }
            return decoy
        }
    }

    static func describe(_ error: any Error) -> String {
        if let db = error as? DatabaseError { return db.message ?? "\(db.resultCode)" }
        return "\(error)"
    }

    // MARK: - Administration (the `users` command, the embedded default)

    public typealias Actor = ChangeActor

    public func add(
        _ name: String,
        password: String,
        groups: [String],
        cost: Int,
        digest: Bool,
        by actor: ChangeActor
    ) throws {
        try Self.checkName(name)
        let hash = try PasswordHash.bcrypt(password, cost: cost)
        var detail = groups.isEmpty ? [] : ["groups=\(groups.joined(separator: ","))"]
        if digest { detail.append("digest") }
        try self.change(actor, action: "add", name: name, detail: detail.joined(separator: " ")) { db, now in
            if try Self.exists(db, self.realm, name) { throw StoreError("user \(name) already exists") }
            try db.execute(
                sql: "INSERT INTO users (realm, name, hash, groups, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                arguments: [self.realm, name, hash.encoded, groups.joined(separator: ","), now, now]
            )
            if digest { try self.storeDigest(db, name, password: password, keepPrevious: false) }
        }
    }

    public func setPassword(_ name: String, password: String, cost: Int, digest: Bool, by actor: ChangeActor) throws {
        let hash = try PasswordHash.bcrypt(password, cost: cost)
        try self.change(actor, action: "passwd", name: name, detail: digest ? "digest" : "") { db, now in
            try Self.requireUser(db, self.realm, name)
            try db.execute(
                sql:
                    "UPDATE users SET hash = ?, previous_hash = NULL, previous_valid_until = NULL, updated_at = ? WHERE realm = ? AND name = ?",
                arguments: [hash.encoded, now, self.realm, name]
            )
            if try digest || Self.isDigestEnrolled(db, self.realm, name) {
                try self.storeDigest(db, name, password: password, keepPrevious: false)
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
        let detail = "grace=\(Int(grace))s" + (digest ? " digest" : "")
        try self.change(actor, action: "rotate", name: name, detail: detail) { db, now in
            try Self.requireUser(db, self.realm, name)
            try db.execute(
                sql: """
                    UPDATE users SET previous_hash = hash, previous_valid_until = ?, hash = ?, updated_at = ?
                    WHERE realm = ? AND name = ?
                    """,
                arguments: [now + grace, hash.encoded, now, self.realm, name]
            )
            if try digest || Self.isDigestEnrolled(db, self.realm, name) {
                try self.storeDigest(db, name, password: password, keepPrevious: true)
            }
        }
    }

    /// Writes the HA1 of every supported algorithm; `keepPrevious` moves the current ones to
    /// `previous_ha1` (rotation), else the previous ones are cleared (a password change ends any
    /// grace at once, through Digest as through Basic).
    private func storeDigest(_ db: Database, _ name: String, password: String, keepPrevious: Bool) throws {
        for entry in DigestEnrollment.make(name: name, realm: self.realm, password: password) {
            try db.execute(
                sql: """
                    INSERT INTO digest (realm, name, algorithm, userhash, ha1, previous_ha1) VALUES (?, ?, ?, ?, ?, NULL)
                    ON CONFLICT (realm, name, algorithm) DO UPDATE SET
                        previous_ha1 = CASE WHEN ? THEN digest.ha1 ELSE NULL END,
                        ha1 = excluded.ha1, userhash = excluded.userhash
                    """,
                arguments: [self.realm, name, entry.hash.rawValue, entry.userhash, entry.ha1, keepPrevious]
            )
        }
    }

    private static func isDigestEnrolled(_ db: Database, _ realm: String, _ name: String) throws -> Bool {
        try Bool.fetchOne(
            db,
            sql: "SELECT 1 FROM digest WHERE realm = ? AND name = ? LIMIT 1",
            arguments: [realm, name]
        )
            ?? false
    }

    public func setDisabled(_ name: String, _ disabled: Bool, by actor: ChangeActor) throws {
        try self.change(actor, action: disabled ? "disable" : "enable", name: name) { db, now in
            try Self.requireUser(db, self.realm, name)
            try db.execute(
                sql: "UPDATE users SET disabled = ?, updated_at = ? WHERE realm = ? AND name = ?",
                arguments: [disabled ? 1 : 0, now, self.realm, name]
            )
        }
    }

    public func setExpiry(_ name: String, at date: Date?, by actor: ChangeActor) throws {
        let detail = date.map { "at=\(ISO8601DateFormatter().string(from: $0))" } ?? "never"
        try self.change(actor, action: "expire", name: name, detail: detail) { db, now in
            try Self.requireUser(db, self.realm, name)
            try db.execute(
                sql: "UPDATE users SET expires_at = ?, updated_at = ? WHERE realm = ? AND name = ?",
                arguments: [date?.timeIntervalSince1970, now, self.realm, name]
            )
        }
    }

    public func remove(_ name: String, by actor: ChangeActor) throws {
        try self.change(actor, action: "remove", name: name) { db, _ in
            try Self.requireUser(db, self.realm, name)
            try db.execute(sql: "DELETE FROM users WHERE realm = ? AND name = ?", arguments: [self.realm, name])
        }
    }

    /// Copies every user of an htpasswd file with a hash this store can verify; existing users
    /// are left alone. Returns (imported, skipped names).
    public func importHtpasswd(_ file: HtpasswdFile, by actor: ChangeActor) throws -> (imported: Int, skipped: [String])
    {
        var imported = 0
        var skipped: [String] = []
        try self.change(actor, action: "import", name: "*", detail: "htpasswd") { db, now in
            for (name, hash) in file.entries.sorted(by: { $0.key < $1.key }) {
                if try Self.exists(db, self.realm, name) {
                    skipped.append(name)
                    continue
                }
                try db.execute(
                    sql: "INSERT INTO users (realm, name, hash, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                    arguments: [self.realm, name, hash.encoded, now, now]
                )
                imported += 1
            }
        }
        return (imported, skipped)
    }

    /// `name:hash` lines for every user with a bcrypt hash (what Apache and Squid read).
    public func exportHtpasswd() throws -> (lines: [String], skipped: [String]) {
        let rows = try self.db.read { db in
            try Row.fetchAll(
                db,
                sql: "SELECT name, hash FROM users WHERE realm = ? ORDER BY name",
                arguments: [self.realm]
            )
        }
        var lines: [String] = []
        var skipped: [String] = []
        for row in rows {
            let name: String = row["name"]
            let hash: String = row["hash"]
            if PasswordHash(hash)?.format == .bcrypt { lines.append("\(name):\(hash)") } else { skipped.append(name) }
        }
        return (lines, skipped)
    }

    public func list() throws -> [UserInfo] {
        let now = self.now()
        return try self.db.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT u.*, EXISTS (SELECT 1 FROM digest d WHERE d.realm = u.realm AND d.name = u.name) AS enrolled
                    FROM users u WHERE u.realm = ? ORDER BY u.name
                    """,
                arguments: [self.realm]
            ).map { row in
                let standing = Self.standing(row)
                let groups: String = row["groups"]
                return UserInfo(
                    name: row["name"],
                    realm: row["realm"],
                    groups: groups.split(separator: ",").map(String.init),
                    state: UserInfo.state(standing: standing, now: now),
                    digest: row["enrolled"] as Bool? ?? false,
                    createdAt: Date(timeIntervalSince1970: row["created_at"]),
                    updatedAt: Date(timeIntervalSince1970: row["updated_at"]),
                    expiresAt: standing.expiresAt,
                    previousValidUntil: standing.previousValidUntil.flatMap { $0 > now ? $0 : nil },
                    lastLoginAt: (row["last_login_at"] as Double?).map(Date.init(timeIntervalSince1970:))
                )
            }
        }
    }

    public func audit() throws -> [AuditEntry] {
        try self.db.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM audit ORDER BY id").map { row in
                AuditEntry(
                    at: Date(timeIntervalSince1970: row["at"]),
                    actor: row["actor"],
                    host: row["host"],
                    action: row["action"],
                    realm: row["realm"],
                    name: row["name"],
                    detail: row["detail"]
                )
            }
        }
    }

    public var userCount: Int {
        (try? self.db.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM users WHERE realm = ?", arguments: [self.realm])
        }) ?? 0
    }

    /// One change, its audit line and the version bump, in one transaction: all or nothing.
    private func change(
        _ actor: ChangeActor,
        action: String,
        name: String,
        detail: String = "",
        _ body: (Database, Double) throws -> Void
    ) throws {
        let now = self.now().timeIntervalSince1970
        do {
            try self.db.write { db in
                try body(db, now)
                try db.execute(
                    sql:
                        "INSERT INTO audit (at, actor, host, action, realm, name, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    arguments: [now, actor.name, actor.host, action, self.realm, name, detail]
                )
                try db.execute(sql: "UPDATE meta SET value = value + 1 WHERE key = 'version'")
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError("cannot change the user database \(self.path): \(Self.describe(error))")
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
    }

    /// The audit entry of the last change this instance made (for the JSON-lines audit file).
    public private(set) var lastAudit: AuditEntry? {
        get { self.lastAuditBox.withLockedValue { $0 } }
        set { self.lastAuditBox.withLockedValue { $0 = newValue } }
    }
    private let lastAuditBox = NIOLockedValueBox<AuditEntry?>(nil)

    private static func exists(_ db: Database, _ realm: String, _ name: String) throws -> Bool {
        try Bool.fetchOne(db, sql: "SELECT 1 FROM users WHERE realm = ? AND name = ?", arguments: [realm, name])
            ?? false
    }

    private static func requireUser(_ db: Database, _ realm: String, _ name: String) throws {
        guard try self.exists(db, realm, name) else { throw StoreError("no user \(name)") }
    }

    /// The rule for user names, the same in every writable store.
    public static func checkName(_ name: String) throws {
        guard !name.isEmpty, name.utf8.count <= 256, !name.contains(":"),
            name.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7F })
        else {
            throw StoreError("a user name must be 1-256 printable characters without ':'")
        }
    }
}
