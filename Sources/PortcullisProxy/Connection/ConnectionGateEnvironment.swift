import Foundation
import Logging
import NIOCore
import PortcullisAuth
import PortcullisStores

/// The gate's environment on a client connection: the server's shared objects
/// (``ProxyContext``), and the connection's settings, logger and identity.
///
/// Made for each event from the handler (one reference): a value the gate is generic over, so
/// nothing is boxed or allocated on a request's way through the gate.
struct ConnectionGateEnvironment: GateEnvironment {
    let connection: ProxyConnectionHandler

    private var shared: ProxyContext { self.connection.shared }

    var credentials: CredentialVerifier? {
        self.shared.authenticationEnabled ? self.shared.verifier : nil
    }
    var gate: ProxyAuthGate { self.connection.listener == .tls ? self.shared.gate : self.shared.plainGate }
    var digest: DigestAuthority? { self.shared.digest }
    var offeredSchemeNames: [String] { self.gate.schemes.map(\.headerName) }
    var maximumRequestBody: Int? { self.connection.configuration.maximumRequestBody }
    var policy: AccessPolicy { self.shared.policy }

    func directoryGroups(of user: String) -> Set<String> {
        self.shared.directoryGroups?.groups(of: user) ?? []
    }

    func directoryGroupsNeeded(for user: String) -> Bool {
        guard let directory = self.shared.directoryGroups else { return false }
        let policy = self.shared.policy
        guard policy.rules.contains(where: { $0.groups != nil }) else { return false }
        return !directory.knowsGroups(of: user)
    }
    var metrics: ProxyMetrics { self.shared.metrics }
    var currentDate: Date { Date() }
    var expiryWarning: TimeAmount { self.connection.configuration.expiryWarning }
    var ntlmSettings: NTLMAcceptor.Settings? { self.connection.configuration.ntlm }
    var stripsRealm: Bool { self.connection.configuration.stripRealm }
    var certificateUser: String? { self.connection.certificateUser }
    var certificateUsersImplicit: Bool { self.connection.configuration.certificateUsersImplicit }

    func makeRandom() -> SystemRandomNumberGenerator { SystemRandomNumberGenerator() }

    func beginHandshake() -> Bool {
        let limit = self.connection.configuration.maximumPendingHandshakes
        return self.shared.pendingHandshakes.withLockedValue { count in
            guard count < limit else { return false }
            count += 1
            return true
        }
    }

    func endHandshake() {
        self.shared.pendingHandshakes.withLockedValue { $0 = max(0, $0 - 1) }
    }

    var throttleSettings: AuthThrottle.Settings { self.shared.throttle.settings }

    func lockout(of address: String, now: NIODeadline) -> AuthThrottle.Verdict {
        self.shared.throttle.check(address: address, now: now)
    }

    func beginCheck(
        address: String,
        user: String?,
        credential: AuthThrottle.Fingerprint,
        now: NIODeadline
    ) -> AuthThrottle.Admission {
        self.shared.throttle.begin(address: address, user: user, credential: credential, now: now)
    }

    func checkSucceeded(_ ticket: AuthThrottle.Ticket, now: NIODeadline) {
        self.shared.throttle.succeeded(ticket, now: now)
    }

    func checkFailed(_ ticket: AuthThrottle.Ticket, now: NIODeadline) -> (delay: TimeAmount, lockedOut: Bool) {
        self.shared.throttle.failed(ticket, now: now)
    }

    func checkAbandoned(_ ticket: AuthThrottle.Ticket) {
        self.shared.throttle.abandoned(ticket)
    }

    func challengeSent(
        to client: ChallengeLoopDetector.Client,
        reason: AuthFailureReason,
        schemeSent: String?,
        offered: [String]
    ) -> ChallengeLoopDetector.Loop? {
        self.shared.loopDetector.challenged(client: client, reason: reason, schemeSent: schemeSent, offered: offered)
    }

    func loginSucceeded(for client: @autoclosure () -> ChallengeLoopDetector.Client) {
        self.shared.loopDetector.succeeded(client: client())
    }

    func admit(user: String, address: String) -> UserLimits.Verdict {
        guard let limits = self.shared.userLimits else { return .allowed }
        let verdict = limits.admit(user: user, connection: ObjectIdentifier(self.connection), address: address)
        // Counted against this connection until it closes (see channelInactive).
        if verdict == .allowed { self.connection.limitedUsers.insert(user) }
        return verdict
    }

    func mayLog(_ kind: RefusalLogLimiter.Kind) -> Bool {
        self.connection.mayLog(kind)
    }

    func log(_ level: Logger.Level, _ message: Logger.Message, metadata: @autoclosure () -> Logger.Metadata) {
        self.connection.logger.log(level: level, message, metadata: metadata())
    }
}
