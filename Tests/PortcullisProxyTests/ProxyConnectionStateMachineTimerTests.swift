import NIOCore
import Testing

@testable import PortcullisProxy

/// The connection's deadlines: which one applies in which state and what its passing does.
@Suite struct ProxyConnectionStateMachineTimerTests {
    typealias T = ProxyConnectionStateMachineTests
    let now = T.start

    @Test(arguments: [
        (T.Fixture.idle, 60 as Int64?),
        (.receivingHead, 10),
        (.gating, 30),
        (.connecting, 30),
        (.awaitingHead, 30),
        (.relaying, 30),
        (.discarding, 30),
        (.tunnel, nil),
        (.closing, nil),
        (.closed, nil),
    ])
    func theDeadlineThatAppliesInEachState(fixture: T.Fixture, seconds: Int64?) throws {
        let built = try T.build(fixture)
        #expect(built.machine.nextDeadline == seconds.map { self.now + .seconds($0) })
    }

    @Test func anIdleConnectionClosesSilentlyAtItsDeadline() {
        var machine = T.machine()
        #expect(machine.timerFired(now: self.now + .seconds(59), readsPaused: false).isNone)
        #expect(machine.timerFired(now: self.now + .seconds(60), readsPaused: false).isCloseNow)
    }

    @Test func anIncompleteHeadGets408AndTheConnectionCloses() {
        var machine = T.machine()
        machine.requestHeadBegan(now: self.now)
        guard
            case .respond(let response, _, close: true, abandon: nil, then: .close) =
                machine.timerFired(now: self.now + .seconds(10), readsPaused: false)
        else {
            Issue.record("408 and close")
            return
        }
        #expect(response.status == .requestTimeout)
        #expect(response.details == "request head not complete in time")
    }

    @Test func aBodyThatKeepsArrivingMovesItsDeadline() throws {
        var built = try T.build(.awaitingHead)
        _ = built.machine.requestBody(ByteBuffer(repeating: 1, count: 10), now: self.now)
        #expect(built.machine.timerFired(now: self.now + .seconds(30), readsPaused: false).isNone)
        #expect(built.machine.nextDeadline == self.now + .seconds(60))
        // Nothing since: the next check gives up with a 408 (no response has begun).
        guard
            case .respond(let response, _, close: true, abandon: _?, then: .close) =
                built.machine.timerFired(now: self.now + .seconds(60), readsPaused: false)
        else {
            Issue.record("408 for a body that stopped")
            return
        }
        #expect(response.status == .requestTimeout)
    }

    /// While the proxy itself is not reading (a password check, a connect, an origin slow to
    /// take the body), the body's silence is not the client's fault.
    @Test(arguments: [T.Fixture.gating, .connecting, .awaitingHead])
    func aBodyWaitingOnTheProxyIsNotTimedOut(fixture: T.Fixture) throws {
        var built = try T.build(fixture)
        #expect(built.machine.timerFired(now: self.now + .seconds(30), readsPaused: true).isNone)
        #expect(built.machine.nextDeadline == self.now + .seconds(60) || fixture == .awaitingHead)
    }

    @Test func aBodyThatStopsMidResponseClosesTheConnection() throws {
        var built = try T.build(.relaying)
        guard
            case .close(_?, afterResponse: false) = built.machine.timerFired(
                now: self.now + .seconds(30),
                readsPaused: false
            )
        else {
            Issue.record("a response is under way: close")
            return
        }
    }

    @Test func aDroppedBodyThatStopsClosesAfterTheAnswerLeft() throws {
        var built = try T.build(.discarding)
        guard
            case .close(nil, afterResponse: true) = built.machine.timerFired(
                now: self.now + .seconds(30),
                readsPaused: false
            )
        else {
            Issue.record("the answer leaves first")
            return
        }
    }

    @Test func anOriginThatDoesNotAnswerIs504() throws {
        var built = try T.build(.awaitingHead, request: T.get)
        _ = built.machine.requestEnd(now: self.now)
        #expect(built.machine.nextDeadline == self.now + .seconds(60))
        #expect(built.machine.timerFired(now: self.now + .seconds(59), readsPaused: false).isNone)
        guard
            case .respond(let response, _, close: false, abandon: let abandon?, then: .keepAlive) =
                built.machine.timerFired(now: self.now + .seconds(60), readsPaused: false)
        else {
            Issue.record("504, the connection kept")
            return
        }
        #expect(abandon === built.upstream)
        #expect(response.status == .gatewayTimeout)
    }

    /// A timer armed for an exchange that ended meanwhile finds the next state's deadline.
    @Test func aTimerFiringAfterTheExchangeEndedDoesNothing() throws {
        var built = try T.build(.awaitingHead, request: T.get)
        _ = built.machine.requestEnd(now: self.now)
        _ = built.machine.responseHead(forcesClose: false)
        _ = built.machine.responseEnd(now: self.now + .seconds(5))
        #expect(built.machine.timerFired(now: self.now + .seconds(60), readsPaused: false).isNone)
        #expect(built.machine.nextDeadline == self.now + .seconds(65))
    }

    @Test func aClosingConnectionIsCutOffIfItsResponseDoesNotLeave() {
        var machine = T.machine()
        _ = machine.close(afterResponse: true)
        machine.closeWaitsForResponse(now: self.now)
        #expect(machine.timerFired(now: self.now + .seconds(9), readsPaused: false).isNone)
        #expect(machine.timerFired(now: self.now + .seconds(10), readsPaused: false).isCloseNow)
    }
}
