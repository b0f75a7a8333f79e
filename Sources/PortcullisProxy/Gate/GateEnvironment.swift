import Foundation
import Logging
import NIOCore
import PortcullisAuth
import PortcullisStores

/// What the gate of one connection reaches beyond itself: the tables every connection of a
/// server shares (credential cache, login throttle, challenge-loop detector, per-user limits),
/// the access rules, metrics and the log. ``GateStateMachine`` decides; this only answers and
/// records, so a test can stand in for it without sockets, threads or clocks.
///
/// The connection's implementation is ``ConnectionGateEnvironment``.
protocol GateEnvironment {
    associatedtype Credentials: GateCredentialCache

    /// The credential cache, when requests must authenticate (a scheme is offered and there
    /// are users to check against); `nil` lets every request on to the access rules.
    var credentials: Credentials? { get }
    /// Reads `Proxy-Authorization` fields and words the challenges of a 407.
    var gate: ProxyAuthGate { get }
    /// Digest nonces and answers, when Digest is offered.
    var digest: DigestAuthority? { get }
    /// The schemes the connection offers, as a challenge-loop warning names them.
    var offeredSchemeNames: [String] { get }
    /// Largest request body accepted (413 beyond); `nil`: no limit.
    var maximumRequestBody: Int? { get }
    var policy: AccessPolicy { get }
    /// The directory groups of `user` (none without a directory).
    func directoryGroups(of user: String) -> Set<String>
    /// Whether the access rules need `user`'s directory groups and they are not known yet: the
    /// gate looks them up before deciding.
    func directoryGroupsNeeded(for user: String) -> Bool
    var metrics: ProxyMetrics { get }
    /// The wall clock: account expiry and rotation grace are dates in the store.
    var currentDate: Date { get }
    /// A credential ending within this gets a `credential-expires-in` hint on its responses
    /// (`--expiry-warning`).
    var expiryWarning: TimeAmount { get }

    // MARK: Negotiate and NTLM

    /// NTLM's acceptor settings (the names its CHALLENGE gives), when NTLM is offered.
    var ntlmSettings: NTLMAcceptor.Settings? { get }
    /// `--strip-realm`: `alice` rather than `alice@EXAMPLE.ORG` for a Negotiate user.
    var stripsRealm: Bool { get }
    /// The user named by the connection's verified client certificate, if it has one.
    var certificateUser: String? { get }
    /// `--cert-users-implicit`: a certificate's user need not exist in the store.
    var certificateUsersImplicit: Bool { get }
    associatedtype Random: RandomNumberGenerator
    /// Randomness for NTLM's server challenges.
    func makeRandom() -> Random
    /// Counts a connection whose Negotiate/NTLM handshake is in progress; `false` when as many
    /// as allowed (`--max-pending-handshakes`) already are.
    func beginHandshake() -> Bool
    func endHandshake()

    // MARK: The login throttle (``AuthThrottle``)

    var throttleSettings: AuthThrottle.Settings { get }
    func lockout(of address: String, now: NIODeadline) -> AuthThrottle.Verdict
    func beginCheck(
        address: String,
        user: String?,
        credential: AuthThrottle.Fingerprint,
        now: NIODeadline
    ) -> AuthThrottle.Admission
    func checkSucceeded(_ ticket: AuthThrottle.Ticket, now: NIODeadline)
    func checkFailed(_ ticket: AuthThrottle.Ticket, now: NIODeadline) -> (delay: TimeAmount, lockedOut: Bool)
    func checkAbandoned(_ ticket: AuthThrottle.Ticket)

    // MARK: The challenge-loop detector (``ChallengeLoopDetector``)

    /// A 407 went to `client`: the loop it completes, if it completes one.
    func challengeSent(
        to client: ChallengeLoopDetector.Client,
        reason: AuthFailureReason,
        schemeSent: String?,
        offered: [String]
    ) -> ChallengeLoopDetector.Loop?
    /// `client` got through; it is only worked out when some streak is open (a success costs
    /// no key in the common case).
    func loginSucceeded(for client: @autoclosure () -> ChallengeLoopDetector.Client)

    // MARK: Per-user limits (``UserLimits``)

    /// Decides one request of `user`, and counts it if allowed (`.allowed` when there are no
    /// limits). An allowed user's count of this connection is released when it closes.
    func admit(user: String, address: String) -> UserLimits.Verdict

    // MARK: The log

    /// Whether a per-client log line of `kind` may be written now (``RefusalLogLimiter``).
    func mayLog(_ kind: RefusalLogLimiter.Kind) -> Bool
    func log(_ level: Logger.Level, _ message: Logger.Message, metadata: @autoclosure () -> Logger.Metadata)
}

/// Verified credentials remembered across connections (``CredentialVerifier``): the gate asks
/// it before sending a password to be checked, or a user's Digest secrets to be read.
protocol GateCredentialCache {
    /// The cache key of one `Proxy-Authorization` field value (a keyed MAC: it costs a hash).
    func cacheKey(forFieldValue value: String) -> CredentialVerifier.CacheKey
    /// The user (and token label) of a still-valid verification of the credential under `key`.
    func cachedLogin(for key: CredentialVerifier.CacheKey, now: NIODeadline) -> CredentialVerifier.CachedLogin?
    func cachedDigestSecrets(_ key: CredentialVerifier.DigestKey, now: NIODeadline) -> DigestLookup?
    /// A Digest login succeeded (the store records it, once per cached entry).
    func noteDigestLogin(_ key: CredentialVerifier.DigestKey, user: String)
    func cachedNTLMSecrets(name: String, now: NIODeadline) -> NTLMLookup?
    /// An NTLM login succeeded (the store records it, once per cached entry).
    func noteNTLMLogin(name: String, user: String)
    /// Changes whenever the users change: an NTLM-authenticated connection proves itself again.
    var storeGeneration: UInt64 { get }
}

extension CredentialVerifier: GateCredentialCache {
    var storeGeneration: UInt64 { self.store.generation }
}
