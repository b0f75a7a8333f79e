import Logging
import PortcullisStores
import PostgresNIO

/// The tables of the PostgreSQL store: the same tables and columns as the SQLite store
/// (`users`, `audit`, `meta`, `digest`, `secrets`), timestamps as `double precision` seconds
/// since 1970 like there, plus `schema_version` (one row) for migrations.
enum PostgresSchema {
    /// What this version of portcullis creates and understands.
    static let latest = 1

    /// Any number will do as long as it is the same in every portcullis: it serialises the
    /// migrations of proxies (and `users` commands) that start at the same moment.
    static let advisoryLockKey: Int64 = 0x706F_7274_6375_6C6C  // "portcull"

    /// Statements per version; each step runs once, in order. A statement never depends on
    /// having run before (`IF NOT EXISTS`), so a step interrupted before its version row was
    /// written simply runs again.
    static let steps: [(version: Int, statements: [PostgresQuery])] = [
        (
            1,
            [
                """
                CREATE TABLE IF NOT EXISTS users (
                    realm text NOT NULL,
                    name text NOT NULL,
                    hash text NOT NULL,
                    groups text NOT NULL DEFAULT '',
                    created_at double precision NOT NULL,
                    updated_at double precision NOT NULL,
                    expires_at double precision,
                    disabled boolean NOT NULL DEFAULT false,
                    previous_hash text,
                    previous_valid_until double precision,
                    last_login_at double precision,
                    PRIMARY KEY (realm, name)
                )
                """,
                """
                CREATE TABLE IF NOT EXISTS audit (
                    id bigserial PRIMARY KEY,
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
                "CREATE TABLE IF NOT EXISTS secrets (name text PRIMARY KEY, value bytea NOT NULL)",
            ]
        )
    ]

    /// Creates or upgrades the tables in one transaction, under a transaction-scoped advisory
    /// lock: two proxies starting at once on an empty database both succeed (the second waits,
    /// then finds everything in place). Idempotent.
    static func migrate(_ connection: PostgresConnection, logger: Logger) async throws {
        try await connection.query("BEGIN", logger: logger)
        do {
            try await connection.query("SELECT pg_advisory_xact_lock(\(Self.advisoryLockKey))", logger: logger)
            try await connection.query(
                "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)",
                logger: logger
            )
            var current = 0
            for try await version in try await connection.query(
                "SELECT max(version) FROM schema_version",
                logger: logger
            ).decode(Int?.self) {
                current = version ?? 0
            }
            guard current <= Self.latest else {
                throw StoreError(
                    "the user database has schema version \(current), newer than this portcullis understands (\(Self.latest)): upgrade portcullis"
                )
            }
            for step in Self.steps where step.version > current {
                for statement in step.statements { try await connection.query(statement, logger: logger) }
            }
            if current < Self.latest {
                try await connection.query("DELETE FROM schema_version", logger: logger)
                try await connection.query(
                    "INSERT INTO schema_version (version) VALUES (\(Self.latest))",
                    logger: logger
                )
            }
            try await connection.query("COMMIT", logger: logger)
        } catch {
            _ = try? await connection.query("ROLLBACK", logger: logger)
            throw error
        }
    }
}
