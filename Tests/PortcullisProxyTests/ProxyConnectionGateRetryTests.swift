import NIOCore
import PortcullisAuth
import Testing

@testable import PortcullisProxy

/// The 407 gate in front of forwarding and tunnels: a refused request and the client's retry on
/// the same connection, and a Digest nonce that ages out (by the harness's wall clock).
@Suite struct ProxyConnectionGateRetryTests {
    @Test func aGetRefusedWith407IsRetriedOnTheSameConnectionAndForwarded() throws {
        let h = try ConnectionHarness.forwarding(authenticates: true)
        try h.send(Wire.get())
        #expect(h.statuses == [407])
        #expect(h.outputText.contains("Proxy-Authenticate: Basic realm=\"Portcullis\""))
        #expect(h.connects.isEmpty)
        _ = h.takeOutput()
        try h.send(Wire.get("/a", Wire.alice))
        h.completeChecks()
        let origin = try h.acceptConnect()
        #expect(origin.receivedText == Wire.upstreamGet())
        try origin.send(Wire.ok)
        #expect(h.outputText == Wire.okRelayed)
        #expect(h.isOpen)
        h.finish()
    }

    /// After a CONNECT that did not become a tunnel, what the client sends next is a request
    /// again, not tunnel bytes.
    @Test func aConnectRefusedWith407IsRetriedOnTheSameConnectionAndBecomesATunnel() throws {
        let h = try ConnectionHarness.forwarding(authenticates: true)
        try h.send(Wire.connect())
        #expect(h.statuses == [407])
        #expect(!h.outputText.contains("Connection: close"))
        #expect(h.connects.isEmpty)
        _ = h.takeOutput()
        try h.send(Wire.connect("o.test:443", Wire.alice))
        h.completeChecks()
        #expect(h.connects == [OriginRequest(host: "o.test", port: 443, isTunnel: true)])
        let origin = try h.acceptConnect()
        #expect(h.takeOutput() == Wire.established)
        try h.send("\u{16}\u{03}\u{01}hello")
        #expect(origin.receivedText == "\u{16}\u{03}\u{01}hello")
        h.finish()
    }

    @Test func aWrongPasswordOnAConnectIs407AndTheNextRequestIsParsedAsOne() throws {
        let h = try ConnectionHarness.forwarding(authenticates: true)
        try h.send(Wire.connect("o.test:443", Wire.wrong))
        h.completeChecks()
        #expect(h.statuses == [407])
        try h.send(Wire.get("/a", Wire.alice))
        h.completeChecks()
        let origin = try h.acceptConnect()
        #expect(origin.receivedText == Wire.upstreamGet())
        h.finish()
    }

    // MARK: - Digest

    /// The last `Proxy-Authenticate` field's first (strongest) Digest challenge, answered.
    private func answer(
        _ response: String,
        password: String = "secret",
        uri: String = "http://o.test/a",
        nonceCount: Int = 1
    ) throws -> String {
        let field = try #require(
            response.split(separator: "\r\n").last { $0.hasPrefix("Proxy-Authenticate: Digest ") }
        )
        let challenges = try ChallengeParser.parse(fieldValue: String(field.dropFirst("Proxy-Authenticate: ".count)))
        let challenge = try #require(challenges.lazy.compactMap(DigestChallenge.init).first)
        let responder = try #require(DigestResponder(challenge: challenge, user: "alice", password: password))
        let value = responder.authorization(method: "GET", uri: uri, nonceCount: nonceCount, cnonce: "0a4f113b")
        return "Proxy-Authorization: \(value)\r\n"
    }

    /// A client that knows the password recovers from an expired nonce without asking its user:
    /// `stale=true` and a fresh nonce, on the same connection. The harness's deny-all rule
    /// answers 403 to a request that passed the gate.
    @Test func anExpiredDigestNonceGetsAStaleChallengeAndTheRetryOnTheSameConnectionPasses() throws {
        var options = ConnectionHarness.Options()
        options.lockoutThreshold = 1000
        options.nonceLifetime = 10
        let h = try ConnectionHarness(shared: .init(options: options))
        try h.send(Wire.get())
        let first = h.takeOutput()
        #expect(first.hasPrefix("HTTP/1.1 407 "))
        let answer1 = try self.answer(first)
        try h.send(Wire.get("/a", answer1))
        h.completeChecks()  // the user's Digest secrets, read off the loop
        #expect(h.statuses == [403])
        _ = h.takeOutput()

        // The same nc again (a replayed request): stale, never through.
        try h.send(Wire.get("/a", answer1))
        #expect(h.statuses == [407])
        #expect(h.outputText.contains("stale=true"))
        _ = h.takeOutput()

        h.advanceTime(by: .seconds(9))
        try h.send(Wire.get("/a", try self.answer(first, nonceCount: 2)))
        #expect(h.statuses == [403])
        _ = h.takeOutput()

        h.advanceTime(by: .milliseconds(1001))
        try h.send(Wire.get("/a", try self.answer(first, nonceCount: 3)))
        let stale = h.takeOutput()
        #expect(stale.hasPrefix("HTTP/1.1 407 "))
        #expect(stale.contains("Proxy-Status: portcullis; details=\"stale-nonce\"\r\n"))
        #expect(stale.contains("stale=true"))
        #expect(!stale.contains("Connection: close"))
        try h.send(Wire.get("/a", try self.answer(stale)))
        #expect(h.statuses == [403])
        _ = h.takeOutput()

        // A wrong password with an expired nonce is a wrong password, not a stale nonce.
        try h.send(Wire.get("/a", try self.answer(first, password: "wrong", nonceCount: 4)))
        let wrong = h.takeOutput()
        #expect(wrong.hasPrefix("HTTP/1.1 407 "))
        #expect(wrong.contains("details=\"invalid-credentials\""))
        #expect(!wrong.contains("stale=true"))
        #expect(h.isOpen)
        h.finish()
    }
}
