import NIOCore
import Testing

@testable import PortcullisProxy

/// The connection's deadlines, driven by the event loop's clock (`advanceTime`): request head,
/// request body, origin response, keep-alive idle; and timers that come due after the exchange
/// they were set for. Defaults: 30 s head and body, 60 s response and idle.
@Suite struct ProxyConnectionTimerTests {
    private static let headTimedOut = Wire.local(
        408,
        "Request Timeout",
        proxyStatus: "error=http_request_error; details=\"request head not complete in time\"",
        message: "the request head did not arrive within 30 s.",
        close: true
    )

    @Test func anIncompleteHeadGets408AtItsDeadlineThenALingeringClose() throws {
        let h = try ConnectionHarness.forwarding()
        h.advanceTime(by: .seconds(10))
        try h.send("GET http://o.test/a HTTP/1.1\r\nHost:")
        h.advanceTime(by: .milliseconds(29_999))
        #expect(h.outputText.isEmpty)
        h.advanceTime(by: .milliseconds(1))
        #expect(h.outputText == Self.headTimedOut)
        // Output shut, input still read (and dropped) for a while: a reset could destroy the 408.
        #expect(h.clientOutputClosed && h.isOpen)
        try h.send(" o.test\r\n\r\n")
        #expect(h.outputText == Self.headTimedOut)
        h.advanceTime(by: .milliseconds(1999))
        #expect(h.isOpen)
        h.advanceTime(by: .milliseconds(1))
        #expect(!h.isOpen)
        #expect(h.connects.isEmpty)
        h.finish()
    }

    @Test func theHeadDeadlineCountsFromTheFirstByteNotFromTheLast() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send("GET http://o.test/a HTTP/1.1\r\n")
        for i in 1..<30 {
            h.advanceTime(by: .seconds(1))
            try h.send("X-Slow-\(i): 1\r\n")
        }
        #expect(h.outputText.isEmpty)
        h.advanceTime(by: .seconds(1))
        #expect(h.statuses == [408])
        #expect(h.connects.isEmpty)
        h.finish()
    }

    @Test func theIdleDeadlineCountsFromTheEndOfTheLastExchangeAndClosesSilently() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send(Wire.get())
        let origin = try h.acceptConnect()
        h.advanceTime(by: .seconds(50))
        try origin.send(Wire.ok)
        #expect(h.takeOutput() == Wire.okRelayed)
        h.advanceTime(by: .milliseconds(59_999))
        #expect(h.isOpen)
        h.advanceTime(by: .milliseconds(1))
        #expect(!h.isOpen)
        #expect(h.outputText.isEmpty)
        h.finish()
    }

    @Test func anIdleTimeoutShorterThanTheOriginsAnswerDoesNotCutTheResponse() throws {
        let h = try ConnectionHarness.forwarding { $0.clientIdleTimeout = .seconds(1) }
        try h.send(Wire.get())
        let origin = try h.acceptConnect()
        h.advanceTime(by: .seconds(30))
        #expect(h.isOpen)
        try origin.send(Wire.ok)
        #expect(h.outputText == Wire.okRelayed)
        h.advanceTime(by: .milliseconds(999))
        #expect(h.isOpen)
        h.advanceTime(by: .milliseconds(1))
        #expect(!h.isOpen)
        h.finish()
    }

    @Test func anOriginSilentPastTheResponseDeadlineIs504AndItsConnectionClosed() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send(Wire.get())
        let origin = try h.acceptConnect()
        h.advanceTime(by: .milliseconds(59_999))
        #expect(h.outputText.isEmpty)
        h.advanceTime(by: .milliseconds(1))
        #expect(
            h.takeOutput()
                == Wire.local(
                    504,
                    "Gateway Timeout",
                    proxyStatus: "error=http_response_timeout; details=\"no response head in time\"",
                    message: "the origin did not answer within 60 s."
                )
        )
        #expect(!origin.isOpen)
        #expect(h.isOpen)
        // A late answer has nowhere to go; the next request gets a fresh connection.
        try h.send(Wire.get("/b"))
        #expect(h.pendingConnects.count == 1)
        h.finish()
    }

    @Test func theResponseDeadlineEndsWithTheHeadNotWithTheBody() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send(Wire.get())
        let origin = try h.acceptConnect()
        try origin.send("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        h.advanceTime(by: .seconds(90))
        try origin.send("cd")
        #expect(h.outputText == "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nVia: 1.1 portcullis\r\n\r\nabcd")
        #expect(h.isOpen && origin.isOpen)
        h.finish()
    }

    @Test func aTimerDueAfterTheExchangeEndedAnswersNothing() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send("POST http://o.test/up HTTP/1.1\r\nHost: o.test\r\nContent-Length: 2\r\n\r\nhi")
        let origin = try h.acceptConnect()
        h.advanceTime(by: .seconds(1))
        try origin.send(Wire.ok)
        #expect(h.takeOutput() == Wire.okRelayed)
        // The body deadline (30 s) and the response deadline (60 s) of the finished exchange pass.
        h.advanceTime(by: .milliseconds(59_999))
        #expect(h.outputText.isEmpty)
        #expect(h.isOpen)
        h.advanceTime(by: .milliseconds(1))
        #expect(!h.isOpen)
        #expect(h.outputText.isEmpty)
        h.finish()
    }

    private static let bodyTimedOut = Wire.local(
        408,
        "Request Timeout",
        proxyStatus: "error=http_request_error; details=\"request body not complete in time\"",
        message: "the request body stopped arriving: nothing came for 30 s.",
        close: true
    )

    @Test func aBodyThatNeverStartsGets408AtTheBodyDeadlineAndTheOriginConnectionCloses() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send("POST http://o.test/up HTTP/1.1\r\nHost: o.test\r\nContent-Length: 100\r\n\r\n")
        let origin = try h.acceptConnect()
        h.advanceTime(by: .milliseconds(29_999))
        #expect(h.outputText.isEmpty)
        h.advanceTime(by: .milliseconds(1))
        #expect(h.outputText == Self.bodyTimedOut)
        #expect(!origin.isOpen)
        #expect(h.clientOutputClosed)
        h.finish()
    }

    /// The deadline is checked every 30 s: bytes that came since the last check move it by a
    /// whole period, so a body that stops right after a check gets its 408 up to 60 s later.
    @Test func aBodyThatStopsGets408AtTheFirstCheckWithNothingNew() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send("POST http://o.test/up HTTP/1.1\r\nHost: o.test\r\nContent-Length: 100\r\n\r\n0123456789")
        let origin = try h.acceptConnect()
        h.advanceTime(by: .seconds(1))
        try h.send("0123456789")
        h.advanceTime(by: .milliseconds(58_999))
        #expect(h.outputText.isEmpty)
        h.advanceTime(by: .milliseconds(1))
        #expect(h.outputText == Self.bodyTimedOut)
        #expect(!origin.isOpen)
        h.finish()
    }

    /// Finding 2's second half: the 504 leaves at once and the connection, waiting for a body
    /// that never comes, closes at the body deadline.
    @Test func anOriginTimeoutDuringAnUnfinishedBodyIs504ThenTheBodyDeadlineCloses() throws {
        let h = try ConnectionHarness.forwarding {
            $0.upstreamResponseTimeout = .seconds(1)
            $0.requestBodyTimeout = .seconds(2)
        }
        try h.send("POST http://o.test/up HTTP/1.1\r\nHost: o.test\r\nContent-Length: 1000\r\n\r\n0123456789")
        let origin = try h.acceptConnect()
        h.advanceTime(by: .seconds(1))
        #expect(h.statuses == [504])
        #expect(!h.outputText.contains("Connection: close"))
        #expect(!origin.isOpen)
        // The body came with the head, so the check at 2 s sees progress; the one at 4 s does not.
        h.advanceTime(by: .milliseconds(2999))
        #expect(h.isOpen && !h.clientOutputClosed)
        h.advanceTime(by: .milliseconds(1))
        #expect(h.clientOutputClosed)
        #expect(h.statuses == [504])
        h.advanceTime(by: ProxyConnectionHandler.lingerAfterResponse)
        #expect(!h.isOpen)
        h.finish()
    }

    @Test func aBodyHeldBackByTheProxyIsNotTimedOut() throws {
        let h = try ConnectionHarness.forwarding()
        try h.send("POST http://o.test/up HTTP/1.1\r\nHost: o.test\r\nContent-Length: 10\r\n\r\n")
        // Connecting takes long: the body waits on our side, not the client's.
        h.advanceTime(by: .seconds(9))
        let origin = try h.acceptConnect()
        origin.setWritable(false)
        try h.send("01234")
        h.advanceTime(by: .seconds(50))
        #expect(h.outputText.isEmpty)
        origin.setWritable(true)
        try h.send("56789")
        #expect(origin.receivedText.hasSuffix("\r\n\r\n0123456789"))
        try origin.send(Wire.ok)
        #expect(h.outputText == Wire.okRelayed)
        h.finish()
    }
}
