import Foundation
import NIOCore
import PortcullisAuth
import Testing

@testable import PortcullisProxy

/// NTLM through a whole connection without sockets: the three messages on one connection, the
/// connection authenticated for its later requests, the handshake count given back on close.
@Suite struct ProxyConnectionNTLMTests {
    static func harness() throws -> ConnectionHarness {
        try ConnectionHarness.forwarding(authenticates: true) {
            $0.authSchemes = [.ntlm, .basic]
            $0.ntlm = NTLMAcceptor.Settings(netbiosDomainName: "CORP", netbiosComputerName: "PROXY")
        }
    }

    static func field(_ message: [UInt8]) -> String {
        "Proxy-Authorization: NTLM \(Data(message).base64EncodedString())\r\n"
    }

    /// The CHALLENGE in the last 407.
    static func challenge(in output: String) throws -> [UInt8] {
        let line = try #require(output.split(separator: "\r\n").first { $0.hasPrefix("Proxy-Authenticate: NTLM ") })
        return try #require(Data(base64Encoded: String(line.dropFirst("Proxy-Authenticate: NTLM ".count)))).map { $0 }
    }

    @Test func threeMessagesOnOneConnectionThenItsRequestsPassWithoutCredentials() throws {
        let h = try Self.harness()
        var client = NTLMClient()
        client.user = "alice"
        client.password = "secret"
        let negotiate = client.negotiate()
        try h.send(Wire.get("/a", Self.field(negotiate)))
        #expect(h.statuses == [407])
        #expect(h.isOpen)
        let challenge = try Self.challenge(in: h.takeOutput())
        #expect(h.shared.context.pendingHandshakes.withLockedValue { $0 } == 1)
        try h.send(Wire.get("/a", Self.field(client.authenticate(negotiate: negotiate, challenge: challenge))))
        h.completeChecks()
        #expect(h.shared.context.pendingHandshakes.withLockedValue { $0 } == 0)
        let origin = try h.acceptConnect()
        #expect(origin.receivedText == Wire.upstreamGet())
        try origin.send(Wire.ok)
        #expect(h.takeOutput() == Wire.okRelayed)
        // The connection is alice's now.
        try h.send(Wire.get("/b"))
        #expect(origin.receivedText.hasSuffix(Wire.upstreamGet("/b")))
        try origin.send(Wire.ok)
        #expect(h.takeOutput() == Wire.okRelayed)
        h.finish()
    }

    @Test func aConnectionClosedMidHandshakeGivesItsPlaceBack() throws {
        let h = try Self.harness()
        try h.send(Wire.get("/a", Self.field(NTLMClient().negotiate())))
        #expect(h.statuses == [407])
        #expect(h.shared.context.pendingHandshakes.withLockedValue { $0 } == 1)
        h.close()
        #expect(h.shared.context.pendingHandshakes.withLockedValue { $0 } == 0)
    }

    @Test func anotherConnectionIsNotAuthenticatedByTheFirst() throws {
        let first = try Self.harness()
        var client = NTLMClient()
        client.user = "alice"
        client.password = "secret"
        let negotiate = client.negotiate()
        try first.send(Wire.get("/a", Self.field(negotiate)))
        let challenge = try Self.challenge(in: first.takeOutput())
        try first.send(Wire.get("/a", Self.field(client.authenticate(negotiate: negotiate, challenge: challenge))))
        first.completeChecks()
        #expect(first.connects.count == 1)
        let second = try ConnectionHarness(shared: first.shared)
        try second.send(Wire.get("/b"))
        #expect(second.statuses == [407])
    }
}
