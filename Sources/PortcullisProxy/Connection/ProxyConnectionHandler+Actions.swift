import NIOCore

// How the handler carries out the actions of its ``ProxyConnectionStateMachine``: the proxy's
// own responses, the end of an exchange, closes, and the one timer of the connection.
extension ProxyConnectionHandler {
    func execute(_ action: StateMachine.Action) {
        switch action {
        case .none:
            return
        case .sendBody(let upstream, let buffer):
            upstream.sendBody(buffer)
            return
        case .runGate(let exchange, let target):
            self.startGate(exchange, target: target)
        case .serveDocument(let exchange):
            self.serveDocument(exchange)
            return
        case .respond(let response, let exchange, let close, let abandon, let then):
            if let abandon {
                abandon.detach()
                abandon.close()
            }
            self.writeLocalResponse(response, for: exchange, close: close, then: then)
        case .forward(let exchange, let authority, let pathAndQuery):
            self.forward(exchange, to: authority, pathAndQuery: pathAndQuery, now: self.currentTime)
        case .connect(let exchange, let authority, let attempt, let tunnel):
            if tunnel {
                self.openTunnel(exchange, to: authority, attempt: attempt)
            } else {
                self.connectUpstream(exchange, to: authority, attempt: attempt)
            }
        case .sendRequest(let exchange, let upstream):
            self.send(exchange, over: upstream, now: self.currentTime)
        case .discardConnection:
            // Closed by the caller, which holds the channel.
            return
        case .becomeTunnel:
            // Carried out by the tunnel's connect completion, which holds the channels.
            return
        case .finishRelay(let upstream, let release, let then):
            self.finishRelay(upstream, release: release, then: then)
        case .finish(let then):
            self.finish(then)
        case .close(let abandon, let afterResponse):
            if let abandon {
                abandon.detach()
                abandon.close()
            }
            self.closeChannel(afterResponse: afterResponse)
        case .closeNow:
            self.context?.close(promise: nil)
        case .lingerUntil:
            break
        }
        self.rearmTimer()
    }

    /// Answers a request for the served document (the PAC file) with the one in force now.
    private func serveDocument(_ exchange: ProxyExchange) {
        let response: ProxyResponse
        if let document = self.shared.servedDocument {
            response = document.response(
                headOnly: exchange.head.method == .head,
                ifNoneMatch: exchange.head.values(named: "if-none-match")
            )
        } else {
            response = .badRequest("this proxy serves no PAC file.")
        }
        self.execute(self.machine.respond(response, now: self.currentTime))
    }

    /// Writes the proxy's own response whole, then what the machine says follows it.
    func writeLocalResponse(
        _ response: ProxyResponse,
        for exchange: ProxyExchange,
        close: Bool,
        then: StateMachine.AfterResponse
    ) {
        guard let context = self.context else { return }
        let bytes = response.serialized(
            httpMinorVersion: exchange.isHTTP10 ? 0 : 1,
            close: close,
            allocator: context.channel.allocator
        )
        exchange.status = Int(response.status.code)
        exchange.proxyStatus = response.proxyStatus
        exchange.bytesToClient += bytes.readableBytes
        self.writeLast(bytes, then: then)
        self.finish(then)
        self.resumeReadsIfPossible()
    }

    /// Writes a response's last bytes: tracked and flushed when a close may have to wait for
    /// them (closing at once would drop unwritten data), else left for the burst's flush.
    func writeLast(_ last: ByteBuffer?, then: StateMachine.AfterResponse) {
        guard let context = self.context else { return }
        switch then {
        case .close, .awaitRequestEnd(tracked: true):
            let promise = context.eventLoop.makePromise(of: Void.self)
            context.writeAndFlush(self.wrapOutboundOut(last ?? ByteBuffer()), promise: promise)
            self.responseWritten = promise.futureResult
        case .keepAlive, .awaitRequestEnd(tracked: false):
            if let last { context.write(self.wrapOutboundOut(last), promise: nil) }
        }
    }

    /// Ends the exchange as the machine decided: the access-log line, then the next request
    /// (or the close once the response has left).
    func finish(_ then: StateMachine.AfterResponse, now: NIODeadline? = nil) {
        switch then {
        case .awaitRequestEnd:
            return
        case .close(let exchange):
            self.logExchange(exchange, now: now)
            self.closeChannel(afterResponse: true)
        case .keepAlive(let exchange, let wasConnect):
            let now = now ?? self.currentTime
            self.logExchange(exchange, now: now)
            if !self.readingUpstream { self.context?.flush() }
            if wasConnect {
                // No tunnel: what the client sends next is a request again (a retry after a 407).
                self.framer.resumeAfterConnect()
            }
            self.rearmTimer()
            self.resumeReadsIfPossible()
        }
    }

    /// Closes the client connection as the machine decided (it is in `.closing` now); with
    /// `afterResponse`, once the last response has left.
    ///
    /// After a response the close is a lingering one: the output side closes first and what the
    /// client still sends (the rest of a body) is read and dropped for a moment; closing at once
    /// with unread input would reset the connection, and a reset can destroy the response
    /// before the client reads it. A client that never reads the response is cut off at the
    /// request-head deadline.
    func closeChannel(afterResponse: Bool) {
        self.cancelGate()
        guard let context = self.context else { return }
        guard afterResponse else {
            self.cancelTimer()
            context.close(promise: nil)
            return
        }
        context.flush()
        self.machine.closeWaitsForResponse(now: self.currentTime)
        self.rearmTimer()
        let written = self.responseWritten ?? context.eventLoop.makeSucceededVoidFuture()
        written.assumeIsolated().whenComplete { [weak self] result in
            guard let self, self.context != nil else { return }
            let success: Bool
            if case .success = result { success = true } else { success = false }
            switch self.machine.responseLeft(success: success, now: self.currentTime) {
            case .lingerUntil:
                self.context?.close(mode: .output, promise: nil)
                self.rearmTimer()
                self.resumeReadsIfPossible()
            case .closeNow:
                self.context?.close(promise: nil)
            default:
                break
            }
        }
    }

    // MARK: - Timer

    /// Makes the timer fire by the machine's earliest deadline.
    func rearmTimer() {
        guard let deadline = self.machine.nextDeadline, let context = self.context else { return }
        if let firesAt = self.timerFiresAt, firesAt <= deadline, self.timer != nil { return }
        self.timer?.cancel()
        self.timerFiresAt = deadline
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [weak self] in
            self?.timerFired()
        }
    }

    /// The connection leaves this handler (a tunnel): no deadline of it applies any more.
    func stopTimer() {
        self.cancelTimer()
    }

    func cancelTimer() {
        self.timer?.cancel()
        self.timer = nil
        self.timerFiresAt = nil
    }

    func timerFired() {
        self.timer = nil
        self.timerFiresAt = nil
        guard let context = self.context, context.channel.isActive else { return }
        let action = self.machine.timerFired(now: self.currentTime, readsPaused: !self.readAllowed)
        if case .respond(let response, _, _, _, _) = action, response.status == .requestTimeout {
            self.logger.debug(
                "request not complete in time",
                metadata: ["client": "\(self.clientAddress)", "details": "\(response.details ?? "-")"]
            )
        }
        self.execute(action)
        self.rearmTimer()
    }
}
