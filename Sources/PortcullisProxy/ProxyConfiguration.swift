import NIOCore
import PortcullisAuth

/// Everything that shapes how the proxy treats a connection.
public struct ProxyConfiguration: Sendable {
    public var realm: String = "Portcullis"
    /// Credentials that end within this get `Proxy-Status: …; details="credential-expires-in=N"`
    /// on their responses (`--expiry-warning`).
    public var expiryWarning: TimeAmount = .hours(7 * 24)
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
    /// Idle upstream connections kept per origin and event loop: enough for one HTTP/2 client's
    /// concurrent streams to one origin (all on its connection's loop) to find theirs again;
    /// idle ones close after ``upstreamIdleTimeout``.
    public var maximumIdleUpstreamPerOrigin: Int = 128
    public var upstreamIdleTimeout: TimeAmount = .seconds(30)
    /// How much of a rejected request's body is read and discarded to keep the connection.
    public var rejectedBodyDrainLimit: Int = 1 << 20
    /// How many lines of each kind of refusal are logged per interval (the rest are summed up).
    public var refusalLog = RefusalLogLimiter.Settings()
    /// NTLM's acceptor settings (the names in its CHALLENGE), when `ntlm` is offered.
    public var ntlm: NTLMAcceptor.Settings?
    /// `--strip-realm`: a Negotiate user is `alice`, not `alice@EXAMPLE.ORG`.
    public var stripRealm = false
    /// `--basic-requires-tls`: Basic is offered, and accepted, only on TLS connections.
    public var basicRequiresTLS = false
    /// `--cert-user-from`: where a client certificate names its user.
    public var certificateUserFrom: CertificateUserSource = .commonName
    /// `--cert-users-implicit`: a certificate's user need not exist in the store.
    public var certificateUsersImplicit = false
    /// HTTP/2 on TLS listeners (`--http2`, offered through ALPN), and its windows and limits.
    public var http2Enabled = true
    public var http2 = HTTP2Settings()
    /// `--max-pending-handshakes`: Negotiate/NTLM handshakes in progress at once, server-wide.
    public var maximumPendingHandshakes = 1024
    /// Parent proxies requests go through (none: straight to the origins).
    public var parentRouting = ParentRouting()

    public init() {}
}
