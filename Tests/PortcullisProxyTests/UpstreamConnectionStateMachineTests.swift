import NIOCore
import Testing

@testable import PortcullisProxy

@Suite struct UpstreamConnectionStateMachineTests {
    typealias Machine = UpstreamConnectionStateMachine
    typealias Call = RecordingUpstreamOwner.Call

    /// Held by the suite for the whole test: the machine holds owners weakly, as the handler does.
    let owner = RecordingUpstreamOwner()
    let other = RecordingUpstreamOwner()

    /// A state with its data, owners reduced to whether there is one: comparable as a whole.
    enum Shape: Equatable {
        case idle(reusable: Bool)
        case attached(reusable: Bool, readHeld: Bool)
        case awaitingHead(reusable: Bool, readHeld: Bool)
        case receivingBody(reusable: Bool, readHeld: Bool)
        case responseDone(reusable: Bool, readHeld: Bool)
        case closing(owned: Bool, error: String?)
        case closed(error: String?)
    }

    static func shape(of machine: Machine) -> Shape {
        switch machine.state {
        case .idle(let reusable): return .idle(reusable: reusable)
        case .attached(let e): return .attached(reusable: e.reusable, readHeld: e.readHeld)
        case .awaitingHead(let e): return .awaitingHead(reusable: e.reusable, readHeld: e.readHeld)
        case .receivingBody(let e): return .receivingBody(reusable: e.reusable, readHeld: e.readHeld)
        case .responseDone(let e): return .responseDone(reusable: e.reusable, readHeld: e.readHeld)
        case .closing(let c):
            return .closing(owned: machine.owner != nil, error: RecordingUpstreamOwner.describe(c.error))
        case .closed(let error): return .closed(error: RecordingUpstreamOwner.describe(error))
        }
    }

    /// The states every event is tried in, each reached through the machine's own events.
    enum Start: CaseIterable {
        case idle, attached, awaitingHead, receivingBody, responseDone, closing, closed
    }

    static let middleOfResponse = "origin closed the connection in the middle of a response"

    static func machine(in start: Start, owner: RecordingUpstreamOwner) -> Machine {
        var machine = Machine()
        var events: [ResponseFramer.Event] = []
        if start == .idle { return machine }
        machine.attached(to: owner)
        if start == .attached { return machine }
        machine.headSent(isHEAD: false, dechunk: false)
        switch start {
        case .receivingBody:
            _ = machine.bytesRead(
                ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"),
                into: &events
            )
        case .responseDone:
            _ = machine.bytesRead(
                ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
                into: &events
            )
        case .closing, .closed:
            // Closed while a response is awaited: the EOF that follows is news to the owner.
            _ = machine.closeRequested()
            if start == .closed {
                _ = machine.inputClosed(into: &events)
                _ = machine.channelInactive()
            }
        default:
            break
        }
        // The burst that brought the machine here is over.
        _ = machine.readComplete()
        return machine
    }

    /// Bytes fed in `start`: what was delivered (nil for a close) and the state after.
    private func feed(_ text: String, in start: Start) -> (delivered: [Call]?, thenClose: Bool, shape: Shape) {
        var machine = Self.machine(in: start, owner: owner)
        var events: [ResponseFramer.Event] = []
        switch machine.bytesRead(ByteBuffer(string: text), into: &events) {
        case .close:
            #expect(events.isEmpty)
            return (nil, true, Self.shape(of: machine))
        case .deliver(let target, let thenClose):
            #expect(target === owner)
            return (events.map(RecordingUpstreamOwner.call(for:)), thenClose, Self.shape(of: machine))
        }
    }

    // MARK: - Every state × every event

    @Test(arguments: Start.allCases)
    func bytesRead(in start: Start) {
        let r = self.feed("HTTP/1.1 204 No Content\r\n\r\n", in: start)
        switch start {
        case .idle:
            #expect(r.delivered == nil && r.shape == .closing(owned: false, error: nil))
        case .attached:
            // Before the request went out: nothing to frame them as, and never reused after.
            #expect(r.delivered == [] && !r.thenClose && r.shape == .attached(reusable: false, readHeld: false))
        case .awaitingHead:
            #expect(r.delivered == [.head(204, .none), .end] && !r.thenClose)
            #expect(r.shape == .responseDone(reusable: true, readHeld: false))
        case .receivingBody:
            // Five bytes end the body; the rest is past the response's end.
            #expect(r.delivered == [.body("HTTP/"), .end] && !r.thenClose)
            #expect(r.shape == .responseDone(reusable: false, readHeld: false))
        case .responseDone:
            #expect(r.delivered == [] && !r.thenClose && r.shape == .responseDone(reusable: false, readHeld: false))
        case .closing:
            #expect(r.delivered == nil && r.shape == .closing(owned: true, error: nil))
        case .closed:
            #expect(r.delivered == nil && r.shape == .closed(error: nil))
        }
    }

    @Test(arguments: Start.allCases)
    func attachedToAnotherOwner(in start: Start) {
        let (first, second) = (self.owner, self.other)
        var machine = Self.machine(in: start, owner: first)
        let before = Self.shape(of: machine)
        machine.attached(to: second)
        switch start {
        case .idle:
            #expect(Self.shape(of: machine) == .attached(reusable: true, readHeld: false))
            #expect(machine.owner === second)
        case .closed:
            #expect(Self.shape(of: machine) == before && machine.owner == nil)
        default:
            #expect(Self.shape(of: machine) == before && machine.owner === second)
        }
    }

    @Test(arguments: Start.allCases)
    func headSent(in start: Start) {
        var machine = Self.machine(in: start, owner: owner)
        let before = Self.shape(of: machine)
        machine.headSent(isHEAD: false, dechunk: false)
        switch start {
        case .attached, .awaitingHead, .receivingBody, .responseDone:
            #expect(Self.shape(of: machine) == .awaitingHead(reusable: true, readHeld: false))
        case .idle, .closing, .closed:
            #expect(Self.shape(of: machine) == before)
        }
    }

    @Test(arguments: Start.allCases)
    func readComplete(in start: Start) {
        var machine = Self.machine(in: start, owner: owner)
        let before = Self.shape(of: machine)
        let told = machine.readComplete()
        switch start {
        case .idle, .closed: #expect(told == nil)
        default: #expect(told === owner)
        }
        #expect(Self.shape(of: machine) == before)
    }

    @Test(arguments: Start.allCases)
    func readRequestedWhileTheOwnersClientIsFull(in start: Start) {
        var machine = Self.machine(in: start, owner: owner)
        let before = Self.shape(of: machine)
        let action = machine.readRequested(ownerIsWritable: false)
        switch start {
        case .attached:
            #expect(action == .wait && Self.shape(of: machine) == .attached(reusable: true, readHeld: true))
        case .awaitingHead:
            #expect(action == .wait && Self.shape(of: machine) == .awaitingHead(reusable: true, readHeld: true))
        case .receivingBody:
            #expect(action == .wait && Self.shape(of: machine) == .receivingBody(reusable: true, readHeld: true))
        case .responseDone:
            #expect(action == .wait && Self.shape(of: machine) == .responseDone(reusable: true, readHeld: true))
        case .idle, .closing, .closed:
            #expect(action == .read && Self.shape(of: machine) == before)
        }
    }

    @Test(arguments: Start.allCases)
    func readRequestedWhileTheOwnersClientIsWritable(in start: Start) {
        var machine = Self.machine(in: start, owner: owner)
        let before = Self.shape(of: machine)
        #expect(machine.readRequested(ownerIsWritable: true) == .read)
        #expect(Self.shape(of: machine) == before)
    }

    @Test(arguments: Start.allCases)
    func ownerBecameWritableWithNoReadHeld(in start: Start) {
        var machine = Self.machine(in: start, owner: owner)
        let before = Self.shape(of: machine)
        #expect(machine.ownerBecameWritable() == .wait)
        #expect(Self.shape(of: machine) == before)
    }

    @Test(arguments: Start.allCases)
    func detached(in start: Start) {
        var machine = Self.machine(in: start, owner: owner)
        #expect(machine.detached() == .wait)
        #expect(machine.owner == nil)
        let expected: Shape
        switch start {
        case .idle, .attached, .responseDone: expected = .idle(reusable: true)
        // Left mid-response: what is left of it would be read as the next response.
        case .awaitingHead, .receivingBody: expected = .idle(reusable: false)
        case .closing: expected = .closing(owned: false, error: nil)
        case .closed: expected = .closed(error: nil)
        }
        #expect(Self.shape(of: machine) == expected)
    }

    @Test(arguments: Start.allCases)
    func inputClosed(in start: Start) {
        var machine = Self.machine(in: start, owner: owner)
        var events: [ResponseFramer.Event] = []
        let action = machine.inputClosed(into: &events)
        var deliveredTo: (any UpstreamOwner)?
        if case .deliver(let target) = action { deliveredTo = target }
        #expect(events.isEmpty)
        switch start {
        case .idle:
            #expect(deliveredTo == nil && Self.shape(of: machine) == .closing(owned: false, error: nil))
        case .attached, .responseDone:
            // No response awaited: the EOF is no news.
            #expect(deliveredTo == nil && Self.shape(of: machine) == .closing(owned: true, error: nil))
        case .awaitingHead, .closing:
            #expect(deliveredTo === owner)
            #expect(Self.shape(of: machine) == .closing(owned: true, error: nil))
        case .receivingBody:
            #expect(deliveredTo === owner)
            #expect(Self.shape(of: machine) == .closing(owned: true, error: Self.middleOfResponse))
        case .closed:
            #expect(deliveredTo == nil && Self.shape(of: machine) == .closed(error: nil))
        }
    }

    @Test(arguments: Start.allCases)
    func errorCaught(in start: Start) {
        var machine = Self.machine(in: start, owner: owner)
        let action = machine.errorCaught(UpstreamTestError(description: "connection reset"))
        switch start {
        case .idle:
            #expect(action == .close && Self.shape(of: machine) == .closing(owned: false, error: "connection reset"))
        case .closed:
            #expect(action == .none && Self.shape(of: machine) == .closed(error: nil))
        default:
            #expect(action == .close && Self.shape(of: machine) == .closing(owned: true, error: "connection reset"))
        }
    }

    @Test(arguments: Start.allCases)
    func channelInactive(in start: Start) {
        var machine = Self.machine(in: start, owner: owner)
        let action = machine.channelInactive()
        var reportedTo: (any UpstreamOwner)?
        var reportedError: String?
        if case .reportClosed(let target, let error) = action {
            (reportedTo, reportedError) = (target, RecordingUpstreamOwner.describe(error))
        }
        switch start {
        case .idle:
            #expect(reportedTo == nil && Self.shape(of: machine) == .closed(error: nil))
        case .closed:
            #expect(reportedTo == nil && Self.shape(of: machine) == .closed(error: nil))
        default:
            #expect(reportedTo === owner && reportedError == nil && Self.shape(of: machine) == .closed(error: nil))
        }
        #expect(machine.owner == nil && !machine.isReusable)
    }

    @Test(arguments: Start.allCases)
    func closeRequested(in start: Start) {
        var machine = Self.machine(in: start, owner: owner)
        let action = machine.closeRequested()
        switch start {
        case .idle:
            #expect(action == .close && Self.shape(of: machine) == .closing(owned: false, error: nil))
        case .closed:
            #expect(action == .none && Self.shape(of: machine) == .closed(error: nil))
        default:
            #expect(action == .close && Self.shape(of: machine) == .closing(owned: true, error: nil))
        }
        #expect(!machine.isReusable)
    }

    @Test(arguments: Start.allCases)
    func originWillClose(in start: Start) {
        var machine = Self.machine(in: start, owner: owner)
        let before = Self.shape(of: machine)
        machine.originWillClose()
        let expected: Shape
        switch start {
        case .idle: expected = .idle(reusable: false)
        case .attached: expected = .attached(reusable: false, readHeld: false)
        case .awaitingHead: expected = .awaitingHead(reusable: false, readHeld: false)
        case .receivingBody: expected = .receivingBody(reusable: false, readHeld: false)
        case .responseDone: expected = .responseDone(reusable: false, readHeld: false)
        case .closing, .closed: expected = before
        }
        #expect(Self.shape(of: machine) == expected)
        #expect(!machine.isReusable)
    }

    // MARK: - Sequences

    @Test func aKeepAliveExchangeLeavesTheConnectionIdleAndReusable() {
        var machine = Machine()
        var events: [ResponseFramer.Event] = []
        #expect(machine.isReusable && machine.owner == nil)
        machine.attached(to: owner)
        machine.headSent(isHEAD: false, dechunk: false)
        let action = machine.bytesRead(
            ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            into: &events
        )
        guard case .deliver(let target, thenClose: false) = action else {
            Issue.record("expected a delivery, got \(action)")
            return
        }
        #expect(target === owner)
        #expect(events.map(RecordingUpstreamOwner.call(for:)) == [.head(200, .length(2)), .body("ok"), .end])
        #expect(machine.detached() == .wait)
        #expect(Self.shape(of: machine) == .idle(reusable: true))
        // The owner that had the burst still flushes at its end.
        #expect(machine.readComplete() === owner)
        #expect(machine.readComplete() == nil)
    }

    @Test func informationalHeadsKeepTheMachineAwaitingTheFinalOne() {
        var machine = Self.machine(in: .awaitingHead, owner: owner)
        var events: [ResponseFramer.Event] = []
        _ = machine.bytesRead(ByteBuffer(string: "HTTP/1.1 100 Continue\r\n\r\n"), into: &events)
        #expect(events.map(RecordingUpstreamOwner.call(for:)) == [.informational(100)])
        #expect(Self.shape(of: machine) == .awaitingHead(reusable: true, readHeld: false))
    }

    @Test func theResponseToAHeadRequestHasNoBody() {
        var machine = Self.machine(in: .attached, owner: owner)
        var events: [ResponseFramer.Event] = []
        machine.headSent(isHEAD: true, dechunk: false)
        _ = machine.bytesRead(ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), into: &events)
        #expect(events.map(RecordingUpstreamOwner.call(for:)) == [.head(200, .none), .end])
        #expect(Self.shape(of: machine) == .responseDone(reusable: true, readHeld: false))
    }

    @Test func chunkedBodiesAreDecodedWhenTheClientSpeaksHTTP10() {
        var machine = Self.machine(in: .attached, owner: owner)
        var events: [ResponseFramer.Event] = []
        machine.headSent(isHEAD: false, dechunk: true)
        let response = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        _ = machine.bytesRead(ByteBuffer(string: response), into: &events)
        #expect(events.map(RecordingUpstreamOwner.call(for:)) == [.head(200, .chunked), .body("ok"), .end])
    }

    @Test func bytesOnAnIdleConnectionCloseIt() {
        var machine = Machine()
        var events: [ResponseFramer.Event] = []
        guard case .close = machine.bytesRead(ByteBuffer(string: "HTTP/1.1 200 OK\r\n\r\n"), into: &events) else {
            Issue.record("expected a close")
            return
        }
        #expect(Self.shape(of: machine) == .closing(owned: false, error: nil))
        #expect(machine.channelInactive().isNone)
    }

    @Test func aProtocolErrorFollowedByEOFReportsTheProtocolError() {
        var machine = Self.machine(in: .awaitingHead, owner: owner)
        var events: [ResponseFramer.Event] = []
        let action = machine.bytesRead(ByteBuffer(string: "HTTP/1.1 2x0 Nope\r\n\r\n"), into: &events)
        guard case .deliver(let target, thenClose: true) = action else {
            Issue.record("expected a delivery then a close, got \(action)")
            return
        }
        #expect(target === owner && events.isEmpty)
        #expect(Self.shape(of: machine) == .closing(owned: true, error: "malformed status line"))
        // The EOF the close brings is not news: the framer stopped where the origin went wrong.
        guard case .none = machine.inputClosed(into: &events) else {
            Issue.record("an EOF after a protocol error delivered something")
            return
        }
        #expect(machine.readComplete() === owner)
        guard case .reportClosed(let reported, let error) = machine.channelInactive() else {
            Issue.record("the owner was not told")
            return
        }
        #expect(reported === owner)
        #expect(RecordingUpstreamOwner.describe(error) == "malformed status line")
    }

    @Test func aSecondErrorDoesNotReplaceTheFirst() {
        var machine = Self.machine(in: .receivingBody, owner: owner)
        var events: [ResponseFramer.Event] = []
        #expect(machine.errorCaught(UpstreamTestError(description: "first")) == .close)
        #expect(machine.errorCaught(UpstreamTestError(description: "second")) == .close)
        _ = machine.inputClosed(into: &events)
        guard case .reportClosed(_, let error) = machine.channelInactive() else {
            Issue.record("the owner was not told")
            return
        }
        #expect(RecordingUpstreamOwner.describe(error) == "first")
        #expect(machine.errorCaught(UpstreamTestError(description: "late")) == .none)
        #expect(Self.shape(of: machine) == .closed(error: "first"))
    }

    @Test func anOwnerThatDetachesInsideTheBurstStillGetsItsReadComplete() {
        let (first, second) = (self.owner, self.other)
        var machine = Self.machine(in: .awaitingHead, owner: first)
        var events: [ResponseFramer.Event] = []
        _ = machine.bytesRead(ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), into: &events)
        // The response ended: the owner detached and its pipelined request took the connection.
        #expect(machine.detached() == .wait)
        machine.attached(to: second)
        machine.headSent(isHEAD: false, dechunk: false)
        #expect(machine.readComplete() === first)
        #expect(machine.readComplete() === second)
    }

    @Test func theRestOfAResponseAfterItsOwnerLeftClosesTheConnection() {
        var machine = Self.machine(in: .receivingBody, owner: owner)
        var events: [ResponseFramer.Event] = []
        // A response timeout or a client that went away.
        #expect(machine.detached() == .wait)
        guard case .close = machine.bytesRead(ByteBuffer(string: "world"), into: &events) else {
            Issue.record("expected a close")
            return
        }
        #expect(events.isEmpty)
        // The EOF it ends with has no one to tell.
        guard case .none = machine.inputClosed(into: &events) else {
            Issue.record("an EOF without an owner delivered something")
            return
        }
        #expect(events.isEmpty && machine.readComplete() == nil)
        #expect(machine.channelInactive().isNone)
    }

    @Test func aCloseDelimitedBodyEndsAtEOFIsDeliveredAndThenTheConnectionCloses() {
        var machine = Self.machine(in: .awaitingHead, owner: owner)
        var events: [ResponseFramer.Event] = []
        _ = machine.bytesRead(ByteBuffer(string: "HTTP/1.0 200 OK\r\n\r\nall of"), into: &events)
        #expect(events.map(RecordingUpstreamOwner.call(for:)) == [.head(200, .untilClose), .body("all of")])
        #expect(Self.shape(of: machine) == .receivingBody(reusable: false, readHeld: false))
        #expect(machine.readComplete() === owner)
        events.removeAll()
        guard case .deliver(let target) = machine.inputClosed(into: &events) else {
            Issue.record("the body's end was not delivered")
            return
        }
        #expect(target === owner)
        #expect(events.map(RecordingUpstreamOwner.call(for:)) == [.end])
        #expect(Self.shape(of: machine) == .closing(owned: true, error: nil))
        // Told the end, the owner leaves; it still flushes, and is not told of the close.
        #expect(machine.detached() == .wait)
        #expect(machine.readComplete() === owner)
        #expect(machine.closeRequested() == .close)
        #expect(machine.channelInactive().isNone)
        #expect(Self.shape(of: machine) == .closed(error: nil))
    }

    @Test func connectionCloseFromTheOriginMakesTheConnectionUnusable() {
        var machine = Self.machine(in: .awaitingHead, owner: owner)
        var events: [ResponseFramer.Event] = []
        let response = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        _ = machine.bytesRead(ByteBuffer(string: response), into: &events)
        #expect(machine.isReusable)
        // The owner reads the head's `Connection: close`.
        machine.originWillClose()
        #expect(machine.detached() == .wait)
        #expect(Self.shape(of: machine) == .idle(reusable: false))
        #expect(!machine.isReusable)
    }

    @Test func aReadWaitsWhileTheOwnersClientIsFullAndGoesOutWhenItDrains() {
        var machine = Self.machine(in: .receivingBody, owner: owner)
        #expect(machine.readRequested(ownerIsWritable: false) == .wait)
        #expect(machine.readRequested(ownerIsWritable: false) == .wait)
        #expect(machine.ownerBecameWritable() == .read)
        #expect(Self.shape(of: machine) == .receivingBody(reusable: true, readHeld: false))
        #expect(machine.ownerBecameWritable() == .wait)
    }

    @Test func detachingWithAHeldReadIssuesIt() {
        var machine = Self.machine(in: .responseDone, owner: owner)
        #expect(machine.readRequested(ownerIsWritable: false) == .wait)
        #expect(machine.detached() == .read)
        #expect(Self.shape(of: machine) == .idle(reusable: true))
        // Idle, nobody's client to wait for.
        #expect(machine.readRequested(ownerIsWritable: false) == .read)
    }

    @Test func anOwnerGoneWithoutDetachingIsTreatedAsNone() {
        var machine = Machine()
        var events: [ResponseFramer.Event] = []
        do {
            let gone = RecordingUpstreamOwner()
            machine.attached(to: gone)
            machine.headSent(isHEAD: false, dechunk: false)
        }
        #expect(machine.owner == nil)
        #expect(machine.readRequested(ownerIsWritable: false) == .read)
        guard case .close = machine.bytesRead(ByteBuffer(string: "HTTP/1.1 200 OK\r\n"), into: &events) else {
            Issue.record("expected a close")
            return
        }
        #expect(machine.readComplete() == nil)
    }
}

extension UpstreamConnectionStateMachine.ChannelInactiveAction {
    fileprivate var isNone: Bool {
        if case .none = self { return true }
        return false
    }
}
