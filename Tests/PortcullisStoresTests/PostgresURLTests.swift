import PortcullisStores
import Testing

@testable import PortcullisPostgres

@Suite struct PostgresURLTests {
    @Test func partsArePercentDecodedAndThePasswordNeverShown() throws {
        let url = try PostgresURL(
            parsing: "postgresql://port%40cullis:p%40ss%2Fw%3Ard@db.example:5433/users?sslmode=disable",
            environment: [:]
        )
        #expect(url.host == "db.example" && url.port == 5433 && url.database == "users")
        #expect(url.user == "port@cullis" && url.password == "p@ss/w:rd")
        #expect(url.redacted == "postgres://port%40cullis:***@db.example:5433/users")
        #expect("\(url)" == url.redacted && String(reflecting: url) == url.redacted)
        var dumped = ""
        dump(url, to: &dumped)
        #expect(!dumped.contains("p@ss"))
    }

    @Test func defaultsAndPGPASSWORD() throws {
        let url = try PostgresURL(parsing: "postgres://proxy@[::1]", environment: ["PGPASSWORD": "from-env"])
        #expect(url.host == "::1" && url.port == 5432 && url.database == "proxy" && url.password == "from-env")
        #expect(url.redacted == "postgres://proxy:***@[::1]:5432/proxy")
        let none = try PostgresURL(parsing: "postgres://proxy@localhost/db", environment: [:])
        #expect(none.password == nil && none.redacted == "postgres://proxy@localhost:5432/db")
    }

    @Test(arguments: [
        ("postgres://:pw@host/db", "needs a user name"),
        ("postgres://user:pw@/db", "needs a host"),
        ("postgres://user:pw@host/db?sslmode=require", "only sslmode=disable"),
        ("postgres://user:pw@host/db?target=x", "unknown postgres URL parameter 'target'"),
        ("postgres://user:pw@host/db/extra", "just the database name"),
        ("postgres://user:p#w@host/db", "percent-encode"),
    ])
    func badURLsAreOneClearLineWithoutThePassword(text: String, message: String) {
        do {
            _ = try PostgresURL(parsing: text, environment: [:])
            Issue.record("accepted \(text)")
        } catch let error as StoreError {
            #expect(error.message.contains(message), "\(error.message)")
            #expect(!error.message.contains("pw") && !error.message.contains("p#w"))
        } catch {
            Issue.record("\(error)")
        }
    }
}
