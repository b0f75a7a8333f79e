import NIOConcurrencyHelpers
import NIOCore
import PortcullisAuth

/// Notices a client stuck in a 407 loop (issue 7): the same client (address + user agent)
/// gets ``Settings/threshold`` 407s in a row inside ``Settings/window`` without one success.
/// It is flagged once per streak, with the likely cause in words, for the operator's log.
///
/// Bounded in bytes, not only entries: a client is remembered by a fixed-size keyed hash of its
/// address and user agent (a unique 60 KB `User-Agent` per request once grew memory past a
/// gigabyte), and a streak keeps at most ``Settings/threshold`` reasons and registered scheme names.
public final class ChallengeLoopDetector: Sendable {
    /// A client as the detector remembers it: a hash of address and user agent under a
    /// per-process random seed (Swift's `Hasher`), so nobody can aim two clients at one key.
    public struct Client: Hashable, Sendable {
        let hash: Int

        public init(address: String, userAgent: some Collection<UInt8>) {
            var hasher = Hasher()
            hasher.combine(address)
            hasher.combine(0xFF as UInt8)  // no address/agent split can collide with another
            let hashed: Void? = userAgent.withContiguousStorageIfAvailable {
                hasher.combine(bytes: UnsafeRawBufferPointer($0))
            }
            if hashed == nil { Array(userAgent).withUnsafeBytes { hasher.combine(bytes: $0) } }
            self.hash = hasher.finalize()
        }
    }

    public struct Settings: Sendable, Equatable {
        public var threshold = 5
        public var window: TimeAmount = .minutes(1)
        public var maximumClients = 50_000

        public init() {}
    }

    /// What a flagged loop looked like.
    public struct Loop: Sendable, Equatable {
        public var count: Int
        /// The scheme the client sent each time (`-` for none), oldest first.
        public var schemesSent: [String]
        public var cause: String
    }

    private struct Streak {
        var count = 0
        var started: NIODeadline
        var reasons: [AuthFailureReason] = []
        var schemes: [String] = []
        var flagged = false
    }

    public let settings: Settings

    /// Clients with an open streak (for tests and metrics).
    public var trackedClients: Int { self.streaks.withLockedValue { $0.count } }
    private let streaks = NIOLockedValueBox<[Client: Streak]>([:])

    public init(settings: Settings = Settings()) {
        self.settings = settings
    }

    /// Records a 407 sent to `client`; returns the loop when this one completes a streak.
    public func challenged(
        client: Client,
        reason: AuthFailureReason,
        schemeSent: String?,
        offered: [String],
        now: NIODeadline = .now()
    ) -> Loop? {
        self.streaks.withLockedValue { streaks in
            if streaks[client] == nil, streaks.count >= self.settings.maximumClients {
                streaks = streaks.filter { now - $0.value.started <= self.settings.window }
                if streaks.count >= self.settings.maximumClients { streaks.removeAll() }
            }
            var streak = streaks[client] ?? Streak(started: now)
            if now - streak.started > self.settings.window {
                streak = Streak(started: now)
            }
            streak.count += 1
            streak.reasons.append(reason)
            streak.schemes.append(schemeSent ?? "-")
            if streak.reasons.count > self.settings.threshold {
                streak.reasons.removeFirst()
                streak.schemes.removeFirst()
            }
            defer { streaks[client] = streak }
            guard streak.count >= self.settings.threshold, !streak.flagged else { return nil }
            streak.flagged = true
            return Loop(
                count: streak.count,
                schemesSent: streak.schemes,
                cause: Self.cause(streak.reasons, schemes: streak.schemes, offered: offered)
            )
        }
    }

    /// The client got through: its streak ends. `client` is only computed when some streak is
    /// open, so a success costs no key (and no String) in the common case.
    public func succeeded(client: @autoclosure () -> Client) {
        self.streaks.withLockedValue { streaks in
            guard !streaks.isEmpty else { return }
            _ = streaks.removeValue(forKey: client())
        }
    }

    static func cause(_ reasons: [AuthFailureReason], schemes: [String], offered: [String]) -> String {
        let offeredText = offered.joined(separator: ", ")
        let count = reasons.count
        if reasons.allSatisfy({ $0 == .missingCredentials }) {
            return
                "client never answers the challenge: it has no credentials configured, or cannot answer \(offeredText)"
        }
        if reasons.allSatisfy({ $0 == .unsupportedScheme }) {
            let sent = Set(schemes).sorted().joined(separator: ", ")
            return "client keeps sending \(sent); proxy offers only \(offeredText)"
        }
        if reasons.allSatisfy({ $0 == .invalidCredentials }) {
            return "credentials rejected \(count) times: wrong or expired password"
        }
        if reasons.allSatisfy({ $0 == .malformedCredentials }) {
            return "client sends malformed credentials every time (bad base64 or no ':' between user and password)"
        }
        if reasons.allSatisfy({ $0 == .credentialsNoLongerValid }) {
            return
                "client keeps sending a credential that is no longer valid (expired, disabled or rotated): it needs a new one"
        }
        if reasons.contains(.lockedOut) {
            return "client keeps trying while its address is locked out after failed logins"
        }
        let mix = Set(reasons.map(\.token)).sorted().joined(separator: ", ")
        return "client fails authentication \(count) times in a row (\(mix))"
    }
}
