import CoreMetrics
import NIOConcurrencyHelpers
import PortcullisAuth

/// The proxy's metrics (issue 7), made through swift-metrics with an explicit factory (the
/// server passes swift-prometheus'; tests their own). Every label value comes from a closed
/// set — status classes, reason tokens, scheme names — never from a user name, a host or a
/// header, so the series count is bounded and no secret can become a label.
///
/// Counters for each label combination are made once and kept, so the request path only
/// increments.
public final class ProxyMetrics: Sendable {
    public static let statusClasses = ["1xx", "2xx", "3xx", "4xx", "5xx"]

    let factory: any MetricsFactory
    /// Indexed by `connect ? 5 : 0` + status class (1xx…5xx): no key built per request.
    private let requests: [Counter]
    /// `basic`/`ok`, the outcome of nearly every request, kept out of the locked table.
    private let acceptedBasic: Counter
    private let authOutcomes: NIOLockedValueBox<[String: Counter]>
    let challenges: Counter
    let challengeLoops: Counter
    let lockouts: Counter
    let activeConnections: Meter
    /// Client connections accepted (not refused by admission), per listener kind.
    private let acceptedConnections: [ListenerKind: Counter]
    let activeTunnels: Meter
    let bytesFromClients: Counter
    let bytesToClients: Counter
    private let connectErrors: [String: Counter]
    let requestDuration: Timer
    let addedLatency: Timer
    let cacheHits: Counter
    let cacheMisses: Counter
    let verifyDuration: Timer
    private let refusals: NIOLockedValueBox<[String: Counter]>
    /// `portcullis_users{state}` and `portcullis_tokens_active`, made at their first report.
    private let credentialGauges = NIOLockedValueBox<[String: Gauge]>([:])
    /// The states `portcullis_users` counts, each user in exactly one (the first that applies).
    public static let userStates = ["disabled", "expired", "expiring", "rotating", "active"]
    /// Lines of the server log (stderr) dropped because it did not keep up (``LogSink``).
    public let droppedServerLogLines: Counter
    /// Lines of the access log dropped because its destination did not keep up.
    public let droppedAccessLogLines: Counter
    private let reloads: NIOLockedValueBox<[String: Counter]>

    public init(factory: any MetricsFactory) {
        self.factory = factory
        self.requests = ["http", "connect"].flatMap { kind in
            Self.statusClasses.map { status in
                Counter(
                    label: "portcullis_requests_total",
                    dimensions: [("kind", kind), ("status_class", status)],
                    factory: factory
                )
            }
        }
        let acceptedBasic = Counter(
            label: "portcullis_auth_outcomes_total",
            dimensions: [("scheme", AuthScheme.basic.rawValue), ("outcome", "accepted"), ("reason", "ok")],
            factory: factory
        )
        self.acceptedBasic = acceptedBasic
        self.authOutcomes = NIOLockedValueBox(["\(AuthScheme.basic.rawValue) ok": acceptedBasic])
        self.challenges = Counter(label: "portcullis_proxy_auth_challenges_total", factory: factory)
        self.challengeLoops = Counter(label: "portcullis_challenge_loops_total", factory: factory)
        self.lockouts = Counter(label: "portcullis_lockouts_total", factory: factory)
        self.activeConnections = Meter(label: "portcullis_client_connections_active", factory: factory)
        self.acceptedConnections = Dictionary(
            uniqueKeysWithValues: ListenerKind.allCases.map { kind in
                (
                    kind,
                    Counter(
                        label: "portcullis_client_connections_total",
                        dimensions: [("listener", kind.rawValue)],
                        factory: factory
                    )
                )
            }
        )
        self.activeTunnels = Meter(label: "portcullis_tunnels_active", factory: factory)
        self.bytesFromClients = Counter(
            label: "portcullis_bytes_total",
            dimensions: [("direction", "from_clients")],
            factory: factory
        )
        self.bytesToClients = Counter(
            label: "portcullis_bytes_total",
            dimensions: [("direction", "to_clients")],
            factory: factory
        )
        var errors: [String: Counter] = [:]
        for kind in UpstreamErrorKind.allCases {
            errors[kind.rawValue] = Counter(
                label: "portcullis_upstream_connect_errors_total",
                dimensions: [("kind", kind.rawValue)],
                factory: factory
            )
        }
        self.connectErrors = errors
        self.requestDuration = Timer(label: "portcullis_request_duration_seconds", factory: factory)
        self.addedLatency = Timer(label: "portcullis_added_latency_seconds", factory: factory)
        self.cacheHits = Counter(
            label: "portcullis_credential_cache_total",
            dimensions: [("result", "hit")],
            factory: factory
        )
        self.cacheMisses = Counter(
            label: "portcullis_credential_cache_total",
            dimensions: [("result", "miss")],
            factory: factory
        )
        self.verifyDuration = Timer(label: "portcullis_password_verify_seconds", factory: factory)
        self.refusals = NIOLockedValueBox([:])
        self.droppedServerLogLines = Counter(
            label: "portcullis_log_lines_dropped_total",
            dimensions: [("log", "server")],
            factory: factory
        )
        self.droppedAccessLogLines = Counter(
            label: "portcullis_log_lines_dropped_total",
            dimensions: [("log", "access")],
            factory: factory
        )
        self.reloads = NIOLockedValueBox([:])
    }

    public enum UpstreamErrorKind: String, CaseIterable, Sendable {
        case dns, refused, timeout, denied, other
    }

    func request(connect: Bool, status: Int) {
        let index = max(1, min(5, status / 100)) - 1
        self.requests[(connect ? 5 : 0) + index].increment()
    }

    /// One decision of the gate on credentials of a scheme it offers: `reason` is a
    /// ``AuthFailureReason`` token or `ok`.
    func authOutcome(scheme: AuthScheme, reason: String) {
        self.authOutcome(scheme: scheme.rawValue, reason: reason)
    }

    /// One decision of the gate: `scheme` is the presented scheme, lower-cased (`none`: no
    /// credentials), `reason` a ``AuthFailureReason`` token or `ok`.
    func authOutcome(scheme: String, reason: String) {
        if scheme == AuthScheme.basic.rawValue, reason == "ok" {
            self.acceptedBasic.increment()
            return
        }
        let scheme = AuthScheme(rawValue: scheme) != nil || scheme == "none" ? scheme : "other"
        let key = "\(scheme) \(reason)"
        self.counter(in: self.authOutcomes, key: key) {
            Counter(
                label: "portcullis_auth_outcomes_total",
                dimensions: [
                    ("scheme", scheme), ("outcome", reason == "ok" ? "accepted" : "rejected"), ("reason", reason),
                ],
                factory: self.factory
            )
        }.increment()
    }

    func connectError(_ kind: UpstreamErrorKind) {
        self.connectErrors[kind.rawValue]?.increment()
    }

    /// A connection or request refused by an admission rule or a limit (`reason` from a closed set).
    func connectionAccepted(on listener: ListenerKind) {
        self.acceptedConnections[listener]?.increment()
    }

    func refused(_ reason: String) {
        self.counter(in: self.refusals, key: reason) {
            Counter(label: "portcullis_refusals_total", dimensions: [("reason", reason)], factory: self.factory)
        }.increment()
    }

    /// A reload of `what` (`users`, `policy`, `access_log`) that worked or not.
    public func reload(_ what: String, ok: Bool) {
        let key = "\(what) \(ok)"
        self.counter(in: self.reloads, key: key) {
            Counter(
                label: "portcullis_reloads_total",
                dimensions: [("what", what), ("result", ok ? "ok" : "failed")],
                factory: self.factory
            )
        }.increment()
    }

    /// How many users are in each of ``userStates`` (missing states: 0) and how many tokens can
    /// still be used. Written by the server's periodic look at the user database.
    public func credentials(users: [String: Int], tokensActive: Int) {
        self.credentialGauges.withLockedValue { gauges in
            for state in Self.userStates {
                let gauge =
                    gauges[state]
                    ?? Gauge(label: "portcullis_users", dimensions: [("state", state)], factory: self.factory)
                gauges[state] = gauge
                gauge.record(users[state] ?? 0)
            }
            let tokens = gauges["tokens"] ?? Gauge(label: "portcullis_tokens_active", factory: self.factory)
            gauges["tokens"] = tokens
            tokens.record(tokensActive)
        }
    }

    private func counter(in box: NIOLockedValueBox<[String: Counter]>, key: String, make: () -> Counter) -> Counter {
        box.withLockedValue { counters in
            if let existing = counters[key] { return existing }
            let made = make()
            counters[key] = made
            return made
        }
    }
}
