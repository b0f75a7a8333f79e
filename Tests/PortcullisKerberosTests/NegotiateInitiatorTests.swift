import CGSSAPI
import Foundation
import PortcullisKerberos
import Testing

@Suite(.enabled(if: TestKDC.isAvailable, "needs scripts/kdc-test-server.sh run (PORTCULLIS_TEST_KRB5_*)"))
struct NegotiateInitiatorTests {
    @Test func aTicketFromTheCacheAuthenticatesAndTheProxysFinalTokenVerifies() throws {
        let keytab = try #require(TestKDC.keytab, "no test KDC (PORTCULLIS_REQUIRE_KDC is set)")
        let acceptor = try NegotiateAcceptor(keytab: keytab)
        let cache = try TestKDC.ticketCache()
        defer { try? FileManager.default.removeItem(atPath: String(cache.dropFirst("FILE:".count))) }
        let client = try NegotiateInitiator(host: "localhost", credentialCache: cache)
        #expect(client.client == "\(TestKDC.user)@\(TestKDC.realm)")
        #expect(client.service == "HTTP@localhost")
        #expect(client.lifetime > 0)
        guard case .continueNeeded(let first) = client.step(nil) else {
            Issue.record("no first token with mutual authentication asked for")
            return
        }
        let context = acceptor.makeContext()
        guard case .established(let principal, _, let reply) = acceptor.accept(first, in: context) else {
            Issue.record("the acceptor refused the initiator's token")
            return
        }
        #expect(principal == "\(TestKDC.user)@\(TestKDC.realm)")
        let last = try #require(reply, "no final token from the acceptor")
        guard case .established = client.step(last) else {
            Issue.record("the acceptor's final token did not verify")
            return
        }
    }

    @Test func aFinalTokenThatIsNotTheProxysFailsVerification() throws {
        let cache = try TestKDC.ticketCache()
        defer { try? FileManager.default.removeItem(atPath: String(cache.dropFirst("FILE:".count))) }
        let client = try NegotiateInitiator(host: "localhost", credentialCache: cache)
        guard case .continueNeeded = client.step(nil) else {
            Issue.record("no first token")
            return
        }
        guard case .failed(let failure) = client.step(Array("not a token".utf8)) else {
            Issue.record("a garbage final token was taken as the proxy's")
            return
        }
        #expect(!failure.detail.isEmpty)
    }

    @Test func aCacheWithoutATicketIsNoTicket() {
        let cache = "FILE:/nonexistent/portcullis-\(UUID()).ccache"
        #expect {
            try NegotiateInitiator(host: "localhost", credentialCache: cache)
        } throws: { error in
            guard let failure = error as? NegotiateInitiatorFailure else { return false }
            return failure.reason == .noTicket && failure.detail.contains("credentials")
        }
    }

    @Test func aProxyNamedByItsAddressHasNoServicePrincipal() throws {
        let cache = try TestKDC.ticketCache()
        defer { try? FileManager.default.removeItem(atPath: String(cache.dropFirst("FILE:".count))) }
        let client = try NegotiateInitiator(host: "127.0.0.1", credentialCache: cache)
        guard case .failed(let failure) = client.step(nil) else {
            Issue.record("a ticket for HTTP/127.0.0.1, which the KDC does not have")
            return
        }
        #expect(failure.reason == .noServicePrincipal, "\(failure)")
        #expect(failure.detail.contains("HTTP/127.0.0.1"))
    }
}

/// The reasons of the failures seen against MIT's KDC (its texts, through SPNEGO and Kerberos).
@Suite struct NegotiateInitiatorReasonTests {
    @Test(
        arguments: [
            (
                7 << 16, "No credentials were supplied; No Kerberos credentials available (default cache: FILE:/tmp/x)",
                "no-ticket"
            ),
            (7 << 16, "No credentials were supplied; SPNEGO cannot find mechanisms to negotiate", "no-ticket"),
            (11 << 16, "The referenced credential has expired; Success", "ticket-expired"),
            (13 << 16, "Unspecified GSS failure; Ticket expired", "ticket-expired"),
            (
                13 << 16, "Unspecified GSS failure; Server HTTP/127.0.0.1@EXAMPLE.ORG not found in Kerberos database",
                "no-service-principal"
            ),
            (13 << 16, "Unspecified GSS failure; Cannot contact any KDC for realm 'EXAMPLE.ORG'", "kdc-unreachable"),
            (13 << 16, "Unspecified GSS failure; Clock skew too great", "clock-skew"),
            (13 << 16, "Unspecified GSS failure; Message stream modified", "gss-failure"),
        ] as [(OM_uint32, String, String)]
    )
    func eachFailureTextHasItsReason(major: OM_uint32, detail: String, reason: String) {
        #expect(NegotiateInitiator.reason(major: major, detail: detail).rawValue == reason)
    }

    @Test func theShimsConstantsAreGSSAPIs() {
        #expect(portcullis_gss_s_no_cred() == 7 << 16)
        #expect(portcullis_gss_s_credentials_expired() == 11 << 16)
    }
}
