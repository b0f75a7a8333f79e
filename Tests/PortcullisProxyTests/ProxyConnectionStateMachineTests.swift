import NIOCore
import Testing

@testable import PortcullisProxy

/// The connection's decisions without a channel: every state the machine can be in, every
/// event it can receive there, time moved by hand.
@Suite struct ProxyConnectionStateMachineTests {
    final class Upstream {}
    typealias Machine = ProxyConnectionStateMachine<Upstream>

    static let start = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
    static let settings = Machine.Settings(
        requestHeadTimeout: .seconds(10),
        requestBodyTimeout: .seconds(30),
        clientIdleTimeout: .seconds(60),
        upstreamResponseTimeout: .seconds(60),
        maximumRequestBody: 1000,
        rejectedBodyDrainLimit: 100,
        connectPorts: [443],
        lingerAfterResponse: .seconds(2)
    )

    static let get = "GET http://o.test/ HTTP/1.1\r\nHost: o.test\r\n\r\n"
    static let post = "POST http://o.test/ HTTP/1.1\r\nHost: o.test\r\nContent-Length: 50\r\n\r\n"
    static let connect = "CONNECT o.test:443 HTTP/1.1\r\nHost: o.test:443\r\n\r\n"

    /// The states a test can start from, each reached through the events that lead there.
    enum Fixture: CaseIterable {
        case idle, receivingHead, gating, connecting, awaitingHead, relaying, discarding, tunnel, closing, closed
    }

    struct Built {
        var machine: Machine
        var upstream = Upstream()
        var attempt: UInt64 = 0
        var record: ProxyExchange?
    }

    static func record(_ text: String, at now: NIODeadline = start) throws -> ProxyExchange {
        ProxyExchange(head: try RequestHead.parse(text), started: now)
    }

    static func machine() -> Machine {
        var machine = Machine(settings: Self.settings, now: .uptimeNanoseconds(0))
        machine.connectionActive(now: Self.start)
        return machine
    }

    static func build(_ fixture: Fixture, request: String = post) throws -> Built {
        var built = Built(machine: Self.machine())
        let now = Self.start
        switch fixture {
        case .idle:
            return built
        case .receivingHead:
            built.machine.requestHeadBegan(now: now)
            return built
        case .closing:
            _ = built.machine.close()
            return built
        case .closed:
            _ = built.machine.channelClosed()
            return built
        default:
            break
        }
        let record = try Self.record(fixture == .tunnel ? Self.connect : request)
        built.record = record
        guard case .runGate = built.machine.requestHead(record, now: now) else {
            Issue.record("no gate for \(fixture)")
            return built
        }
        if fixture == .gating { return built }
        if fixture == .discarding {
            _ = built.machine.gateRefused(.badRequest("no"), close: false, now: now)
            return built
        }
        let allowed = built.machine.gateAllowed(now: now)
        if fixture == .tunnel {
            guard case .connect(_, _, let attempt, tunnel: true) = allowed else {
                Issue.record("no tunnel connect: \(allowed)")
                return built
            }
            _ = built.machine.upstreamConnected(attempt: attempt, nil, now: now)
            return built
        }
        guard case .forward(_, let authority, _) = allowed,
            case .connect(_, _, let attempt, tunnel: false) = built.machine.upstreamNeeded(authority)
        else {
            Issue.record("no forward")
            return built
        }
        built.attempt = attempt
        if fixture == .connecting { return built }
        _ = built.machine.upstreamConnected(attempt: attempt, built.upstream, now: now)
        if fixture == .awaitingHead { return built }
        _ = built.machine.responseHead(forcesClose: false)
        return built
    }

    static func stateName(_ machine: Machine) -> String {
        switch machine.state {
        case .idle(.waiting): return "idle"
        case .idle(.receivingHead): return "receivingHead"
        case .exchange(let exchange):
            switch exchange.response {
            case .gating: return "gating"
            case .connecting: return "connecting"
            case .awaitingHead: return "awaitingHead"
            case .skippingChallenge: return "skippingChallenge"
            case .relaying: return "relaying"
            case .sent: return "sent"
            }
        case .tunnel: return "tunnel"
        case .closing: return "closing"
        case .closed: return "closed"
        }
    }

    // MARK: - Completions that arrive late

    /// A connect, a gate verdict or a response event for an exchange that is not (or no
    /// longer) waiting for it finds nothing to act on, in every state.
    @Test(arguments: Fixture.allCases)
    func aCompletionForSomethingTheStateDoesNotHoldDoesNothing(fixture: Fixture) throws {
        var built = try Self.build(fixture)
        let before = Self.stateName(built.machine)
        guard case .discardConnection = built.machine.upstreamConnected(attempt: 999, Upstream(), now: Self.start)
        else {
            Issue.record("a connection for an unknown attempt must be closed")
            return
        }
        #expect(built.machine.upstreamConnectFailed(attempt: 999, .badRequest("x"), now: Self.start).isNone)
        if fixture != .gating {
            #expect(built.machine.gateAllowed(now: Self.start).isNone)
            #expect(built.machine.gateRefused(.badRequest("x"), close: false, now: Self.start).isNone)
            #expect(built.machine.upstreamAcquired(Upstream(), now: Self.start).isNone)
        }
        if fixture != .awaitingHead {
            #expect(built.machine.responseHead(forcesClose: false) == nil)
        }
        if fixture != .relaying {
            #expect(built.machine.responseEnd(now: Self.start).isNone)
        }
        #expect(Self.stateName(built.machine) == before)
    }

    @Test func theClientClosingWhileTheGateDecidesLeavesTheVerdictNothingToAnswer() throws {
        var built = try Self.build(.gating)
        let (unlogged, abandon, _) = built.machine.channelClosed()
        #expect(unlogged === built.record)
        #expect(abandon == nil)
        #expect(!built.machine.isGating)
        #expect(built.machine.gateAllowed(now: Self.start).isNone)
        #expect(built.machine.gateRefused(.badRequest("x"), close: false, now: Self.start).isNone)
        #expect(built.machine.timerFired(now: Self.start + .hours(1), readsPaused: false).isNone)
    }

    @Test func aConnectThatSucceedsAfterTheClientLeftIsClosed() throws {
        var built = try Self.build(.connecting)
        _ = built.machine.close()
        #expect(built.machine.upstreamConnected(attempt: built.attempt, Upstream(), now: Self.start).isDiscard)
    }

    // MARK: - Reads and parsing

    @Test(arguments: [
        (Fixture.idle, "open", "open"),
        (.receivingHead, "open", "open"),
        (.gating, "closed", "closed"),
        (.connecting, "closed", "closed"),
        (.awaitingHead, "openIfWritable", "openIfWritable"),
        (.relaying, "openIfWritable", "openIfWritable"),
        (.discarding, "open", "open"),
        (.tunnel, "closed", "closed"),
        (.closing, "open", "closed"),
        (.closed, "closed", "closed"),
    ])
    func readsAndParsingFollowTheState(fixture: Fixture, read: String, parse: String) throws {
        let built = try Self.build(fixture)
        #expect(built.machine.readGate.name == read)
        #expect(built.machine.parseGate.name == parse)
    }

    /// A pipelined request behind one that is being served waits: once this request's end was
    /// read, reads go on only while nothing is buffered and nothing more is parsed.
    @Test func aRequestWhoseEndWasReadLetsNothingMoreBeParsedUntilItIsAnswered() throws {
        var built = try Self.build(.awaitingHead, request: Self.get)
        #expect(built.machine.requestEnd(now: Self.start).isNone)
        #expect(built.machine.readGate.name == "openIfNothingBuffered")
        #expect(built.machine.parseGate.name == "closed")
        _ = built.machine.responseHead(forcesClose: false)
        #expect(built.machine.parseGate.name == "closed")
        guard case .finishRelay(_, release: true, then: .keepAlive) = built.machine.responseEnd(now: Self.start) else {
            Issue.record("the response's end must give the upstream back and keep the connection")
            return
        }
        #expect(built.machine.parseGate.name == "open")
    }
}

extension ProxyConnectionStateMachine.Action {
    var isNone: Bool {
        if case .none = self { return true }
        return false
    }
    var isDiscard: Bool {
        if case .discardConnection = self { return true }
        return false
    }
}

extension ProxyConnectionStateMachine.ReadGate {
    var name: String {
        switch self {
        case .open: return "open"
        case .closed: return "closed"
        case .openIfNothingBuffered: return "openIfNothingBuffered"
        case .openIfWritable: return "openIfWritable"
        }
    }
}
