import Foundation
import NIOPosix
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
    static func withFresh<T>(_ body: (PostgresURL) async throws -> T) async throws -> T {
        guard var url = self.base else { throw StoreTestSkip() }
        let name = "pt_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        try await self.admin(url, "CREATE DATABASE \(name)")
        let admin = url
        url.database = name
        do {
            let value = try await body(url)
            try? await self.admin(admin, "DROP DATABASE IF EXISTS \(name) WITH (FORCE)")
            return value
        } catch {
            try? await self.admin(admin, "DROP DATABASE IF EXISTS \(name) WITH (FORCE)")
            throw error
        }
    }

    private static func admin(_ url: PostgresURL, _ statement: String) async throws {
        let configuration = PostgresConnection.Configuration(
            host: url.host,
            port: url.port,
            username: url.user,
            password: url.password,
            database: url.database,
            tls: .disable
        )
        let connection = try await PostgresConnection.connect(
            on: MultiThreadedEventLoopGroup.singleton.any(),
            configuration: configuration,
            id: 1,
            logger: PostgresDatabase.quiet
        )
        do {
            try await connection.query(PostgresQuery(unsafeSQL: statement), logger: PostgresDatabase.quiet)
            try? await connection.close()
        } catch {
            try? await connection.close()
            throw error
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

/// Without a server the contract's PostgreSQL cases are not made at all: this says so in the
/// run's output, as a skip with its reason.
@Test(.enabled(if: TestDatabase.base != nil, TestDatabase.skipReason))
func theStoreContractRunsAgainstPostgreSQL() {
    #expect(StoreKind.available.contains(.postgres))
}
