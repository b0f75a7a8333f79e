import Foundation
import PortcullisAuth
import PortcullisProxy
import PortcullisStores
import Yams

/// The access-rule file of `--policy` (YAML), read into an ``AccessPolicy``.
///
/// ```yaml
/// groups:
///   developers: [alice, bob]
/// rules:
///   - name: no-admin-hosts
///     action: deny
///     hosts: ["admin.corp.example", "*.internal.example", "10.0.0.0/8"]
///   - name: developers-web
///     action: allow
///     groups: [developers]
///     ports: [80, 443]
///     methods: [GET, HEAD, POST, CONNECT]
/// ```
/// Unknown keys are errors, as in the config file: a typo must not widen access.
public enum PolicyFile {
    public static func load(path: String) throws -> AccessPolicy {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ServeError("cannot read policy file \(path): \((error as NSError).localizedDescription)")
        }
        return try self.parse(text, path: path)
    }

    public static func parse(_ text: String, path: String = "policy") throws -> AccessPolicy {
        let node: Node?
        do {
            node = try Yams.compose(yaml: text)
        } catch {
            throw ServeError("policy file \(path) is not valid YAML: \(error)")
        }
        guard let root = node?.mapping else {
            if node == nil { return .allowAll }
            throw ServeError("policy file \(path): expected a mapping with 'groups' and 'rules'")
        }
        var policy = AccessPolicy()
        for (keyNode, value) in root {
            let key = keyNode.string ?? ""
            switch key {
            case "groups":
                guard let mapping = value.mapping else {
                    throw ServeError("policy file \(path): 'groups' must map names to lists of users")
                }
                for (name, members) in mapping {
                    guard let group = name.string, let list = members.sequence?.compactMap(\.string) else {
                        throw ServeError(
                            "policy file \(path): group '\(name.string ?? "?")' must be a list of user names"
                        )
                    }
                    policy.groups[group] = Set(list)
                }
            case "rules":
                guard let sequence = value.sequence else {
                    throw ServeError("policy file \(path): 'rules' must be a list")
                }
                for (index, item) in sequence.enumerated() {
                    policy.rules.append(try self.rule(item, number: index + 1, path: path))
                }
            default:
                throw ServeError("policy file \(path): unknown key '\(key)' (known: groups, rules)")
            }
        }
        for rule in policy.rules {
            for group in rule.groups ?? [] where policy.groups[group] == nil {
                throw ServeError(
                    "policy file \(path): rule '\(rule.name)' names group '\(group)', which 'groups' does not define"
                )
            }
        }
        return policy
    }

    private static let ruleKeys: Set<String> = ["name", "action", "users", "groups", "hosts", "ports", "methods"]

    private static func rule(_ node: Node, number: Int, path: String) throws -> AccessPolicy.Rule {
        guard let mapping = node.mapping else {
            throw ServeError("policy file \(path): rule \(number) must be a mapping")
        }
        var fields: [String: Node] = [:]
        for (key, value) in mapping {
            let name = key.string ?? ""
            guard self.ruleKeys.contains(name) else {
                throw ServeError(
                    "policy file \(path): rule \(number) has unknown key '\(name)' (known: \(self.ruleKeys.sorted().joined(separator: ", ")))"
                )
            }
            fields[name] = value
        }
        let name = fields["name"]?.string ?? "rule-\(number)"
        func fail(_ what: String) -> ServeError { ServeError("policy file \(path): rule '\(name)': \(what)") }
        func strings(_ key: String) throws -> [String]? {
            guard let node = fields[key] else { return nil }
            if let s = node.scalar?.string { return [s] }
            guard let list = node.sequence?.map({ $0.string }), !list.contains(nil) else {
                throw fail("'\(key)' must be a list of strings")
            }
            return list.compactMap { $0 }
        }
        guard let actionText = fields["action"]?.string,
            let action = AccessPolicy.Action(rawValue: actionText.lowercased())
        else { throw fail("'action' must be allow or deny") }
        var rule = AccessPolicy.Rule(name: name, action: action)
        rule.users = try strings("users").map(Set.init)
        rule.groups = try strings("groups").map(Set.init)
        if let hosts = try strings("hosts") {
            rule.hosts = try hosts.map { text in
                guard let pattern = AccessPolicy.HostPattern(text) else {
                    throw fail(
                        "host pattern '\(text)' is not *, *.domain, a host name (ASCII; punycode for others), an IP address or a CIDR block"
                    )
                }
                return pattern
            }
        }
        if let ports = try strings("ports") {
            rule.ports = Set(
                try ports.map { text in
                    guard let port = Int(text), (1...65535).contains(port) else {
                        throw fail("port '\(text)' is not 1-65535")
                    }
                    return port
                }
            )
        }
        if let methods = try strings("methods") {
            // A method is a token (RFC 9110 §9.1): `GET, POST` in one string would be a rule
            // about no method at all.
            for method in methods where method.isEmpty || !method.utf8.allSatisfy(HTTPGrammar.isTokenByte) {
                throw fail("method '\(method)' is not a method name (one per list item)")
            }
            rule.methods = Set(methods)
        }
        return rule
    }
}

/// Keeps the policy file's rules in force: re-read when the file changes or on SIGHUP; a file
/// that does not parse is reported and the previous rules stay.
final class PolicyReloader: @unchecked Sendable {
    let path: String
    private var identity: FileIdentity?
    private let lock = NSLock()

    init(path: String) {
        self.path = path
        self.identity = FileIdentity(path: path)
    }

    /// The new rules if the file changed (or `force`), `nil` if not; throws for a bad file.
    func reload(force: Bool) throws -> AccessPolicy? {
        let current = FileIdentity(path: self.path)
        let changed = self.lock.withLock { () -> Bool in
            if !force && current == self.identity { return false }
            self.identity = current
            return true
        }
        guard changed else { return nil }
        return try PolicyFile.load(path: self.path)
    }
}
