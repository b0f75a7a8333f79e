import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOPosix
import PortcullisAuth
import PortcullisStores

/// Users in an LDAP directory (OpenLDAP, Active Directory), for Basic: the user is found by a
/// search as the service account (`--ldap-bind-dn`), then the password is checked by binding as
/// the entry found — never by comparing a hash read from the directory. The user name is escaped
/// into the filter (RFC 4515); a search that finds no entry or more than one is a wrong password;
/// an empty password is refused before any bind. Several URLs fail over in order; a directory
/// that cannot be reached makes the outcome `unavailable` (the proxy answers 503, not 407).
///
/// OpenLDAP's API blocks: every operation runs on the thread pool. Service-bound connections
/// are kept for searches (at most `maximumIdleConnections`); each password is checked on a
/// connection of its own, closed after the bind.
public final class LDAPDirectory: CredentialStore, GroupLookup {
    public struct Settings: Sendable, Equatable {
        public var urls: [String]
        public var base: String
        public var bindDN: String?
        public var bindPassword: String?
        /// `%s` is the escaped user name.
        public var userFilter = "(&(objectClass=person)(uid=%s))"
        /// The attribute that holds the user's name as the directory spells it.
        public var nameAttribute = "uid"
        /// The attribute of a user's entry that lists its groups' DNs.
        public var groupAttribute = "memberOf"
        /// How long the groups read at a login count for the access rules.
        public var groupCacheTTL: TimeInterval = 300
        /// Groups also through nesting, by Active Directory's LDAP_MATCHING_RULE_IN_CHAIN: a
        /// search for the groups whose `member` chain reaches the user's DN.
        public var nestedGroups = false
        /// A search for the user's groups by membership (`%d`: the user's DN, escaped), for
        /// directories whose entries list no groups of their own (`groupOfNames` without the
        /// memberOf overlay): `(&(objectClass=groupOfNames)(member=%d))`.
        public var groupFilter: String?
        /// Ask the directory before the local users (`--ldap-first`).
        public var first = false

        /// Active Directory: users by `sAMAccountName` or `userPrincipalName`, named by
        /// `sAMAccountName`, groups through nesting.
        public mutating func applyActiveDirectoryPreset() {
            self.userFilter = "(&(objectClass=user)(|(sAMAccountName=%s)(userPrincipalName=%s)))"
            self.nameAttribute = "sAMAccountName"
            self.nestedGroups = true
        }
        /// StartTLS on `ldap://` URLs (on by default: a bind carries the password).
        public var startTLS = true
        public var caFile: String?
        public var timeout: TimeInterval = 5
        public var maximumIdleConnections = 4

        public init(urls: [String], base: String) {
            self.urls = urls
            self.base = base
        }
    }

    public let settings: Settings
    private let threadPool: NIOThreadPool
    /// Says which logins the directory accepted (the local store's are not logged), so the log
    /// names a user's source.
    private let logger: Logger?
    /// Each user's groups as of their last login, until `expires`; at most `maximumCachedUsers`.
    private let groupCache = NIOLockedValueBox<[String: (groups: Set<String>, expires: Date)]>([:])
    static let maximumCachedUsers = 10_000
    /// Idle service-bound connections and the URL each is for.
    private let idle = NIOLockedValueBox<[(url: String, connection: LDAPConnectionBox)]>([])

    public init(settings: Settings, threadPool: NIOThreadPool, logger: Logger? = nil) {
        self.settings = settings
        self.threadPool = threadPool
        self.logger = logger
    }

    public var generation: UInt64 { 1 }

    public func verify(user: String, password: String) async -> VerificationOutcome {
        // An empty password would be an unauthenticated bind, a success on many servers.
        guard !user.isEmpty, !password.isEmpty else { return .rejected(.invalid) }
        do {
            return try await self.threadPool.runIfActive { self.verifyBlocking(user: user, password: password) }
        } catch {
            return .rejected(.unavailable)
        }
    }

    /// What one search and bind came to, step by step (for `portcullis ldap test` and the tests).
    public struct Trace: Sendable {
        public var url: String?
        public var filter: String
        public var dn: String?
        public var outcome: VerificationOutcome
        public var detail: String?
        /// The names the user's groups count under in the access rules.
        public var groups: [String] = []
    }

    func verifyBlocking(user: String, password: String) -> VerificationOutcome {
        self.trace(user: user, password: password).outcome
    }

    /// The search and the bind, on the calling thread (it blocks).
    public func trace(user: String, password: String) -> Trace {
        let filter = LDAPEscaping.filter(self.settings.userFilter, user: user)
        var trace = Trace(url: nil, filter: filter, dn: nil, outcome: .rejected(.unavailable), detail: nil)
        guard !user.isEmpty, !password.isEmpty else {
            trace.outcome = .rejected(.invalid)
            trace.detail = "an empty user name or password is refused before any bind"
            return trace
        }
        for url in self.settings.urls {
            trace.url = url
            do throws(LDAPError) {
                let found = try self.withServiceConnection(url) { connection throws(LDAPError) in
                    try connection.search(
                        base: self.settings.base,
                        filter: filter,
                        attributes: [self.settings.nameAttribute, self.settings.groupAttribute],
                        sizeLimit: 2
                    )
                }
                guard found.count == 1, let entry = found.first, !entry.dn.isEmpty else {
                    trace.outcome = .rejected(.invalid)
                    trace.detail = found.isEmpty ? "no entry matches" : "more than one entry matches"
                    return trace
                }
                trace.dn = entry.dn
                let connection = try LDAPConnection(self.connectionSettings(url))
                defer { connection.close() }
                do throws(LDAPError) {
                    try connection.bind(dn: entry.dn, password: password)
                } catch {
                    guard error.kind == .result(LDAP_INVALID_CREDENTIALS_CODE) else { throw error }
                    trace.outcome = .rejected(.invalid)
                    trace.detail = "the bind as the entry failed: wrong password"
                    return trace
                }
                // The directory's own spelling of the name: it matched `DORA` or ` dora` to the
                // entry of `dora` (its matching rules ignore case and surrounding spaces), and
                // one person must be one user for policy, limits and lockout.
                let names = entry.attributes[self.settings.nameAttribute] ?? []
                let accepted = names.count == 1 ? names[0] : user
                let groups = self.groups(of: entry, url: url)
                self.remember(groups, of: accepted)
                trace.groups = groups.sorted()
                trace.outcome = .accepted(user: accepted)
                self.logger?.info(
                    "login accepted by the directory",
                    metadata: ["user": "\(accepted)", "dn": "\(entry.dn)", "ldap": "\(url)"]
                )
                trace.detail = "bound as \(entry.dn)"
                return trace
            } catch {
                trace.detail = error.description
                if error.kind == .unavailable { continue }
                // Any other result (a filter the server refuses, insufficient access): the
                // directory is misconfigured for us, which is no reason to let anyone in.
                trace.outcome = .rejected(.unavailable)
                return trace
            }
        }
        trace.outcome = .rejected(.unavailable)
        return trace
    }

    private func connectionSettings(_ url: String) -> LDAPConnection.Settings {
        LDAPConnection.Settings(
            url: url,
            startTLS: self.settings.startTLS && !url.lowercased().hasPrefix("ldaps://"),
            caFile: self.settings.caFile,
            timeout: self.settings.timeout
        )
    }

    /// Runs `body` on an idle service-bound connection to `url` (or a new one); it goes back
    /// idle after a success, and is closed after a failure.
    private func withServiceConnection<Result>(
        _ url: String,
        fresh: Bool = false,
        _ body: (LDAPConnection) throws(LDAPError) -> Result
    ) throws(LDAPError) -> Result {
        let reused = self.idle.withLockedValue { idle -> LDAPConnectionBox? in
            guard !fresh, let index = idle.lastIndex(where: { $0.url == url }) else { return nil }
            return idle.remove(at: index).connection
        }
        let box: LDAPConnectionBox
        if let reused {
            box = reused
        } else {
            let connection = try LDAPConnection(self.connectionSettings(url))
            if let dn = self.settings.bindDN {
                try connection.bind(dn: dn, password: self.settings.bindPassword ?? "")
            }
            box = LDAPConnectionBox(connection)
        }
        let result: Result
        do throws(LDAPError) {
            result = try body(box.connection)
        } catch {
            box.connection.close()
            // An idle connection the directory dropped (a restart, an idle timeout): once more
            // on a new one before the directory counts as down.
            guard reused != nil, error.kind == .unavailable else { throw error }
            return try self.withServiceConnection(url, fresh: true, body)
        }
        let maximum = self.settings.maximumIdleConnections
        let kept = self.idle.withLockedValue { idle -> Bool in
            guard idle.count < maximum else { return false }
            idle.append((url, box))
            return true
        }
        if !kept { box.connection.close() }
        return result
    }

    /// Whether any of the directory's URLs answers a search as the service account now (for
    /// /readyz, every 2 s): on a kept connection, so it costs one round trip.
    public func reachable() async -> Bool {
        (try? await self.threadPool.runIfActive { () -> Bool in
            for url in self.settings.urls {
                do throws(LDAPError) {
                    _ = try self.withServiceConnection(url) { connection throws(LDAPError) in
                        try connection.search(
                            base: self.settings.base,
                            filter: "(objectClass=*)",
                            attributes: ["1.1"],
                            sizeLimit: 1
                        )
                    }
                    return true
                } catch {
                    continue
                }
            }
            return false
        }) ?? false
    }

    // MARK: - Groups

    /// The groups whose membership chain reaches `userDN` (AD's in-chain matching rule), with
    /// the DN escaped as a filter value.
    static func nestedGroupFilter(userDN: String) -> String {
        "(member:1.2.840.113556.1.4.1941:=\(LDAPEscaping.filterValue(userDN)))"
    }

    /// A group DN counts under itself and under its first RDN's value
    /// (`cn=staff,ou=groups,dc=example,dc=org` is `staff` in a policy file too).
    static func groupNames(_ dns: [String]) -> Set<String> {
        var names = Set<String>()
        for dn in dns {
            names.insert(dn)
            if let equals = dn.firstIndex(of: "=") {
                let rest = dn[dn.index(after: equals)...]
                // The value ends at the first comma not escaped with a backslash.
                var value = ""
                var escaped = false
                for character in rest {
                    if escaped {
                        value.append(character)
                        escaped = false
                    } else if character == "\\" {
                        escaped = true
                    } else if character == "," {
                        break
                    } else {
                        value.append(character)
                    }
                }
                if !value.isEmpty { names.insert(value) }
            }
        }
        return names
    }

    private func remember(_ groups: Set<String>, of user: String) {
        let now = Date()
        let expires = now.addingTimeInterval(self.settings.groupCacheTTL)
        self.groupCache.withLockedValue { cache in
            if cache.count >= Self.maximumCachedUsers, cache[user] == nil {
                cache = cache.filter { $0.value.expires > now }
                if cache.count >= Self.maximumCachedUsers,
                    let oldest = cache.min(by: { $0.value.expires < $1.value.expires })
                {
                    cache[oldest.key] = nil
                }
            }
            cache[user] = (groups, expires)
        }
    }

    public func knowsGroups(of user: String) -> Bool {
        let now = Date()
        return self.groupCache.withLockedValue { cache in (cache[user]?.expires).map { $0 > now } ?? false }
    }

    /// For identities proved without the directory (Kerberos, NTLM): the entry found by the
    /// user filter (as the service account) and its groups; none when it is not there or the
    /// directory cannot be read (kept for the TTL all the same: a busy proxy must not ask again
    /// for every request of a user the directory does not know).
    public func lookUpGroups(name: String, keptAs user: String) async {
        let groups =
            (try? await self.threadPool.runIfActive { () -> Set<String> in
                let filter = LDAPEscaping.filter(self.settings.userFilter, user: name)
                for url in self.settings.urls {
                    do throws(LDAPError) {
                        let found = try self.withServiceConnection(url) { connection throws(LDAPError) in
                            try connection.search(
                                base: self.settings.base,
                                filter: filter,
                                attributes: [self.settings.groupAttribute],
                                sizeLimit: 2
                            )
                        }
                        guard found.count == 1, let entry = found.first, !entry.dn.isEmpty else { return [] }
                        return self.groups(of: entry, url: url)
                    } catch {
                        continue
                    }
                }
                return []
            }) ?? []
        self.remember(groups, of: user)
    }

    /// The groups of a user's entry: its group attribute, and nested ones with the AD preset.
    private func groups(of entry: LDAPConnection.Entry, url: String) -> Set<String> {
        var groupDNs = entry.attributes[self.settings.groupAttribute] ?? []
        if let template = self.settings.groupFilter {
            let filter = template.replacingOccurrences(of: "%d", with: LDAPEscaping.filterValue(entry.dn))
            let found = try? self.withServiceConnection(url) { connection throws(LDAPError) in
                try connection.search(base: self.settings.base, filter: filter, attributes: ["1.1"], sizeLimit: 1000)
            }
            groupDNs += (found ?? []).map(\.dn).filter { !$0.isEmpty }
        }
        if self.settings.nestedGroups {
            // Best effort: a directory without the rule leaves the direct groups.
            let nested = try? self.withServiceConnection(url) { connection throws(LDAPError) in
                try connection.search(
                    base: self.settings.base,
                    filter: Self.nestedGroupFilter(userDN: entry.dn),
                    attributes: ["1.1"],
                    sizeLimit: 1000
                )
            }
            groupDNs += (nested ?? []).map(\.dn).filter { !$0.isEmpty }
        }
        return Self.groupNames(groupDNs)
    }

    public func groups(of user: String) -> Set<String> {
        let now = Date()
        return self.groupCache.withLockedValue { cache in
            guard let entry = cache[user], entry.expires > now else { return [] }
            return entry.groups
        }
    }

    // MARK: - What a directory does not hold

    public func digestSecrets(name: String, isUserhash: Bool, hash: DigestAlgorithm.Hash) async -> DigestLookup {
        .unknownUser
    }

    public func ntlmSecrets(name: String) async -> NTLMLookup { .unknownUser }

    public func account(named name: String) async -> AccountLookup { .unknownUser }

    public func nonceKey() async -> [UInt8]? { nil }

    public func noteLogin(_ user: String, at date: Date) async {}
}

/// A connection handed between pool threads: used by one thread at a time (taken out of the
/// idle list under its lock before use).
final class LDAPConnectionBox: @unchecked Sendable {
    let connection: LDAPConnection
    init(_ connection: LDAPConnection) { self.connection = connection }
}

let LDAP_INVALID_CREDENTIALS_CODE: Int32 = 49
