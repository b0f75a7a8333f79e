import Foundation
import NIOCore

/// An upstream proxy that requests are forwarded through (`--parent`), with the credentials
/// the proxy answers its 407 with. The password is never part of a description.
public struct ParentProxy: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var user: String?
    public var password: String?
    /// Spoken to over TLS (an `https://` parent).
    public var tls: Bool

    public init(host: String, port: Int, user: String? = nil, password: String? = nil, tls: Bool = false) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.tls = tls
    }

    /// `host:port`: how logs, metrics and errors name the parent.
    public var name: String { self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)" }

    public var description: String { self.name }

    /// Reads `http://[USER[:PASSWORD]@]HOST[:PORT]` or `https://…` (user and password
    /// percent-encoded; port 3128 for http and 443 for https when absent, as curl does for an
    /// https proxy). The error never repeats the URL, which may hold a password.
    public init(url text: String) throws(ParentURLError) {
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased() else {
            throw ParentURLError("is not a URL like http://USER:PASSWORD@HOST:PORT")
        }
        guard scheme == "http" || scheme == "https" else {
            throw ParentURLError("uses \(scheme)://; a parent is an http:// or https:// proxy")
        }
        guard let host = components.host, !host.isEmpty else { throw ParentURLError("names no host") }
        guard (components.path.isEmpty || components.path == "/"), components.query == nil, components.fragment == nil
        else {
            throw ParentURLError("has a path, query or fragment; a parent is only http://[USER[:PASSWORD]@]HOST[:PORT]")
        }
        let port = components.port ?? (scheme == "https" ? 443 : 3128)
        guard (1...65535).contains(port) else { throw ParentURLError("has port \(port), outside 1-65535") }
        var user: String?
        var password: String?
        if let raw = components.percentEncodedUser {
            guard let decoded = raw.removingPercentEncoding, !decoded.isEmpty else {
                throw ParentURLError("has a user name that is not valid percent-encoding")
            }
            user = decoded
        }
        if let raw = components.percentEncodedPassword {
            guard let decoded = raw.removingPercentEncoding else {
                throw ParentURLError("has a password that is not valid percent-encoding")
            }
            password = decoded
        }
        // An IPv6 literal comes without brackets from URLComponents on Linux and with them on Darwin.
        var bare = host
        if bare.hasPrefix("["), bare.hasSuffix("]") { bare = String(bare.dropFirst().dropLast()) }
        self.init(host: bare.lowercased(), port: port, user: user, password: password, tls: scheme == "https")
    }
}

/// Why a `--parent` URL was refused (without the URL: it may carry a password).
public struct ParentURLError: Error, CustomStringConvertible, Sendable, Equatable {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { "the parent URL \(self.reason)" }
}

/// The schemes the proxy answers a parent's 407 with.
public enum ParentAuthScheme: String, Sendable, Hashable, CaseIterable, Comparable {
    case basic, digest, ntlm, negotiate

    /// Strongest first: what `--parent-auth any` picks among what the parent offers.
    var strength: Int {
        switch self {
        case .basic: return 0
        case .digest: return 1
        case .ntlm: return 2
        case .negotiate: return 3
        }
    }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.strength < rhs.strength }

    /// The scheme's token in `Proxy-Authenticate` / `Proxy-Authorization`.
    var token: String {
        switch self {
        case .basic: return "Basic"
        case .digest: return "Digest"
        case .ntlm: return "NTLM"
        case .negotiate: return "Negotiate"
        }
    }
}

/// Where requests go: straight to their origins, or through parents (in order, the first one
/// up), except for hosts that `directFor` names.
public struct ParentRouting: Sendable, Equatable {
    public var parents: [ParentProxy] = []
    /// The schemes the parents' 407s may be answered with (`--parent-auth`; all by default).
    public var schemes: Set<ParentAuthScheme> = Set(ParentAuthScheme.allCases)
    /// Hosts reached directly even when parents are set (`--direct-for`): names, `*.suffix`,
    /// IP literals and CIDR blocks (matched against literal addresses: the proxy does not
    /// resolve a name to route it, as a laptop behind a corporate proxy often cannot).
    public var directFor: [AccessPolicy.HostPattern] = []
    /// How long a parent that could not be reached is passed over, doubled with each further
    /// failure up to `maximumBackoff`.
    public var backoff: TimeAmount = .seconds(5)
    public var maximumBackoff: TimeAmount = .seconds(120)
    /// Ordered rules after `directFor`: the first whose hosts match decides (`parent` nil:
    /// direct; else that parent alone). No rule matching: all parents, in order.
    public var routes: [Route] = []

    public struct Route: Sendable, Equatable {
        public var hosts: [AccessPolicy.HostPattern]
        /// Index into `parents`; nil: straight to the origin.
        public var parent: Int?

        public init(hosts: [AccessPolicy.HostPattern], parent: Int?) {
            self.hosts = hosts
            self.parent = parent
        }
    }

    /// CA certificates (PEM) that `https://` parents are verified against (`--parent-cacert`);
    /// nil: the system's.
    public var trustRoots: String?
    /// A keytab with the proxy's own client key for Negotiate parents (`--parent-keytab`);
    /// without it, the process's ticket cache (`KRB5CCNAME`).
    public var clientKeytab: String?

    public init() {}

    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.parents == rhs.parents && lhs.schemes == rhs.schemes && lhs.directFor == rhs.directFor
            && lhs.backoff == rhs.backoff && lhs.maximumBackoff == rhs.maximumBackoff
            && lhs.clientKeytab == rhs.clientKeytab && lhs.trustRoots == rhs.trustRoots && lhs.routes == rhs.routes
    }

    /// The parents a request for `host` may go through, in order of preference; nil: straight
    /// to the origin.
    public func route(for host: String) -> [Int]? {
        guard !self.parents.isEmpty else { return nil }
        let all = Array(self.parents.indices)
        guard !self.directFor.isEmpty || !self.routes.isEmpty else { return all }
        let target: AccessPolicy.Target
        switch CanonicalHost(host) {
        case .name(let name)?: target = AccessPolicy.Target(name: name, address: nil)
        case let literal?: target = AccessPolicy.Target(name: nil, address: literal.addressBytes)
        case nil: return all
        }
        if self.directFor.contains(where: { $0.matches(target) == .yes }) { return nil }
        for route in self.routes where route.hosts.contains(where: { $0.matches(target) == .yes }) {
            return route.parent.map { [$0] }
        }
        return all
    }
}
