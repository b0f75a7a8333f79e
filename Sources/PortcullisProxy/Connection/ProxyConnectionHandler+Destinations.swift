import Logging
import NIOCore

// Which addresses a request's upstream connection may reach: the resolver's filter for a new
// connection and the check of a pooled one, both under the access rules in force at that time.
extension ProxyConnectionHandler {
    /// The checks for `exchange`'s destination addresses, with the access rules in force now
    /// (a policy reload between the request's first decision and its connection applies).
    func destinationGuard(for exchange: ProxyExchange, policy: AccessPolicy? = nil) -> DestinationGuard {
        DestinationGuard(
            destinations: self.configuration.destinationPolicy,
            policy: policy ?? self.shared.policy,
            user: exchange.user,
            otherName: exchange.otherName,
            groups: exchange.user.flatMap { self.shared.directoryGroups?.groups(of: $0) } ?? [],
            method: String(decoding: exchange.head.methodBytes, as: UTF8.self)
        )
    }

    /// The resolver of `exchange`'s new upstream connection; a refusal by the access rules is
    /// logged and counted as the other policy denials are.
    func policyResolver(for exchange: ProxyExchange) -> PolicyResolver {
        let logger = self.logger
        let metrics = self.shared.metrics
        let client = self.clientAddress
        let user = exchange.user ?? "-"
        let refusalLog = self.shared.refusalLog
        let eventLoop = self.context.eventLoop
        return PolicyResolver(
            eventLoop: eventLoop,
            threadPool: self.shared.threadPool,
            guard: self.destinationGuard(for: exchange)
        ) { rule, addresses in
            metrics.refused("policy")
            guard refusalLog.admit(.policyDenial, now: eventLoop.now) else { return }
            logger.info(
                "request denied by policy",
                metadata: [
                    "client": "\(client)",
                    "user": "\(user)",
                    "rule": "\(rule ?? "-")",
                    "addresses": "\(addresses.compactMap(\.ipAddress).joined(separator: ","))",
                ]
            )
        }
    }

    /// Whether the pooled connection `upstream` may carry `exchange`: it was opened for another
    /// request (maybe another user) under the rules of its time, and network rules depend on
    /// the address it is connected to.
    func mayReuse(_ upstream: UpstreamHandler, for exchange: ProxyExchange) -> Bool {
        // Most policies name no networks: then no address, no method string, per request.
        let policy = self.shared.policy
        guard policy.hasNetworkRules else { return true }
        guard case .absolute(let authority, _) = exchange.target else { return false }
        return self.destinationGuard(for: exchange, policy: policy).allowsReuse(
            of: upstream.remoteAddress,
            host: authority.host,
            port: authority.port
        )
    }
}
