import CoreMetrics
import Logging
import NIOConcurrencyHelpers
import NIOPosix
import PortcullisAuth
import PortcullisKerberos
import PortcullisStores

/// What every connection handler of one server shares.
public final class ProxyContext: Sendable {
    /// The settings new connections take (each connection keeps the ones it started with).
    public var configuration: ProxyConfiguration { self.configurationBox.withLockedValue { $0 } }
    private let configurationBox: NIOLockedValueBox<ProxyConfiguration>
    /// The gate of TLS connections, and of plain ones unless Basic needs TLS.
    public let gate: ProxyAuthGate
    /// The gate of plain-text connections: without Basic under `--basic-requires-tls`.
    let plainGate: ProxyAuthGate
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
    /// Opens upstream connections (tests substitute scripted channels).
    package let connector: any UpstreamConnector
    /// The Kerberos acceptor, when Negotiate is offered.
    public let negotiate: NegotiateAcceptor?
    /// The certificate and key of the TLS listeners, when there are any.
    public let tls: ProxyTLS?
    /// The directory's groups of its users, for the access rules (`--ldap`).
    public let directoryGroups: (any GroupLookup)?
    /// The parent proxies and what is known of them, when `--parent` is set.
    let parents: ParentSet?
    /// Negotiate/NTLM handshakes in progress (bounded by `maximumPendingHandshakes`).
    let pendingHandshakes = NIOLockedValueBox(0)
    /// The PAC file served at `/proxy.pac` and `/wpad.dat` (`serve --pac`), as last loaded.
    private let servedDocumentBox = NIOLockedValueBox<ServedDocument?>(nil)

    public convenience init(
        configuration: ProxyConfiguration,
        verifier: CredentialVerifier?,
        digest: DigestAuthority? = nil,
        threadPool: NIOThreadPool,
        logger: Logger,
        metrics: ProxyMetrics = ProxyMetrics(factory: NOOPMetricsHandler.instance),
        accessLog: AccessLog? = nil,
        negotiate: NegotiateAcceptor? = nil,
        tls: ProxyTLS? = nil,
        directoryGroups: (any GroupLookup)? = nil
    ) {
        self.init(
            configuration: configuration,
            verifier: verifier,
            digest: digest,
            threadPool: threadPool,
            logger: logger,
            metrics: metrics,
            accessLog: accessLog,
            connector: SocketUpstreamConnector(),
            negotiate: negotiate,
            tls: tls,
            directoryGroups: directoryGroups
        )
    }

    package init(
        configuration: ProxyConfiguration,
        verifier: CredentialVerifier?,
        digest: DigestAuthority?,
        threadPool: NIOThreadPool,
        logger: Logger,
        metrics: ProxyMetrics,
        accessLog: AccessLog?,
        connector: any UpstreamConnector,
        negotiate: NegotiateAcceptor? = nil,
        tls: ProxyTLS? = nil,
        directoryGroups: (any GroupLookup)? = nil
    ) {
        self.directoryGroups = directoryGroups
        self.connector = connector
        self.negotiate = negotiate
        self.tls = tls
        self.metrics = metrics
        self.accessLog = accessLog
        self.loopDetector = ChallengeLoopDetector()
        self.configurationBox = NIOLockedValueBox(configuration)
        self.gate = ProxyAuthGate(realm: configuration.realm, schemes: configuration.authSchemes)
        self.plainGate = configuration.basicRequiresTLS ? self.gate.withoutBasic() : self.gate
        self.verifier = verifier
        self.digest = digest
        self.throttle = AuthThrottle(settings: configuration.authThrottle)
        self.admission = ClientAdmission(settings: configuration.admission)
        self.userLimits = configuration.userLimits.isEmpty ? nil : UserLimits(settings: configuration.userLimits)
        self.policyBox = NIOLockedValueBox(configuration.policy)
        self.threadPool = threadPool
        self.logger = logger
        self.refusalLog = RefusalLogLimiter(settings: configuration.refusalLog, logger: logger)
        self.parents =
            configuration.parentRouting.parents.isEmpty
            ? nil : ParentSet(routing: configuration.parentRouting, logger: logger, factory: metrics.factory)
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

    /// The PAC file served now; nil when there is none.
    public var servedDocument: ServedDocument? { self.servedDocumentBox.withLockedValue { $0 } }

    /// Serves `document` from now on (connections accepted before keep answering with the
    /// newest one: each request reads it).
    public func updateServedDocument(_ document: ServedDocument) {
        self.servedDocumentBox.withLockedValue { $0 = document }
    }

    /// Puts new access rules in force for every request decided from now on.
    public func updatePolicy(_ policy: AccessPolicy) {
        self.policyBox.withLockedValue { $0 = policy }
    }
}
