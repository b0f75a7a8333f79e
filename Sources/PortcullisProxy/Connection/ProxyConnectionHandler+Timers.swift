import NIOCore

// Deadlines of a client connection (idle keep-alive, origin response head) share one lazily
// re-armed timer: a request only stores its deadline, and the timer re-checks when it fires.
// Scheduling and cancelling a task for every request cost more than the rest of the gate.
extension ProxyConnectionHandler {
    func armIdleTimer(now: NIODeadline? = nil) {
        let deadline = (now ?? self.currentTime) + self.configuration.clientIdleTimeout
        self.idleDeadline = deadline
        self.ensureTimer(firesBy: deadline)
    }

    func ensureTimer(firesBy deadline: NIODeadline) {
        if let firesAt = self.timerFiresAt, firesAt <= deadline, self.timer != nil { return }
        self.timer?.cancel()
        self.timerFiresAt = deadline
        self.timer = self.context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [weak self] in
            self?.timerFired()
        }
    }

    func cancelTimer() {
        self.timer?.cancel()
        self.timer = nil
        self.timerFiresAt = nil
        self.idleDeadline = nil
        self.headDeadline = nil
    }

    private func timerFired() {
        self.timer = nil
        self.timerFiresAt = nil
        guard let context = self.context, context.channel.isActive else { return }
        if case .closing = self.phase {
            // The response did not leave in time, or the lingering close is over.
            context.close(promise: nil)
            return
        }
        let now = self.currentTime
        if self.exchange == nil, let idle = self.idleDeadline {
            if idle <= now {
                context.close(promise: nil)
                return
            }
            self.ensureTimer(firesBy: idle)
        }
        if self.exchange == nil, let due = self.headDeadline {
            if due <= now {
                self.headDeadline = nil
                self.logger.debug("request head not complete in time", metadata: ["client": "\(self.clientAddress)"])
                self.refuse(
                    with: ProxyResponse(
                        status: .requestTimeout,
                        proxyError: "http_request_error",
                        details: "request head not complete in time",
                        message:
                            "the request head did not arrive within \(Self.seconds(self.configuration.requestHeadTimeout))."
                    )
                )
                return
            }
            self.ensureTimer(firesBy: due)
        }
        if let exchange = self.exchange, let due = exchange.bodyDeadline {
            if due > now {
                self.ensureTimer(firesBy: due)
            } else if exchange.bodyProgressed || !self.readAllowed {
                // Bytes came since the last check, or reading is paused on our side (a password
                // check, a connect, an origin that is slow to take the body): not the client's fault.
                exchange.bodyProgressed = false
                let next = now + self.configuration.requestBodyTimeout
                exchange.bodyDeadline = next
                self.ensureTimer(firesBy: next)
            } else {
                self.requestBodyTimedOut(exchange)
                return
            }
        }
        if let exchange = self.exchange, let due = exchange.responseDeadline {
            if due <= now {
                exchange.responseDeadline = nil
                self.responseTimedOut(exchange)
            } else {
                self.ensureTimer(firesBy: due)
            }
        }
    }
}

extension ProxyConnectionHandler {
    /// No request body bytes within ``ProxyConfiguration/requestBodyTimeout``: a 408 if no
    /// response has begun, then the connection closes (the body's end can no longer be found).
    func requestBodyTimedOut(_ exchange: ProxyExchange) {
        exchange.bodyDeadline = nil
        self.logger.debug("request body not complete in time", metadata: ["client": "\(self.clientAddress)"])
        guard !exchange.responseStarted else {
            // A response that already went out whole (a 407 while its body was being dropped)
            // still gets to leave before the close.
            self.closeConnection(after: exchange.responseEnded ? exchange.responseWritten : nil)
            return
        }
        exchange.closeAfter = true
        exchange.requestEnded = true
        self.sendLocalResponse(
            ProxyResponse(
                status: .requestTimeout,
                proxyError: "http_request_error",
                details: "request body not complete in time",
                message:
                    "the request body stopped arriving: nothing came for \(Self.seconds(self.configuration.requestBodyTimeout))."
            ),
            for: exchange
        )
    }
}
