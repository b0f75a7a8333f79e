import CoreMetrics
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import PortcullisAuth
import PortcullisStores

@testable import PortcullisProxy

/// The gate's world for ``GateStateMachineTests``: a scripted credential cache and log, the real
/// pure tables (throttle, loop detector, limits, Digest authority on a hand-moved clock), and a
/// record of every call the gate makes to them.
final class FakeGateEnvironment: GateEnvironment {
    /// Cached verifications and Digest secrets, as a test puts them there.
    final class Cache: GateCredentialCache {
        var users: [CredentialVerifier.CacheKey: String] = [:]
        var digestSecrets: [CredentialVerifier.DigestKey: DigestLookup] = [:]
        var ntlmSecrets: [String: NTLMLookup] = [:]
        var storeGeneration: UInt64 = 1
        /// Field values a key was computed for (each one an HMAC on a server).
        private(set) var keyed: [String] = []
        /// Every question the gate asked the cache.
        private(set) var lookups = 0
        private(set) var digestLoginsNoted: [String] = []
        private(set) var ntlmLoginsNoted: [String] = []

        func cacheKey(forFieldValue value: String) -> CredentialVerifier.CacheKey {
            self.keyed.append(value)
            return Self.key(value)
        }

        func cachedLogin(for key: CredentialVerifier.CacheKey, now: NIODeadline) -> CredentialVerifier.CachedLogin? {
            self.lookups += 1
            return self.users[key].map { CredentialVerifier.CachedLogin(user: $0) }
        }

        func cachedDigestSecrets(_ key: CredentialVerifier.DigestKey, now: NIODeadline) -> DigestLookup? {
            self.lookups += 1
            return self.digestSecrets[key]
        }

        func cachedNTLMSecrets(name: String, now: NIODeadline) -> NTLMLookup? {
            self.lookups += 1
            return self.ntlmSecrets[name]
        }

        func noteNTLMLogin(name: String, user: String) {
            self.ntlmLoginsNoted.append(user)
        }

        func noteDigestLogin(_ key: CredentialVerifier.DigestKey, user: String) {
            self.digestLoginsNoted.append(user)
        }

        /// A stand-in for the verifier's MAC: distinct values, distinct keys.
        static func key(_ value: String) -> CredentialVerifier.CacheKey {
            var bytes = [UInt8](repeating: 0, count: 32)
            for (i, byte) in value.utf8.enumerated() { bytes[i % 31] = bytes[i % 31] &* 31 &+ byte }
            bytes[31] = UInt8(truncatingIfNeeded: value.utf8.count)
            return bytes.withUnsafeBytes { CredentialVerifier.CacheKey($0) }
        }
    }

    /// A log line the gate wrote.
    struct Line: Equatable {
        var level: Logger.Level
        var message: String
        var metadata: [String: String]
    }

    /// Milliseconds since 1970 for the Digest authority's nonces, moved by hand.
    final class Clock: Sendable {
        private let value = NIOLockedValueBox<UInt64>(1_800_000_000_000)
        var now: UInt64 { self.value.withLockedValue { $0 } }
        func advance(seconds: UInt64) { self.value.withLockedValue { $0 += seconds * 1000 } }
    }

    var credentials: Cache? = Cache()
    var gate = ProxyAuthGate(realm: "R", schemes: [.basic, .digest])
    let clock = Clock()
    lazy var digest: DigestAuthority? = DigestAuthority(
        settings: .init(realm: "R", nonceLifetime: 60),
        key: Array("0123456789abcdef0123456789abcdef".utf8),
        clock: { [clock] in clock.now }
    )
    var offeredSchemeNames = ["Basic", "Digest"]
    var maximumRequestBody: Int?
    var policy = AccessPolicy()
    var userGroups: [String: Set<String>] = [:]
    func directoryGroups(of user: String) -> Set<String> { self.userGroups[user] ?? [] }
    /// Users whose groups the gate must look up first.
    var groupsToLookUp: Set<String> = []
    func directoryGroupsNeeded(for user: String) -> Bool { self.groupsToLookUp.contains(user) }
    let counters = CountingMetrics()
    lazy var metrics = ProxyMetrics(factory: self.counters)
    var currentDate = Date(timeIntervalSince1970: 1_800_000_000)
    var expiryWarning: TimeAmount = .hours(7 * 24)
    var ntlmSettings: NTLMAcceptor.Settings? = NTLMAcceptor.Settings(
        netbiosDomainName: "CORP",
        netbiosComputerName: "PROXY"
    )
    var stripsRealm = false
    var certificateUser: String?
    var certificateUsersImplicit = false
    /// Negotiate/NTLM handshakes this environment counts as in progress, and the most allowed.
    private(set) var handshakes = 0
    var maximumHandshakes = 1024

    /// Repeatable randomness (SplitMix64) for NTLM's server challenges.
    struct SeededRandom: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            self.state &+= 0x9E37_79B9_7F4A_7C15
            var z = self.state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    func makeRandom() -> SeededRandom { SeededRandom(state: 42) }

    func beginHandshake() -> Bool {
        guard self.handshakes < self.maximumHandshakes else { return false }
        self.handshakes += 1
        return true
    }

    func endHandshake() {
        self.handshakes -= 1
    }

    let throttle: AuthThrottle
    let loopDetector = ChallengeLoopDetector()
    var userLimits: UserLimits?

    /// The gate's calls to the throttle, in order: `check`, `begin(user)`, `succeeded`,
    /// `failed`, `abandoned`.
    private(set) var throttleCalls: [String] = []
    private(set) var challengesSent: [AuthFailureReason] = []
    private(set) var successes = 0
    /// The kinds of log line the gate asked to write, and what it wrote.
    private(set) var logKindsAsked: [RefusalLogLimiter.Kind] = []
    private(set) var lines: [Line] = []
    var logAllowed = true

    /// - Parameter threshold: distinct failures that lock an address; the tarpit starts at half.
    init(threshold: Int = 4) {
        var settings = AuthThrottle.Settings()
        settings.threshold = threshold
        settings.window = .seconds(60)
        settings.lockout = .seconds(120)
        self.throttle = AuthThrottle(settings: settings)
    }

    var throttleSettings: AuthThrottle.Settings { self.throttle.settings }

    func lockout(of address: String, now: NIODeadline) -> AuthThrottle.Verdict {
        self.throttleCalls.append("check")
        return self.throttle.check(address: address, now: now)
    }

    func beginCheck(
        address: String,
        user: String?,
        credential: AuthThrottle.Fingerprint,
        now: NIODeadline
    ) -> AuthThrottle.Admission {
        self.throttleCalls.append("begin(\(user ?? "-"))")
        return self.throttle.begin(address: address, user: user, credential: credential, now: now)
    }

    func checkSucceeded(_ ticket: AuthThrottle.Ticket, now: NIODeadline) {
        self.throttleCalls.append("succeeded")
        self.throttle.succeeded(ticket, now: now)
    }

    func checkFailed(_ ticket: AuthThrottle.Ticket, now: NIODeadline) -> (delay: TimeAmount, lockedOut: Bool) {
        self.throttleCalls.append("failed")
        return self.throttle.failed(ticket, now: now)
    }

    func checkAbandoned(_ ticket: AuthThrottle.Ticket) {
        self.throttleCalls.append("abandoned")
        self.throttle.abandoned(ticket)
    }

    func challengeSent(
        to client: ChallengeLoopDetector.Client,
        reason: AuthFailureReason,
        schemeSent: String?,
        offered: [String]
    ) -> ChallengeLoopDetector.Loop? {
        self.challengesSent.append(reason)
        return self.loopDetector.challenged(client: client, reason: reason, schemeSent: schemeSent, offered: offered)
    }

    func loginSucceeded(for client: @autoclosure () -> ChallengeLoopDetector.Client) {
        self.successes += 1
        self.loopDetector.succeeded(client: client())
    }

    func admit(user: String, address: String) -> UserLimits.Verdict {
        self.userLimits?.admit(user: user, connection: ObjectIdentifier(self), address: address) ?? .allowed
    }

    func mayLog(_ kind: RefusalLogLimiter.Kind) -> Bool {
        self.logKindsAsked.append(kind)
        return self.logAllowed
    }

    func log(_ level: Logger.Level, _ message: Logger.Message, metadata: @autoclosure () -> Logger.Metadata) {
        self.lines.append(Line(level: level, message: "\(message)", metadata: metadata().mapValues { "\($0)" }))
    }

    /// Forgets the calls recorded so far (the tables keep their state).
    func clearRecords() {
        self.throttleCalls.removeAll()
        self.challengesSent.removeAll()
        self.successes = 0
        self.logKindsAsked.removeAll()
        self.lines.removeAll()
    }
}

/// Counts what is added to each counter and recorded by each timer, by label and dimensions.
final class CountingMetrics: MetricsFactory, Sendable {
    final class Handler: CounterHandler, TimerHandler, RecorderHandler, MeterHandler, Sendable {
        private let box = NIOLockedValueBox<Int64>(0)
        var value: Int64 { self.box.withLockedValue { $0 } }
        func increment(by amount: Int64) { self.box.withLockedValue { $0 += amount } }
        func reset() { self.box.withLockedValue { $0 = 0 } }
        func recordNanoseconds(_ duration: Int64) { self.box.withLockedValue { $0 += 1 } }
        func record(_ value: Int64) { self.box.withLockedValue { $0 += 1 } }
        func record(_ value: Double) { self.box.withLockedValue { $0 += 1 } }
        func set(_ value: Int64) {}
        func set(_ value: Double) {}
        func increment(by amount: Double) {}
        func decrement(by amount: Double) {}
    }

    private let handlers = NIOLockedValueBox<[String: Handler]>([:])

    /// What `label` with these dimensions counted (a timer: how many durations it recorded).
    func value(_ label: String, _ dimensions: [(String, String)] = []) -> Int64 {
        self.handlers.withLockedValue { $0[Self.key(label, dimensions)]?.value ?? 0 }
    }

    private func handler(_ label: String, _ dimensions: [(String, String)]) -> Handler {
        self.handlers.withLockedValue { handlers in
            let key = Self.key(label, dimensions)
            if let existing = handlers[key] { return existing }
            let made = Handler()
            handlers[key] = made
            return made
        }
    }

    private static func key(_ label: String, _ dimensions: [(String, String)]) -> String {
        ([label] + dimensions.map { "\($0.0)=\($0.1)" }).joined(separator: " ")
    }

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        self.handler(label, dimensions)
    }
    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        self.handler(label, dimensions)
    }
    func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        self.handler(label, dimensions)
    }
    func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        self.handler(label, dimensions)
    }
    func destroyCounter(_ handler: any CounterHandler) {}
    func destroyRecorder(_ handler: any RecorderHandler) {}
    func destroyTimer(_ handler: any TimerHandler) {}
    func destroyMeter(_ handler: any MeterHandler) {}
}
