import Foundation
import PostgresNIO
import Testing

@testable import PortcullisPostgres

/// The PostgreSQL server of the tests: `PORTCULLIS_TEST_POSTGRES_URL`, set by
/// `scripts/postgres-test-server.sh run …` (which `scripts/test.sh` uses). Each test gets a
/// database of its own, so that tests running in parallel never see each other's change
/// counter or audit rows.
enum TestDatabase {
    static let environment = ProcessInfo.processInfo.environment

    static let base: PostgresURL? = environment["PORTCULLIS_TEST_POSTGRES_URL"].flatMap {
        try? PostgresURL(parsing: $0, environment: [:])
    }

    /// In CI (or when test.sh asks for it) a missing server is a failure, never a skip.
    static let required =
        environment["CI"].map { !$0.isEmpty } == true
        || environment["PORTCULLIS_REQUIRE_POSTGRES"] == "1"

    static let skipReason: Comment =
        "no PostgreSQL test server: run under scripts/postgres-test-server.sh run … (sets PORTCULLIS_TEST_POSTGRES_URL)"

    /// Runs `body` with the URL of a new, empty database, dropped afterwards.
    static func withFresh<T>(_ body: (PostgresURL) throws -> T) throws -> T {
        guard var url = self.base else { throw StoreTestSkip() }
        let name = "pt_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        try self.admin(url, "CREATE DATABASE \(name)")
        defer { try? self.admin(url, "DROP DATABASE IF EXISTS \(name) WITH (FORCE)") }
        url.database = name
        return try body(url)
    }

    /// Every row of every table of `url`'s database as text, to search for secrets.
    static func everything(_ url: PostgresURL) throws -> String {
        try self.run(url) { connection in
            var text = ""
            for table in ["users", "audit", "digest", "meta", "schema_version"] {
                let rows = try await connection.query(
                    "SELECT row_to_json(t)::text FROM \(unescaped: table) t",
                    logger: PostgresStore.quiet
                )
                for try await line in rows.decode(String.self) { text += line + "\n" }
            }
            return text
        }
    }

    private static func admin(_ url: PostgresURL, _ statement: String) throws {
        _ = try self.run(url) { connection in
            try await connection.query(PostgresQuery(unsafeSQL: statement), logger: PostgresStore.quiet)
        }
    }

    private static func run<T: Sendable>(
        _ url: PostgresURL,
        _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) throws -> T {
        let bridge = BlockingBridge(timeout: .seconds(30))
        defer { bridge.shutdown() }
        let configuration = PostgresConnection.Configuration(
            host: url.host,
            port: url.port,
            username: url.user,
            password: url.password,
            database: url.database,
            tls: .disable
        )
        let loop = bridge.loop
        return try bridge.run {
            let connection = try await PostgresConnection.connect(
                on: loop,
                configuration: configuration,
                id: 1,
                logger: PostgresStore.quiet
            )
            do {
                let value = try await body(connection)
                try? await connection.close()
                return value
            } catch {
                try? await connection.close()
                throw error
            }
        }
    }
}

struct StoreTestSkip: Error {}

@Test func aPostgresServerIsThereWhenTheRunRequiresOne() {
    if TestDatabase.required {
        #expect(
            TestDatabase.base != nil,
            "CI (or PORTCULLIS_REQUIRE_POSTGRES=1) needs PORTCULLIS_TEST_POSTGRES_URL: run the tests under scripts/postgres-test-server.sh run …"
        )
    }
}
