import Logging
import NIOCore

// Forwarding of absolute-form requests over pooled upstream connections.
extension ProxyConnectionHandler {
    func forward(_ exchange: ProxyExchange, to authority: OriginAuthority, pathAndQuery: String, now: NIODeadline) {
        if let (parents, allowed) = self.parents(for: authority) {
            self.forwardThroughParent(
                exchange,
                parents,
                allowed: allowed,
                to: authority,
                pathAndQuery: pathAndQuery,
                now: now
            )
            return
        }
        Self.dropIfLarge(&self.upstreamHeadBuffer)
        HeaderRewriter.writeUpstreamRequestHead(
            exchange.head,
            pathAndQuery: pathAndQuery,
            hostHeader: authority.hostHeader,
            into: &self.upstreamHeadBuffer
        )
        exchange.upstreamHead = self.upstreamHeadBuffer
        let key = UpstreamPool.Key(host: authority.host, port: authority.port)
        exchange.upstreamKey = key
        exchange.pinsUpstream = exchange.head.carriesConnectionAuthentication("authorization")
        if let upstream = self.takePinnedUpstream(key, for: exchange, now: now)
            ?? self.pool.acquire(key, now: now, where: { self.mayReuse($0, for: exchange) })
        {
            if case .sendRequest(let exchange, let upstream) = self.machine.upstreamAcquired(upstream, now: now) {
                self.send(exchange, over: upstream, now: now)
            }
        } else {
            self.execute(self.machine.upstreamNeeded(authority))
        }
    }

    func connectUpstream(_ exchange: ProxyExchange, to authority: OriginAuthority, attempt: UInt64) {
        if exchange.parent != nil {
            self.connectToParent(exchange, for: authority, attempt: attempt)
            return
        }
        let upstream = UpstreamHandler()
        // Set up on this event loop, the one the new channel is created on.
        let handler = NIOLoopBound(upstream, eventLoop: self.context.eventLoop)
        self.connectUpstream(for: exchange, to: authority, isTunnel: false) { channel in
            channel.eventLoop.makeCompletedFuture {
                // Requests are serialized by HeaderRewriter, responses framed by our own
                // ResponseFramer inside UpstreamHandler; nothing is re-encoded.
                try channel.pipeline.syncOperations.addHandler(handler.value)
            }
        }
        .assumeIsolated()
        .whenComplete { result in
            self.upstreamConnectFinished(result, upstream, attempt: attempt, to: authority)
        }
    }

    /// A new upstream connection for the request of `attempt` opened (the request goes, or the
    /// channel closes if the request is gone) or failed (the client's 502/504/403).
    func upstreamConnectFinished(
        _ result: Result<any Channel, any Error>,
        _ upstream: UpstreamHandler,
        attempt: UInt64,
        to authority: OriginAuthority
    ) {
        let now = self.currentTime
        switch result {
        case .success(let channel):
            switch self.machine.upstreamConnected(attempt: attempt, upstream, now: now) {
            case .sendRequest(let exchange, let upstream):
                self.send(exchange, over: upstream, now: now)
            case .discardConnection:
                channel.close(promise: nil)
            case let action:
                self.execute(action)
            }
        case .failure(let error):
            self.connectFailed(attempt: attempt, error: error, to: authority, now: now)
        }
    }

    /// A 502/504/403 for an origin that could not be reached, counted by kind — if the request
    /// still waits for this attempt.
    func connectFailed(attempt: UInt64, error: any Error, to authority: OriginAuthority, now: NIODeadline) {
        let response = ProxyResponse.upstreamConnectFailure(error, target: authority)
        let action = self.machine.upstreamConnectFailed(attempt: attempt, response, now: now)
        guard case .respond = action else { return }
        self.logger.debug(
            "upstream connect failed",
            metadata: ["origin": "\(authority.host):\(authority.port)", "error": "\(error)"]
        )
        let kind: ProxyMetrics.UpstreamErrorKind
        switch response.proxyError {
        case "dns_error": kind = .dns
        case "connection_refused": kind = .refused
        case "connection_timeout": kind = .timeout
        case "destination_ip_prohibited": kind = .denied
        default: kind = .other
        }
        self.shared.metrics.connectError(kind)
        self.execute(action)
    }

    /// A new channel to `authority` for `exchange`, through the context's connector.
    func connectUpstream(
        for exchange: ProxyExchange,
        to authority: OriginAuthority,
        isTunnel: Bool,
        initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) -> EventLoopFuture<any Channel> {
        let request = UpstreamConnectRequest(
            host: authority.host,
            port: authority.port,
            isTunnel: isTunnel,
            connectTimeout: self.configuration.upstreamConnectTimeout,
            resolver: self.policyResolver(for: exchange)
        )
        return self.shared.connector.connect(request, on: self.context.eventLoop, initializer: initializer)
    }

    /// Sends the request head over `upstream`; body bytes already read follow at once.
    func send(_ exchange: ProxyExchange, over upstream: UpstreamHandler, now: NIODeadline) {
        if let parent = exchange.parent { self.writeParentRequestHead(exchange, parent, over: upstream) }
        guard let head = exchange.upstreamHead else { return }
        upstream.attach(to: self)
        upstream.clientIsHTTP10 = exchange.isHTTP10
        exchange.upstreamAddress = upstream.remoteIPAddress
        self.shared.metrics.addedLatency.recordNanoseconds((now - exchange.started).nanoseconds)
        upstream.sendHead(head, isHEAD: exchange.isHead)
        self.parseAvailable()
        if !self.readingClient { upstream.flush() }
        self.rearmTimer()
        self.resumeReadsIfPossible()
    }

    // MARK: - UpstreamOwner

    var ownerIsWritable: Bool { self.context?.channel.isWritable ?? false }

    func upstreamEvent(_ event: ResponseFramer.Event) {
        guard case .exchange(let current) = self.machine.state else { return }
        let exchange = current.record
        self.readingUpstream = true
        switch event {
        case .informational(let head):
            if head.status == 100, exchange.expectsContinue, !exchange.isHTTP10 {
                var line = self.context.channel.allocator.buffer(capacity: 25)
                line.writeStaticString("HTTP/1.1 100 Continue\r\n\r\n")
                self.context.write(self.wrapOutboundOut(line), promise: nil)
            }
        case .head(let head, let framing):
            if let parent = exchange.parent, self.parentAnswered(head, framing: framing, exchange, parent) { return }
            let forcesClose: Bool
            switch framing {
            // An HTTP/1.0 client gets a chunked or close-delimited body decoded and delimited
            // by the close.
            case .chunked, .untilClose: forcesClose = exchange.isHTTP10
            case .length, .none: forcesClose = false
            }
            guard let close = self.machine.responseHead(forcesClose: forcesClose),
                case .exchange(let relaying) = self.machine.state, case .relaying(let upstream) = relaying.response
            else { return }
            exchange.status = head.status
            if head.status == 401, head.carriesConnectionAuthentication("www-authenticate") {
                exchange.pinsUpstream = true
            }
            Self.dropIfLarge(&self.clientHeadBuffer)
            let originCloses = HeaderRewriter.writeClientResponseHead(
                head,
                framing: framing,
                for: exchange,
                close: close,
                wantsContentType: self.shared.accessLog != nil,
                into: &self.clientHeadBuffer
            )
            if originCloses { upstream.originWillClose() }
            exchange.bytesToClient += self.clientHeadBuffer.readableBytes
            // Held until the burst's end: a small body that arrived with it joins it in one write.
            self.clientHeadHeld = true
        case .body(let buffer):
            guard self.machine.isRelaying else { return }
            exchange.bytesToClient += buffer.readableBytes
            if self.clientHeadHeld, !exchange.rechunkBody,
                self.clientHeadBuffer.readableBytes + buffer.readableBytes <= Self.coalescedResponseLimit
            {
                self.clientHeadBuffer.writeImmutableBuffer(buffer)
                return
            }
            self.writeHeldHead()
            if exchange.rechunkBody {
                ChunkedFraming.writeChunk(buffer, on: self.context)
            } else {
                self.context.write(self.wrapOutboundOut(buffer), promise: nil)
            }
        case .end:
            if exchange.parent != nil, self.machine.isSkippingChallenge, let upstream = self.machine.upstream {
                self.sendAgainToParent(exchange, after: upstream)
                return
            }
            self.writeHeldHead()
            // One clock read for the pool, the log and the idle timer.
            let now = self.currentTime
            guard case .finishRelay(let upstream, let release, let then) = self.machine.responseEnd(now: now) else {
                return
            }
            self.finishRelay(upstream, release: release, then: then, now: now)
        }
    }

    /// The relayed response ended: the upstream goes back to the pool (or closes), the last
    /// bytes go out and the exchange ends as the machine decided.
    func finishRelay(
        _ upstream: UpstreamHandler,
        release: Bool,
        then: StateMachine.AfterResponse,
        now: NIODeadline? = nil
    ) {
        upstream.detach()
        let now = now ?? self.currentTime
        var exchange: ProxyExchange?
        switch then {
        case .close(let record), .keepAlive(let record, _): exchange = record
        case .awaitRequestEnd: break
        }
        if release, let key = exchange?.upstreamKey {
            if exchange?.pinsUpstream == true {
                self.pinnedUpstream?.upstream.close()
                self.pinnedUpstream = (key, upstream)
            } else {
                self.pool.release(upstream, key: key, now: now)
            }
        } else {
            upstream.close()
        }
        var last: ByteBuffer?
        if exchange?.rechunkBody == true, let context = self.context {
            var terminator = context.channel.allocator.buffer(capacity: 5)
            terminator.writeStaticString("0\r\n\r\n")
            last = terminator
        }
        self.writeLast(last, then: then)
        self.finish(then, now: now)
        self.rearmTimer()
    }

    /// The upstream connection this client connection keeps for itself (an origin's NTLM or
    /// Negotiate handshake is bound to it), if the request goes to its origin.
    private func takePinnedUpstream(
        _ key: UpstreamPool.Key,
        for exchange: ProxyExchange,
        now: NIODeadline
    ) -> UpstreamHandler? {
        guard let pinned = self.pinnedUpstream, pinned.key == key else { return nil }
        self.pinnedUpstream = nil
        guard pinned.upstream.isUsable, self.mayReuse(pinned.upstream, for: exchange) else {
            pinned.upstream.close()
            return nil
        }
        // Still the origin's authenticated connection: it stays pinned after this exchange.
        exchange.pinsUpstream = true
        return pinned.upstream
    }

    /// A head buffer kept for reuse must not keep the memory of one unusually large head.
    private static func dropIfLarge(_ buffer: inout ByteBuffer) {
        if buffer.capacity > 8192 { buffer = ByteBuffer() }
    }

    /// Writes the response head held back by ``upstreamEvent(_:)`` (with the body bytes that joined it).
    func writeHeldHead() {
        guard self.clientHeadHeld, let context = self.context else { return }
        self.clientHeadHeld = false
        context.write(self.wrapOutboundOut(self.clientHeadBuffer), promise: nil)
    }

    /// The most bytes of response head and body written together as one buffer: the body is
    /// copied, which beats a second write only while it is small.
    static let coalescedResponseLimit = 8192

    func upstreamReadComplete() {
        self.writeHeldHead()
        self.readingUpstream = false
        self.context?.flush()
    }

    func upstreamWritabilityChanged(isWritable: Bool) {
        if isWritable { self.resumeReadsIfPossible() }
    }

    func upstreamClosed(error: (any Error)?) {
        self.writeHeldHead()
        var protocolError: ProxyResponse?
        if let error, ProxyResponse.isTLSError(error),
            case .exchange(let current) = self.machine.state, let parent = current.record.parent
        {
            protocolError = ProxyResponse.parentTLSFailure(parent: parent.parent.name, error)
        } else if let error = error as? ResponseFramer.ProtocolError {
            protocolError = ProxyResponse(
                status: .badGateway,
                proxyError: "http_protocol_error",
                details: error.reason,
                message: "the origin's response was not valid HTTP/1.1 (\(error.reason))."
            )
        }
        self.execute(self.machine.upstreamClosed(protocolError: protocolError, now: self.currentTime))
    }
}
