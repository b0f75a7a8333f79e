import Testing

@testable import PortcullisProxy

/// Absolute-form requests forwarded to scripted origins (``ConnectionHarness`` with
/// `allowsRequests`): what reaches the origin, what the client gets back, and which connection
/// carries the next request.
@Suite struct ProxyConnectionForwardingTests {
    @Test func aForwardedRequestReachesTheOriginInOriginFormWithoutProxyAuthorizationOrHopFields() throws {
        let h = try ConnectionHarness.forwarding(authenticates: true)
        try h.send(
            "GET http://o.test/a?q=1 HTTP/1.1\r\nHost: elsewhere.test\r\n" + Wire.alice
                + "Proxy-Connection: keep-alive\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
                + "User-Agent: t\r\n\r\n"
        )
        h.completeChecks()
        #expect(h.connects == [OriginRequest(host: "o.test", port: 80)])
        let origin = try h.acceptConnect()
        #expect(
            origin.receivedText == "GET /a?q=1 HTTP/1.1\r\nHost: o.test\r\nUser-Agent: t\r\nVia: 1.1 portcullis\r\n\r\n"
        )
        try origin.send("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Origin-Hop\r\nX-Origin-Hop: 1\r\n\r\nok")
        #expect(h.outputText == Wire.okRelayed)
        #expect(h.isOpen && origin.isOpen)
        h.finish()
    }

    @Test func theNextRequestGoesOverThePooledConnection() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send(Wire.get("/1"))
        let origin = try h.acceptConnect()
        try origin.send(Wire.ok)
        try h.send(Wire.get("/2"))
        #expect(h.pendingConnects.isEmpty)
        #expect(origin.receivedText == Wire.upstreamGet("/1") + Wire.upstreamGet("/2"))
        try origin.send(Wire.ok)
        #expect(h.outputText == Wire.okRelayed + Wire.okRelayed)
        #expect(h.connects.count == 1)
        h.finish()
    }

    @Test func anOriginThatClosedItsIdleConnectionIsReplacedForTheNextRequest() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send(Wire.get("/1"))
        let first = try h.acceptConnect()
        try first.send(Wire.ok)
        first.finishSending()
        #expect(!first.isOpen)
        try h.send(Wire.get("/2"))
        #expect(h.pendingConnects == [OriginRequest(host: "o.test", port: 80)])
        let second = try h.acceptConnect()
        #expect(second.receivedText == Wire.upstreamGet("/2"))
        try second.send(Wire.ok)
        #expect(h.statuses == [200, 200])
        h.finish()
    }

    @Test func aPipelinedRequestWaitsForTheOneBeforeItAndTakesItsConnection() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send(Wire.get("/1") + Wire.get("/2"))
        let origin = try h.acceptConnect()
        #expect(origin.takeReceived() == Wire.upstreamGet("/1"))
        // The second request waits as bytes: no reads until the first is answered.
        #expect(!h.clientReadRequested)
        try origin.send(Wire.ok)
        #expect(origin.takeReceived() == Wire.upstreamGet("/2"))
        try origin.send(Wire.ok)
        #expect(h.outputText == Wire.okRelayed + Wire.okRelayed)
        #expect(h.connects.count == 1)
        #expect(h.clientReadRequested)
        h.finish()
    }

    @Test func pipelinedRequestsBehindAPendingPasswordCheckWaitTheirTurn() throws {
        let h = try ConnectionHarness.forwarding(authenticates: true)
        try h.send(Wire.get("/1", Wire.alice) + Wire.get("/2", Wire.alice))
        #expect(h.shared.work.pending == 1)
        #expect(h.connects.isEmpty)
        h.completeChecks()
        let origin = try h.acceptConnect()
        #expect(origin.takeReceived() == Wire.upstreamGet("/1"))
        try origin.send(Wire.ok)
        // The second passes from the credential cache, at once, over the same connection.
        #expect(origin.takeReceived() == Wire.upstreamGet("/2"))
        try origin.send(Wire.ok)
        #expect(h.statuses == [200, 200])
        h.finish()
    }

    @Test func anHTTP10ClientGetsTheBodyDechunkedThenTheConnectionCloses() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send("GET http://o.test/a HTTP/1.0\r\n\r\n")
        let origin = try h.acceptConnect()
        #expect(origin.receivedText == "GET /a HTTP/1.1\r\nHost: o.test\r\nVia: 1.1 portcullis\r\n\r\n")
        try origin.send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        #expect(h.outputText == "HTTP/1.0 200 OK\r\nVia: 1.1 portcullis\r\nConnection: close\r\n\r\nhello")
        #expect(h.clientOutputClosed)
        h.advanceTime(by: ProxyConnectionHandler.lingerAfterResponse)
        #expect(!h.isOpen)
        h.finish()
    }

    @Test func aCloseDelimitedBodyIsRechunkedForAnHTTP11ClientWhichKeepsItsConnection() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send(Wire.get("/1"))
        let first = try h.acceptConnect()
        try first.send("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc")
        try first.send("defg")
        first.finishSending()
        #expect(
            h.takeOutput()
                == "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nVia: 1.1 portcullis\r\n\r\n"
                + "3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
        )
        #expect(!first.isOpen)
        #expect(h.isOpen && !h.clientOutputClosed)
        try h.send(Wire.get("/2"))
        let second = try h.acceptConnect()
        try second.send(Wire.ok)
        #expect(h.takeOutput() == Wire.okRelayed)
        h.finish()
    }

    @Test func anHTTP10ClientGetsACloseDelimitedBodyAsItCame() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send("GET http://o.test/a HTTP/1.0\r\n\r\n")
        let origin = try h.acceptConnect()
        try origin.send("HTTP/1.0 200 OK\r\n\r\nabc")
        origin.finishSending()
        #expect(h.outputText == "HTTP/1.0 200 OK\r\nVia: 1.1 portcullis\r\nConnection: close\r\n\r\nabc")
        #expect(h.clientOutputClosed)
        h.finish()
    }

    @Test func expect100ContinueFromTheOriginIsRelayedAndTheBodyFollows() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send(
            "POST http://o.test/up HTTP/1.1\r\nHost: o.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        let origin = try h.acceptConnect()
        #expect(
            origin.takeReceived()
                == "POST /up HTTP/1.1\r\nHost: o.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
                + "Via: 1.1 portcullis\r\n\r\n"
        )
        try origin.send("HTTP/1.1 100 Continue\r\n\r\n")
        #expect(h.takeOutput() == "HTTP/1.1 100 Continue\r\n\r\n")
        try h.send("hello")
        #expect(origin.takeReceived() == "hello")
        try origin.send(Wire.ok)
        #expect(h.takeOutput() == Wire.okRelayed)
        #expect(h.isOpen)
        h.finish()
    }

    /// The client waits for 100 Continue; a refusal must not wait for a body that will not come.
    @Test func expect100ContinueRefusedBy407ClosesWithoutWaitingForTheBody() throws {
        let h = try ConnectionHarness.forwarding(authenticates: true)
        try h.send(
            "POST http://o.test/up HTTP/1.1\r\nHost: o.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        #expect(h.statuses == [407])
        #expect(h.outputText.contains("Connection: close\r\n"))
        #expect(!h.outputText.contains("100 Continue"))
        #expect(h.clientOutputClosed)
        #expect(h.connects.isEmpty)
        h.finish()
    }

    /// The origin answered before the request body was all sent: that upstream connection is out
    /// of step, and so is the client's — both close once the response has left.
    @Test func aResponseBeforeTheWholeRequestBodyClosesBothConnectionsAfterIt() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send("POST http://o.test/up HTTP/1.1\r\nHost: o.test\r\nContent-Length: 10\r\n\r\nabc")
        let origin = try h.acceptConnect()
        #expect(origin.takeReceived().hasSuffix("\r\n\r\nabc"))
        try origin.send("HTTP/1.1 413 Payload Too Large\r\nContent-Length: 2\r\n\r\nno")
        #expect(h.outputText == "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 2\r\nVia: 1.1 portcullis\r\n\r\nno")
        #expect(!origin.isOpen)
        #expect(h.clientOutputClosed)
        // The rest of the body is read and dropped while the close lingers; nothing reaches the origin.
        try h.send("defghij")
        #expect(origin.receivedText.isEmpty)
        h.advanceTime(by: ProxyConnectionHandler.lingerAfterResponse)
        #expect(!h.isOpen)
        h.finish()
    }

    /// An origin that resets the connection before answering: 502 `connection_terminated`, and
    /// a fresh connection is not tried again.
    @Test func anOriginResetBeforeTheResponseHeadIs502AndTheClientKeepsItsConnection() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send(Wire.get())
        let origin = try h.acceptConnect()
        origin.reset()
        #expect(
            h.takeOutput()
                == Wire.local(
                    502,
                    "Bad Gateway",
                    proxyStatus: "error=connection_terminated; details=\"origin closed before answering\"",
                    message: "the origin closed the connection before sending a response."
                )
        )
        #expect(h.connects.count == 1)
        #expect(h.isOpen && !h.clientOutputClosed)
        try h.send(Wire.get("/b"))
        #expect(h.pendingConnects.count == 1)
        h.finish()
    }

    /// An origin that closes cleanly (EOF) before answering a fresh connection: 502
    /// `connection_terminated`, as for a reset — a close is not broken HTTP.
    @Test func anOriginEOFBeforeTheResponseHeadIs502ConnectionTerminated() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send(Wire.get())
        let origin = try h.acceptConnect()
        origin.finishSending()
        #expect(!origin.isOpen)
        #expect(
            h.takeOutput()
                == Wire.local(
                    502,
                    "Bad Gateway",
                    proxyStatus: "error=connection_terminated; details=\"origin closed before answering\"",
                    message: "the origin closed the connection before sending a response."
                )
        )
        #expect(h.connects.count == 1)
        #expect(h.isOpen)
        h.finish()
    }

    @Test func theOriginClosingMidBodyClosesTheClientConnection() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send(Wire.get())
        let origin = try h.acceptConnect()
        try origin.send("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        #expect(h.outputText == "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nVia: 1.1 portcullis\r\n\r\nabc")
        origin.close()
        // Part of the response is with the client: only the close can tell it the body is cut.
        #expect(!h.isOpen)
        #expect(h.outputText == "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nVia: 1.1 portcullis\r\n\r\nabc")
        h.finish()
    }

    @Test func anInvalidResponseHeadIs502WithTheReason() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send(Wire.get())
        let origin = try h.acceptConnect()
        try origin.send("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok")
        #expect(h.statuses == [502])
        #expect(h.outputText.contains("Proxy-Status: portcullis; error=http_protocol_error; details="))
        #expect(!origin.isOpen)
        h.finish()
    }

    @Test func aClientThatLeavesWhileItsPasswordIsCheckedCausesNoConnect() throws {
        let h = try ConnectionHarness.forwarding(authenticates: true)
        try h.send(Wire.get("/a", Wire.alice))
        #expect(h.shared.work.pending == 1)
        h.close()
        h.completeChecks()
        #expect(h.connects.isEmpty)
        #expect(h.outputText.isEmpty)
        h.finish()
    }

    @Test func aConnectThatCompletesAfterTheClientLeftIsClosedUnused() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send(Wire.get())
        h.close()
        let origin = try h.acceptConnect()
        #expect(!origin.isOpen)
        #expect(origin.receivedText.isEmpty)
        #expect(h.outputText.isEmpty)
        h.finish()
    }
}
