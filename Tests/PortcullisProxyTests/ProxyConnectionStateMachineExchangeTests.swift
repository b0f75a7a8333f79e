import NIOCore
import Testing

@testable import PortcullisProxy

/// Exchanges through the machine: the gate's verdicts, the origin's answers and failures, the
/// proxy's own responses and what follows them.
@Suite struct ProxyConnectionStateMachineExchangeTests {
    typealias T = ProxyConnectionStateMachineTests
    typealias Machine = T.Machine
    let now = T.start

    // MARK: - 407 and the retry on the same connection

    @Test(arguments: [T.get, T.connect])
    func a407ThenTheRetryOnTheSameConnection(request: String) throws {
        var machine = T.machine()
        let first = try T.record(request)
        #expect(machine.requestHead(first, now: self.now).isRunGate)
        // Answered before the request's end was parsed: the exchange waits for it.
        guard
            case .respond(_, _, close: false, abandon: nil, then: .awaitRequestEnd(tracked: false)) =
                machine.gateRefused(.badRequest("407 stand-in"), close: false, now: self.now)
        else {
            Issue.record("a 407 keeps the connection")
            return
        }
        guard case .finish(.keepAlive(let done, let wasConnect)) = machine.requestEnd(now: self.now) else {
            Issue.record("the request's end ends the exchange")
            return
        }
        #expect(done === first)
        // After a CONNECT that got no tunnel the framer must read a request again.
        #expect(wasConnect == first.isConnect)
        #expect(T.stateName(machine) == "idle")
        #expect(machine.nextDeadline == self.now + .seconds(60))
        let retry = try T.record(request)
        #expect(machine.requestHead(retry, now: self.now).isRunGate)
    }

    @Test func aRefusalThatClosesTracksItsWriteAndClosesAfterIt() throws {
        var machine = T.machine()
        _ = machine.requestHead(try T.record(T.get), now: self.now)
        _ = machine.requestEnd(now: self.now)
        guard
            case .respond(_, _, close: true, abandon: nil, then: .close) =
                machine.gateRefused(.lockedOut(retryAfter: .seconds(5)), close: true, now: self.now)
        else {
            Issue.record("a lockout closes after its 429")
            return
        }
        #expect(T.stateName(machine) == "closing")
        machine.closeWaitsForResponse(now: self.now)
        #expect(machine.nextDeadline == self.now + .seconds(10))
        guard case .lingerUntil(let until) = machine.responseLeft(success: true, now: self.now + .seconds(1)) else {
            Issue.record("a response that left is followed by a lingering close")
            return
        }
        #expect(until == self.now + .seconds(3))
        #expect(machine.timerFired(now: self.now + .seconds(2), readsPaused: false).isNone)
        #expect(machine.timerFired(now: self.now + .seconds(3), readsPaused: false).isCloseNow)
    }

    @Test func aResponseThatFailedToLeaveClosesAtOnce() throws {
        var machine = T.machine()
        _ = machine.close(afterResponse: true)
        #expect(machine.responseLeft(success: false, now: self.now).isCloseNow)
    }

    @Test func aClientThatHalfClosedGetsNoLingeringClose() throws {
        var machine = T.machine()
        _ = machine.requestHead(try T.record(T.get), now: self.now)
        _ = machine.requestEnd(now: self.now)
        #expect(machine.clientInputEnded().isNone)
        guard
            case .respond(_, _, close: _, abandon: nil, then: .close) =
                machine.gateRefused(.badRequest("x"), close: false, now: self.now)
        else {
            Issue.record("a client that stopped sending is closed after its answer")
            return
        }
        #expect(machine.responseLeft(success: true, now: self.now).isCloseNow)
    }

    // MARK: - Bodies of refused requests

    @Test func aSmallBodyOfARefusedRequestIsReadAndDropped() throws {
        var built = try T.build(.discarding)
        #expect(built.machine.requestBody(ByteBuffer(repeating: 1, count: 50), now: self.now).isNone)
        guard case .finish(.keepAlive) = built.machine.requestEnd(now: self.now) else {
            Issue.record("the dropped body's end keeps the connection")
            return
        }
    }

    @Test func aBodyOfUnknownLengthIsNotWaitedFor() throws {
        let request = "POST http://o.test/ HTTP/1.1\r\nHost: o.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        var machine = T.machine()
        _ = machine.requestHead(try T.record(request), now: self.now)
        guard
            case .respond(_, _, close: true, abandon: nil, then: .close) =
                machine.gateRefused(.badRequest("x"), close: false, now: self.now)
        else {
            Issue.record("a body of unknown length is not read: the connection closes after the answer")
            return
        }
    }

    @Test func droppingMoreThanTheDrainLimitClosesTheConnection() throws {
        let request = "POST http://o.test/ HTTP/1.1\r\nHost: o.test\r\nContent-Length: 100\r\n\r\n"
        var machine = T.machine()
        _ = machine.requestHead(try T.record(request), now: self.now)
        guard
            case .respond(_, _, close: false, abandon: nil, then: .awaitRequestEnd(tracked: true)) =
                machine.gateRefused(.badRequest("x"), close: false, now: self.now)
        else {
            Issue.record("a small body is read and dropped")
            return
        }
        #expect(machine.requestBody(ByteBuffer(repeating: 1, count: 100), now: self.now).isNone)
        guard case .finish(.close) = machine.requestBody(ByteBuffer(repeating: 1, count: 1), now: self.now) else {
            Issue.record("past the drain limit the connection closes")
            return
        }
    }

    @Test func aClientWaitingFor100ContinueIsNotWaitedFor() throws {
        let request = "PUT http://o.test/ HTTP/1.1\r\nHost: o.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        var machine = T.machine()
        _ = machine.requestHead(try T.record(request), now: self.now)
        guard
            case .respond(_, _, close: true, abandon: nil, then: .close) =
                machine.gateRefused(.badRequest("x"), close: false, now: self.now)
        else {
            Issue.record("the body will not come: the connection closes after the answer")
            return
        }
    }

    @Test func aTargetThatIsNotAbsoluteIsRefusedWithoutTheGate() throws {
        var machine = T.machine()
        guard
            case .respond(let response, _, close: false, abandon: nil, then: _) = machine.requestHead(
                try T.record("GET /x HTTP/1.1\r\nHost: o.test\r\n\r\n"),
                now: self.now
            )
        else {
            Issue.record("origin-form is a 400")
            return
        }
        #expect(response.status == .badRequest)
    }

    @Test func aConnectToAPortNotAllowedIs403() throws {
        var machine = T.machine()
        _ = machine.requestHead(try T.record("CONNECT o.test:22 HTTP/1.1\r\nHost: o.test:22\r\n\r\n"), now: self.now)
        guard case .respond(let response, _, _, _, _) = machine.gateAllowed(now: self.now) else {
            Issue.record("port 22 is not a CONNECT port here")
            return
        }
        #expect(response.status == .forbidden)
    }

    // MARK: - The origin

    @Test func theOriginClosingMidResponseClosesTheClient() throws {
        var built = try T.build(.relaying)
        guard
            case .close(let abandon, afterResponse: false) = built.machine.upstreamClosed(
                protocolError: nil,
                now: self.now
            ),
            abandon === built.upstream
        else {
            Issue.record("a response cut off can only be signalled by closing")
            return
        }
    }

    @Test func theOriginClosingBeforeAnsweringIs502() throws {
        var built = try T.build(.awaitingHead, request: T.get)
        _ = built.machine.requestEnd(now: self.now)
        guard
            case .respond(let response, _, close: false, abandon: let abandon?, then: .keepAlive) =
                built.machine.upstreamClosed(protocolError: nil, now: self.now)
        else {
            Issue.record("a fresh connection that closed without answering: 502")
            return
        }
        #expect(abandon === built.upstream)
        #expect(response.proxyError == "connection_terminated")
    }

    @Test func aReusedConnectionThatWasClosedIsRetriedOnceForAnIdempotentRequest() throws {
        var machine = T.machine()
        let record = try T.record(T.get)
        _ = machine.requestHead(record, now: self.now)
        _ = machine.requestEnd(now: self.now)
        guard case .forward = machine.gateAllowed(now: self.now) else { return }
        let pooled = T.Upstream()
        #expect(machine.upstreamAcquired(pooled, now: self.now).isSendRequest)
        guard
            case .connect(_, _, let attempt, tunnel: false) = machine.upstreamClosed(protocolError: nil, now: self.now)
        else {
            Issue.record("one retry on a fresh connection")
            return
        }
        let fresh = T.Upstream()
        #expect(machine.upstreamConnected(attempt: attempt, fresh, now: self.now).isSendRequest)
        // The fresh one closing too is a 502: one retry only.
        guard case .respond(let response, _, _, _, _) = machine.upstreamClosed(protocolError: nil, now: self.now) else {
            Issue.record("no second retry")
            return
        }
        #expect(response.status == .badGateway)
    }

    @Test func aRequestWithABodyIsNotRetried() throws {
        var built = try T.build(.awaitingHead)
        _ = built.machine.requestBody(ByteBuffer(repeating: 1, count: 50), now: self.now)
        _ = built.machine.requestEnd(now: self.now)
        guard case .respond = built.machine.upstreamClosed(protocolError: nil, now: self.now) else {
            Issue.record("a POST is not sent twice")
            return
        }
    }

    @Test func aProtocolErrorIsReportedAs502() throws {
        var built = try T.build(.awaitingHead, request: T.get)
        let error = ProxyResponse(status: .badGateway, proxyError: "http_protocol_error", details: "x", message: "x")
        guard
            case .respond(let response, _, _, _, _) = built.machine.upstreamClosed(protocolError: error, now: self.now)
        else {
            Issue.record("a broken response is a 502")
            return
        }
        #expect(response.proxyError == "http_protocol_error")
    }

    @Test func anAnswerBeforeTheWholeBodyClosesBothConnections() throws {
        var built = try T.build(.relaying)
        guard case .finishRelay(_, release: false, then: .close) = built.machine.responseEnd(now: self.now) else {
            Issue.record("the upstream and the client connection are out of step")
            return
        }
    }

    @Test func aFramingThatNeedsTheCloseSaysSoInTheHead() throws {
        var built = try T.build(.awaitingHead)
        #expect(built.machine.responseHead(forcesClose: true) == true)
    }

    @Test func aBodyOverTheLimitIs413BeforeTheResponseAndACloseAfter() throws {
        var waiting = try T.build(
            .awaitingHead,
            request: "POST http://o.test/ HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        #expect(waiting.machine.requestBody(ByteBuffer(repeating: 1, count: 900), now: self.now).isSendBody)
        guard
            case .respond(let response, _, close: true, abandon: _?, then: .close) =
                waiting.machine.requestBody(ByteBuffer(repeating: 1, count: 200), now: self.now)
        else {
            Issue.record("413 and close")
            return
        }
        #expect(response.status == .payloadTooLarge)
        var relaying = try T.build(
            .relaying,
            request: "POST http://o.test/ HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        guard case .close = relaying.machine.requestBody(ByteBuffer(repeating: 1, count: 1001), now: self.now) else {
            Issue.record("past the limit mid-response: close")
            return
        }
    }

    // MARK: - Shutdown and the client's half-close

    @Test func quiescingBetweenTwoRequestsClosesAtOnce() throws {
        var machine = T.machine()
        _ = machine.requestHead(try T.record(T.get), now: self.now)
        _ = machine.gateRefused(.badRequest("407 stand-in"), close: false, now: self.now)
        guard case .finish(.keepAlive) = machine.requestEnd(now: self.now) else {
            Issue.record("kept alive")
            return
        }
        // A client retries a request on a reused connection that closed unanswered.
        guard case .close(abandon: nil, afterResponse: false) = machine.quiesce(now: self.now) else {
            Issue.record("nothing to finish")
            return
        }
    }

    @Test func quiescingANewConnectionWaitsBrieflyForItsFirstRequestAndAnswersIt() throws {
        var machine = T.machine()
        // Just accepted: its first request may already be in the socket.
        #expect(machine.quiesce(now: self.now + .seconds(1)).isNone)
        #expect(T.stateName(machine) == "idle")
        #expect(machine.nextDeadline == self.now + .seconds(3))
        let first = try T.record(T.get)
        #expect(machine.requestHead(first, now: self.now + .seconds(2)).isRunGate)
        _ = machine.requestEnd(now: self.now + .seconds(2))
        // Answered, then closed: no request after it.
        guard
            case .respond(_, _, close: true, abandon: nil, then: .close) =
                machine.gateRefused(.badRequest("407 stand-in"), close: false, now: self.now + .seconds(2))
        else {
            Issue.record("the answer closes the connection")
            return
        }
    }

    @Test func aNewConnectionThatSendsNothingWhileDrainingClosesAfterTheWait() {
        var machine = T.machine()
        #expect(machine.quiesce(now: self.now).isNone)
        #expect(machine.timerFired(now: self.now + .milliseconds(1999), readsPaused: false).isNone)
        #expect(machine.timerFired(now: self.now + .seconds(2), readsPaused: false).isCloseNow)
        // The idle deadline is never pushed later by the drain.
        var late = T.machine()
        #expect(late.quiesce(now: self.now + .milliseconds(59_500)).isNone)
        #expect(late.nextDeadline == self.now + .seconds(60))
    }

    @Test func aConnectionQuiescedBeforeItIsActiveGetsTheWaitFromActivation() {
        // The drain can reach a connection whose activation is still queued on its event loop.
        var machine = Machine(settings: T.settings, now: .uptimeNanoseconds(0))
        #expect(machine.quiesce(now: self.now).isNone)
        #expect(machine.timerFired(now: self.now, readsPaused: false).isNone)
        machine.connectionActive(now: self.now + .seconds(1))
        #expect(machine.nextDeadline == self.now + .seconds(3))
        #expect(machine.timerFired(now: self.now + .seconds(2), readsPaused: false).isNone)
        #expect(machine.timerFired(now: self.now + .seconds(3), readsPaused: false).isCloseNow)
    }

    @Test func quiescingMidHeadAnswersThatRequest() throws {
        var built = try T.build(.receivingHead)
        #expect(built.machine.quiesce(now: self.now).isNone)
        #expect(T.stateName(built.machine) == "receivingHead")
        let record = try T.record(T.get)
        #expect(built.machine.requestHead(record, now: self.now).isRunGate)
        guard case .exchange(let exchange) = built.machine.state else {
            Issue.record("an exchange")
            return
        }
        #expect(exchange.closeAfter)
    }

    @Test func quiescingFinishesTheExchangeThenCloses() throws {
        var built = try T.build(.relaying, request: T.get)
        #expect(built.machine.quiesce(now: self.now).isNone)
        _ = built.machine.requestEnd(now: self.now)
        guard case .finishRelay(_, release: true, then: .close) = built.machine.responseEnd(now: self.now) else {
            Issue.record("closed after the exchange")
            return
        }
    }

    @Test func aHalfCloseMidRequestClosesAndAfterTheRequestWaitsForTheAnswer() throws {
        var midBody = try T.build(.awaitingHead)
        guard case .close = midBody.machine.clientInputEnded() else {
            Issue.record("the request can never be complete")
            return
        }
        var answered = try T.build(.closing)
        #expect(answered.machine.clientInputEnded().isCloseNow)
    }
}

extension ProxyConnectionStateMachine.Action {
    var isRunGate: Bool {
        if case .runGate = self { return true }
        return false
    }
    var isCloseNow: Bool {
        if case .closeNow = self { return true }
        return false
    }
    var isSendRequest: Bool {
        if case .sendRequest = self { return true }
        return false
    }
    var isSendBody: Bool {
        if case .sendBody = self { return true }
        return false
    }
}
