import Logging
import NIOCore
import NIOPosix

// Forwarding of absolute-form requests over pooled upstream connections.
extension ProxyConnectionHandler {
    func forward(_ exchange: ProxyExchange, to authority: OriginAuthority, pathAndQuery: String) {
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
        let now = self.currentTime
        if let upstream = self.pool.acquire(key, now: now, where: { self.mayReuse($0, for: exchange) }) {
            exchange.usedPooledConnection = true
            self.send(exchange, over: upstream, now: now)
        } else {
            self.connectUpstream(exchange, to: authority)
        }
    }

    private func connectUpstream(_ exchange: ProxyExchange, to authority: OriginAuthority) {
        self.phase = .connecting
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
                self.sendConnectFailure(.upstreamConnectFailure(error, target: authority), for: exchange)
            }
        }
    }

    /// A 502/504/403 for an origin that could not be reached, counted by kind.
    func sendConnectFailure(_ response: ProxyResponse, for exchange: ProxyExchange) {
        let kind: ProxyMetrics.UpstreamErrorKind
        switch response.proxyError {
        case "dns_error": kind = .dns
        case "connection_refused": kind = .refused
        case "connection_timeout": kind = .timeout
        case "destination_ip_prohibited": kind = .denied
        default: kind = .other
        }
        self.shared.metrics.connectError(kind)
        self.sendLocalResponse(response, for: exchange)
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

    private func send(_ exchange: ProxyExchange, over upstream: UpstreamHandler, now: NIODeadline? = nil) {
        let now = now ?? self.currentTime
        guard let head = exchange.upstreamHead else { return }
        upstream.attach(to: self)
        upstream.clientIsHTTP10 = exchange.isHTTP10
        exchange.upstreamAddress = upstream.remoteIPAddress
        self.shared.metrics.addedLatency.recordNanoseconds((now - exchange.started).nanoseconds)
        self.phase = .forwarding(upstream)
        upstream.sendHead(head, isHEAD: exchange.isHead)
        // Body bytes already read follow the head at once.
        self.parseAvailable()
        if !self.readingClient { upstream.flush() }
        let deadline = now + self.configuration.upstreamResponseTimeout
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
                    "the origin did not answer within \(Self.seconds(self.configuration.upstreamResponseTimeout))."
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

    func upstreamEvent(_ event: ResponseFramer.Event) {
        guard let exchange = self.exchange, case .forwarding(let upstream) = self.phase else { return }
        self.readingUpstream = true
        switch event {
        case .informational(let head):
            if head.status == 100, exchange.expectsContinue, !exchange.isHTTP10 {
                var line = self.context.channel.allocator.buffer(capacity: 25)
                line.writeStaticString("HTTP/1.1 100 Continue\r\n\r\n")
                self.context.write(self.wrapOutboundOut(line), promise: nil)
            }
        case .head(let head, let framing):
            exchange.responseDeadline = nil
            exchange.responseStarted = true
            exchange.status = head.status
            Self.dropIfLarge(&self.clientHeadBuffer)
            self.writeClientResponseHead(
                head,
                framing: framing,
                for: exchange,
                upstream: upstream,
                into: &self.clientHeadBuffer
            )
            exchange.bytesToClient += self.clientHeadBuffer.readableBytes
            // Held until the burst's end: a small body that arrived with it joins it in one write.
            self.clientHeadHeld = true
        case .body(let buffer):
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
            self.writeHeldHead()
            exchange.responseEnded = true
            // One clock read for the pool, the log and the idle timer.
            let now = self.currentTime
            if exchange.requestEnded, let key = exchange.upstreamKey {
                upstream.detach()
                self.pool.release(upstream, key: key, now: now)
            } else {
                // The origin answered before the request body was all sent: this upstream
                // connection is out of step, and so is the client's.
                upstream.detach()
                upstream.close()
                exchange.closeAfter = true
                exchange.requestEnded = true
            }
            self.phase = .localResponse
            var last: ByteBuffer?
            if exchange.rechunkBody {
                var terminator = self.context.channel.allocator.buffer(capacity: 5)
                terminator.writeStaticString("0\r\n\r\n")
                last = terminator
            }
            self.writeEnd(last, for: exchange, now: now)
        }
    }

    /// The response head for the client: the origin's header lines copied as they are, less the
    /// hop-by-hop ones, plus `Via`, with framing fixed for this client.
    private func writeClientResponseHead(
        _ head: ResponseHead,
        framing: ResponseFramer.Framing,
        for exchange: ProxyExchange,
        upstream: UpstreamHandler,
        into out: inout ByteBuffer
    ) {
        let clientMinor = exchange.isHTTP10 ? 0 : 1
        // Only the access log wants the content type: no String of it otherwise.
        let wantsContentType = self.shared.accessLog != nil
        var singleLength: Int?
        // Through a pointer, one closure: this runs for every response.
        head.bytes.withUnsafeReadableBytes { raw in
            var connectionOptions: [String] = []
            var originCloses = false
            var lengthFields = 0
            var lengthIsList = false
            for line in head.lines {
                let name = line.name(in: raw)
                if FieldName.equals(name, "connection") {
                    MessageSyntax.connectionOptions(
                        line.value(in: raw),
                        close: &originCloses,
                        options: &connectionOptions
                    )
                } else if FieldName.equals(name, "content-length") {
                    lengthFields += 1
                    if line.value(in: raw).contains(UInt8(ascii: ",")) { lengthIsList = true }
                }
            }
            if originCloses || head.minorVersion < 1 { upstream.isReusable = false }

            var dropLength = false
            var dropTransferEncoding = false
            switch framing {
            case .chunked:
                dropLength = true
                // An HTTP/1.0 client gets the decoded body, delimited by the close.
                if clientMinor == 0 {
                    dropTransferEncoding = true
                    exchange.closeAfter = true
                }
            case .untilClose:
                dropLength = true
                dropTransferEncoding = true
                if clientMinor == 1 {
                    exchange.rechunkBody = true
                } else {
                    exchange.closeAfter = true
                }
            case .length(let length) where lengthFields > 1 || lengthIsList:
                // The framer accepted repeats of one number (RFC 9112 §6.3); the client gets
                // that number once, never a list another parser may read differently.
                dropLength = true
                singleLength = length
            case .length, .none:
                break
            }

            out.clear(minimumCapacity: raw.count + 64)
            out.writeStaticString(clientMinor == 0 ? "HTTP/1.0" : "HTTP/1.1")
            // " 200 OK": status code and reason phrase as the origin sent them.
            out.writeBytes(UnsafeRawBufferPointer(rebasing: raw[8..<head.statusLineEnd]))
            out.writeStaticString("\r\n")
            for line in head.lines {
                let name = line.name(in: raw)
                if HeaderRewriter.isAlwaysHopByHop(name) { continue }
                if dropLength, FieldName.equals(name, "content-length") { continue }
                if dropTransferEncoding, FieldName.equals(name, "transfer-encoding") { continue }
                if !connectionOptions.isEmpty, connectionOptions.contains(where: { FieldName.equals(name, $0) }) {
                    continue
                }
                if wantsContentType, FieldName.equals(name, "content-type") {
                    exchange.contentType = String(decoding: line.value(in: raw), as: UTF8.self)
                }
                out.writeBytes(line.line(in: raw))
                out.writeStaticString("\r\n")
            }
        }
        if let singleLength {
            out.writeStaticString("Content-Length: ")
            out.writeString(String(singleLength))
            out.writeStaticString("\r\n")
        }
        if exchange.rechunkBody { out.writeStaticString("Transfer-Encoding: chunked\r\n") }
        out.writeStaticString(HeaderRewriter.viaLine)
        exchange.writeAuthenticationInfo(into: &out)
        if exchange.closeAfter { out.writeStaticString("Connection: close\r\n") }
        out.writeStaticString("\r\n")
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
        guard let exchange = self.exchange, case .forwarding = self.phase, !exchange.responseEnded else { return }
        exchange.responseDeadline = nil
        if exchange.responseStarted {
            // Part of the response is already with the client; the only honest signal left is to close.
            self.closeConnection()
            return
        }
        if let protocolError = error as? ResponseFramer.ProtocolError {
            self.sendLocalResponse(
                ProxyResponse(
                    status: .badGateway,
                    proxyError: "http_protocol_error",
                    details: protocolError.reason,
                    message: "the origin's response was not valid HTTP/1.1 (\(protocolError.reason))."
                ),
                for: exchange
            )
            return
        }
        if exchange.usedPooledConnection, exchange.isRetriable, let target = exchange.target,
            case .absolute(let authority, _) = target
        {
            // A reused keep-alive connection that the origin had already closed: send once more
            // on a fresh connection (RFC 9112 §9.3.1 allows this for idempotent requests).
            exchange.usedPooledConnection = false
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

    /// Sends a proxy-generated response at once and discards what is left of the request body:
    /// read and dropped when it is small and its length known (the client's retry then finds the
    /// connection open), else not read at all — the connection closes after the response.
    func sendLocalResponse(_ response: ProxyResponse, for exchange: ProxyExchange) {
        guard !exchange.responseStarted else {
            self.closeConnection()
            return
        }
        if case .forwarding(let upstream) = self.phase {
            upstream.detach()
            upstream.close()
        }
        exchange.responseDeadline = nil
        // The client waits for 100 Continue before sending its body; it will not come, so do
        // not wait for it either (RFC 9110 §10.1.1). A body of unknown or large size is not
        // worth reading for a response already decided.
        if exchange.bodyPending, exchange.expectsContinue || !self.bodyIsWorthDraining(exchange) {
            exchange.closeAfter = true
            exchange.requestEnded = true
            exchange.bodyDeadline = nil
        }
        exchange.responseStarted = true
        self.phase = .localResponse
        let close = exchange.closeAfter || self.quiescing
        exchange.closeAfter = close
        let bytes = response.serialized(
            httpMinorVersion: exchange.isHTTP10 ? 0 : 1,
            close: close,
            allocator: self.context.channel.allocator
        )
        exchange.responseEnded = true
        exchange.status = Int(response.status.code)
        exchange.proxyStatus = response.proxyStatus
        exchange.bytesToClient += bytes.readableBytes
        self.writeEnd(bytes, for: exchange)
        self.resumeReadsIfPossible()
    }

    /// Whether what is left of a request body whose response is already decided is small and of
    /// known length: read and dropped, it keeps the connection for the client's next request.
    private func bodyIsWorthDraining(_ exchange: ProxyExchange) -> Bool {
        guard case .length(let length) = exchange.head.framing else { return false }
        return length - exchange.requestBodyBytes <= self.configuration.rejectedBodyDrainLimit
    }

    /// Writes the last bytes of a response (if any) and ends the exchange's response side.
    private func writeEnd(_ last: ByteBuffer?, for exchange: ProxyExchange, now: NIODeadline? = nil) {
        exchange.responseEnded = true
        if exchange.closeAfter || exchange.bodyPending {
            // Sent now, before the rest of the body (which may never come). Closing must wait for
            // the response to leave: close() drops unwritten data.
            let promise = self.context.eventLoop.makePromise(of: Void.self)
            self.context.writeAndFlush(self.wrapOutboundOut(last ?? ByteBuffer()), promise: promise)
            exchange.responseWritten = promise.futureResult
        } else if let last {
            self.context.write(self.wrapOutboundOut(last), promise: nil)
        }
        self.finishIfDone(exchange, now: now)
    }

    /// Ends the exchange once the request was read and the response written, then serves the
    /// next pipelined request, if any.
    func finishIfDone(_ exchange: ProxyExchange, now: NIODeadline? = nil) {
        guard self.exchange === exchange, exchange.requestEnded, exchange.responseEnded else { return }
        let now = now ?? self.currentTime
        self.logExchange(exchange, now: now)
        self.exchange = nil
        if exchange.closeAfter || self.clientInputClosed {
            self.closeConnection(after: exchange.responseWritten ?? self.context.eventLoop.makeSucceededVoidFuture())
            return
        }
        self.phase = .idle
        if !self.readingUpstream { self.context.flush() }
        if exchange.isConnect {
            // No tunnel: what the client sends next is a request again (a retry after a 407).
            self.framer.resumeAfterConnect()
        }
        self.armIdleTimer(now: now)
        self.resumeReadsIfPossible()
    }
}
