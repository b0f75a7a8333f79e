/// The tables of a user database, described once for SQLite and PostgreSQL (issue 4):
///
/// - `users`: name unique per realm, bcrypt hash, groups, created/updated, `expires_at`,
///   `disabled`, the previous hash with its own `previous_valid_until` for rotation grace,
///   `last_login_at`. Timestamps are seconds since 1970 (`double precision`).
/// - `audit`: who changed what, when, from where — never a secret.
/// - `digest`: per algorithm, the user hash and HA1 of users enrolled for Digest, and the
///   previous HA1 during a rotation's grace (password-equivalent for the realm).
/// - `digest_latin1`: the HA1 over the Latin-1 bytes of a password whose Latin-1 and UTF-8 bytes
///   differ (Java hashes those), and the previous one during a rotation's grace; rows follow
///   `digest`'s.
/// - `ntlm`: the NT hash of users enrolled for NTLM, and the previous one during a rotation's
///   grace (password-equivalent wherever NTLM is accepted).
/// - `secrets`: the Digest nonce key shared by every proxy on the database.
/// - `tokens`: short-lived tokens issued (never the token: its id, user, label, times,
///   revocation); the token key is in `secrets`.
/// - `meta.version`: bumped by every change, so that running proxies notice changes made by
///   another process and drop cached verifications.
/// - `schema_version`: one row, the version below.
enum AccountSchema {
    /// What this version of portcullis creates and understands. Raised with every table an older
    /// portcullis would leave stale: version 2 has `ntlm`, and a portcullis that knows only 1
    /// must refuse it, since a password it changed would leave the old one's NT hash working;
    /// version 3 has `digest_latin1`, for the same reason. Every new table or index raises it: a
    /// database at this version is not migrated at all (see ``AccountStore``).
    static let version = 3

    /// Creates what is missing and records the version, in one transaction. Every statement
    /// may run again (`IF NOT EXISTS`, `ON CONFLICT DO NOTHING`), so databases made by earlier
    /// versions (SQLite files migrated by GRDB, databases of version 1) open as they are and get
    /// what is new, and two proxies starting together on an empty database both succeed. A later
    /// version adds its own statements here, idempotent like these.
    static func migration(_ d: SQLDialect) -> [SQLStatement] {
        var statements: [SQLStatement] = d.migrationLock.map { [SQLStatement($0)] } ?? []
        statements.append(SQLStatement("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)"))
        statements.append(
            SQLStatement("SELECT max(version) FROM schema_version") { rows in
                if let current = rows.first?.integer(0), current > Self.version {
                    throw StoreError(
                        "the user database has schema version \(current), newer than this portcullis understands (\(Self.version)): upgrade portcullis"
                    )
                }
            }
        )
        let tables = [
            """
            CREATE TABLE IF NOT EXISTS users (
                realm text NOT NULL,
                name text NOT NULL,
                hash text NOT NULL,
                groups text NOT NULL DEFAULT '',
                created_at double precision NOT NULL,
                updated_at double precision NOT NULL,
                expires_at double precision,
                disabled \(d.boolean) NOT NULL DEFAULT \(d.falseValue),
                previous_hash text,
                previous_valid_until double precision,
                last_login_at double precision,
                PRIMARY KEY (realm, name)
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS audit (
                id \(d.serialKey),
                at double precision NOT NULL,
                actor text NOT NULL,
                host text NOT NULL,
                action text NOT NULL,
                realm text NOT NULL,
                name text NOT NULL,
                detail text NOT NULL DEFAULT ''
            )
            """,
            "CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value bigint NOT NULL)",
            "INSERT INTO meta (key, value) VALUES ('version', 1) ON CONFLICT (key) DO NOTHING",
            """
            CREATE TABLE IF NOT EXISTS digest (
                realm text NOT NULL,
                name text NOT NULL,
                algorithm text NOT NULL,
                userhash text NOT NULL,
                ha1 text NOT NULL,
                previous_ha1 text,
                PRIMARY KEY (realm, name, algorithm),
                FOREIGN KEY (realm, name) REFERENCES users (realm, name) ON DELETE CASCADE
            )
            """,
            "CREATE INDEX IF NOT EXISTS digest_by_userhash ON digest (realm, algorithm, userhash)",
            """
            CREATE TABLE IF NOT EXISTS digest_latin1 (
                realm text NOT NULL,
                name text NOT NULL,
                algorithm text NOT NULL,
                ha1 text,
                previous_ha1 text,
                PRIMARY KEY (realm, name, algorithm),
                FOREIGN KEY (realm, name, algorithm) REFERENCES digest (realm, name, algorithm) ON DELETE CASCADE
            )
            """,
            "CREATE TABLE IF NOT EXISTS secrets (name text PRIMARY KEY, value \(d.bytes) NOT NULL)",
            """
            CREATE TABLE IF NOT EXISTS ntlm (
                realm text NOT NULL,
                name text NOT NULL,
                nt_hash text NOT NULL,
                previous_nt_hash text,
                PRIMARY KEY (realm, name),
                FOREIGN KEY (realm, name) REFERENCES users (realm, name) ON DELETE CASCADE
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS tokens (
                realm text NOT NULL,
                id text NOT NULL,
                name text NOT NULL,
                label text NOT NULL DEFAULT '',
                created_at double precision NOT NULL,
                expires_at double precision NOT NULL,
                revoked_at double precision,
                last_used_at double precision,
                PRIMARY KEY (realm, id),
                FOREIGN KEY (realm, name) REFERENCES users (realm, name) ON DELETE CASCADE
            )
            """,
            "CREATE INDEX IF NOT EXISTS tokens_by_name ON tokens (realm, name)",
            // One row, never moved backwards (a newer portcullis may have migrated meanwhile).
            "DELETE FROM schema_version WHERE version < \(Self.version)",
            """
            INSERT INTO schema_version (version)
            SELECT \(Self.version) WHERE NOT EXISTS (SELECT 1 FROM schema_version)
            """,
        ]
        statements += tables.map { SQLStatement($0) }
        return statements
    }
}
