import NIOCore

// The client's side of an exchange: its head, its body, the gate's verdict and the proxy's own
// responses.
extension ProxyConnectionStateMachine {
    /// A request head was read: its target is checked, then the gate runs.
    mutating func requestHead(_ record: ProxyExchange, now: NIODeadline) -> Action {
        guard case .idle = self.state else { return .none }
        self.hadRequest = true
        let head = record.head
        // The body must keep arriving (slow-body guard): checked each time the deadline passes.
        let watch =
            head.framing != .none && !record.isConnect
            ? BodyWatch(deadline: now + self.settings.requestBodyTimeout) : nil
        self.state = .exchange(
            Exchange(
                record: record,
                request: .receiving(watch),
                response: .gating,
                // HTTP/1.0 clients get one response per connection: framing by close is the
                // only framing every 1.0 client understands.
                closeAfter: self.quiescing || !head.keepAlive
            )
        )
        switch RequestTarget.parse(head.target, isConnect: record.isConnect) {
        case .success(.origin(let path))
        where self.settings.servesDocuments && (head.method == .get || head.method == .head)
            && ServedDocument.isServedPath(path):
            return .serveDocument(record)
        case .success(.origin), .success(.asterisk):
            return self.respond(
                .badRequest(
                    "this is a forward proxy: send absolute-form requests (GET http://host/path HTTP/1.1) or CONNECT host:port."
                ),
                now: now
            )
        case .failure(let error):
            return self.respond(.badRequest(Self.describe(targetError: error)), now: now)
        case .success(let target):
            record.target = target
            return .runGate(record, target)
        }
    }

    private static func describe(targetError: RequestTarget.ParseError) -> String {
        switch targetError {
        case .unsupportedScheme(let scheme):
            return
                "the \(scheme) scheme is not forwarded; use CONNECT for https (clients do this when given an http:// proxy URL)."
        case .userinfoNotAllowed: return "the request target must not contain user information (user@host)."
        case .invalidHost: return "the request target has no valid host."
        case .invalidPort: return "the request target has an invalid host or port."
        case .connectNeedsAuthority: return "CONNECT takes host:port as its target."
        case .malformed: return "the request target is not an absolute http:// URI."
        }
    }

    /// Request body bytes were read. (`now` is read only if the exchange ends here: this runs
    /// for every part of every body.)
    mutating func requestBody(_ buffer: ByteBuffer, now: @autoclosure () -> NIODeadline) -> Action {
        guard case .exchange(var exchange) = self.state else { return .none }
        exchange.record.requestBodyBytes += buffer.readableBytes
        switch exchange.request {
        case .ended:
            return .none
        case .receiving(var watch):
            watch?.progressed = true
            exchange.request = .receiving(watch)
            switch exchange.response {
            case .awaitingHead(let upstream, _, _), .relaying(let upstream), .skippingChallenge(let upstream, _):
                if let limit = self.settings.maximumRequestBody, exchange.record.requestBodyBytes > limit {
                    // A chunked body that grew past the limit: stopped before it all reaches the origin.
                    exchange.closeAfter = true
                    exchange.request = .ended
                    self.state = .exchange(exchange)
                    return self.respond(.bodyTooLarge(limit: limit), now: now())
                }
                self.state = .exchange(exchange)
                return .sendBody(upstream, buffer)
            case .gating, .connecting, .sent:
                self.state = .exchange(exchange)
                return .none
            }
        case .discarding(var watch, let dropped):
            watch?.progressed = true
            let total = dropped + buffer.readableBytes
            guard total <= self.settings.rejectedBodyDrainLimit else {
                // Not worth reading more of a body nobody will see: the connection goes.
                exchange.closeAfter = true
                exchange.request = .ended
                return .finish(self.finish(exchange, now: now()))
            }
            exchange.request = .discarding(watch, dropped: total)
            self.state = .exchange(exchange)
            return .none
        }
    }

    /// The request's end was read. (`now` is read only if the exchange ends here.)
    mutating func requestEnd(now: @autoclosure () -> NIODeadline) -> Action {
        guard case .exchange(var exchange) = self.state else { return .none }
        switch exchange.request {
        case .ended:
            return .none
        case .receiving:
            exchange.request = .ended
            self.state = .exchange(exchange)
            return .none
        case .discarding:
            exchange.request = .ended
            return .finish(self.finish(exchange, now: now()))
        }
    }

    /// A request that cannot be parsed (or whose head did not arrive in time): answered if
    /// nothing was yet, then the connection closes — the next request's start cannot be found.
    mutating func refuse(_ response: ProxyResponse, now: NIODeadline) -> Action {
        switch self.state {
        case .idle:
            let record = ProxyExchange(head: .unparsable, started: now)
            self.state = .exchange(Exchange(record: record, request: .ended, response: .gating, closeAfter: true))
            return self.respond(response, now: now)
        case .exchange(var exchange):
            switch exchange.response {
            case .relaying, .sent:
                return self.close()
            case .gating, .connecting, .awaitingHead, .skippingChallenge:
                exchange.closeAfter = true
                exchange.request = .ended
                self.state = .exchange(exchange)
                return self.respond(response, now: now)
            }
        case .tunnel, .closing, .closed:
            return .none
        }
    }

    // MARK: - The gate's verdict

    /// The gate let the request through: on to its origin (CONNECT: if the port is allowed).
    mutating func gateAllowed(now: NIODeadline) -> Action {
        guard case .exchange(var exchange) = self.state, case .gating = exchange.response else { return .none }
        switch exchange.record.target {
        case .authority(let authority):
            guard self.settings.connectPorts.contains(authority.port) else {
                let allowed = self.settings.connectPorts.sorted().map(String.init).joined(separator: ", ")
                return self.respond(
                    ProxyResponse(
                        status: .forbidden,
                        proxyError: "http_request_denied",
                        details: "CONNECT port not allowed",
                        message:
                            "CONNECT to port \(authority.port) is not allowed here (allowed: \(allowed); see --connect-ports)."
                    ),
                    now: now
                )
            }
            let attempt = self.nextAttempt()
            exchange.response = .connecting(attempt: attempt, tunnel: true)
            self.state = .exchange(exchange)
            return .connect(exchange.record, authority, attempt: attempt, tunnel: true)
        case .absolute(let authority, let pathAndQuery):
            return .forward(exchange.record, authority, pathAndQuery: pathAndQuery)
        case .origin, .asterisk, .none:
            return .none
        }
    }

    /// The gate answers the request itself (407, 429, 403…); `close`: the connection closes after.
    mutating func gateRefused(_ response: ProxyResponse, close: Bool, now: NIODeadline) -> Action {
        guard case .exchange(var exchange) = self.state, case .gating = exchange.response else { return .none }
        if close {
            exchange.closeAfter = true
            self.state = .exchange(exchange)
        }
        return self.respond(response, now: now)
    }

    /// Whether the gate is deciding (its late completions are wanted only then).
    var isGating: Bool {
        guard case .exchange(let exchange) = self.state, case .gating = exchange.response else { return false }
        return true
    }

    // MARK: - The proxy's own responses

    /// Answers the current request with a response of the proxy's own, written whole at once.
    /// What is left of the request body is read and dropped when it is small and its length
    /// known (the client's retry then finds the connection open), else not read at all: the
    /// connection closes after the response.
    mutating func respond(_ response: ProxyResponse, now: NIODeadline) -> Action {
        guard case .exchange(var exchange) = self.state else { return .none }
        var abandon: Upstream?
        switch exchange.response {
        case .relaying, .sent:
            // Part of a response is already with the client: closing is the only signal left.
            return self.close()
        case .awaitingHead(let upstream, _, _), .skippingChallenge(let upstream, _):
            abandon = upstream
        case .gating, .connecting:
            break
        }
        let record = exchange.record
        let bodyPending: Bool
        if case .ended = exchange.request {
            bodyPending = false
        } else {
            bodyPending = record.head.framing != .none && !record.isConnect
        }
        // The client waits for 100 Continue before sending its body; it will not come, so do
        // not wait for it either (RFC 9110 §10.1.1).
        if bodyPending, record.expectsContinue || !self.bodyIsWorthDraining(record) {
            exchange.closeAfter = true
            exchange.request = .ended
        }
        exchange.closeAfter = exchange.closeAfter || self.quiescing
        exchange.response = .sent
        switch exchange.request {
        case .ended:
            let then = self.finish(exchange, now: now)
            return .respond(response, record, close: exchange.closeAfter, abandon: abandon, then: then)
        case .receiving(let watch):
            exchange.request = .discarding(watch, dropped: 0)
        case .discarding:
            break
        }
        self.state = .exchange(exchange)
        return .respond(
            response,
            record,
            close: exchange.closeAfter,
            abandon: abandon,
            then: .awaitRequestEnd(tracked: exchange.closeAfter || bodyPending)
        )
    }

    /// Whether what is left of a request body whose response is already decided is small and of
    /// known length: read and dropped, it keeps the connection for the client's next request.
    private func bodyIsWorthDraining(_ record: ProxyExchange) -> Bool {
        guard case .length(let length) = record.head.framing else { return false }
        return length - record.requestBodyBytes <= self.settings.rejectedBodyDrainLimit
    }

    /// Ends `exchange` (both sides are done): the next request, or the close.
    mutating func finish(_ exchange: Exchange, now: NIODeadline) -> AfterResponse {
        if exchange.closeAfter || self.clientInputClosed {
            self.state = .closing(Closing(unlogged: nil, deadline: nil, awaitingWrite: true))
            return .close(exchange.record)
        }
        self.state = .idle(.waiting(deadline: now + self.settings.clientIdleTimeout))
        return .keepAlive(exchange.record, wasConnect: exchange.record.isConnect)
    }
}
