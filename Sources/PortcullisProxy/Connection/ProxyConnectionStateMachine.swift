import NIOCore

/// The life of one client connection as decisions: which request is served and how far each
/// side of it got, when the client may be read, what each deadline means, when the connection
/// closes. It performs nothing; every event returns an ``Action`` that
/// ``ProxyConnectionHandler`` carries out, and time comes in with the events.
///
/// One request is served at a time: a pipelined request waits in the handler's framer until
/// the one before it is answered. The state holds the request being served (``Exchange``) and,
/// inside it, the upstream connection relaying its response: a completion that arrives after
/// its exchange ended (a connect, a timer, an origin's close) finds a state that no longer
/// holds what it was for, and gets `.none`.
///
/// Generic over the upstream connection so that tests can use a stand-in.
struct ProxyConnectionStateMachine<Upstream: AnyObject> {
    struct Settings {
        var requestHeadTimeout: TimeAmount
        var requestBodyTimeout: TimeAmount
        var clientIdleTimeout: TimeAmount
        var upstreamResponseTimeout: TimeAmount
        var maximumRequestBody: Int?
        var rejectedBodyDrainLimit: Int
        var connectPorts: Set<Int>
        /// How long a closing connection still reads (and drops) what the client sends.
        var lingerAfterResponse: TimeAmount
        /// Origin-form GET and HEAD for a ``ServedDocument`` path are answered (`serve --pac`).
        var servesDocuments = false
    }

    enum State {
        /// Between requests.
        case idle(Idle)
        /// A request is being served.
        case exchange(Exchange)
        /// The connection became a CONNECT tunnel; the tunnel's handlers own it.
        case tunnel
        /// Nothing more is parsed or answered; the socket closes when `deadline` passes at the latest.
        case closing(Closing)
        case closed
    }

    enum Idle {
        /// Waiting for the next request until `deadline` (keep-alive idle timeout).
        case waiting(deadline: NIODeadline)
        /// A request head has begun to arrive and must be complete by `deadline` (slowloris).
        case receivingHead(deadline: NIODeadline)
    }

    struct Exchange {
        let record: ProxyExchange
        var request: RequestSide
        var response: ResponseSide
        /// The connection closes once this exchange is over.
        var closeAfter: Bool
    }

    /// Whether body bytes must keep arriving, and whether some did since the last check.
    struct BodyWatch {
        var deadline: NIODeadline
        var progressed = false
    }

    enum RequestSide {
        /// The body (if any) is being read and passed on; `watch` for a body of HTTP framing.
        case receiving(BodyWatch?)
        /// The response is already decided: the rest of a small body is read and dropped.
        case discarding(BodyWatch?, dropped: Int)
        case ended
    }

    enum ResponseSide {
        /// The 407 gate decides (maybe off the event loop).
        case gating
        /// A connection to the origin (or a retry's fresh one) is being opened.
        case connecting(attempt: UInt64, tunnel: Bool)
        /// The request went upstream; its response head is due by `deadline`.
        case awaitingHead(Upstream, deadline: NIODeadline, pooled: Bool)
        /// A parent proxy answered with a 407 the proxy answers itself: that answer's body is
        /// read and dropped, then the request goes again (``challengeSkipped(reuse:now:)``).
        case skippingChallenge(Upstream, deadline: NIODeadline)
        /// The response head went to the client; the rest follows.
        case relaying(Upstream)
        /// The whole response was handed to the channel.
        case sent
    }

    struct Closing {
        /// An exchange cut off by the close: its access-log line is written when the channel goes.
        var unlogged: ProxyExchange?
        var deadline: NIODeadline?
        /// The last response still has to leave before the output side closes.
        var awaitingWrite: Bool
    }

    /// What follows the last bytes of a response.
    enum AfterResponse {
        /// The request (its body, or only its end) is still to be read: the exchange stays until
        /// it ends. `tracked`: the response is flushed now and its write tracked, so that a
        /// later close waits for it (the body may never come).
        case awaitRequestEnd(tracked: Bool)
        /// The exchange is over (log it); the connection waits for the next request.
        case keepAlive(ProxyExchange, wasConnect: Bool)
        /// The exchange is over (log it); the connection closes once the response has left.
        case close(ProxyExchange)
    }

    enum Action {
        case none
        /// Run the 407 gate for the request; it ends in ``gateAllowed()`` or ``gateRefused(close:)``.
        case runGate(ProxyExchange, RequestTarget)
        /// The proxy answers itself. `abandon`: an upstream connection to close first.
        case respond(ProxyResponse, ProxyExchange, close: Bool, abandon: Upstream?, then: AfterResponse)
        /// A request for a ``ServedDocument``: the handler answers it with ``respond(_:now:)``.
        case serveDocument(ProxyExchange)
        /// Send the request over a pooled connection if one is fit, else call ``connecting(tunnel:)``.
        case forward(ProxyExchange, OriginAuthority, pathAndQuery: String)
        /// Open a connection for the request (attempt id for ``upstreamConnected(attempt:_:now:)``).
        case connect(ProxyExchange, OriginAuthority, attempt: UInt64, tunnel: Bool)
        /// Send the request head over `upstream` (the body follows as the framer yields it).
        case sendRequest(ProxyExchange, over: Upstream)
        /// Close a channel opened for an exchange that is gone.
        case discardConnection
        /// Hand the connection over to a CONNECT tunnel (the 200 is written by the handler).
        case becomeTunnel(ProxyExchange)
        /// Pass request body bytes on.
        case sendBody(Upstream, ByteBuffer)
        /// The response's last bytes were relayed: give the upstream back (`release`) or close it.
        case finishRelay(Upstream, release: Bool, then: AfterResponse)
        /// A request body ended after its response: the exchange is over.
        case finish(AfterResponse)
        /// Close the connection: at once, or (`afterResponse`) once the last response left.
        case close(abandon: Upstream?, afterResponse: Bool)
        /// Close the socket now (a deadline of the closing connection passed).
        case closeNow
        /// The last response left: close the output side and read what still comes, until `deadline`.
        case lingerUntil(NIODeadline)
    }

    var state: State
    let settings: Settings
    /// The server is draining: no request after the current one.
    var quiescing = false
    /// A request head has been read on this connection.
    var hadRequest = false
    /// The connection is active (its deadlines count from then).
    var activated = false
    /// The client will send nothing more.
    var clientInputClosed = false
    private var lastAttempt: UInt64 = 0

    init(settings: Settings, now: NIODeadline) {
        self.settings = settings
        self.state = .idle(.waiting(deadline: now + settings.clientIdleTimeout))
    }

    // MARK: - Connection events

    /// The connection became active: the idle deadline counts from now.
    mutating func connectionActive(now: NIODeadline) {
        self.activated = true
        guard case .idle(.waiting) = self.state else { return }
        // Quiesced before it was active: it gets the drain's short wait for its first request.
        let wait =
            self.quiescing
            ? min(self.settings.clientIdleTimeout, Self.firstRequestWaitWhenDraining) : self.settings.clientIdleTimeout
        self.state = .idle(.waiting(deadline: now + wait))
    }

    /// Bytes of a head that is not complete yet were read.
    mutating func requestHeadBegan(now: NIODeadline) {
        guard case .idle(.waiting) = self.state else { return }
        self.state = .idle(.receivingHead(deadline: now + self.settings.requestHeadTimeout))
    }

    /// The client half-closed: it sends nothing more.
    mutating func clientInputEnded() -> Action {
        self.clientInputClosed = true
        switch self.state {
        case .closing:
            return .closeNow
        case .exchange(var exchange):
            if case .ended = exchange.request {
                exchange.closeAfter = true
                self.state = .exchange(exchange)
                return .none
            }
            // The client stopped sending half-way through a request.
            return self.close()
        case .idle:
            return self.close()
        case .tunnel, .closed:
            return .none
        }
    }

    /// How long a connection that has not sent its first request yet still gets to send it when
    /// the server starts draining.
    static var firstRequestWaitWhenDraining: TimeAmount { .seconds(2) }

    /// The server is shutting down: finish the current exchange, then close.
    ///
    /// A connection between two requests closes now (a client retries a request on a reused
    /// connection that closed before answering). One that has not carried a request yet — just
    /// accepted, its first request perhaps already in the socket — or is sending a head gets that
    /// request answered (with `Connection: close`): a new connection closed unanswered is a failed
    /// request for every client.
    mutating func quiesce(now: NIODeadline) -> Action {
        self.quiescing = true
        switch self.state {
        case .exchange(var exchange):
            exchange.closeAfter = true
            self.state = .exchange(exchange)
            return .none
        case .idle(.receivingHead):
            return .none
        case .idle(.waiting(let deadline)) where !self.hadRequest:
            // Before activation the deadline means nothing yet: `connectionActive` sets it.
            if self.activated {
                self.state = .idle(.waiting(deadline: min(deadline, now + Self.firstRequestWaitWhenDraining)))
            }
            return .none
        case .idle:
            return self.close()
        case .tunnel, .closing, .closed:
            return .none
        }
    }

    /// The channel went away. Returns the exchange cut off (to log) and an upstream to drop.
    mutating func channelClosed() -> (unlogged: ProxyExchange?, abandon: Upstream?, upstreamMidResponse: Bool) {
        defer { self.state = .closed }
        switch self.state {
        case .exchange(let exchange):
            switch exchange.response {
            case .awaitingHead(let upstream, _, _), .skippingChallenge(let upstream, _):
                return (exchange.record, upstream, true)
            case .relaying(let upstream):
                return (exchange.record, upstream, true)
            case .gating, .connecting, .sent:
                return (exchange.record, nil, false)
            }
        case .closing(let closing):
            return (closing.unlogged, nil, false)
        case .idle, .tunnel, .closed:
            return (nil, nil, false)
        }
    }

    /// Closes the connection (from any state but the closing ones); `afterResponse` when the
    /// last response was written and must leave first.
    mutating func close(afterResponse: Bool = false) -> Action {
        var abandon: Upstream?
        var unlogged: ProxyExchange?
        switch self.state {
        case .closing, .closed, .tunnel:
            return .none
        case .exchange(let exchange):
            unlogged = exchange.record
            switch exchange.response {
            case .awaitingHead(let upstream, _, _), .relaying(let upstream), .skippingChallenge(let upstream, _):
                abandon = upstream
            case .gating, .connecting, .sent:
                break
            }
        case .idle:
            break
        }
        self.state = .closing(Closing(unlogged: unlogged, deadline: nil, awaitingWrite: afterResponse))
        return .close(abandon: abandon, afterResponse: afterResponse)
    }

    /// ``Action/close(abandon:afterResponse:)`` with `afterResponse`: the response is flushed
    /// and must leave by the request-head deadline.
    mutating func closeWaitsForResponse(now: NIODeadline) {
        guard case .closing(var closing) = self.state else { return }
        closing.deadline = now + self.settings.requestHeadTimeout
        self.state = .closing(closing)
    }

    /// The last response was handed to the socket (or failed to be).
    mutating func responseLeft(success: Bool, now: NIODeadline) -> Action {
        guard case .closing(var closing) = self.state, closing.awaitingWrite else { return .none }
        closing.awaitingWrite = false
        guard success, !self.clientInputClosed else {
            self.state = .closing(closing)
            return .closeNow
        }
        let deadline = now + self.settings.lingerAfterResponse
        closing.deadline = min(closing.deadline ?? deadline, deadline)
        self.state = .closing(closing)
        return .lingerUntil(deadline)
    }

    // MARK: - Reading the client

    /// When the client connection may be read.
    enum ReadGate {
        case open
        case closed
        /// Only while nothing is buffered (a pipelined request waits there to be served).
        case openIfNothingBuffered
        /// Only while the upstream can take more of the body (back-pressure).
        case openIfWritable(Upstream)
    }

    /// Reads stay on while a response is relayed (a keep-alive client sends nothing then, and
    /// turning read interest off and on costs two syscalls a request).
    var readGate: ReadGate {
        switch self.state {
        case .idle, .closing:
            // In `.closing`, what the client still sends is read and dropped (a lingering close).
            return .open
        case .tunnel, .closed:
            return .closed
        case .exchange(let exchange):
            switch exchange.response {
            case .gating, .connecting:
                return .closed
            case .awaitingHead(let upstream, _, _), .relaying(let upstream), .skippingChallenge(let upstream, _):
                if case .receiving = exchange.request { return .openIfWritable(upstream) }
                return .openIfNothingBuffered
            case .sent:
                if case .ended = exchange.request { return .openIfNothingBuffered }
                return .open
            }
        }
    }

    /// Whether the framer's next event can be handled now: body bytes only once they can go
    /// somewhere, the next request's head only once the current one is answered.
    var parseGate: ReadGate {
        switch self.state {
        case .idle:
            return .open
        case .tunnel, .closed, .closing:
            return .closed
        case .exchange(let exchange):
            switch (exchange.response, exchange.request) {
            case (_, .ended), (.gating, _), (.connecting, _):
                return .closed
            case (.awaitingHead(let upstream, _, _), _), (.relaying(let upstream), _),
                (.skippingChallenge(let upstream, _), _):
                return .openIfWritable(upstream)
            case (.sent, _):
                return .open
            }
        }
    }

    /// A new id for a connection attempt (a completion for an older one finds nothing).
    mutating func nextAttempt() -> UInt64 {
        self.lastAttempt &+= 1
        return self.lastAttempt
    }
}
