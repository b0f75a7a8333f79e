import Foundation
import NIOConcurrencyHelpers
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
/// Unknown keys are errors, as in the config file: a typo must not widen access. So is a file
/// without `rules` — empty, blank, or cut short by a save in progress: no rules would allow
/// everything. Only an explicit `rules: []` means "no rules".
public enum PolicyFile {
    /// `directoryGroups`: groups may also come from a directory (`--ldap`), so a rule may name
    /// one the file does not define.
    public static func load(path: String, directoryGroups: Bool = false) throws -> AccessPolicy {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ServeError("cannot read policy file \(path): \((error as NSError).localizedDescription)")
        }
        return try self.parse(text, path: path, directoryGroups: directoryGroups)
    }

    public static func parse(_ text: String, path: String = "policy", directoryGroups: Bool = false) throws
        -> AccessPolicy
    {
        let empty = ServeError(
            "policy file \(path) is empty (or only comments); write 'rules: []' for no rules, which allows everything"
        )
        // Checked before YAML: a tab where a token could start is a YAML error, not "empty".
        if text.allSatisfy(\.isWhitespace) { throw empty }
        let node: Node?
        do {
            node = try Yams.compose(yaml: text)
        } catch {
            throw ServeError("policy file \(path) is not valid YAML: \(error)")
        }
        guard let node else { throw empty }
        guard let root = node.mapping else {
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
        guard root.keys.contains(where: { $0.string == "rules" }) else {
            throw ServeError(
                "policy file \(path) has no 'rules' (cut short?); write 'rules: []' for no rules, which allows everything"
            )
        }
        for rule in policy.rules where !directoryGroups {
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
final class PolicyReloader: Sendable {
    let path: String
    let directoryGroups: Bool
    private let settling: NIOLockedValueBox<SettledFileChange<FileIdentity>>

    init(path: String, directoryGroups: Bool = false) {
        self.path = path
        self.directoryGroups = directoryGroups
        self.settling = NIOLockedValueBox(SettledFileChange(current: FileIdentity(path: path)))
    }

    /// The new rules if the file changed and settled (or `force`), `nil` if not; throws for a
    /// bad file.
    func reload(force: Bool) throws -> AccessPolicy? {
        let before = FileIdentity(path: self.path)
        guard self.settling.withLockedValue({ $0.poll(before, force: force) }) else { return nil }
        let policy = try PolicyFile.load(path: self.path, directoryGroups: self.directoryGroups)
        // Written to while it was read: the text may be half old, half new. The next polls see
        // the new version and read it once it settles.
        guard FileIdentity(path: self.path) == before else {
            throw ServeError("policy file \(self.path) changed while it was read; it is read again once it settles")
        }
        return policy
    }
}

/// When a changed file is read: once it looked the same at two polls in a row. A save that is
/// not atomic (truncate, then write in pieces) passes through states that may parse — a rule
/// cut after `action: allow` allows everything — and one poll can land in one of them.
struct SettledFileChange<Identity: Equatable & Sendable>: Sendable {
    /// The version last read.
    private(set) var current: Identity?
    /// A version different from `current` seen at the last poll (`.some(nil)`: the file was gone).
    private var seen: Identity??

    init(current: Identity?) {
        self.current = current
    }

    /// Whether to read the file now, given its identity at this poll; `force` (SIGHUP) reads it
    /// at once.
    mutating func poll(_ identity: Identity?, force: Bool) -> Bool {
        if force {
            self.current = identity
            self.seen = nil
            return true
        }
        if identity == self.current {
            self.seen = nil
            return false
        }
        if case .some(let seen) = self.seen, seen == identity {
            self.current = identity
            self.seen = nil
            return true
        }
        self.seen = .some(identity)
        return false
    }
}
