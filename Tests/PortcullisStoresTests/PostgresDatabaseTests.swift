import Foundation
import PortcullisStores
import Testing

@testable import PortcullisPostgres

/// What only PostgreSQL has: a server to reach and log into. Its errors are one clear line, the
/// password never in it. (What every store does is ``AccountStoreTests``.)
///
/// Serialized: one test's closed port must not become the other's silent listener.
@Suite(.serialized) struct PostgresDatabaseTests {
    @Test func anUnreachableDatabaseIsOneLineWithoutThePassword() async throws {
        // Bound but not listening, and kept so for the test: a connect is refused, and no other
        // test's listener can take the port meanwhile (a port closed before the connect could
        // be, and then the connect waited for an answer that never came).
        let (fd, port) = try Self.socket(listening: false)
        defer { close(fd) }
        let url = PostgresURL(
            host: "127.0.0.1",
            port: port,
            user: "portcullis",
            password: "hunter2-secret",
            database: "db"
        )
        do {
            // A generous deadline: "refused" must win even on a machine busy with other tests.
            _ = try await PostgresStore(url: url, timeout: .seconds(30))
            Issue.record("opened a database nobody serves")
        } catch let error as StoreError {
            #expect(
                error.message
                    == "cannot reach the user database at postgres://portcullis:***@127.0.0.1:\(port)/db: connection refused"
            )
            #expect(!error.message.contains("hunter2"))
        }
    }

    @Test(.enabled(if: TestDatabase.base != nil, TestDatabase.skipReason))
    func aWrongPasswordSaysSoWithoutEitherPassword() async throws {
        guard var url = TestDatabase.base else { return }
        url.password = "not-the-right-one"
        do {
            _ = try await PostgresStore(url: url)
            Issue.record("logged in with a wrong password")
        } catch let error as StoreError {
            #expect(error.message.contains("password authentication failed"), "\(error.message)")
            #expect(!error.message.contains("not-the-right-one"))
        }
    }

    @Test func aServerThatNeverAnswersIsGivenUpOnAtTheDeadline() async throws {
        // Listening, never accepting: the kernel completes the TCP handshake, nobody speaks.
        let (fd, port) = try Self.socket(listening: true)
        defer { close(fd) }
        let url = PostgresURL(host: "127.0.0.1", port: port, user: "portcullis", password: nil, database: "db")
        let started = ContinuousClock.now
        do {
            _ = try await PostgresStore(url: url, timeout: .seconds(1))
            Issue.record("opened a database that never answered")
        } catch let error as StoreError {
            // On a machine busy with other tests the TCP connect itself may already miss its 1 s.
            #expect(
                error.message.hasSuffix(": no answer within 1 s") || error.message.hasSuffix(": connecting timed out"),
                "\(error.message)"
            )
        }
        // Without the deadline it would wait for ever; the margin is for a busy test machine.
        #expect(ContinuousClock.now - started < .seconds(30))
    }

    /// A TCP socket bound to a free loopback port.
    static func socket(listening: Bool) throws -> (fd: Int32, port: Int) {
        let fd = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        if listening { _ = listen(fd, 8) }
        return (fd, Int(UInt16(bigEndian: address.sin_port)))
    }
}
