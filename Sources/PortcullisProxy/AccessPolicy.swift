/// Who may reach what, after authentication (issue 6): rules by user and group over
/// destination hosts, ports and methods. First match wins; once any rule exists, a request no
/// rule matches is denied. An authenticated request that is not allowed gets a 403 naming the
/// rule — never a 407, which would make browsers and curl ask for credentials again and again.
public struct AccessPolicy: Sendable, Equatable {
    public enum Action: String, Sendable, Equatable {
        case allow, deny
    }

    /// A host pattern: `*`, `*.example.com` (subdomains only), `example.com` (exactly), an IP
    /// address or a CIDR block (matched against IP-literal targets).
    public enum HostPattern: Sendable, Equatable {
        case any
        case suffix(String)
        case exact(String)
        case network(IPNetwork)

        public init?(_ text: String) {
            let lower = text.lowercased()
            if lower == "*" {
                self = .any
            } else if lower.hasPrefix("*.") {
                let rest = String(lower.dropFirst(2))
                guard !rest.isEmpty, !rest.contains("*") else { return nil }
                self = .suffix(rest)
            } else if let network = IPNetwork(lower) {
                self = .network(network)
            } else {
                guard !lower.isEmpty, !lower.contains("*"), !lower.contains("/"), !lower.contains(" ") else {
                    return nil
                }
                self = .exact(lower)
            }
        }

        func matches(_ host: String) -> Bool {
            switch self {
            case .any: return true
            case .suffix(let suffix): return host.hasSuffix("." + suffix)
            case .exact(let name): return host == name
            case .network(let network): return network.contains(host)
            }
        }
    }

    public struct Rule: Sendable, Equatable {
        public var name: String
        public var action: Action
        /// `nil` matches anyone (authenticated or not, when authentication is off).
        public var users: Set<String>?
        public var groups: Set<String>?
        public var hosts: [HostPattern]?
        public var ports: Set<Int>?
        /// Upper-case method names; `CONNECT` for tunnels.
        public var methods: Set<String>?

        public init(
            name: String,
            action: Action,
            users: Set<String>? = nil,
            groups: Set<String>? = nil,
            hosts: [HostPattern]? = nil,
            ports: Set<Int>? = nil,
            methods: Set<String>? = nil
        ) {
            self.name = name
            self.action = action
            self.users = users
            self.groups = groups
            self.hosts = hosts
            self.ports = ports
            self.methods = methods
        }
    }

    public enum Decision: Equatable, Sendable {
        case allowed(rule: String?)
        case denied(rule: String?)
    }

    public var rules: [Rule]
    /// Group name → members.
    public var groups: [String: Set<String>]

    public init(rules: [Rule] = [], groups: [String: Set<String>] = [:]) {
        self.rules = rules
        self.groups = groups
    }

    /// No rules: everything authenticated is allowed (the proxy's other limits still apply).
    public static let allowAll = AccessPolicy()

    public func decide(user: String?, host: String, port: Int, method: String) -> Decision {
        guard !self.rules.isEmpty else { return .allowed(rule: nil) }
        let host = host.lowercased()
        for rule in self.rules where self.matches(rule, user: user, host: host, port: port, method: method) {
            return rule.action == .allow ? .allowed(rule: rule.name) : .denied(rule: rule.name)
        }
        return .denied(rule: nil)
    }

    private func matches(_ rule: Rule, user: String?, host: String, port: Int, method: String) -> Bool {
        if rule.users != nil || rule.groups != nil {
            guard let user else { return false }
            let byName = rule.users?.contains(user) ?? false
            let byGroup = rule.groups?.contains { self.groups[$0]?.contains(user) ?? false } ?? false
            guard byName || byGroup else { return false }
        }
        if let hosts = rule.hosts, !hosts.contains(where: { $0.matches(host) }) { return false }
        if let ports = rule.ports, !ports.contains(port) { return false }
        if let methods = rule.methods, !methods.contains(method) { return false }
        return true
    }
}
