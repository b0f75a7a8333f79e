import NIOCore
import Testing

@testable import PortcullisProxy

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Origins that cannot be reached or go away: the responses the proxy makes for them, and the
/// one retry RFC 9112 §9.3.1 allows on a reused connection.
@Suite struct ProxyConnectionUpstreamFailureTests {
    /// A request forwarded over the pooled connection of the request before it.
    private func secondRequestOverAPooledConnection(
        _ request: String
    ) throws -> (ConnectionHarness, ConnectionHarness.Origin) {
        let h = try ConnectionHarness.forwarding()
        try h.send(Wire.get("/1"))
        let origin = try h.acceptConnect()
        try origin.send(Wire.ok)
        #expect(h.takeOutput() == Wire.okRelayed)
        #expect(origin.takeReceived() == Wire.upstreamGet("/1"))
        try h.send(request)
        #expect(h.pendingConnects.isEmpty)
        return (h, origin)
    }

    @Test func aReusedConnectionResetBeforeAnsweringIsRetriedOnceOnAFreshOneForAGet() throws {
        let (h, pooled) = try self.secondRequestOverAPooledConnection(Wire.get("/2"))
        #expect(pooled.receivedText == Wire.upstreamGet("/2"))
        pooled.reset()
        #expect(h.outputText.isEmpty)
        #expect(h.pendingConnects == [OriginRequest(host: "o.test", port: 80)])
        let fresh = try h.acceptConnect()
        #expect(fresh.receivedText == Wire.upstreamGet("/2"))
        try fresh.send(Wire.ok)
        #expect(h.outputText == Wire.okRelayed)
        h.finish()
    }

    @Test func aRetryWhoseFreshConnectionIsResetTooIs502() throws {
        let (h, pooled) = try self.secondRequestOverAPooledConnection(Wire.get("/2"))
        pooled.reset()
        let fresh = try h.acceptConnect()
        fresh.reset()
        #expect(h.statuses == [502])
        #expect(h.outputText.contains("error=connection_terminated"))
        #expect(h.connects.count == 2)
        h.finish()
    }

    @Test func aPostOnAReusedConnectionResetBeforeAnsweringIsNotRetried() throws {
        let (h, pooled) = try self.secondRequestOverAPooledConnection(
            "POST http://o.test/up HTTP/1.1\r\nHost: o.test\r\nContent-Length: 2\r\n\r\nhi"
        )
        #expect(pooled.receivedText.hasSuffix("\r\n\r\nhi"))
        pooled.reset()
        #expect(h.statuses == [502])
        #expect(h.connects.count == 1)
        h.finish()
    }

    @Test func aGetWithABodyOnAReusedConnectionResetBeforeAnsweringIsNotRetried() throws {
        let (h, pooled) = try self.secondRequestOverAPooledConnection(
            "GET http://o.test/2 HTTP/1.1\r\nHost: o.test\r\nContent-Length: 2\r\n\r\nhi"
        )
        pooled.reset()
        #expect(h.statuses == [502])
        #expect(h.connects.count == 1)
        h.finish()
    }

    /// The race the retry is for — the origin closed the idle connection as it was reused —
    /// usually shows as an EOF, not a reset.
    @Test func aReusedConnectionThatEndsWithEOFBeforeAnsweringIsRetriedOnceOnAFreshOne() throws {
        let (h, pooled) = try self.secondRequestOverAPooledConnection(Wire.get("/2"))
        pooled.finishSending()
        #expect(h.outputText.isEmpty)
        #expect(h.pendingConnects == [OriginRequest(host: "o.test", port: 80)])
        let fresh = try h.acceptConnect()
        #expect(fresh.receivedText == Wire.upstreamGet("/2"))
        try fresh.send(Wire.ok)
        #expect(h.outputText == Wire.okRelayed)
        h.finish()
    }

    struct ConnectFailure: CustomTestStringConvertible, Sendable {
        var name: String
        var error: @Sendable () -> any Error
        var expected: String
        var testDescription: String { self.name }
    }

    static let connectFailures: [ConnectFailure] = [
        ConnectFailure(
            name: "refused",
            error: { IOError(errnoCode: ECONNREFUSED, reason: "connect") },
            expected: Wire.local(
                502,
                "Bad Gateway",
                proxyStatus: "error=connection_refused; details=\"connection refused\"",
                message: "o.test:80 refused the connection."
            )
        ),
        ConnectFailure(
            name: "name not resolved",
            error: { ResolutionError.nameNotResolved("Name or service not known") },
            expected: Wire.local(
                502,
                "Bad Gateway",
                proxyStatus: "error=dns_error; details=\"Name or service not known\"",
                message: "the name o.test could not be resolved (Name or service not known)."
            )
        ),
        ConnectFailure(
            name: "internal destination",
            error: { ResolutionError.destinationDenied },
            expected: Wire.local(
                403,
                "Forbidden",
                proxyStatus: "error=destination_ip_prohibited; details=\"internal destinations are not allowed\"",
                message:
                    "o.test resolves only to loopback/private/link-local addresses, which this proxy does not reach (see --allow-private-destinations)."
            )
        ),
        ConnectFailure(
            name: "other",
            error: { ChannelError.ioOnClosedChannel },
            expected: Wire.local(
                502,
                "Bad Gateway",
                proxyStatus: "error=destination_unavailable; details=\"connect failed\"",
                message: "could not connect to o.test:80."
            )
        ),
    ]

    @Test(arguments: Self.connectFailures)
    func aFailedConnectIsAnsweredAndTheConnectionKept(failure: ConnectFailure) throws {
        let h = try ConnectionHarness.forwarding()
        try h.send(Wire.get())
        try h.failConnect(with: failure.error())
        #expect(h.takeOutput() == failure.expected)
        #expect(h.isOpen && !h.clientOutputClosed)
        try h.send(Wire.get("/b"))
        #expect(h.connects.count == 2)
        h.finish()
    }

    @Test func aConnectThatDoesNotCompleteInTimeIs504() throws {
        let h = try ConnectionHarness.forwarding { $0.upstreamConnectTimeout = .seconds(5) }
        try h.send(Wire.get())
        h.advanceTime(by: .milliseconds(4999))
        #expect(h.outputText.isEmpty)
        h.advanceTime(by: .milliseconds(1))
        #expect(
            h.takeOutput()
                == Wire.local(
                    504,
                    "Gateway Timeout",
                    proxyStatus: "error=connection_timeout; details=\"connect timed out\"",
                    message: "connecting to o.test:80 timed out."
                )
        )
        #expect(h.pendingConnects.isEmpty)
        #expect(h.isOpen)
        h.finish()
    }
}
