import NIOCore

// Deadlines of a client connection (idle keep-alive, origin response head) share one lazily
// re-armed timer: a request only stores its deadline, and the timer re-checks when it fires.
// Scheduling and cancelling a task for every request cost more than the rest of the gate.
extension ProxyConnectionHandler {
    func armIdleTimer(now: NIODeadline = .now()) {
        let deadline = now + self.configuration.clientIdleTimeout
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
        let now = NIODeadline.now()
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
