import Foundation
import PortcullisKerberos
import Synchronization
import Testing

@Suite(.enabled(if: TestKDC.isAvailable, "needs scripts/kdc-test-server.sh run (PORTCULLIS_TEST_KRB5_*)"))
struct NegotiateAcceptorTests {
    @Test(arguments: [TestInitiator.Mechanism.kerberos, .spnego])
    func aTicketFromTheKDCAuthenticatesItsPrincipal(mechanism: TestInitiator.Mechanism) throws {
        let keytab = try #require(TestKDC.keytab, "no test KDC (PORTCULLIS_REQUIRE_KDC is set)")
        let acceptor = try NegotiateAcceptor(keytab: keytab)
        #expect(acceptor.servicePrincipals.contains("HTTP/localhost@\(TestKDC.realm)"))
        let client = try TestInitiator(user: TestKDC.user, password: TestKDC.password, mechanism: mechanism)
        let context = acceptor.makeContext()
        var (token, _) = try client.step(nil)
        for _ in 0..<4 {
            switch acceptor.accept(token, in: context) {
            case .continueNeeded(let next):
                token = try client.step(next).token
            case .established(let principal, let localName, let reply):
                #expect(principal == "\(TestKDC.user)@\(TestKDC.realm)")
                // The test realm is krb5.conf's default realm: MIT's default rule maps it.
                #expect(localName == TestKDC.user)
                // Mutual authentication: the client checks the proxy's answer.
                if let reply { #expect(try client.step(reply).complete) }
                return
            case .failed(let failure):
                Issue.record("refused: \(failure)")
                return
            }
        }
        Issue.record("no outcome after four legs")
    }

    @Test func aTicketForAnotherServiceInTheKeytabIsRefused() throws {
        let keytab = try #require(TestKDC.keytab, "no test KDC (PORTCULLIS_REQUIRE_KDC is set)")
        let acceptor = try NegotiateAcceptor(keytab: keytab)
        #expect(!acceptor.servicePrincipals.contains { $0.hasPrefix("host/") })
        let client = try TestInitiator(
            user: TestKDC.user,
            password: TestKDC.password,
            service: "host@localhost",
            mechanism: .kerberos
        )
        let step = acceptor.accept(try client.step(nil).token, in: acceptor.makeContext())
        guard case .failed(let failure) = step else {
            Issue.record("a host/ ticket was accepted: \(step)")
            return
        }
        #expect(failure.reason == .noKeytabKey)
        #expect(failure.detail.contains("host/localhost"))
    }

    @Test func aKeytabWithAnotherKeyIsReportedAsSuch() throws {
        let keytab = try #require(TestKDC.wrongKeytab, "no test KDC (PORTCULLIS_REQUIRE_KDC is set)")
        let acceptor = try NegotiateAcceptor(keytab: keytab)
        let client = try TestInitiator(user: TestKDC.user, password: TestKDC.password, mechanism: .kerberos)
        let step = acceptor.accept(try client.step(nil).token, in: acceptor.makeContext())
        guard case .failed(let failure) = step else {
            Issue.record("accepted with a wrong key: \(step)")
            return
        }
        #expect(failure.reason == .noKeytabKey, "\(failure)")
        #expect(!failure.detail.isEmpty)
    }

    /// A replaced keytab file is picked up by the next accept that looks (every accept here),
    /// with no restart; a broken replacement is reported once and the loaded keys stay.
    @Test func aRotatedKeytabIsLoadedAndABrokenOneIsRefusedKeepingTheKeys() throws {
        let right = try #require(TestKDC.keytab, "no test KDC (PORTCULLIS_REQUIRE_KDC is set)")
        let wrong = try #require(TestKDC.wrongKeytab, "no test KDC (PORTCULLIS_REQUIRE_KDC is set)")
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("portcullis-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("proxy.keytab").path
        // Replaced as deployment tools do: written beside it, renamed over it.
        func install(_ bytes: Data) throws {
            let staging = path + ".new"
            try bytes.write(to: URL(fileURLWithPath: staging))
            _ = rename(staging, path)
        }
        try install(Data(contentsOf: URL(fileURLWithPath: wrong)))
        let changes = Mutex<[String]>([])
        let acceptor = try NegotiateAcceptor(keytab: path, credentials: 2, keytabCheckInterval: .zero) { change in
            changes.withLock {
                switch change {
                case .success(let principals): $0.append("loaded \(principals.count)")
                case .failure(let error): $0.append("refused: \(error)")
                }
            }
        }
        func attempt() throws -> NegotiateStep {
            let client = try TestInitiator(user: TestKDC.user, password: TestKDC.password, mechanism: .spnego)
            return acceptor.accept(try client.step(nil).token, in: acceptor.makeContext())
        }
        guard case .failed(let failure) = try attempt() else {
            Issue.record("accepted with the wrong key")
            return
        }
        #expect(failure.reason == .noKeytabKey)
        #expect(changes.withLock { $0 }.isEmpty)

        try install(Data(contentsOf: URL(fileURLWithPath: right)))
        guard case .established = try attempt() else {
            Issue.record("the rotated keytab was not used")
            return
        }
        #expect(changes.withLock { $0 } == ["loaded \(acceptor.servicePrincipals.count)"])

        try install(Data("not a keytab".utf8))
        guard case .established = try attempt() else {
            Issue.record("a broken replacement dropped the loaded keys")
            return
        }
        _ = try attempt()
        let seen = changes.withLock { $0 }
        #expect(seen.count == 2, "a refused file is reported once: \(seen)")
        #expect(seen.last?.hasPrefix("refused: --keytab \(path)") == true, "\(seen)")
        #expect(acceptor.servicePrincipals.allSatisfy { $0.hasPrefix("HTTP/") })
    }

    /// More accepts at once than credentials: each still gets a whole accept (shared or own).
    @Test func concurrentAcceptsAllSucceed() throws {
        let keytab = try #require(TestKDC.keytab, "no test KDC (PORTCULLIS_REQUIRE_KDC is set)")
        let acceptor = try NegotiateAcceptor(keytab: keytab, credentials: 2)
        let tokens = try (0..<12).map { _ in
            try TestInitiator(user: TestKDC.user, password: TestKDC.password, mechanism: .kerberos).step(nil).token
        }
        let outcomes = Mutex<[Bool]>([])
        DispatchQueue.concurrentPerform(iterations: tokens.count) { index in
            let step = acceptor.accept(tokens[index], in: acceptor.makeContext())
            let ok: Bool
            if case .established(let principal, _, _) = step {
                ok = principal == "\(TestKDC.user)@\(TestKDC.realm)"
            } else {
                ok = false
            }
            outcomes.withLock { $0.append(ok) }
        }
        #expect(outcomes.withLock { $0 } == Array(repeating: true, count: tokens.count))
    }

    @Test func garbageAndForeignMechanismsAreRefusedWithoutACrash() throws {
        let keytab = try #require(TestKDC.keytab, "no test KDC (PORTCULLIS_REQUIRE_KDC is set)")
        let acceptor = try NegotiateAcceptor(keytab: keytab)
        let ntlm = Array("NTLMSSP\0".utf8) + [1, 0, 0, 0, 0x07, 0x82, 0x08, 0xa2] + [UInt8](repeating: 0, count: 16)
        let inputs: [[UInt8]] = [[], [0x60], [0x60, 0x80], ntlm, [UInt8](repeating: 0xff, count: 4096), Array("hello".utf8)]
        for input in inputs {
            let step = acceptor.accept(input, in: acceptor.makeContext())
            guard case .failed(let failure) = step else {
                Issue.record("\(input.prefix(8)) was not refused: \(step)")
                continue
            }
            #expect(failure.reason != .clockSkew)
        }
    }
}

@Suite struct NegotiateSetupTests {
    @Test func aMissingKeytabIsNamed() {
        #expect {
            try NegotiateAcceptor(keytab: "/nonexistent/portcullis.keytab")
        } throws: { error in
            "\(error)".contains("/nonexistent/portcullis.keytab") && "\(error)".contains("cannot read")
        }
    }

    @Test func aKeytabWithoutAnHTTPKeyIsRefused() throws {
        // A keytab (format 0x502) holding only host/example.org@EXAMPLE.ORG.
        func counted(_ s: String) -> [UInt8] { [UInt8(s.utf8.count >> 8), UInt8(s.utf8.count & 0xff)] + Array(s.utf8) }
        var entry: [UInt8] = [0, 2] + counted("EXAMPLE.ORG") + counted("host") + counted("example.org")
        entry += [0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 18] + [0, 32] + [UInt8](repeating: 7, count: 32)
        let size = UInt32(entry.count)
        let bytes: [UInt8] = [5, 2, UInt8(size >> 24), UInt8((size >> 16) & 0xff), UInt8((size >> 8) & 0xff), UInt8(size & 0xff)] + entry
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("portcullis-\(UUID()).keytab").path
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect {
            try NegotiateAcceptor(keytab: path)
        } throws: { error in
            "\(error)".contains("no HTTP/") && "\(error)".contains("host/example.org@EXAMPLE.ORG")
        }
    }
}
