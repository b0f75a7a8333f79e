import NIOCore

// The origin's side of an exchange: the upstream connection, the response, the deadlines.
extension ProxyConnectionStateMachine {
    /// ``Action/forward(_:_:pathAndQuery:)`` found a fit pooled connection and sent the request on it.
    mutating func upstreamAcquired(_ upstream: Upstream, now: NIODeadline) -> Action {
        guard case .exchange(let exchange) = self.state, case .gating = exchange.response else { return .none }
        return self.send(exchange, over: upstream, pooled: true, now: now)
    }

    /// ``Action/forward(_:_:pathAndQuery:)`` found no pooled connection: a new one is opened.
    mutating func upstreamNeeded(_ authority: OriginAuthority) -> Action {
        guard case .exchange(let exchange) = self.state, case .gating = exchange.response else { return .none }
        return self.connect(exchange, to: authority)
    }

    /// The connection of `attempt` is up: an upstream for a request, or a tunnel's.
    mutating func upstreamConnected(attempt: UInt64, _ upstream: Upstream?, now: NIODeadline) -> Action {
        guard case .exchange(let exchange) = self.state,
            case .connecting(attempt, let tunnel) = exchange.response
        else { return .discardConnection }
        guard let upstream, !tunnel else {
            self.state = .tunnel
            return .becomeTunnel(exchange.record)
        }
        return self.send(exchange, over: upstream, pooled: false, now: now)
    }

    /// The connection of `attempt` could not be opened: the proxy's 502/504/403 says why.
    mutating func upstreamConnectFailed(attempt: UInt64, _ response: ProxyResponse, now: NIODeadline) -> Action {
        guard case .exchange(let exchange) = self.state, case .connecting(attempt, _) = exchange.response else {
            return .none
        }
        return self.respond(response, now: now)
    }

    /// The origin's response head arrived. Returns whether the client connection closes after
    /// this response (`forcesClose`: its framing needs that, for an HTTP/1.0 client), or `nil`
    /// when no request waits for a head.
    mutating func responseHead(forcesClose: Bool) -> Bool? {
        guard case .exchange(var exchange) = self.state, case .awaitingHead(let upstream, _, _) = exchange.response
        else { return nil }
        if forcesClose { exchange.closeAfter = true }
        exchange.response = .relaying(upstream)
        self.state = .exchange(exchange)
        return exchange.closeAfter
    }

    /// The upstream connection the current request went out on, while it carries the exchange.
    var upstream: Upstream? {
        guard case .exchange(let exchange) = self.state else { return nil }
        switch exchange.response {
        case .awaitingHead(let upstream, _, _), .relaying(let upstream), .skippingChallenge(let upstream, _):
            return upstream
        case .gating, .connecting, .sent: return nil
        }
    }

    /// Whether the origin's response is being relayed (its body parts go to the client).
    var isRelaying: Bool {
        guard case .exchange(let exchange) = self.state, case .relaying = exchange.response else { return false }
        return true
    }

    /// The origin's response ended.
    mutating func responseEnd(now: NIODeadline) -> Action {
        guard case .exchange(var exchange) = self.state, case .relaying(let upstream) = exchange.response else {
            return .none
        }
        exchange.response = .sent
        var release = true
        if case .ended = exchange.request {
        } else {
            // The origin answered before the request body was all sent: this upstream
            // connection is out of step, and so is the client's.
            release = false
            exchange.closeAfter = true
            exchange.request = .ended
        }
        return .finishRelay(upstream, release: release, then: self.finish(exchange, now: now))
    }

    /// The upstream connection of the exchange closed (`protocolError`: the response the
    /// origin's broken HTTP gets).
    mutating func upstreamClosed(protocolError: ProxyResponse?, now: NIODeadline) -> Action {
        guard case .exchange(let exchange) = self.state else { return .none }
        switch exchange.response {
        case .relaying:
            // Part of the response is already with the client; the only honest signal left is to close.
            return self.close()
        case .awaitingHead(_, _, let pooled):
            if let protocolError {
                return self.respond(protocolError, now: now)
            }
            let requestEnded: Bool
            if case .ended = exchange.request { requestEnded = true } else { requestEnded = false }
            if pooled, requestEnded, exchange.record.isRetriable,
                case .absolute(let authority, _) = exchange.record.target
            {
                // A reused keep-alive connection that the origin had already closed: sent once
                // more on a fresh connection (RFC 9112 §9.3.1 allows this for idempotent requests).
                return self.connect(exchange, to: authority)
            }
            return self.respond(
                ProxyResponse(
                    status: .badGateway,
                    proxyError: "connection_terminated",
                    details: "origin closed before answering",
                    message: "the origin closed the connection before sending a response."
                ),
                now: now
            )
        case .skippingChallenge:
            return self.respond(
                protocolError
                    ?? ProxyResponse(
                        status: .badGateway,
                        proxyError: "connection_terminated",
                        details: "parent closed in the middle of its 407",
                        message: "the parent proxy closed the connection in the middle of its 407 answer."
                    ),
                now: now
            )
        case .gating, .connecting, .sent:
            return .none
        }
    }

    // MARK: - A parent's 407

    /// A parent answered the request with a 407 that the proxy answers itself. The request can
    /// go again only if none of its body went out (it is not kept): then the 407's own body is
    /// dropped and ``challengeSkipped(reuse:now:)`` sends the request again. False: the
    /// caller answers the client itself.
    mutating func parentChallenged() -> Bool {
        guard case .exchange(var exchange) = self.state,
            case .awaitingHead(let upstream, let deadline, _) = exchange.response,
            case .ended = exchange.request, exchange.record.requestBodyBytes == 0
        else { return false }
        exchange.response = .skippingChallenge(upstream, deadline: deadline)
        self.state = .exchange(exchange)
        return true
    }

    /// The parent's 407 ended: the request goes again on the same connection (`reuse`), or on
    /// a new one.
    mutating func challengeSkipped(reuse: Bool, now: NIODeadline) -> Action {
        guard case .exchange(let exchange) = self.state, case .skippingChallenge(let upstream, _) = exchange.response
        else { return .none }
        if reuse {
            return self.send(exchange, over: upstream, pooled: false, now: now)
        }
        guard case .absolute(let authority, _) = exchange.record.target else { return self.close() }
        return self.connect(exchange, to: authority)
    }

    /// Whether the parent's 407 for the current request is being dropped.
    var isSkippingChallenge: Bool {
        guard case .exchange(let exchange) = self.state, case .skippingChallenge = exchange.response else {
            return false
        }
        return true
    }

    // MARK: - Shared steps

    /// The request goes out over `upstream`; its response head is due within the timeout.
    private mutating func send(_ exchange: Exchange, over upstream: Upstream, pooled: Bool, now: NIODeadline) -> Action
    {
        var exchange = exchange
        exchange.response = .awaitingHead(
            upstream,
            deadline: now + self.settings.upstreamResponseTimeout,
            pooled: pooled
        )
        self.state = .exchange(exchange)
        return .sendRequest(exchange.record, over: upstream)
    }

    /// A new connection is opened for the request (a new attempt id).
    private mutating func connect(_ exchange: Exchange, to authority: OriginAuthority) -> Action {
        var exchange = exchange
        let attempt = self.nextAttempt()
        exchange.response = .connecting(attempt: attempt, tunnel: false)
        self.state = .exchange(exchange)
        return .connect(exchange.record, authority, attempt: attempt, tunnel: false)
    }

    // MARK: - Deadlines

    /// The earliest deadline of the current state: the handler's timer fires by then.
    var nextDeadline: NIODeadline? {
        switch self.state {
        case .idle(.waiting(let deadline)):
            // Before activation the idle deadline is not set yet.
            return self.activated ? deadline : nil
        case .idle(.receivingHead(let deadline)):
            return deadline
        case .closing(let closing):
            return closing.deadline
        case .exchange(let exchange):
            var next: NIODeadline?
            switch exchange.request {
            case .receiving(let watch?), .discarding(let watch?, _): next = watch.deadline
            case .receiving(nil), .discarding(nil, _), .ended: break
            }
            switch exchange.response {
            case .awaitingHead(_, let deadline, _), .skippingChallenge(_, let deadline):
                next = min(next ?? deadline, deadline)
            case .gating, .connecting, .relaying, .sent:
                break
            }
            return next
        case .tunnel, .closed:
            return nil
        }
    }

    /// The timer fired. `readsPaused`: the proxy is not reading the client now (a password
    /// check, a connect, an origin slow to take the body) — a body's silence is not the client's
    /// fault then.
    mutating func timerFired(now: NIODeadline, readsPaused: Bool) -> Action {
        switch self.state {
        case .closing(let closing):
            // The response did not leave in time, or the lingering close is over.
            guard let deadline = closing.deadline, deadline <= now else { return .none }
            return .closeNow
        case .idle(.waiting(let deadline)):
            // Before activation the idle deadline is not set yet.
            guard self.activated, deadline <= now else { return .none }
            self.state = .closing(Closing(unlogged: nil, deadline: nil, awaitingWrite: false))
            return .closeNow
        case .idle(.receivingHead(let deadline)):
            guard deadline <= now else { return .none }
            return self.refuse(
                ProxyResponse(
                    status: .requestTimeout,
                    proxyError: "http_request_error",
                    details: "request head not complete in time",
                    message:
                        "the request head did not arrive within \(ProxyResponse.seconds(self.settings.requestHeadTimeout))."
                ),
                now: now
            )
        case .exchange(var exchange):
            switch exchange.request {
            case .receiving(var watch?) where watch.deadline <= now:
                guard watch.progressed || readsPaused else { return self.requestBodyTimedOut(exchange, now: now) }
                watch.progressed = false
                watch.deadline = now + self.settings.requestBodyTimeout
                exchange.request = .receiving(watch)
            case .discarding(var watch?, let dropped) where watch.deadline <= now:
                guard watch.progressed || readsPaused else { return self.requestBodyTimedOut(exchange, now: now) }
                watch.progressed = false
                watch.deadline = now + self.settings.requestBodyTimeout
                exchange.request = .discarding(watch, dropped: dropped)
            case .receiving, .discarding, .ended:
                break
            }
            self.state = .exchange(exchange)
            let headDeadline: NIODeadline?
            switch exchange.response {
            case .awaitingHead(_, let deadline, _), .skippingChallenge(_, let deadline): headDeadline = deadline
            case .gating, .connecting, .relaying, .sent: headDeadline = nil
            }
            if let headDeadline, headDeadline <= now {
                return self.respond(
                    ProxyResponse(
                        status: .gatewayTimeout,
                        proxyError: "http_response_timeout",
                        details: "no response head in time",
                        message:
                            "the origin did not answer within \(ProxyResponse.seconds(self.settings.upstreamResponseTimeout))."
                    ),
                    now: now
                )
            }
            return .none
        case .tunnel, .closed:
            return .none
        }
    }

    /// No request body bytes within the body timeout: a 408 if no response has begun, then the
    /// connection closes (the body's end can no longer be found).
    private mutating func requestBodyTimedOut(_ exchange: Exchange, now: NIODeadline) -> Action {
        var exchange = exchange
        switch exchange.response {
        case .relaying:
            return self.close()
        case .sent:
            // A response that already went out whole (a 407 while its body was being dropped)
            // still gets to leave before the close.
            return self.close(afterResponse: true)
        case .gating, .connecting, .awaitingHead, .skippingChallenge:
            exchange.closeAfter = true
            exchange.request = .ended
            self.state = .exchange(exchange)
            return self.respond(
                ProxyResponse(
                    status: .requestTimeout,
                    proxyError: "http_request_error",
                    details: "request body not complete in time",
                    message:
                        "the request body stopped arriving: nothing came for \(ProxyResponse.seconds(self.settings.requestBodyTimeout))."
                ),
                now: now
            )
        }
    }
}
