import Foundation
import Yams

/// The settings of `portcullis serve`, each optional so that the command line, the YAML config
/// file and the defaults can be layered: flags win over the file, the file over the defaults.
/// YAML keys are the long flag names.
public struct ServeOptions: Equatable, Sendable {
    public var listen: [String]?
    public var htpasswd: String?
    public var htdigest: String?
    public var store: String?
    public var realm: String?
    public var auth: [String]?
    public var allowPrivateDestinations: Bool?
    public var connectPorts: [Int]?
    public var allowOpenProxy: Bool?
    public var logLevel: String?
    public var dataDir: String?
    public var upstreamConnectTimeout: Double?
    public var upstreamResponseTimeout: Double?
    public var tunnelIdleTimeout: Double?
    public var clientIdleTimeout: Double?
    public var requestHeadTimeout: Double?
    public var requestBodyTimeout: Double?
    public var lockoutThreshold: Int?
    public var lockoutWindow: Double?
    public var lockoutDuration: Double?
    public var allowClients: [String]?
    public var policy: String?
    public var maxRequestBody: Int?
    public var admin: String?
    public var allowRemoteAdmin: Bool?
    public var accessLog: String?
    public var accessLogFormat: String?
    public var userMaxConnections: Int?
    public var userMaxAddresses: Int?
    public var userAddressWindow: Double?
    public var userMaxRate: Double?
    public var maxConnections: Int?
    public var maxClientConnections: Int?
    public var credentialCacheTTL: Double?
    public var shutdownGrace: Double?
    public var digestAlgorithms: [String]?
    public var digestNonceLifetime: Double?
    public var digestSecretFile: String?
    public var digestChallenges: String?

    public init() {}

    /// `self` where set, else `other`.
    public func layered(over other: ServeOptions) -> ServeOptions {
        var out = ServeOptions()
        out.listen = self.listen ?? other.listen
        out.htpasswd = self.htpasswd ?? other.htpasswd
        out.htdigest = self.htdigest ?? other.htdigest
        out.store = self.store ?? other.store
        out.realm = self.realm ?? other.realm
        out.auth = self.auth ?? other.auth
        out.allowPrivateDestinations = self.allowPrivateDestinations ?? other.allowPrivateDestinations
        out.connectPorts = self.connectPorts ?? other.connectPorts
        out.allowOpenProxy = self.allowOpenProxy ?? other.allowOpenProxy
        out.logLevel = self.logLevel ?? other.logLevel
        out.dataDir = self.dataDir ?? other.dataDir
        out.upstreamConnectTimeout = self.upstreamConnectTimeout ?? other.upstreamConnectTimeout
        out.upstreamResponseTimeout = self.upstreamResponseTimeout ?? other.upstreamResponseTimeout
        out.tunnelIdleTimeout = self.tunnelIdleTimeout ?? other.tunnelIdleTimeout
        out.clientIdleTimeout = self.clientIdleTimeout ?? other.clientIdleTimeout
        out.requestHeadTimeout = self.requestHeadTimeout ?? other.requestHeadTimeout
        out.requestBodyTimeout = self.requestBodyTimeout ?? other.requestBodyTimeout
        out.lockoutThreshold = self.lockoutThreshold ?? other.lockoutThreshold
        out.lockoutWindow = self.lockoutWindow ?? other.lockoutWindow
        out.lockoutDuration = self.lockoutDuration ?? other.lockoutDuration
        out.allowClients = self.allowClients ?? other.allowClients
        out.policy = self.policy ?? other.policy
        out.maxRequestBody = self.maxRequestBody ?? other.maxRequestBody
        out.admin = self.admin ?? other.admin
        out.allowRemoteAdmin = self.allowRemoteAdmin ?? other.allowRemoteAdmin
        out.accessLog = self.accessLog ?? other.accessLog
        out.accessLogFormat = self.accessLogFormat ?? other.accessLogFormat
        out.userMaxConnections = self.userMaxConnections ?? other.userMaxConnections
        out.userMaxAddresses = self.userMaxAddresses ?? other.userMaxAddresses
        out.userAddressWindow = self.userAddressWindow ?? other.userAddressWindow
        out.userMaxRate = self.userMaxRate ?? other.userMaxRate
        out.maxConnections = self.maxConnections ?? other.maxConnections
        out.maxClientConnections = self.maxClientConnections ?? other.maxClientConnections
        out.credentialCacheTTL = self.credentialCacheTTL ?? other.credentialCacheTTL
        out.shutdownGrace = self.shutdownGrace ?? other.shutdownGrace
        out.digestAlgorithms = self.digestAlgorithms ?? other.digestAlgorithms
        out.digestNonceLifetime = self.digestNonceLifetime ?? other.digestNonceLifetime
        out.digestSecretFile = self.digestSecretFile ?? other.digestSecretFile
        out.digestChallenges = self.digestChallenges ?? other.digestChallenges
        return out
    }

    /// Settings a reloaded config file puts in force for new connections; the others need a
    /// restart (listeners, stores, schemes, and the state-keeping throttle and limits).
    public static let liveKeys: Set<String> = [
        "allow-private-destinations", "connect-ports", "upstream-connect-timeout", "upstream-response-timeout",
        "tunnel-idle-timeout", "client-idle-timeout", "request-head-timeout", "request-body-timeout",
        "max-request-body",
    ]

    /// The settings (as config keys) whose values differ between `a` and `b`.
    public static func changedKeys(_ a: ServeOptions, _ b: ServeOptions) -> [String] {
        zip(Mirror(reflecting: a).children, Mirror(reflecting: b).children).compactMap { x, y in
            guard let label = x.label, String(describing: x.value) != String(describing: y.value) else { return nil }
            return Self.key(label)
        }
    }

    /// `allowPrivateDestinations` → `allow-private-destinations`.
    static func key(_ property: String) -> String {
        switch property {
        case "credentialCacheTTL": return "credential-cache-ttl"
        default:
            return property.reduce(into: "") { out, c in
                if c.isUppercase {
                    out += "-" + c.lowercased()
                } else {
                    out.append(c)
                }
            }
        }
    }

    static let knownKeys: Set<String> = [
        "listen", "htpasswd", "store", "realm", "auth", "allow-private-destinations", "connect-ports",
        "allow-open-proxy",
        "log-level", "data-dir", "upstream-connect-timeout", "upstream-response-timeout", "tunnel-idle-timeout",
        "client-idle-timeout", "credential-cache-ttl", "shutdown-grace", "request-head-timeout", "request-body-timeout",
        "lockout-threshold", "lockout-window", "lockout-duration", "allow-clients", "max-connections",
        "max-client-connections", "policy", "max-request-body", "user-max-connections", "user-max-addresses",
        "user-address-window", "user-max-rate", "admin", "allow-remote-admin", "access-log", "access-log-format",
        "htdigest", "digest-algorithms", "digest-nonce-lifetime", "digest-secret-file",
        "digest-challenges",
    ]

    /// Reads a YAML config file. Unknown keys are an error: a typo must not silently fall back
    /// to a default (for example an open proxy).
    public static func load(yamlFile path: String) throws -> ServeOptions {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ServeError("cannot read config file \(path): \((error as NSError).localizedDescription)")
        }
        return try Self.parse(yaml: text, source: path)
    }

    public static func parse(yaml text: String, source: String = "config") throws -> ServeOptions {
        let node: Node?
        do {
            node = try Yams.compose(yaml: text)
        } catch {
            throw ServeError("\(source) is not valid YAML: \(error)")
        }
        guard let node else { return ServeOptions() }
        guard let mapping = node.mapping else { throw ServeError("\(source): expected a mapping of setting: value") }
        var options = ServeOptions()
        for (keyNode, value) in mapping {
            guard let key = keyNode.string else { throw ServeError("\(source): keys must be strings") }
            guard Self.knownKeys.contains(key) else {
                throw ServeError(
                    "\(source): unknown setting '\(key)' (known: \(Self.knownKeys.sorted().joined(separator: ", ")))"
                )
            }
            func fail(_ expected: String) -> ServeError { ServeError("\(source): '\(key)' must be \(expected)") }
            func string() throws -> String {
                guard let s = value.string else { throw fail("a string") }
                return s
            }
            func strings() throws -> [String] {
                if let s = value.scalar?.string {
                    return s.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
                }
                guard let seq = value.sequence else { throw fail("a list") }
                return try seq.map { item in
                    guard let s = item.scalar?.string else { throw fail("a list of strings") }
                    return s
                }
            }
            func bool() throws -> Bool {
                guard let b = value.bool else { throw fail("true or false") }
                return b
            }
            func count() throws -> Int {
                guard let n = value.int, n >= 1 else { throw fail("a whole number >= 1") }
                return n
            }
            func seconds() throws -> Double {
                guard let d = value.float ?? value.int.map(Double.init), d > 0 else {
                    throw fail("a number of seconds > 0")
                }
                return d
            }
            switch key {
            case "listen": options.listen = try strings()
            case "htpasswd": options.htpasswd = try string()
            case "htdigest": options.htdigest = try string()
            case "digest-algorithms": options.digestAlgorithms = try strings()
            case "digest-nonce-lifetime": options.digestNonceLifetime = try seconds()
            case "digest-secret-file": options.digestSecretFile = try string()
            case "digest-challenges": options.digestChallenges = try string()
            case "store": options.store = try string()
            case "realm": options.realm = try string()
            case "auth": options.auth = try strings()
            case "allow-private-destinations": options.allowPrivateDestinations = try bool()
            case "connect-ports":
                options.connectPorts = try strings().map { text in
                    guard let port = Int(text), (1...65535).contains(port) else {
                        throw fail("a list of ports 1-65535")
                    }
                    return port
                }
            case "allow-open-proxy": options.allowOpenProxy = try bool()
            case "log-level": options.logLevel = try string()
            case "data-dir": options.dataDir = try string()
            case "upstream-connect-timeout": options.upstreamConnectTimeout = try seconds()
            case "upstream-response-timeout": options.upstreamResponseTimeout = try seconds()
            case "tunnel-idle-timeout": options.tunnelIdleTimeout = try seconds()
            case "client-idle-timeout": options.clientIdleTimeout = try seconds()
            case "request-head-timeout": options.requestHeadTimeout = try seconds()
            case "request-body-timeout": options.requestBodyTimeout = try seconds()
            case "lockout-window": options.lockoutWindow = try seconds()
            case "lockout-duration": options.lockoutDuration = try seconds()
            case "allow-clients": options.allowClients = try strings()
            case "policy": options.policy = try string()
            case "admin": options.admin = try string()
            case "allow-remote-admin": options.allowRemoteAdmin = try bool()
            case "access-log": options.accessLog = try string()
            case "access-log-format": options.accessLogFormat = try string()
            case "max-request-body":
                guard let n = value.int, n >= 0 else { throw fail("a number of bytes >= 0") }
                options.maxRequestBody = n
            case "user-max-connections": options.userMaxConnections = try count()
            case "user-max-addresses": options.userMaxAddresses = try count()
            case "user-address-window": options.userAddressWindow = try seconds()
            case "user-max-rate": options.userMaxRate = try seconds()
            case "max-connections": options.maxConnections = try count()
            case "max-client-connections": options.maxClientConnections = try count()
            case "lockout-threshold": options.lockoutThreshold = try count()
            case "credential-cache-ttl": options.credentialCacheTTL = try seconds()
            case "shutdown-grace": options.shutdownGrace = try seconds()
            default: break
            }
        }
        return options
    }
}

/// A configuration or start-up error, with a message a user can act on.
public struct ServeError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { self.message }
}
