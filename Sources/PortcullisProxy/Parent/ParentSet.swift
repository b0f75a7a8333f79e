import CoreMetrics
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL

/// The parents of one server and what every connection learns about them: which are down
/// (passed over until a backoff ends), and how each one's 407 was answered last (so the next
/// request starts with it). Shared by all event loops, behind a lock held for a few loads.
final class ParentSet: Sendable {
    struct Health: Sendable {
        /// Passed over until then (nil: up).
        var downUntil: NIODeadline?
        /// Connection failures in a row (the backoff doubles with each).
        var failures = 0
        var memory: ParentAuthMemory?
    }

    let routing: ParentRouting
    /// This instance's pseudonym in the `Via` of what it sends to parents
    /// (`portcullis-` and 8 random hex digits): a request that comes back with it went round
    /// in a loop of parents (RFC 9110 §7.6.3).
    let viaName: String
    private let health: NIOLockedValueBox<[Health]>
    private let logger: Logger
    private let metrics: ParentMetrics

    init(routing: ParentRouting, logger: Logger, factory: any MetricsFactory) {
        self.routing = routing
        self.credentials = routing.parents.map { parent in
            parent.user.map { ParentHandshake.Credentials(user: $0, password: parent.password ?? "") }
        }
        self.viaName = "portcullis-" + String(UInt32.random(in: .min ... .max), radix: 16)
        self.health = NIOLockedValueBox(Array(repeating: Health(), count: routing.parents.count))
        self.logger = logger
        self.metrics = ParentMetrics(parents: routing.parents, factory: factory)
        if routing.parents.contains(where: \.tls) {
            do {
                self.tlsContext = try ParentTLS.context(trustRoots: routing.trustRoots)
            } catch {
                // `serve` checked the file at start-up; a file broken since is said per request.
                logger.error("the https:// parents' TLS settings do not load", metadata: ["error": "\(error)"])
                self.tlsContext = nil
            }
        } else {
            self.tlsContext = nil
        }
    }

    /// The client context for `https://` parents (nil when none is one, or it did not load).
    let tlsContext: NIOSSLContext?

    var parents: [ParentProxy] { self.routing.parents }

    /// Parent `index`'s credentials (nil: none configured).
    func credentials(of index: Int) -> ParentHandshake.Credentials? {
        self.credentials[index]
    }

    private let credentials: [ParentHandshake.Credentials?]

    /// The parents to try, in order: those up, in configuration order; when every one is down,
    /// all of them, the one whose backoff ends first first (a request is not refused while a
    /// parent might be back).
    func candidates(now: NIODeadline, among allowed: [Int]) -> [Int] {
        self.health.withLockedValue { health in
            let up = allowed.filter { (health[$0].downUntil ?? now) <= now }
            if !up.isEmpty { return up }
            return allowed.sorted { (health[$0].downUntil ?? now) < (health[$1].downUntil ?? now) }
        }
    }

    /// A connection to parent `index` failed or timed out: it is passed over for a backoff.
    func connectFailed(_ index: Int, error: any Error, now: NIODeadline) {
        let (newlyDown, backoff) = self.health.withLockedValue { health -> (Bool, TimeAmount) in
            let wasUp = health[index].failures == 0
            health[index].failures += 1
            let shift = min(health[index].failures - 1, 16)
            let backoff = TimeAmount.nanoseconds(
                min(self.routing.backoff.nanoseconds << shift, self.routing.maximumBackoff.nanoseconds)
            )
            health[index].downUntil = now + backoff
            return (wasUp, backoff)
        }
        self.metrics.failure(index)
        if newlyDown {
            self.logger.warning(
                "parent proxy unreachable; passed over while it stays down",
                metadata: [
                    "parent": "\(self.routing.parents[index].name)",
                    "error": "\(error)",
                    "retry_in_s": "\(backoff.nanoseconds / 1_000_000_000)",
                ]
            )
        }
    }

    /// A connection to parent `index` opened: it is up again.
    func connected(_ index: Int) {
        let recovered = self.health.withLockedValue { health -> Bool in
            defer {
                health[index].failures = 0
                health[index].downUntil = nil
            }
            return health[index].failures > 0
        }
        if recovered {
            self.logger.notice(
                "parent proxy reachable again",
                metadata: ["parent": "\(self.routing.parents[index].name)"]
            )
        }
    }

    /// Parent `index` failed and the request went to the next one.
    func failedOver(from index: Int) {
        self.metrics.failover(index)
    }

    /// How to start the next request's handshake with parent `index`. A Digest memory hands
    /// out each nonce count once, across all connections.
    func takeMemory(_ index: Int) -> ParentAuthMemory? {
        self.health.withLockedValue { health in
            let memory = health[index].memory
            if case .digest(let challenge, let count) = memory {
                health[index].memory = .digest(challenge, nonceCount: count + 1)
            }
            return memory
        }
    }

    /// What a finished handshake learnt (nil: forget, as after a refusal).
    func remember(_ memory: ParentAuthMemory?, for index: Int) {
        self.health.withLockedValue { health in
            switch (health[index].memory, memory) {
            case (.digest(let old, let oldCount), .digest(let new, let newCount)) where old.nonce == new.nonce:
                // Counts already handed out stay used.
                health[index].memory = .digest(new, nonceCount: max(oldCount, newCount))
            default:
                health[index].memory = memory
            }
        }
    }

    func counted(_ index: Int, scheme: ParentAuthScheme?, failure: ParentAuthFailure?) {
        self.metrics.request(index, scheme: scheme, failed: failure != nil)
    }
}

/// Per parent: requests sent (by the scheme answering its 407), connection failures, failovers,
/// refused credentials. The label is the parent's `host:port` from the configuration, a closed set.
struct ParentMetrics: Sendable {
    private let requests: [[String: Counter]]
    private let authFailures: [Counter]
    private let failures: [Counter]
    private let failovers: [Counter]

    init(parents: [ParentProxy], factory: any MetricsFactory) {
        self.requests = parents.map { parent in
            Dictionary(
                uniqueKeysWithValues: (["none"] + ParentAuthScheme.allCases.map(\.rawValue)).map { scheme in
                    (
                        scheme,
                        Counter(
                            label: "portcullis_parent_requests_total",
                            dimensions: [("parent", parent.name), ("scheme", scheme)],
                            factory: factory
                        )
                    )
                }
            )
        }
        self.authFailures = parents.map {
            Counter(label: "portcullis_parent_auth_failures_total", dimensions: [("parent", $0.name)], factory: factory)
        }
        self.failures = parents.map {
            Counter(
                label: "portcullis_parent_connect_failures_total",
                dimensions: [("parent", $0.name)],
                factory: factory
            )
        }
        self.failovers = parents.map {
            Counter(label: "portcullis_parent_failovers_total", dimensions: [("parent", $0.name)], factory: factory)
        }
    }

    func request(_ index: Int, scheme: ParentAuthScheme?, failed: Bool) {
        if failed {
            self.authFailures[index].increment()
        } else {
            self.requests[index][scheme?.rawValue ?? "none"]?.increment()
        }
    }

    func failure(_ index: Int) { self.failures[index].increment() }
    func failover(_ index: Int) { self.failovers[index].increment() }
}

public enum ParentTLS {
    /// The TLS client context of `https://` parents: TLS 1.2 or later, the certificate
    /// verified against `trustRoots` (PEM) or the system's CAs and the parent's name, ALPN
    /// `http/1.1` (a parent that also speaks HTTP/2 must not pick it: requests go as HTTP/1.1).
    public static func context(trustRoots: String?) throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        configuration.applicationProtocols = ["http/1.1"]
        if let trustRoots {
            configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(trustRoots))
        }
        return try NIOSSLContext(configuration: configuration)
    }

}
