import NIOCore

// Requests that go through a parent proxy rather than straight to their origin.
extension ProxyConnectionHandler {
    /// The parents `authority`'s requests go through, or nil: straight to the origin.
    func parents(for authority: OriginAuthority) -> ParentSet? {
        guard let parents = self.shared.parents, parents.routing.usesParents(for: authority.host) else { return nil }
        return parents
    }

    func parentConnector(_ parents: ParentSet) -> ParentConnector {
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
            base: self.shared.connector,
            connectTimeout: self.configuration.upstreamConnectTimeout,
            answerTimeout: self.configuration.upstreamResponseTimeout,
            makeResolver: { [eventLoop = self.context.eventLoop, threadPool = self.shared.threadPool] in
                PolicyResolver(eventLoop: eventLoop, threadPool: threadPool, guard: open)
            }
        )
    }

    /// Through a parent the proxy neither resolves nor connects to the origin, so the
    /// destination rules see only what the target says: an IP literal is checked here (a name
    /// is the parent's to resolve). The error is the resolver's, for the same 403.
    func parentRouteRefusal(_ exchange: ProxyExchange, to authority: OriginAuthority) -> (any Error)? {
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

    /// `host:port` as a CONNECT names it (an IPv6 literal in brackets).
    static func connectTarget(_ authority: OriginAuthority) -> String {
        authority.host.contains(":") ? "[\(authority.host)]:\(authority.port)" : "\(authority.host):\(authority.port)"
    }
}
