import CoreMetrics
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PortcullisAuth
import PortcullisStores

/// Everything that shapes how the proxy treats a connection.
public struct ProxyConfiguration: Sendable {
    public var realm: String = "Portcullis"
    /// Schemes offered, in challenge order; empty means authentication is off.
    public var authSchemes: [AuthScheme] = [.basic]
    public var destinationPolicy = DestinationPolicy(allowPrivateDestinations: false)
    public var connectPorts: Set<Int> = [443]
    public var upstreamConnectTimeout: TimeAmount = .seconds(10)
    public var upstreamResponseTimeout: TimeAmount = .seconds(60)
    public var tunnelIdleTimeout: TimeAmount = .minutes(10)
    public var clientIdleTimeout: TimeAmount = .seconds(60)
    /// From the first byte of a request head to its end (slowloris); then 408 and close.
    public var requestHeadTimeout: TimeAmount = .seconds(30)
    /// Longest wait for the next bytes of a request body; then 408 (or a close, once the
    /// response has begun).
    public var requestBodyTimeout: TimeAmount = .seconds(30)
    /// Backoff and lockout of failed logins.
    public var authThrottle = AuthThrottle.Settings()
    /// Client allow-list and connection limits.
    public var admission = ClientAdmission.Settings()
    /// Per-user connection, address and rate limits.
    public var userLimits = UserLimits.Settings()
    /// Largest request body accepted (413 beyond); `nil`: no limit.
    public var maximumRequestBody: Int?
    /// Access rules at start-up (replaced on reload through ``ProxyContext/updatePolicy(_:)``).
    public var policy = AccessPolicy.allowAll
    /// Idle upstream connections kept per origin and event loop.
    public var maximumIdleUpstreamPerOrigin: Int = 32
    public var upstreamIdleTimeout: TimeAmount = .seconds(30)
    /// How much of a rejected request's body is read and discarded to keep the connection.
    public var rejectedBodyDrainLimit: Int = 1 << 20
    /// How many lines of each kind of refusal are logged per interval (the rest are summed up).
    public var refusalLog = RefusalLogLimiter.Settings()

    public init() {}
}

/// What every connection handler of one server shares.
public final class ProxyContext: Sendable {
    /// The settings new connections take (each connection keeps the ones it started with).
    public var configuration: ProxyConfiguration { self.configurationBox.withLockedValue { $0 } }
    private let configurationBox: NIOLockedValueBox<ProxyConfiguration>
    public let gate: ProxyAuthGate
    public let verifier: CredentialVerifier?
    /// Digest challenges, nonces and replay record, when Digest is offered.
    public let digest: DigestAuthority?
    public let throttle: AuthThrottle
    public let admission: ClientAdmission
    public let userLimits: UserLimits?
    private let policyBox: NIOLockedValueBox<AccessPolicy>
    public let threadPool: NIOThreadPool
    public let logger: Logger
    public let metrics: ProxyMetrics
    public let accessLog: AccessLog?
    public let loopDetector: ChallengeLoopDetector
    /// Ask before logging a per-client refusal: `if shared.refusalLog.admit(.policyDenial, now: now) { … }`.
    public let refusalLog: RefusalLogLimiter

    public init(
        configuration: ProxyConfiguration,
        verifier: CredentialVerifier?,
        digest: DigestAuthority? = nil,
        threadPool: NIOThreadPool,
        logger: Logger,
        metrics: ProxyMetrics = ProxyMetrics(factory: NOOPMetricsHandler.instance),
        accessLog: AccessLog? = nil
    ) {
        self.metrics = metrics
        self.accessLog = accessLog
        self.loopDetector = ChallengeLoopDetector()
        self.configurationBox = NIOLockedValueBox(configuration)
        self.gate = ProxyAuthGate(realm: configuration.realm, schemes: configuration.authSchemes)
        self.verifier = verifier
        self.digest = digest
        self.throttle = AuthThrottle(settings: configuration.authThrottle)
        self.admission = ClientAdmission(settings: configuration.admission)
        self.userLimits = configuration.userLimits.isEmpty ? nil : UserLimits(settings: configuration.userLimits)
        self.policyBox = NIOLockedValueBox(configuration.policy)
        self.threadPool = threadPool
        self.logger = logger
        self.refusalLog = RefusalLogLimiter(settings: configuration.refusalLog, logger: logger)
    }

    var authenticationEnabled: Bool { !self.gate.schemes.isEmpty }

    /// The access rules in force.
    public var policy: AccessPolicy { self.policyBox.withLockedValue { $0 } }

    /// New settings for connections accepted from now on (a reloaded config file). Only what a
    /// connection reads for itself changes: the realm, the schemes and the throttle, admission
    /// and limit settings are kept by ``ProxyContext``'s own objects and need a restart.
    public func updateConfiguration(_ update: (inout ProxyConfiguration) -> Void) {
        self.configurationBox.withLockedValue { update(&$0) }
    }

    /// Puts new access rules in force for every request decided from now on.
    public func updatePolicy(_ policy: AccessPolicy) {
        self.policyBox.withLockedValue { $0 = policy }
    }
}
