import NIOCore

/// Which of a destination's addresses one request may be connected to: the
/// ``DestinationPolicy`` (internal networks) and the ``AccessPolicy``'s network rules, checked
/// on the addresses a name resolves to — the addresses actually connected to — so that neither
/// another spelling of an address nor a name pointing into a denied network gets past them.
struct DestinationGuard: Sendable {
    var destinations: DestinationPolicy
    /// The access rules in force when the connection is made (a reload applies from then on).
    var policy: AccessPolicy
    var user: String?
    var otherName: String? = nil
    /// The user's directory groups.
    var groups: Set<String> = []
    var method: String

    /// The addresses this request may be connected to, in resolver order.
    ///
    /// - Throws: ``ResolutionError/destinationDenied`` when every address is internal, else
    ///   ``ResolutionError/policyDenied(rule:)`` (the first address's rule) when the access
    ///   rules refuse every address left.
    func admit(_ addresses: [SocketAddress], host: String, port: Int) throws -> [SocketAddress] {
        let external = addresses.filter { self.destinations.allows($0) }
        if external.isEmpty { throw ResolutionError.destinationDenied }
        guard !self.policy.rules.isEmpty else { return external }
        var refusal: String??
        let allowed = external.filter { address in
            switch self.decide(address, host: host, port: port) {
            case .allowed:
                return true
            case .denied(let rule):
                if refusal == nil { refusal = .some(rule) }
                return false
            case .dependsOnAddress:
                // Not with an address given; refused rather than trusted if it ever were.
                if refusal == nil { refusal = .some(nil) }
                return false
            }
        }
        if let refusal, allowed.isEmpty { throw ResolutionError.policyDenied(rule: refusal) }
        return allowed
    }

    /// Whether an open connection to `address` (a pooled one) may carry this request under the
    /// access rules in force now. The destination policy was checked when it was opened.
    func allowsReuse(of address: SocketAddress?, host: String, port: Int) -> Bool {
        guard self.policy.hasNetworkRules else { return true }
        guard let address else { return false }
        if case .allowed = self.decide(address, host: host, port: port) { return true }
        return false
    }

    private func decide(_ address: SocketAddress, host: String, port: Int) -> AccessPolicy.Decision {
        self.policy.decide(
            user: self.user,
            otherName: self.otherName,
            groups: self.groups,
            host: host,
            port: port,
            method: self.method,
            address: address
        )
    }
}
