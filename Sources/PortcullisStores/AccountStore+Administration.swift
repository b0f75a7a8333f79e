import Foundation
import PortcullisAuth

// `portcullis users …` and the embedded default's first run: every change is one transaction
// (``AccountStore/change(_:action:name:detail:at:_:)``), the rules of each as SQL that reads the
// same to both databases. "No such user" and "already exists" are decided inside the
// transaction (`RETURNING` rows), never by a read before it that another process could outdate.
extension AccountStore {
    public func add(
        _ name: String,
        password: String,
        groups: [String],
        cost: Int,
        digest: Bool,
        ntlm: Bool,
        by actor: ChangeActor
    ) async throws {
        try Self.checkName(name)
        let hash = try await PasswordHash.bcrypt(password, cost: cost, on: self.threadPool)
        let detail =
            (groups.isEmpty ? [] : ["groups=\(groups.joined(separator: ","))"])
            + Self.enrolments(digest: digest, ntlm: ntlm)
        let now = self.now().timeIntervalSince1970
        let groupList = groups.joined(separator: ",")
        let insert = SQLStatement(
            """
            INSERT INTO users (realm, name, hash, groups, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)
            ON CONFLICT (realm, name) DO NOTHING RETURNING name
            """,
            [.text(self.realm), .text(name), .text(hash.encoded), .text(groupList), .real(now), .real(now)]
        ).requiringRow(StoreError("user \(name) already exists"))
        var secrets = digest ? self.writeDigestSecrets(name, password: password, enroll: true, keepPrevious: false) : []
        if ntlm { secrets.append(self.writeNTHash(name, password: password, enroll: true, keepPrevious: false)) }
        let detailText = detail.joined(separator: " ")
        try await self.change(actor, action: "add", name: name, detail: detailText, at: now, [insert] + secrets)
    }

    public func setPassword(
        _ name: String,
        password: String,
        cost: Int,
        digest: Bool,
        ntlm: Bool,
        by actor: ChangeActor
    ) async throws {
        let hash = try await PasswordHash.bcrypt(password, cost: cost, on: self.threadPool)
        let now = self.now().timeIntervalSince1970
        let update = SQLStatement(
            """
            UPDATE users SET hash = ?, previous_hash = NULL, previous_valid_until = NULL, updated_at = ?
            WHERE realm = ? AND name = ? RETURNING name
            """,
            [.text(hash.encoded), .real(now), .text(self.realm), .text(name)]
        ).requiringRow(StoreError("no user \(name)"))
        let secrets =
            self.writeDigestSecrets(name, password: password, enroll: digest, keepPrevious: false)
            + [self.writeNTHash(name, password: password, enroll: ntlm, keepPrevious: false)]
        try await self.change(
            actor,
            action: "passwd",
            name: name,
            detail: Self.enrolments(digest: digest, ntlm: ntlm).joined(separator: " "),
            at: now,
            [update] + secrets
        )
    }

    /// A new secret; the old one keeps working until `grace` has passed (through Digest and NTLM
    /// too).
    public func rotate(
        _ name: String,
        password: String,
        grace: TimeInterval,
        cost: Int,
        digest: Bool,
        ntlm: Bool,
        by actor: ChangeActor
    ) async throws {
        let hash = try await PasswordHash.bcrypt(password, cost: cost, on: self.threadPool)
        let now = self.now().timeIntervalSince1970
        let update = SQLStatement(
            """
            UPDATE users SET previous_hash = hash, previous_valid_until = ?, hash = ?, updated_at = ?
            WHERE realm = ? AND name = ? RETURNING name
            """,
            [.real(now + grace), .text(hash.encoded), .real(now), .text(self.realm), .text(name)]
        ).requiringRow(StoreError("no user \(name)"))
        let secrets =
            self.writeDigestSecrets(name, password: password, enroll: digest, keepPrevious: true)
            + [self.writeNTHash(name, password: password, enroll: ntlm, keepPrevious: true)]
        let detail = (["grace=\(Int(grace))s"] + Self.enrolments(digest: digest, ntlm: ntlm)).joined(separator: " ")
        try await self.change(actor, action: "rotate", name: name, detail: detail, at: now, [update] + secrets)
    }

    /// The HA1 of every algorithm, written for a user enrolled for Digest — already, or now
    /// (`enroll`): an enrolled user stays enrolled on every password change, so an old password
    /// never lives on through Digest. `keepPrevious` moves the current HA1 to `previous_ha1`
    /// (rotation), else the previous one is cleared (a password change ends any grace at once,
    /// through Digest as through Basic).
    private func writeDigestSecrets(_ name: String, password: String, enroll: Bool, keepPrevious: Bool)
        -> [SQLStatement]
    {
        DigestEnrollment.make(name: name, realm: self.realm, password: password).flatMap { entry in
            [
                self.writeHA1(name, entry, enroll: enroll, keepPrevious: keepPrevious),
                self.writeLatin1HA1(name, entry, keepPrevious: keepPrevious),
            ]
        }
    }

    private func writeHA1(_ name: String, _ entry: DigestEnrollment, enroll: Bool, keepPrevious: Bool)
        -> SQLStatement
    {
        SQLStatement(
            """
            INSERT INTO digest (realm, name, algorithm, userhash, ha1, previous_ha1)
            SELECT ?, ?, ?, ?, ?, NULL
            WHERE ? OR EXISTS (SELECT 1 FROM digest WHERE realm = ? AND name = ?)
            ON CONFLICT (realm, name, algorithm) DO UPDATE SET
                previous_ha1 = CASE WHEN ? THEN digest.ha1 ELSE NULL END,
                ha1 = excluded.ha1, userhash = excluded.userhash
            """,
            [
                .text(self.realm), .text(name), .text(entry.hash.rawValue), .text(entry.userhash), .text(entry.ha1),
                .bool(enroll), .text(self.realm), .text(name), .bool(keepPrevious),
            ]
        )
    }

    /// The Latin-1 HA1 follows the HA1 (run after it, for an enrolled user only): written when the
    /// new password has one, else dropped; a rotation keeps the previous one, as for the HA1.
    private func writeLatin1HA1(_ name: String, _ entry: DigestEnrollment, keepPrevious: Bool) -> SQLStatement {
        let key: [SQLValue] = [.text(self.realm), .text(name), .text(entry.hash.rawValue)]
        guard let latin1 = entry.latin1HA1 else {
            return keepPrevious
                ? SQLStatement(
                    """
                    UPDATE digest_latin1 SET previous_ha1 = ha1, ha1 = NULL
                    WHERE realm = ? AND name = ? AND algorithm = ?
                    """,
                    key
                )
                : SQLStatement("DELETE FROM digest_latin1 WHERE realm = ? AND name = ? AND algorithm = ?", key)
        }
        return SQLStatement(
            """
            INSERT INTO digest_latin1 (realm, name, algorithm, ha1, previous_ha1)
            SELECT ?, ?, ?, ?, NULL
            WHERE EXISTS (SELECT 1 FROM digest WHERE realm = ? AND name = ? AND algorithm = ?)
            ON CONFLICT (realm, name, algorithm) DO UPDATE SET
                previous_ha1 = CASE WHEN ? THEN digest_latin1.ha1 ELSE NULL END,
                ha1 = excluded.ha1
            """,
            key + [.text(latin1)] + key + [.bool(keepPrevious)]
        )
    }

    /// The NT hash, written for a user enrolled for NTLM — already, or now (`enroll`), with the
    /// same rules as ``writeDigestSecrets(_:password:enroll:keepPrevious:)``: an enrolled user's
    /// NT hash follows every password change, and only a rotation keeps the previous one.
    private func writeNTHash(_ name: String, password: String, enroll: Bool, keepPrevious: Bool) -> SQLStatement {
        SQLStatement(
            """
            INSERT INTO ntlm (realm, name, nt_hash, previous_nt_hash)
            SELECT ?, ?, ?, NULL
            WHERE ? OR EXISTS (SELECT 1 FROM ntlm WHERE realm = ? AND name = ?)
            ON CONFLICT (realm, name) DO UPDATE SET
                previous_nt_hash = CASE WHEN ? THEN ntlm.nt_hash ELSE NULL END,
                nt_hash = excluded.nt_hash
            """,
            [
                .text(self.realm), .text(name), .text(NTHash(password: password).hex),
                .bool(enroll), .text(self.realm), .text(name), .bool(keepPrevious),
            ]
        )
    }

    /// What an audit row says was asked for besides the password: the schemes, never a secret.
    private static func enrolments(digest: Bool, ntlm: Bool) -> [String] {
        (digest ? ["digest"] : []) + (ntlm ? ["ntlm"] : [])
    }

    public func setDisabled(_ name: String, _ disabled: Bool, by actor: ChangeActor) async throws {
        let now = self.now().timeIntervalSince1970
        let update = SQLStatement(
            "UPDATE users SET disabled = ?, updated_at = ? WHERE realm = ? AND name = ? RETURNING name",
            [.bool(disabled), .real(now), .text(self.realm), .text(name)]
        ).requiringRow(StoreError("no user \(name)"))
        try await self.change(actor, action: disabled ? "disable" : "enable", name: name, at: now, [update])
    }

    public func setExpiry(_ name: String, at date: Date?, by actor: ChangeActor) async throws {
        let detail = date.map { "at=\(ISO8601DateFormatter().string(from: $0))" } ?? "never"
        let now = self.now().timeIntervalSince1970
        let update = SQLStatement(
            "UPDATE users SET expires_at = ?, updated_at = ? WHERE realm = ? AND name = ? RETURNING name",
            [date.map { .real($0.timeIntervalSince1970) } ?? .null, .real(now), .text(self.realm), .text(name)]
        ).requiringRow(StoreError("no user \(name)"))
        try await self.change(actor, action: "expire", name: name, detail: detail, at: now, [update])
    }

    /// Removes the user; its Digest secrets and NT hash go with it (`ON DELETE CASCADE`).
    public func remove(_ name: String, by actor: ChangeActor) async throws {
        let now = self.now().timeIntervalSince1970
        let delete = SQLStatement(
            "DELETE FROM users WHERE realm = ? AND name = ? RETURNING name",
            [.text(self.realm), .text(name)]
        ).requiringRow(StoreError("no user \(name)"))
        try await self.change(actor, action: "remove", name: name, at: now, [delete])
    }

    /// Copies every user of an htpasswd file with a hash this store can verify; existing users
    /// are left alone. Returns (imported, skipped names).
    public func importHtpasswd(
        _ file: HtpasswdFile,
        by actor: ChangeActor
    ) async throws -> (imported: Int, skipped: [String]) {
        let now = self.now().timeIntervalSince1970
        let entries = file.entries.sorted { $0.key < $1.key }
        let inserts = entries.map { name, hash in
            SQLStatement(
                """
                INSERT INTO users (realm, name, hash, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (realm, name) DO NOTHING RETURNING name
                """,
                [.text(self.realm), .text(name), .text(hash.encoded), .real(now), .real(now)]
            )
        }
        let results = try await self.change(actor, action: "import", name: "*", detail: "htpasswd", at: now, inserts)
        let skipped = zip(entries, results).filter { $1.isEmpty }.map { $0.0.key }
        return (entries.count - skipped.count, skipped)
    }

    /// `name:hash` lines for every user with a bcrypt hash (what Apache and Squid read).
    public func exportHtpasswd() async throws -> (lines: [String], skipped: [String]) {
        let rows = try await self.read(
            SQLStatement(
                "SELECT name, hash FROM users WHERE realm = ? ORDER BY name \(self.database.dialect.byteOrder)",
                [.text(self.realm)]
            )
        )
        var lines: [String] = []
        var skipped: [String] = []
        for row in rows {
            guard let name = row.text(0), let hash = row.text(1) else { continue }
            if PasswordHash(hash)?.format == .bcrypt { lines.append("\(name):\(hash)") } else { skipped.append(name) }
        }
        return (lines, skipped)
    }

    public func list() async throws -> [UserInfo] {
        let now = self.now()
        let rows = try await self.read(
            SQLStatement(
                """
                SELECT u.name, u.realm, u.groups, u.created_at, u.updated_at, u.expires_at, u.disabled,
                       u.previous_valid_until, u.last_login_at,
                       EXISTS (SELECT 1 FROM digest d WHERE d.realm = u.realm AND d.name = u.name) AS digest_enrolled,
                       EXISTS (SELECT 1 FROM ntlm n WHERE n.realm = u.realm AND n.name = u.name) AS ntlm_enrolled
                FROM users u WHERE u.realm = ? ORDER BY u.name \(self.database.dialect.byteOrder)
                """,
                [.text(self.realm)]
            )
        )
        return rows.map { row in
            let standing = Self.standing(disabled: row.bool(6), expires: row.real(5), previousUntil: row.real(7))
            return UserInfo(
                name: row.text(0) ?? "",
                realm: row.text(1) ?? "",
                groups: (row.text(2) ?? "").split(separator: ",").map(String.init),
                state: UserInfo.state(standing: standing, now: now),
                digest: row.bool(9),
                ntlm: row.bool(10),
                createdAt: Date(timeIntervalSince1970: row.real(3) ?? 0),
                updatedAt: Date(timeIntervalSince1970: row.real(4) ?? 0),
                expiresAt: standing.expiresAt,
                previousValidUntil: standing.previousValidUntil.flatMap { $0 > now ? $0 : nil },
                lastLoginAt: row.real(8).map(Date.init(timeIntervalSince1970:))
            )
        }
    }

    public func audit() async throws -> [AuditEntry] {
        let rows = try await self.read(
            SQLStatement("SELECT at, actor, host, action, realm, name, detail FROM audit ORDER BY id")
        )
        return rows.map { row in
            AuditEntry(
                at: Date(timeIntervalSince1970: row.real(0) ?? 0),
                actor: row.text(1) ?? "",
                host: row.text(2) ?? "",
                action: row.text(3) ?? "",
                realm: row.text(4) ?? "",
                name: row.text(5) ?? "",
                detail: row.text(6) ?? ""
            )
        }
    }

    public var userCount: Int {
        get async throws {
            let rows = try await self.read(
                SQLStatement("SELECT count(*) FROM users WHERE realm = ?", [.text(self.realm)])
            )
            return Int(rows.first?.integer(0) ?? 0)
        }
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
