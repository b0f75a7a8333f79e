import NIOCore
import PortcullisAuth

// Requests that go through a parent proxy rather than straight to their origin.
extension ProxyConnectionHandler {
    /// The parents `authority`'s requests go through (and which of them), or nil: straight to
    /// the origin.
    func parents(for authority: OriginAuthority) -> (set: ParentSet, allowed: [Int])? {
        guard let parents = self.shared.parents, let allowed = parents.routing.route(for: authority.host) else {
            return nil
        }
        return (parents, allowed)
    }

    func parentConnector(_ parents: ParentSet, allowed: [Int]) -> ParentConnector {
        // The parent's own name is resolved off the event loop like an origin's, without the
        // destination rules: they are about origins, and a corporate proxy is usually internal.
        let open = DestinationGuard(
            destinations: DestinationPolicy(allowPrivateDestinations: true),
            policy: AccessPolicy(),
            user: nil,
            method: ""
        )
        return ParentConnector(
            parents: parents,
            allowed: allowed,
            base: self.shared.connector,
            connectTimeout: self.configuration.upstreamConnectTimeout,
            answerTimeout: self.configuration.upstreamResponseTimeout,
            makeResolver: { [eventLoop = self.context.eventLoop, threadPool = self.shared.threadPool] in
                PolicyResolver(eventLoop: eventLoop, threadPool: threadPool, guard: open)
            },
            threadPool: self.shared.threadPool
        )
    }

    /// Through a parent the proxy neither resolves nor connects to the origin, so the
    /// destination rules see only what the target says: an IP literal is checked here (a name
    /// is the parent's to resolve). The error is the resolver's, for the same 403.
    func parentRouteRefusal(_ exchange: ProxyExchange, to authority: OriginAuthority) -> (any Error)? {
        if let parents = self.shared.parents,
            exchange.head.values(named: "via").contains(where: { $0.contains(parents.viaName) })
        {
            return ParentError.loop
        }
        guard let host = CanonicalHost(authority.host), host.addressBytes != nil,
            let address = try? SocketAddress(ipAddress: authority.host, port: authority.port)
        else { return nil }
        do {
            _ = try self.destinationGuard(for: exchange).admit([address], host: authority.host, port: authority.port)
            return nil
        } catch {
            return error
        }
    }

    /// What a plain request may start with: a Negotiate token cannot be made before the head
    /// goes out (GSSAPI blocks), so such a request goes without and answers the 407.
    static func preemptive(_ memory: ParentAuthMemory?) -> ParentAuthMemory? {
        memory == .negotiate ? nil : memory
    }

    /// `host:port` as a CONNECT names it (an IPv6 literal in brackets).
    static func connectTarget(_ authority: OriginAuthority) -> String {
        authority.host.contains(":") ? "[\(authority.host)]:\(authority.port)" : "\(authority.host):\(authority.port)"
    }
}

// Plain requests through a parent: absolute-form over pooled keep-alive connections to it,
// with the parent's 407 answered by sending the request again (requests without a body).
extension ProxyConnectionHandler {
    func forwardThroughParent(
        _ exchange: ProxyExchange,
        _ parents: ParentSet,
        allowed: [Int],
        to authority: OriginAuthority,
        pathAndQuery: String,
        now: NIODeadline
    ) {
        let request = ParentRequest(
            parents: parents,
            allowed: allowed,
            index: parents.candidates(now: now, among: allowed).first ?? allowed[0],
            absoluteURI: "http://\(authority.hostHeader)\(pathAndQuery)"
        )
        exchange.parent = request
        exchange.upstreamKey = request.poolKey
        exchange.pinsUpstream = exchange.head.carriesConnectionAuthentication("authorization")
        if self.parentRouteRefusal(exchange, to: authority) == nil,
            let upstream = self.pool.acquire(request.poolKey, now: now)
        {
            if case .sendRequest(let exchange, let upstream) = self.machine.upstreamAcquired(upstream, now: now) {
                self.send(exchange, over: upstream, now: now)
            }
        } else {
            // A refused destination fails in the connect, like a resolver's refusal.
            self.execute(self.machine.upstreamNeeded(authority))
        }
    }

    func connectToParent(_ exchange: ProxyExchange, for authority: OriginAuthority, attempt: UInt64) {
        guard let request = exchange.parent else { return }
        if let refusal = self.parentRouteRefusal(exchange, to: authority) {
            self.connectFailed(attempt: attempt, error: refusal, to: authority, now: self.currentTime)
            return
        }
        let upstream = UpstreamHandler()
        let handler = NIOLoopBound(upstream, eventLoop: self.context.eventLoop)
        self.parentConnector(request.parents, allowed: request.allowed).connect(on: self.context.eventLoop) { channel in
            channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(handler.value) }
        }
        .assumeIsolated()
        .whenComplete { result in
            if case .success(let (_, index)) = result, index != request.index {
                // Failed over: the new parent's 407 starts afresh.
                request.index = index
                request.handshake = nil
                request.nextAuthorization = nil
                exchange.upstreamKey = request.poolKey
            }
            self.upstreamConnectFinished(result.map(\.0), upstream, attempt: attempt, to: authority)
        }
    }

    /// The request head for the parent: absolute-form, with this proxy's `Proxy-Authorization`
    /// when the parent's 407 calls for one (the client's own never goes on).
    func writeParentRequestHead(_ exchange: ProxyExchange, _ request: ParentRequest, over upstream: UpstreamHandler) {
        guard case .absolute(let authority, _) = exchange.target else { return }
        exchange.parentName = request.parent.name
        let authorization: String?
        if let next = request.nextAuthorization {
            authorization = next
            request.nextAuthorization = nil
        } else {
            var handshake = ParentHandshake(
                method: String(decoding: exchange.head.methodBytes, as: UTF8.self),
                uri: request.absoluteURI,
                credentials: request.parents.credentials(of: request.index),
                allowed: request.parents.routing.schemes,
                memory: upstream.parentConnectionAuthenticated
                    ? nil : Self.preemptive(request.parents.takeMemory(request.index))
            )
            if case .send(let first) = handshake.start() { authorization = first } else { authorization = nil }
            request.handshake = handshake
        }
        var head = ByteBuffer()
        HeaderRewriter.writeUpstreamRequestHead(
            exchange.head,
            pathAndQuery: request.absoluteURI,
            hostHeader: authority.hostHeader,
            into: &head
        )
        // This instance's own `Via` (loops through parents are found by it), then the
        // credentials, in place of the usual `Via` line and before the head's end.
        head.moveWriterIndex(to: head.writerIndex - HeaderRewriter.viaLine.utf8CodeUnitCount - 2)
        head.writeString("Via: 1.1 \(request.parents.viaName)\r\n")
        if let authorization {
            head.writeStaticString("Proxy-Authorization: ")
            head.writeString(authorization)
            head.writeStaticString("\r\n")
        }
        head.writeStaticString("\r\n")
        exchange.upstreamHead = head
    }

    /// The parent's answer head. A 407 is the proxy's to answer: true when it is handled here
    /// (the request will go again, or the client gets a 502); false to relay the answer.
    func parentAnswered(
        _ head: ResponseHead,
        framing: ResponseFramer.Framing,
        _ exchange: ProxyExchange,
        _ request: ParentRequest
    ) -> Bool {
        guard var handshake = request.handshake else { return false }
        let parents = request.parents
        guard head.status == 407 else {
            _ = handshake.received(status: head.status, challenges: [], reusable: true)
            request.handshake = handshake
            if let memory = handshake.memory {
                parents.remember(memory, for: request.index)
                if memory == .ntlm || memory == .negotiate, let upstream = self.machine.upstream {
                    upstream.parentConnectionAuthenticated = true
                }
            }
            parents.counted(request.index, scheme: ParentConnector.scheme(of: handshake.memory), failure: nil)
            return false
        }
        // Rare (a 407), so read plainly: `Connection: close`, HTTP/1.0, a body delimited by
        // the close, or a connection already known not to be reusable.
        let closes =
            framing == .untilClose || head.minorVersion == 0 || self.machine.upstream?.isReusable != true
            || head.values(named: "connection").contains { value in
                value.split(separator: ",").contains { $0.trimmingCharacters(in: .whitespaces).lowercased() == "close" }
            }
        let challenges = (try? ChallengeParser.parse(fieldValues: head.values(named: "proxy-authenticate"))) ?? []
        let action = handshake.received(status: 407, challenges: challenges, reusable: !closes)
        request.handshake = handshake
        let failure: ParentAuthFailure
        switch action {
        case .send(let authorization), .sendOnNewConnection(let authorization):
            if let memory = handshake.memory { parents.remember(memory, for: request.index) }
            if self.machine.parentChallenged() {
                request.nextAuthorization = .some(authorization)
                if case .sendOnNewConnection = action { request.sendOnNewConnection = true }
                if closes { request.sendOnNewConnection = true }
                return true
            }
            self.cannotSendAgain(request)
            return true
        case .negotiate(let input):
            guard self.machine.parentChallenged() else {
                self.cannotSendAgain(request)
                return true
            }
            let negotiation =
                request.negotiation
                ?? ParentNegotiation(host: request.parent.host, clientKeytab: parents.routing.clientKeytab)
            request.negotiation = negotiation
            request.pendingToken = negotiation.step(
                input,
                threadPool: self.shared.threadPool,
                on: self.context.eventLoop
            )
            if closes { request.sendOnNewConnection = true }
            return true
        case .fail(let reason):
            failure = reason
        case .done:
            return false
        }
        parents.remember(nil, for: request.index)
        parents.counted(request.index, scheme: nil, failure: failure)
        self.execute(
            self.machine.upstreamClosed(
                protocolError: ProxyResponse.parentFailure(.authentication(parent: request.parent.name, failure)),
                now: self.currentTime
            )
        )
        return true
    }

    /// A 502 for a request the parent challenged after its body went out (bodies are not kept).
    private func cannotSendAgain(_ request: ParentRequest) {
        self.execute(
            self.machine.upstreamClosed(
                protocolError: ProxyResponse(
                    status: .badGateway,
                    proxyError: "proxy_internal_response",
                    details: "parent \(request.parent.name) asked for credentials after the request body went out",
                    message:
                        "the parent proxy \(request.parent.name) asked for credentials for a request whose body had already been sent; it cannot be sent again. The next request starts with the credentials."
                ),
                now: self.currentTime
            )
        )
    }

    /// The parent's 407 has been read: the request goes again with the answer, on the same
    /// connection or a new one.
    func sendAgainToParent(_ exchange: ProxyExchange, after upstream: UpstreamHandler) {
        if let request = exchange.parent, let pending = request.pendingToken {
            // The Negotiate token is still being made: the request goes once it is there.
            request.pendingToken = nil
            pending.assumeIsolated().whenSuccess { result in
                guard var handshake = request.handshake, self.machine.isSkippingChallenge else { return }
                let action = handshake.negotiateStepped(result)
                request.handshake = handshake
                switch action {
                case .send(let authorization), .sendOnNewConnection(let authorization):
                    request.nextAuthorization = .some(authorization)
                    if case .sendOnNewConnection = action { request.sendOnNewConnection = true }
                    self.sendAgainToParent(exchange, after: upstream)
                case .fail(let failure):
                    request.parents.counted(request.index, scheme: nil, failure: failure)
                    self.execute(
                        self.machine.upstreamClosed(
                            protocolError: ProxyResponse.parentFailure(
                                .authentication(parent: request.parent.name, failure)
                            ),
                            now: self.currentTime
                        )
                    )
                case .negotiate, .done:
                    self.execute(self.machine.upstreamClosed(protocolError: nil, now: self.currentTime))
                }
            }
            return
        }
        let reuse = exchange.parent?.sendOnNewConnection != true && upstream.isReusable
        exchange.parent?.sendOnNewConnection = false
        upstream.detach()
        if !reuse { upstream.close() }
        self.execute(self.machine.challengeSkipped(reuse: reuse, now: self.currentTime))
    }
}
