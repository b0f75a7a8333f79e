import Foundation
import PortcullisAuth

/// A short-lived token as `tokens list` shows it: never the token itself.
public struct TokenInfo: Sendable, Hashable, Codable {
    public enum State: String, Sendable, Codable {
        case active, expired, revoked
    }

    public var id: String
    public var user: String
    public var label: String
    public var createdAt: Date
    public var expiresAt: Date
    public var revokedAt: Date?
    public var lastUsedAt: Date?
    public var state: State

    enum CodingKeys: String, CodingKey {
        case id, user, label, state
        case createdAt = "created_at"
        case expiresAt = "expires_at"
        case revokedAt = "revoked_at"
        case lastUsedAt = "last_used_at"
    }
}

/// What a proxy keeps in memory to verify tokens without the database: the tokens that can
/// still work, with their user's standing, as of the store generation it was read at.
struct TokenCache {
    struct Entry {
        var user: String
        var label: String
        var revoked: Bool
        var standing: AccountStanding
    }

    var key: [UInt8]?
    var generation: UInt64 = 0
    var entries: [String: Entry] = [:]
    /// Token ids used since the last write of `last_used_at`, with when.
    var used: [String: Double] = [:]
    var lastFlush: Double = 0
}

// Short-lived tokens (`portcullis tokens`, `POST /v1/tokens`): signed under a key the database
// keeps (`secrets`, `token-key`), recorded in `tokens` for listing and revocation. A token is
// checked by its MAC and an in-memory copy of the tokens table (read again when the store's
// generation moves, so a revocation or a disabled user is seen within one refresh); a token
// issued by another proxy a moment ago is read once by its id.
extension AccountStore {
    /// Longest label: it is shown in logs and lists.
    public static var maximumTokenLabel: Int { 100 }

    /// Issues a token for `user` (who must exist and be neither disabled nor expired), valid
    /// for `ttl` seconds. Returns the token, shown once, and its record.
    ///
    /// Not a change of the users: `meta.version` does not move, so issuing a token per CI job
    /// does not make every proxy drop its cached logins.
    public func issueToken(
        for user: String,
        ttl: TimeInterval,
        label: String,
        by actor: ChangeActor
    ) async throws -> (token: String, info: TokenInfo) {
        guard ttl > 0 else { throw StoreError("a token's lifetime must be positive") }
        try Self.checkLabel(label)
        guard let key = await self.tokenKey() else {
            throw StoreError("cannot read the token key from the user database \(self.location)")
        }
        switch await self.account(named: user) {
        case .unknownUser: throw StoreError("no user \(user)")
        case .unavailable: throw StoreError("cannot read the user database \(self.location)")
        case .found(_, let standing):
            let now = self.now()
            if standing.disabled { throw StoreError("user \(user) is disabled: no token is issued for it") }
            if let expires = standing.expiresAt, expires <= now {
                throw StoreError("user \(user) has expired: no token is issued for it")
            }
        }
        guard user.utf8.count <= AccessToken.maximumUserBytes else {
            throw StoreError("the user name is too long for a token")
        }
        let now = self.now().timeIntervalSince1970
        let expires = UInt64((now + ttl).rounded(.up))
        let token = AccessToken.random(user: user, expires: expires)
        let info = TokenInfo(
            id: token.idText,
            user: user,
            label: label,
            createdAt: Date(timeIntervalSince1970: now),
            expiresAt: Date(timeIntervalSince1970: Double(expires)),
            state: .active
        )
        let statements = [
            SQLStatement(
                "INSERT INTO tokens (realm, id, name, label, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                [.text(self.realm), .text(info.id), .text(user), .text(label), .real(now), .real(Double(expires))]
            ),
            // Housekeeping: records of tokens that ended over 30 days ago go.
            SQLStatement(
                "DELETE FROM tokens WHERE realm = ? AND expires_at < ?",
                [.text(self.realm), .real(now - 30 * 86400)]
            ),
            SQLStatement(
                "INSERT INTO audit (at, actor, host, action, realm, name, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    .real(now), .text(actor.name), .text(actor.host), .text("token-issue"), .text(self.realm),
                    .text(user), .text("id=\(info.id) ttl=\(Int(ttl))s\(label.isEmpty ? "" : " label=\(label)")"),
                ]
            ),
        ]
        do {
            _ = try await self.database.transaction(statements)
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError("cannot change the user database \(self.location): \(self.database.describe(error))")
        }
        return (token.encoded(key: key), info)
    }

    /// Every token recorded (of `user` only, when given), newest first.
    public func tokens(user: String? = nil) async throws -> [TokenInfo] {
        var sql = """
            SELECT id, name, label, created_at, expires_at, revoked_at, last_used_at FROM tokens WHERE realm = ?
            """
        var arguments: [SQLValue] = [.text(self.realm)]
        if let user {
            sql += " AND name = ?"
            arguments.append(.text(user))
        }
        sql += " ORDER BY created_at DESC, id"
        let now = self.now()
        return try await self.read(SQLStatement(sql, arguments)).map { row in
            let expires = Date(timeIntervalSince1970: row.real(4) ?? 0)
            let revoked = row.real(5).map(Date.init(timeIntervalSince1970:))
            return TokenInfo(
                id: row.text(0) ?? "",
                user: row.text(1) ?? "",
                label: row.text(2) ?? "",
                createdAt: Date(timeIntervalSince1970: row.real(3) ?? 0),
                expiresAt: expires,
                revokedAt: revoked,
                lastUsedAt: row.real(6).map(Date.init(timeIntervalSince1970:)),
                state: revoked != nil ? .revoked : expires <= now ? .expired : .active
            )
        }
    }

    /// Revokes the tokens matching every given criterion that are not revoked yet; returns how
    /// many. A change like the users': every proxy refuses them after its next refresh.
    public func revokeTokens(id: String?, label: String?, user: String?, by actor: ChangeActor) async throws -> Int {
        guard id != nil || label != nil || user != nil else {
            throw StoreError("say which tokens to revoke: an id, a label or a user")
        }
        var sql = "UPDATE tokens SET revoked_at = ? WHERE realm = ? AND revoked_at IS NULL"
        let now = self.now().timeIntervalSince1970
        var arguments: [SQLValue] = [.real(now), .text(self.realm)]
        var detail: [String] = []
        if let id {
            sql += " AND id = ?"
            arguments.append(.text(id.lowercased()))
            detail.append("id=\(id.lowercased())")
        }
        if let label {
            sql += " AND label = ?"
            arguments.append(.text(label))
            detail.append("label=\(label)")
        }
        if let user {
            sql += " AND name = ?"
            arguments.append(.text(user))
            detail.append("user=\(user)")
        }
        let rows = try await self.change(
            actor,
            action: "token-revoke",
            name: user ?? "*",
            detail: detail.joined(separator: " "),
            at: now,
            [SQLStatement(sql + " RETURNING id", arguments)]
        )
        return rows.first?.count ?? 0
    }

    /// The token key, made on first need and kept in the database (like the Digest nonce key).
    func tokenKey() async -> [UInt8]? {
        if let key = self.tokenCache.withLockedValue({ $0.key }) { return key }
        let stored = await self.sharedSecret(named: "token-key")
        guard let key = stored, key.count == 32 else { return nil }
        self.tokenCache.withLockedValue { $0.key = key }
        return key
    }

    /// The outcome for a Basic password (or Bearer value) that is a token of this store; `nil`
    /// when `secret` is not one (then it is checked as a password).
    func verifyToken(user: String, secret: String) async -> VerificationOutcome? {
        guard AccessToken.peek(secret) != nil else { return nil }
        guard let key = await self.tokenKey() else { return .rejected(.unavailable) }
        guard let token = AccessToken.verified(secret, key: key) else { return nil }
        guard token.user == user else { return .rejected(.invalid) }
        let now = self.now().timeIntervalSince1970
        if Double(token.expires) <= now { return .rejected(.tokenExpired) }
        let id = token.idText
        guard let entry = await self.tokenEntry(id) else { return .rejected(.unavailable) }
        guard let entry = entry else { return .rejected(.invalid) }
        if entry.revoked { return .rejected(.tokenRevoked) }
        let accountNow = Date(timeIntervalSince1970: now)
        switch entry.standing.outcome(user: user, matchedCurrent: true, now: accountNow) {
        case .rejected(let reason):
            return .rejected(reason)
        case .accepted(_, let validFor, _):
            self.tokenCache.withLockedValue { cache in
                if cache.entries[id] != nil { cache.used[id] = now }
            }
            let remaining = Double(token.expires) - now
            return .accepted(
                user: user,
                validFor: min(validFor ?? remaining, remaining),
                token: entry.label.isEmpty ? "id=\(id)" : entry.label
            )
        }
    }

    /// The cached entry of a token id: `.some(nil)` when the store has no such token, `nil`
    /// when the store cannot be read.
    private func tokenEntry(_ id: String) async -> TokenCache.Entry?? {
        let generation = self.generation
        if self.tokenCache.withLockedValue({ $0.generation }) != generation {
            guard let entries = await self.readTokens(id: nil) else { return nil }
            self.tokenCache.withLockedValue { cache in
                cache.entries = entries
                cache.generation = generation
                cache.used = cache.used.filter { entries[$0.key] != nil }
            }
        }
        if let entry = self.tokenCache.withLockedValue({ $0.entries[id] }) { return .some(entry) }
        // Issued since the cache was read (perhaps by another proxy): read this one.
        guard let found = await self.readTokens(id: id) else { return nil }
        guard let entry = found[id] else { return .some(nil) }
        self.tokenCache.withLockedValue { $0.entries[id] = entry }
        return .some(entry)
    }

    /// Tokens that can still work (one id, or all), with their user's standing.
    private func readTokens(id: String?) async -> [String: TokenCache.Entry]? {
        var sql = """
            SELECT t.id, t.name, t.label, t.revoked_at, u.disabled, u.expires_at, u.previous_valid_until
            FROM tokens t JOIN users u ON u.realm = t.realm AND u.name = t.name
            WHERE t.realm = ? AND t.expires_at > ?
            """
        var arguments: [SQLValue] = [.text(self.realm), .real(self.now().timeIntervalSince1970)]
        if let id {
            sql += " AND t.id = ?"
            arguments.append(.text(id))
        }
        var statement = SQLStatement(sql, arguments)
        statement.failsFast = true
        guard let rows = try? await self.database.query(statement) else { return nil }
        var entries: [String: TokenCache.Entry] = [:]
        for row in rows {
            guard let id = row.text(0), let user = row.text(1) else { continue }
            entries[id] = TokenCache.Entry(
                user: user,
                label: row.text(2) ?? "",
                revoked: row.real(3) != nil,
                standing: Self.standing(disabled: row.bool(4), expires: row.real(5), previousUntil: row.real(6))
            )
        }
        return entries
    }

    /// Writes when tokens were last used, at most every 30 s (not a change: no version bump,
    /// no audit row). Best effort.
    func flushTokenUse() async {
        let now = self.now().timeIntervalSince1970
        let used: [String: Double] = self.tokenCache.withLockedValue { cache in
            guard !cache.used.isEmpty, now - cache.lastFlush >= 30 else { return [:] }
            defer {
                cache.used = [:]
                cache.lastFlush = now
            }
            return cache.used
        }
        guard !used.isEmpty else { return }
        let statements = used.map { id, at in
            var statement = SQLStatement(
                "UPDATE tokens SET last_used_at = ? WHERE realm = ? AND id = ?",
                [.real(at), .text(self.realm), .text(id)]
            )
            statement.failsFast = true
            return statement
        }
        _ = try? await self.database.transaction(statements)
    }

    static func checkLabel(_ label: String) throws {
        guard label.count <= Self.maximumTokenLabel,
            label.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7F })
        else {
            throw StoreError("a token label must be at most \(Self.maximumTokenLabel) printable characters")
        }
    }
}
