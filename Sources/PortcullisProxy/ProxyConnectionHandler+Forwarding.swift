import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

// Forwarding of absolute-form requests over pooled upstream connections.
extension ProxyConnectionHandler {
    func forward(_ exchange: ProxyExchange, to authority: OriginAuthority, pathAndQuery: String) {
        var headers = HeaderRewriter.forwardable(exchange.head.headers)
        headers.replaceOrAdd(name: "Host", value: authority.hostHeader)
        exchange.upstreamHead = HTTPRequestHead(
            version: .http1_1,
            method: exchange.head.method,
            uri: pathAndQuery,
            headers: headers
        )
        let key = UpstreamPool.Key(host: authority.host, port: authority.port)
        exchange.upstreamKey = key
        if let upstream = self.pool.acquire(key) {
            exchange.usedPooledConnection = true
            self.send(exchange, over: upstream)
        } else {
            self.connectUpstream(exchange, to: authority)
        }
    }

    private func connectUpstream(_ exchange: ProxyExchange, to authority: OriginAuthority) {
        self.phase = .connecting
        let upstream = UpstreamHandler()
        self.makeBootstrap()
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    // 1xx responses are forwarded so a client's Expect: 100-continue gets its answer
                    // from the origin (RFC 9110 §10.1.1: a proxy forwards the expectation).
                    try sync.addHandlers([
                        HTTPRequestEncoder(),
                        ByteToMessageHandler(
                            HTTPResponseDecoder(
                                leftOverBytesStrategy: .dropBytes,
                                informationalResponseStrategy: .forward
                            )
                        ),
                        upstream,
                    ])
                }
            }
            .connect(host: authority.host, port: authority.port)
            .assumeIsolated()
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    guard self.exchange === exchange, case .connecting = self.phase else {
                        channel.close(promise: nil)
                        return
                    }
                    self.send(exchange, over: upstream)
                case .failure(let error):
                    guard self.exchange === exchange, case .connecting = self.phase else { return }
                    self.logger.debug(
                        "upstream connect failed",
                        metadata: ["origin": "\(authority.host):\(authority.port)", "error": "\(error)"]
                    )
                    self.sendLocalResponse(.upstreamConnectFailure(error, target: authority), for: exchange)
                }
            }
    }

    func makeBootstrap() -> ClientBootstrap {
        let configuration = self.shared.configuration
        return ClientBootstrap(group: self.context.eventLoop)
            .connectTimeout(configuration.upstreamConnectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .resolver(
                PolicyResolver(
                    eventLoop: self.context.eventLoop,
                    threadPool: self.shared.threadPool,
                    policy: configuration.destinationPolicy
                )
            )
    }

    private func send(_ exchange: ProxyExchange, over upstream: UpstreamHandler) {
        guard let head = exchange.upstreamHead else { return }
        upstream.attach(to: self)
        self.phase = .forwarding(upstream)
        upstream.write(.head(head), flush: false)
        for part in exchange.buffered {
            switch part {
            case .body(let buffer): upstream.write(.body(.byteBuffer(buffer)), flush: false)
            case .end(let trailers): upstream.write(.end(trailers), flush: false)
            case .head: break
            }
        }
        exchange.buffered.removeAll()
        if !self.readingClient { upstream.flush() }
        let deadline = NIODeadline.now() + self.shared.configuration.upstreamResponseTimeout
        exchange.responseDeadline = deadline
        self.ensureTimer(firesBy: deadline)
        self.resumeReadsIfPossible()
    }

    func responseTimedOut(_ exchange: ProxyExchange) {
        guard self.exchange === exchange, !exchange.responseStarted, case .forwarding(let upstream) = self.phase else {
            return
        }
        upstream.detach()
        upstream.close()
        self.sendLocalResponse(
            ProxyResponse(
                status: .gatewayTimeout,
                proxyError: "http_response_timeout",
                details: "no response head in time",
                message:
                    "the origin did not answer within \(Self.seconds(self.shared.configuration.upstreamResponseTimeout))."
            ),
            for: exchange
        )
    }

    static func seconds(_ amount: TimeAmount) -> String {
        let value = Double(amount.nanoseconds) / 1e9
        return value == value.rounded() ? "\(Int(value)) s" : "\(value) s"
    }

    // MARK: - UpstreamOwner

    var ownerIsWritable: Bool { self.context?.channel.isWritable ?? false }

    func upstreamResponsePart(_ part: HTTPClientResponsePart) {
        guard let exchange = self.exchange, case .forwarding(let upstream) = self.phase else { return }
        self.readingUpstream = true
        switch part {
        case .head(let head):
            let code = head.status.code
            if code >= 100 && code < 200 {
                if code == 101 {
                    // We removed Upgrade; an origin switching protocols anyway is out of sync.
                    upstream.detach()
                    upstream.close()
                    self.sendLocalResponse(
                        ProxyResponse(
                            status: .badGateway,
                            proxyError: "http_protocol_error",
                            details: "unexpected 101",
                            message: "the origin switched protocols without being asked to."
                        ),
                        for: exchange
                    )
                } else if code == 100, exchange.expectsContinue, exchange.head.version.minor >= 1 {
                    self.context.write(
                        self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .continue))),
                        promise: nil
                    )
                }
                return
            }
            exchange.responseDeadline = nil
            exchange.responseStarted = true
            if !head.isKeepAlive { upstream.isReusable = false }
            self.context.write(self.wrapOutboundOut(.head(self.clientResponseHead(head, for: exchange))), promise: nil)
        case .body(let buffer):
            self.context.write(self.wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        case .end(let trailers):
            exchange.responseEnded = true
            if exchange.requestEnded, let key = exchange.upstreamKey {
                upstream.detach()
                self.pool.release(upstream, key: key)
            } else {
                // The origin answered before the request body was all sent: this upstream
                // connection is out of step, and so is the client's.
                upstream.detach()
                upstream.close()
                exchange.closeAfter = true
                exchange.requestEnded = true
            }
            self.phase = .localResponse
            self.writeEnd(trailers, for: exchange)
        }
    }

    /// The response head for the client: hop-by-hop fields removed, `Via` added, framing fixed.
    private func clientResponseHead(_ head: HTTPResponseHead, for exchange: ProxyExchange) -> HTTPResponseHead {
        var headers = HeaderRewriter.forwardable(head.headers)
        let code = head.status.code
        let bodiless = exchange.isHead || code == 204 || code == 304
        if bodiless {
            // Our encoder frames by these headers; a bodiless response must not announce chunks.
            headers.remove(name: "transfer-encoding")
        } else if headers.contains(name: "content-length") {
            headers.remove(name: "transfer-encoding")
        } else if headers.contains(name: "transfer-encoding") {
            headers.replaceOrAdd(name: "transfer-encoding", value: "chunked")
        } else if exchange.head.version.minor >= 1 {
            // Close-delimited body from the origin: re-frame it so the client connection survives.
            headers.add(name: "transfer-encoding", value: "chunked")
        } else {
            exchange.closeAfter = true
        }
        if exchange.closeAfter { headers.add(name: "Connection", value: "close") }
        let version: HTTPVersion = exchange.head.version.minor == 0 ? .http1_0 : .http1_1
        return HTTPResponseHead(version: version, status: head.status, headers: headers)
    }

    func upstreamReadComplete() {
        self.readingUpstream = false
        self.context?.flush()
    }

    func upstreamWritabilityChanged(isWritable: Bool) {
        if isWritable { self.resumeReadsIfPossible() }
    }

    func upstreamClosed(error: (any Error)?) {
        guard let exchange = self.exchange, case .forwarding = self.phase, !exchange.responseEnded else { return }
        exchange.responseDeadline = nil
        if exchange.responseStarted {
            // Part of the response is already with the client; the only honest signal left is to close.
            self.context.close(promise: nil)
            return
        }
        if exchange.usedPooledConnection, exchange.isRetriable, let target = exchange.target,
            case .absolute(let authority, _) = target
        {
            // A reused keep-alive connection that the origin had already closed: send once more
            // on a fresh connection (RFC 9112 §9.3.1 allows this for idempotent requests).
            exchange.usedPooledConnection = false
            for part in [HTTPServerRequestPart.end(nil)] { exchange.buffered.append(part) }
            self.connectUpstream(exchange, to: authority)
            return
        }
        self.sendLocalResponse(
            ProxyResponse(
                status: .badGateway,
                proxyError: "connection_terminated",
                details: "origin closed before answering",
                message: "the origin closed the connection before sending a response."
            ),
            for: exchange
        )
    }

    // MARK: - Responses and the end of an exchange

    /// Sends a proxy-generated response and discards what is left of the request body.
    func sendLocalResponse(_ response: ProxyResponse, for exchange: ProxyExchange) {
        guard !exchange.responseStarted else {
            self.context.close(promise: nil)
            return
        }
        if case .forwarding(let upstream) = self.phase {
            upstream.detach()
            upstream.close()
        }
        exchange.responseDeadline = nil
        if !exchange.requestEnded && exchange.expectsContinue {
            // The client waits for 100 Continue before sending its body; it will not come, so
            // do not wait for it either (RFC 9110 §10.1.1).
            exchange.closeAfter = true
            exchange.requestEnded = true
        }
        exchange.buffered.removeAll()
        exchange.responseStarted = true
        self.phase = .localResponse
        let version: HTTPVersion = exchange.head.version.minor == 0 ? .http1_0 : .http1_1
        let close = exchange.closeAfter || self.quiescing
        self.context.write(self.wrapOutboundOut(.head(response.head(version: version, close: close))), promise: nil)
        var body = self.context.channel.allocator.buffer(capacity: response.body.utf8.count)
        body.writeString(response.body)
        self.context.write(self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        exchange.responseEnded = true
        self.writeEnd(nil, for: exchange)
        self.resumeReadsIfPossible()
    }

    private func writeEnd(_ trailers: HTTPHeaders?, for exchange: ProxyExchange) {
        exchange.responseEnded = true
        if exchange.closeAfter {
            // Closing must wait for the response to leave: close() drops unwritten data.
            let promise = self.context.eventLoop.makePromise(of: Void.self)
            self.context.writeAndFlush(self.wrapOutboundOut(.end(trailers)), promise: promise)
            exchange.responseWritten = promise.futureResult
        } else {
            self.context.write(self.wrapOutboundOut(.end(trailers)), promise: nil)
        }
        self.finishIfDone(exchange)
    }

    /// Ends the exchange once the request was read and the response written, then serves the
    /// next pipelined request, if any.
    func finishIfDone(_ exchange: ProxyExchange) {
        guard self.exchange === exchange, exchange.requestEnded, exchange.responseEnded else { return }
        self.exchange = nil
        self.phase = .idle
        if exchange.closeAfter || self.clientInputClosed {
            self.context.flush()
            if let written = exchange.responseWritten {
                written.assumeIsolated().whenComplete { [weak self] _ in
                    self?.context?.close(promise: nil)
                }
            } else {
                self.context.close(promise: nil)
            }
            return
        }
        if !self.readingUpstream { self.context.flush() }
        if exchange.isConnect {
            self.resetDecoder()
        }
        self.armIdleTimer()
        self.servePipelined()
        self.resumeReadsIfPossible()
    }

    private func servePipelined() {
        guard !self.processingPipelined else { return }
        self.processingPipelined = true
        defer { self.processingPipelined = false }
        while let part = self.pipelined.first {
            if let exchange = self.exchange, exchange.requestEnded { return }
            self.pipelined.removeFirst()
            self.handle(part)
        }
    }
}
