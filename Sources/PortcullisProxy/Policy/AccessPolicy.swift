import NIOCore

/// Who may reach what, after authentication (issue 6): rules by user and group over
/// destination hosts, ports and methods. First match wins; once any rule exists, a request no
/// rule matches is denied. An authenticated request that is not allowed gets a 403 naming the
/// rule — never a 407, which would make browsers and curl ask for credentials again and again.
///
/// Rules see one spelling per destination (``CanonicalHost``: `Denied.Example.` is
/// `denied.example`, `127.1` is `127.0.0.1`) and one spelling per method (`post` is `POST`:
/// many origins read methods case-insensitively). Network patterns match the address the
/// proxy actually connects to: a name is decided again for each address it resolves to
/// (``DestinationGuard``), so a name pointing into a denied network is denied like the literal.
public struct AccessPolicy: Sendable, Equatable {
    public enum Action: String, Sendable, Equatable {
        case allow, deny
    }

    /// A host pattern: `*`, `*.example.com` (subdomains only), `example.com` (exactly), an IP
    /// address or a CIDR block (matched against the address connected to).
    public enum HostPattern: Sendable, Equatable {
        case any
        /// A canonical name (``CanonicalHost/name(_:)``); matches its subdomains.
        case suffix(String)
        /// A canonical name; matches that name only.
        case exact(String)
        case network(IPNetwork)

        /// Reads a pattern as written in a policy file: case and one trailing dot do not
        /// matter, an address may be written in any inet_aton spelling.
        public init?(_ text: String) {
            if text == "*" {
                self = .any
            } else if text.hasPrefix("*.") {
                guard case .name(let name) = CanonicalHost(String(text.dropFirst(2))) else { return nil }
                self = .suffix(name)
            } else if let network = IPNetwork(text) {
                self = .network(network)
            } else {
                switch CanonicalHost(text) {
                case .name(let name)?:
                    self = .exact(name)
                case let literal?:
                    guard let bytes = literal.addressBytes, let network = IPNetwork(address: bytes) else { return nil }
                    self = .network(network)
                case nil:
                    return nil
                }
            }
        }

        /// Names match names, networks match addresses; a network and a name whose address is
        /// not known yet might match.
        func matches(_ target: Target) -> Match {
            switch self {
            case .any:
                return .yes
            case .suffix(let suffix):
                guard let name = target.name else { return .no }
                return name.hasSuffix("." + suffix) ? .yes : .no
            case .exact(let exact):
                return target.name == exact ? .yes : .no
            case .network(let network):
                guard let address = target.address else { return .unknown }
                return network.contains(bytes: address) ? .yes : .no
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
        /// Method names, kept upper-case (ASCII); `CONNECT` for tunnels.
        public var methods: Set<String>? {
            didSet { self.methods = self.methods.map(Self.upperCased) }
        }

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
            self.methods = methods.map(Self.upperCased)
        }

        private static func upperCased(_ methods: Set<String>) -> Set<String> {
            Set(methods.map(AccessPolicy.upperCasedMethod))
        }
    }

    public enum Decision: Equatable, Sendable {
        case allowed(rule: String?)
        case denied(rule: String?)
        /// Allowed or denied depending on which networks the address of a name target is in
        /// (not known yet): connect, and decide for each address it resolves to. When every
        /// address would get the same action, the decision is made at once, naming the first
        /// rule that matches whatever the address.
        case dependsOnAddress
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

    /// Decides a request for `host` (any spelling), or for `host` connected at `address`.
    ///
    /// Without `address`, a name target may be ``Decision/dependsOnAddress``; an IP-literal
    /// target is its own address. `otherName` is the same user's other spelling (a Kerberos
    /// principal's local name, or the principal): a rule or group naming either matches.
    public func decide(
        user: String?,
        otherName: String? = nil,
        groups userGroups: Set<String> = [],
        host: String,
        port: Int,
        method: String,
        address: SocketAddress? = nil
    ) -> Decision {
        guard !self.rules.isEmpty else { return .allowed(rule: nil) }
        // A host no resolver would read the way a rule does is nobody's to allow.
        guard let canonical = CanonicalHost(host) else { return .denied(rule: nil) }
        var target = Target(name: nil, address: canonical.addressBytes)
        if case .name(let name) = canonical {
            target.name = name
            target.address = address.flatMap(IPNetwork.bytes(of:))
        }
        let method = Self.upperCasedMethod(method)
        // Actions of earlier rules that match or not depending on the address: if they agree
        // with the rule that surely matches, the outcome is known without the address.
        var pending: Set<Action> = []
        for rule in self.rules {
            switch self.matches(
                rule,
                user: user,
                otherName: otherName,
                groups: userGroups,
                target: target,
                port: port,
                method: method
            ) {
            case .no:
                continue
            case .unknown:
                pending.insert(rule.action)
            case .yes:
                guard pending.isEmpty || pending == [rule.action] else { return .dependsOnAddress }
                return rule.action == .allow ? .allowed(rule: rule.name) : .denied(rule: rule.name)
            }
        }
        return pending.isEmpty || pending == [.deny] ? .denied(rule: nil) : .dependsOnAddress
    }

    /// Whether a rule names networks (its decision can depend on the address connected to).
    public var hasNetworkRules: Bool {
        self.rules.contains { rule in
            rule.hosts?.contains { if case .network = $0 { true } else { false } } ?? false
        }
    }

    /// What a request is matched on: its canonical name (`nil` for an IP literal) and the
    /// address it is connected to (`nil` while a name is not resolved).
    struct Target {
        var name: String?
        var address: [UInt8]?
    }

    enum Match { case no, yes, unknown }

    private func matches(
        _ rule: Rule,
        user: String?,
        otherName: String?,
        groups userGroups: Set<String>,
        target: Target,
        port: Int,
        method: String
    ) -> Match {
        if rule.users != nil || rule.groups != nil {
            guard let user else { return .no }
            func named(_ names: Set<String>) -> Bool {
                names.contains(user) || otherName.map(names.contains) == true
            }
            let byName = rule.users.map(named) ?? false
            // A group of the policy file naming the user, or one the directory puts the user in.
            let byGroup =
                rule.groups?.contains { self.groups[$0].map(named) ?? false || userGroups.contains($0) } ?? false
            guard byName || byGroup else { return .no }
        }
        if let ports = rule.ports, !ports.contains(port) { return .no }
        if let methods = rule.methods, !methods.contains(method) { return .no }
        guard let hosts = rule.hosts else { return .yes }
        var result = Match.no
        for pattern in hosts {
            switch pattern.matches(target) {
            case .yes: return .yes
            case .unknown: result = .unknown
            case .no: break
            }
        }
        return result
    }

    /// Methods are case-sensitive tokens (RFC 9110 §9.1), yet origins differ: some read `post`
    /// as POST. A rule about POST must hold for every spelling an origin might take for it.
    static func upperCasedMethod(_ method: String) -> String {
        guard method.utf8.contains(where: { $0 >= 97 && $0 <= 122 }) else { return method }
        return String(decoding: method.utf8.map { $0 >= 97 && $0 <= 122 ? $0 - 32 : $0 }, as: UTF8.self)
    }
}
