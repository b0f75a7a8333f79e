import NIOCore
import Testing

@testable import PortcullisProxy

/// A parent proxy's 407 answered by the proxy: when the request may go again, what happens to
/// the 407's body, the connection and the deadlines.
@Suite struct ProxyConnectionStateMachineParentTests {
    typealias T = ProxyConnectionStateMachineTests
    static let start = T.start

    /// A GET (no body) whose head went to a parent and whose answer is due.
    func awaitingGET() throws -> T.Built {
        var built = try T.build(.awaitingHead, request: T.get)
        _ = built.machine.requestEnd(now: Self.start)
        return built
    }

    @Test func a407ForABodilessRequestIsSkippedThenSentAgainOnTheSameConnection() throws {
        var built = try self.awaitingGET()
        let challenged = built.machine.parentChallenged()
        #expect(challenged)
        #expect(T.stateName(built.machine) == "skippingChallenge")
        #expect(built.machine.isSkippingChallenge)
        // The 407's body is not the client's.
        #expect(!built.machine.isRelaying)
        #expect(built.machine.upstream === built.upstream)
        let later = Self.start + .seconds(1)
        guard case .sendRequest(_, let upstream) = built.machine.challengeSkipped(reuse: true, now: later) else {
            Issue.record("the request should go again on the same connection")
            return
        }
        #expect(upstream === built.upstream)
        #expect(T.stateName(built.machine) == "awaitingHead")
        // A fresh deadline for the new answer.
        #expect(built.machine.nextDeadline == later + T.settings.upstreamResponseTimeout)
    }

    @Test func aParentThatClosesGetsTheRequestOnANewConnection() throws {
        var built = try self.awaitingGET()
        let challenged = built.machine.parentChallenged()
        #expect(challenged)
        guard
            case .connect(_, let authority, let attempt, tunnel: false) = built.machine.challengeSkipped(
                reuse: false,
                now: Self.start
            )
        else {
            Issue.record("a new connection should be opened")
            return
        }
        #expect(authority.host == "o.test" && attempt != built.attempt)
        #expect(T.stateName(built.machine) == "connecting")
    }

    @Test func aRequestWhoseBodyWentOutCannotGoAgain() throws {
        var built = try T.build(.awaitingHead, request: T.post)
        _ = built.machine.requestBody(ByteBuffer(string: "part of the body"), now: Self.start)
        let challenged = built.machine.parentChallenged()
        #expect(!challenged)
        #expect(T.stateName(built.machine) == "awaitingHead")
        // Not yet fully read either: no replay while the body still comes.
        var unread = try T.build(.awaitingHead, request: T.post)
        let unreadChallenged = unread.machine.parentChallenged()
        #expect(!unreadChallenged)
    }

    @Test func nothingToSkipOutsideAnAwaitedAnswer() throws {
        for fixture in [T.Fixture.idle, .gating, .connecting, .relaying, .tunnel, .closing, .closed] {
            var built = try T.build(fixture, request: T.get)
            let before = T.stateName(built.machine)
            let challenged = built.machine.parentChallenged()
            #expect(!challenged, "\(fixture)")
            guard case .none = built.machine.challengeSkipped(reuse: true, now: Self.start) else {
                Issue.record("\(fixture): nothing was being skipped")
                continue
            }
            #expect(T.stateName(built.machine) == before)
        }
    }

    @Test func aParentSlowToFinishIts407TimesOutLikeAnyAnswer() throws {
        var built = try self.awaitingGET()
        let challenged = built.machine.parentChallenged()
        #expect(challenged)
        let deadline = try #require(built.machine.nextDeadline)
        guard
            case .respond(let response, _, _, let abandon, _) = built.machine.timerFired(
                now: deadline,
                readsPaused: false
            )
        else {
            Issue.record("a 504 expected")
            return
        }
        #expect(response.status == .gatewayTimeout)
        #expect(abandon === built.upstream)
    }

    @Test func aParentClosingInTheMiddleOfIts407IsA502() throws {
        var built = try self.awaitingGET()
        let challenged = built.machine.parentChallenged()
        #expect(challenged)
        guard
            case .respond(let response, _, _, let abandon, _) = built.machine.upstreamClosed(
                protocolError: nil,
                now: Self.start
            )
        else {
            Issue.record("a 502 expected")
            return
        }
        #expect(response.status == .badGateway && response.proxyError == "connection_terminated")
        #expect(abandon === built.upstream)
    }

    @Test func theClientLeavingWhileA407IsSkippedDropsTheUpstream() throws {
        var built = try self.awaitingGET()
        let challenged = built.machine.parentChallenged()
        #expect(challenged)
        let closed = built.machine.channelClosed()
        #expect(closed.abandon === built.upstream && closed.unlogged != nil)
    }
}
