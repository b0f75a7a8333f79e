import NIOCore

/// One upstream HTTP/1.1 connection as a state machine: which exchange it serves, how far that
/// exchange's response has come, whether the connection may carry another exchange, whether a
/// read waits for the owner's client, and what the owner is told when the connection ends.
///
/// Pure: ``UpstreamHandler`` turns channel events and its owner's calls into the events here and
/// carries out the actions they return. The origin's bytes are parsed by a ``ResponseFramer`` kept
/// inside; its events go into a buffer the caller owns and reuses, so a read allocates nothing.
///
/// Actions are carried out after the event returns, and carrying them out can re-enter the machine
/// (delivering a response's end detaches the owner, which can start the next exchange on this very
/// connection or close it): every event leaves the machine in a state that holds on its own.
struct UpstreamConnectionStateMachine {
    /// What an attached connection knows of its exchange (its owner is ``owner``).
    struct Exchange {
        /// False once the connection must not carry another exchange: the origin will close it
        /// (`Connection: close`, HTTP/1.0), its body runs until close, or bytes came past its end.
        var reusable: Bool
        /// The channel asked to read while the owner's client could take no more: the read waits
        /// until the client is writable again or the owner leaves.
        var readHeld: Bool
    }

    /// The connection is going away (a close was asked for, the origin finished sending, or
    /// something failed); its owner, if still attached when the channel goes inactive, is told
    /// `error`.
    struct Closing {
        /// The first failure; a later one (often the EOF that follows it) is a consequence.
        var error: (any Error)?
    }

    enum State {
        /// Not attached to an exchange: new, idle in the pool, or back from an exchange.
        case idle(reusable: Bool)
        /// Attached; its request head not sent yet.
        case attached(Exchange)
        /// The request head went out; the final response head has not come (1xx heads may have).
        case awaitingHead(Exchange)
        case receivingBody(Exchange)
        /// The framer found the response's end; the owner detaches once it has been told.
        case responseDone(Exchange)
        case closing(Closing)
        /// The channel is inactive; `error` is why, as its owner (if any) was told.
        case closed(error: (any Error)?)
    }

    enum ReadAction: Equatable {
        case read
        case wait
    }

    enum CloseAction: Equatable {
        case close
        case none
    }

    enum BytesReadAction {
        /// Bytes nobody asked for, or for no one: the connection is out of step with its origin.
        case close
        /// Deliver the events the bytes completed to `owner`; with `thenClose` (the origin broke
        /// the protocol after them), close the connection afterwards.
        case deliver(to: any UpstreamOwner, thenClose: Bool)
    }

    enum InputClosedAction {
        /// Deliver what the end of input completed (the end of a close-delimited body) to `owner`.
        case deliver(to: any UpstreamOwner)
        case none
    }

    enum ChannelInactiveAction {
        case reportClosed(to: any UpstreamOwner, error: (any Error)?)
        case none
    }

    private(set) var state: State = .idle(reusable: true)
    private var framer = ResponseFramer()
    /// The owner that received events in the current read burst: it still gets the burst's
    /// readComplete (its cue to flush) when its exchange ended and it detached inside the burst.
    /// Outside the state because a burst spans exchanges.
    private weak var burstOwner: (any UpstreamOwner)?
    /// The owner of the attached (or closing) connection. Held weakly — the owner holds this
    /// connection for its exchange, not the reverse — and outside the state: copying a weak
    /// reference with every change of state costs two atomic operations on its side table.
    private weak var attachedOwner: (any UpstreamOwner)?

    init() {}

    /// The owner the connection is attached to, also while it closes (it is told why).
    var owner: (any UpstreamOwner)? {
        switch self.state {
        case .attached, .awaitingHead, .receivingBody, .responseDone, .closing:
            return self.attachedOwner
        case .idle, .closed:
            return nil
        }
    }

    /// Whether the connection may carry another exchange once the current one (if any) ends.
    var isReusable: Bool {
        switch self.state {
        case .idle(let reusable):
            return reusable
        case .attached(let exchange), .awaitingHead(let exchange), .receivingBody(let exchange),
            .responseDone(let exchange):
            return exchange.reusable
        case .closing, .closed:
            return false
        }
    }

    // MARK: - The owner's calls

    /// `owner` takes the connection for one exchange.
    mutating func attached(to owner: any UpstreamOwner) {
        switch self.state {
        case .idle(let reusable):
            self.attachedOwner = owner
            self.state = .attached(Exchange(reusable: reusable, readHeld: false))
        case .attached, .awaitingHead, .receivingBody, .responseDone, .closing:
            // A closing connection's owner is told why when the channel goes inactive.
            self.attachedOwner = owner
        case .closed:
            break
        }
    }

    /// The owner's exchange is over (or abandoned); a read held for its client is issued now.
    mutating func detached() -> ReadAction {
        self.attachedOwner = nil
        switch self.state {
        case .attached(let exchange), .responseDone(let exchange):
            self.state = .idle(reusable: exchange.reusable)
            return exchange.readHeld ? .read : .wait
        case .awaitingHead(let exchange), .receivingBody(let exchange):
            // Left in the middle of a response: the rest of it would be read as the next one's.
            self.state = .idle(reusable: false)
            return exchange.readHeld ? .read : .wait
        case .idle, .closing, .closed:
            return .wait
        }
    }

    /// A request head went out; its response is framed for a HEAD request (no body) and, for an
    /// HTTP/1.0 client, with chunked bodies decoded.
    mutating func headSent(isHEAD: Bool, dechunk: Bool) {
        self.framer.expectResponse(toHead: isHEAD, dechunk: dechunk)
        switch self.state {
        case .attached(let exchange), .awaitingHead(let exchange), .receivingBody(let exchange),
            .responseDone(let exchange):
            self.state = .awaitingHead(exchange)
        case .idle, .closing, .closed:
            // Only the framer changes: bytes close an idle connection anyway, and the owner of a
            // closing one is told at the close that its response never came.
            break
        }
    }

    /// The origin's response head says it will close the connection (`Connection: close`, or
    /// an HTTP/1.0 status line).
    mutating func originWillClose() {
        switch self.state {
        case .idle:
            self.state = .idle(reusable: false)
        case .attached, .awaitingHead, .receivingBody, .responseDone:
            self.modifyExchange { $0.reusable = false }
        case .closing, .closed:
            break
        }
    }

    mutating func closeRequested() -> CloseAction {
        self.beginClosing(error: nil)
    }

    /// The owner's client can take more again: a read held for it goes out.
    mutating func ownerBecameWritable() -> ReadAction {
        self.modifyExchange { exchange -> ReadAction in
            guard exchange.readHeld else { return .wait }
            exchange.readHeld = false
            return .read
        } ?? .wait
    }

    // MARK: - Channel events

    /// The channel wants to read; `ownerIsWritable` is whether the owner's client can take more
    /// (reads wait for it: back-pressure from the client to the origin).
    mutating func readRequested(ownerIsWritable: Bool) -> ReadAction {
        let hasOwner = self.attachedOwner != nil
        return self.modifyExchange { exchange -> ReadAction in
            guard hasOwner, !ownerIsWritable else { return .read }
            exchange.readHeld = true
            return .wait
        } ?? .read
    }

    /// Bytes from the origin; the events they complete are appended to `events`.
    mutating func bytesRead(_ buffer: ByteBuffer, into events: inout [ResponseFramer.Event]) -> BytesReadAction {
        var exchange: Exchange
        switch self.state {
        case .attached(let current), .awaitingHead(let current), .receivingBody(let current),
            .responseDone(let current):
            exchange = current
        case .idle, .closing, .closed:
            // An idle connection must stay silent; anything else means it is out of step.
            _ = self.beginClosing(error: nil)
            return .close
        }
        guard let owner = self.attachedOwner else {
            _ = self.beginClosing(error: nil)
            return .close
        }
        if self.burstOwner !== owner { self.burstOwner = owner }
        do {
            try self.framer.feed(buffer) { events.append($0) }
        } catch {
            // The owner gets what came before the error, then this error when the channel closes.
            self.state = .closing(Closing(error: error))
            return .deliver(to: owner, thenClose: true)
        }
        if !self.framer.reusable { exchange.reusable = false }
        switch self.framer.progress {
        case .noRequest: self.state = .attached(exchange)
        case .awaitingHead: self.state = .awaitingHead(exchange)
        case .inBody: self.state = .receivingBody(exchange)
        case .complete: self.state = .responseDone(exchange)
        }
        return .deliver(to: owner, thenClose: false)
    }

    /// The end of a read burst: the owner to tell (its cue to flush what the burst wrote).
    mutating func readComplete() -> (any UpstreamOwner)? {
        let owner = self.burstOwner ?? self.owner
        self.burstOwner = nil
        return owner
    }

    /// The origin sent its last byte (an EOF, or the channel going inactive); the connection
    /// carries nothing more. What that completes (the end of a close-delimited body) is appended
    /// to `events`; a response it cuts short becomes the error its owner is told at the close.
    mutating func inputClosed(into events: inout [ResponseFramer.Event]) -> InputClosedAction {
        var closing: Closing
        switch self.state {
        case .idle, .attached, .awaitingHead, .receivingBody, .responseDone:
            closing = Closing(error: nil)
        case .closing(let current):
            closing = current
        case .closed:
            return .none
        }
        var action = InputClosedAction.none
        // After a protocol error the framer stopped where the origin went wrong: that error is
        // what the owner is told, not the "closed before a response" an EOF now implies.
        if closing.error == nil, self.framer.isAwaitingResponse {
            let owner = self.attachedOwner
            do {
                if owner != nil {
                    try self.framer.feedEOF { events.append($0) }
                } else {
                    try self.framer.feedEOF { _ in }
                }
            } catch {
                closing.error = error
            }
            if let owner {
                self.burstOwner = owner
                action = .deliver(to: owner)
            }
        }
        self.state = .closing(closing)
        return action
    }

    mutating func errorCaught(_ error: any Error) -> CloseAction {
        self.beginClosing(error: error)
    }

    /// The channel closed. Follows ``inputClosed(into:)`` (and the delivery it asked for): an
    /// owner still attached now is told why.
    mutating func channelInactive() -> ChannelInactiveAction {
        let owner = self.owner
        let error: (any Error)?
        switch self.state {
        case .idle, .attached, .awaitingHead, .receivingBody, .responseDone:
            error = nil
        case .closing(let closing):
            error = closing.error
        case .closed:
            return .none
        }
        self.attachedOwner = nil
        self.state = .closed(error: error)
        guard let owner else { return .none }
        return .reportClosed(to: owner, error: error)
    }

    // MARK: - Helpers

    /// Moves to `.closing`, keeping the owner and the first error.
    private mutating func beginClosing(error: (any Error)?) -> CloseAction {
        switch self.state {
        case .idle, .attached, .awaitingHead, .receivingBody, .responseDone:
            self.state = .closing(Closing(error: error))
        case .closing(var closing):
            if closing.error == nil { closing.error = error }
            self.state = .closing(closing)
        case .closed:
            return .none
        }
        return .close
    }

    /// Runs `body` on the exchange of an attached state, which stays in its phase; nil when the
    /// connection is not attached.
    private mutating func modifyExchange<Result>(_ body: (inout Exchange) -> Result) -> Result? {
        let result: Result
        switch self.state {
        case .attached(var exchange):
            result = body(&exchange)
            self.state = .attached(exchange)
        case .awaitingHead(var exchange):
            result = body(&exchange)
            self.state = .awaitingHead(exchange)
        case .receivingBody(var exchange):
            result = body(&exchange)
            self.state = .receivingBody(exchange)
        case .responseDone(var exchange):
            result = body(&exchange)
            self.state = .responseDone(exchange)
        case .idle, .closing, .closed:
            return nil
        }
        return result
    }
}
