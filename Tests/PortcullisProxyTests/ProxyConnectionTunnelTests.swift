import NIOCore
import Testing

@testable import PortcullisProxy

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// CONNECT tunnels to scripted origins: the 200, bytes both ways, half-closes, back-pressure,
/// the idle timer and failures.
@Suite struct ProxyConnectionTunnelTests {
    /// An established tunnel to `o.test:443`, the client's output so far taken.
    private func tunnel(
        configure: @escaping (inout ProxyConfiguration) -> Void = { _ in }
    ) throws -> (ConnectionHarness, ConnectionHarness.Origin) {
        let h = try ConnectionHarness.forwarding(configure: configure)
        try h.send(Wire.connect())
        #expect(h.connects == [OriginRequest(host: "o.test", port: 443, isTunnel: true)])
        #expect(h.outputText.isEmpty)
        let origin = try h.acceptConnect()
        #expect(h.takeOutput() == Wire.established)
        return (h, origin)
    }

    @Test func bytesFlowBothWaysUnchanged() throws {
        let (h, origin) = try self.tunnel()
        try h.send("GET / HTTP/1.1\r\nProxy-Authorization: x\r\n\r\n")
        #expect(origin.takeReceived() == "GET / HTTP/1.1\r\nProxy-Authorization: x\r\n\r\n")
        try origin.send("HTTP/1.1 200 OK\r\n\r\nanything")
        #expect(h.takeOutput() == "HTTP/1.1 200 OK\r\n\r\nanything")
        h.finish()
    }

    @Test func bytesSentWithTheConnectHeadGoIntoTheTunnel() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send(Wire.connect() + "early")
        let origin = try h.acceptConnect()
        #expect(h.outputText == Wire.established)
        #expect(origin.receivedText == "early")
        h.finish()
    }

    @Test func anHTTP10ConnectGetsAnHTTP10Answer() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send("CONNECT o.test:443 HTTP/1.0\r\n\r\n")
        try h.acceptConnect()
        #expect(h.outputText == "HTTP/1.0 200 Connection established\r\n\r\n")
        h.finish()
    }

    @Test func aHalfCloseIsPassedOnInEachDirectionAndTheTunnelClosesWhenBothAreDone() throws {
        let (h, origin) = try self.tunnel()
        h.clientHalfCloses()
        #expect(origin.outputClosed && origin.isOpen)
        #expect(h.isOpen && !h.clientOutputClosed)
        // The other direction still flows.
        try origin.send("late answer")
        #expect(h.takeOutput() == "late answer")
        origin.finishSending()
        #expect(!h.isOpen)
        #expect(!origin.isOpen)
        h.finish()
    }

    @Test func theOriginFinishingFirstHalfClosesTheClientSide() throws {
        let (h, origin) = try self.tunnel()
        try origin.send("bye")
        origin.finishSending()
        #expect(h.takeOutput() == "bye")
        #expect(h.clientOutputClosed && h.isOpen)
        try h.send("still going")
        #expect(origin.takeReceived() == "still going")
        h.finish()
    }

    @Test func theOriginGoingAwayClosesTheClient() throws {
        let (h, origin) = try self.tunnel()
        origin.close()
        #expect(!h.isOpen)
        h.finish()
    }

    @Test func theClientGoingAwayClosesTheOrigin() throws {
        let (h, origin) = try self.tunnel()
        h.close()
        #expect(!origin.isOpen)
        h.finish()
    }

    @Test func aClientThatCannotTakeMoreHoldsTheOriginsReadsUntilItCan() throws {
        let (h, origin) = try self.tunnel()
        #expect(origin.readRequested)
        h.setClientWritable(false)
        try origin.send("one")
        #expect(!origin.readRequested)
        h.setClientWritable(true)
        #expect(origin.readRequested)
        #expect(h.outputText == "one")
        h.finish()
    }

    @Test func anOriginThatCannotTakeMoreHoldsTheClientsReadsUntilItCan() throws {
        let (h, origin) = try self.tunnel()
        #expect(h.clientReadRequested)
        origin.setWritable(false)
        try h.send("one")
        #expect(!h.clientReadRequested)
        origin.setWritable(true)
        #expect(h.clientReadRequested)
        #expect(origin.receivedText == "one")
        h.finish()
    }

    /// NIO's `IdleStateHandler` reads the wall clock (`NIODeadline.now()`), not the event loop's,
    /// so the tunnel idle timer cannot be moved by `advanceTime`: checked here is that the timer
    /// is there with the configured length and that its event closes both sides. (The real-time
    /// check is Tests/integration/test_timeouts.py.)
    @Test func aTunnelHasAnIdleTimerOfTheConfiguredLengthWhoseEventClosesBothSides() throws {
        let (h, origin) = try self.tunnel { $0.tunnelIdleTimeout = .seconds(42) }
        let idle = try h.channel.pipeline.syncOperations.handler(type: IdleStateHandler.self)
        #expect(idle.allTimeout == .seconds(42))
        #expect(idle.readTimeout == nil && idle.writeTimeout == nil)
        #expect(throws: (any Error).self) {
            try h.channel.pipeline.syncOperations.handler(type: ProxyConnectionHandler.self)
        }
        h.channel.pipeline.fireUserInboundEventTriggered(IdleStateHandler.IdleStateEvent.all)
        h.advanceTime(by: .zero)
        #expect(!h.isOpen)
        #expect(!origin.isOpen)
        h.finish()
    }

    @Test func noTimerOfTheHTTPConnectionOutlivesTheTunnelsStart() throws {
        let (h, origin) = try self.tunnel()
        // Head, body, response and idle deadlines would all have come by now.
        h.advanceTime(by: .minutes(5))
        #expect(h.isOpen && origin.isOpen)
        #expect(h.outputText.isEmpty)
        h.finish()
    }

    @Test func aRefusedTunnelConnectIs502AndTheConnectionTakesARequestAgain() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send(Wire.connect())
        try h.failConnect(with: IOError(errnoCode: ECONNREFUSED, reason: "connect"))
        #expect(
            h.takeOutput()
                == Wire.local(
                    502,
                    "Bad Gateway",
                    proxyStatus: "error=connection_refused; details=\"connection refused\"",
                    message: "o.test:443 refused the connection."
                )
        )
        try h.send(Wire.get())
        #expect(h.pendingConnects == [OriginRequest(host: "o.test", port: 80)])
        h.finish()
    }

    @Test func aConnectToAPortNotAllowedIs403WithoutAConnect() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send(Wire.connect("o.test:22"))
        #expect(h.statuses == [403])
        #expect(h.outputText.contains("details=\"CONNECT port not allowed\""))
        #expect(h.connects.isEmpty)
        #expect(h.isOpen)
        h.finish()
    }

    @Test func aTunnelConnectThatCompletesAfterTheClientLeftIsClosedUnused() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send(Wire.connect() + "early")
        h.close()
        let origin = try h.acceptConnect()
        #expect(!origin.isOpen)
        #expect(origin.receivedText.isEmpty)
        h.finish()
    }
}
