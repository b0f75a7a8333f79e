import NIOConcurrencyHelpers
import NIOCore

/// Slows down and then stops password guessing (issue 6).
///
/// - Per client address: each failed login inside ``Settings/window`` counts; from half of
///   ``Settings/threshold`` on, the 407 is delayed exponentially; at ``Settings/threshold``
///   failures the address is locked out for ``Settings/lockout``.
/// - Per user name: failures are counted the same way but only ever *delay failed attempts*
///   for that name. A user name is never locked: an attacker guessing a real user's password
///   from elsewhere must not be able to lock that user out (the classic complaint about NTLM
///   proxies locking Active Directory accounts).
///
/// Bounded memory: at most ``Settings/maximumEntries`` addresses and names are tracked; when
/// full, entries whose window has passed are dropped first, then the oldest.
public final class AuthThrottle: Sendable {
    public struct Settings: Sendable, Equatable {
        public var threshold: Int = 10
        public var window: TimeAmount = .minutes(5)
        public var lockout: TimeAmount = .minutes(5)
        public var maximumDelay: TimeAmount = .seconds(5)
        public var maximumEntries: Int = 100_000

        public init() {}
    }

    public enum Verdict: Equatable, Sendable {
        case allowed
        case lockedOut(remaining: TimeAmount)
    }

    private struct Entry {
        var failures: Int
        var windowStart: NIODeadline
        var lockedUntil: NIODeadline?
        var lastSeen: NIODeadline
    }

    private struct State {
        var addresses: [String: Entry] = [:]
        var users: [String: Entry] = [:]
    }

    public let settings: Settings
    private let state = NIOLockedValueBox(State())

    public init(settings: Settings = Settings()) {
        self.settings = settings
    }

    /// Whether a login attempt from `address` may be evaluated at all.
    public func check(address: String, now: NIODeadline = .now()) -> Verdict {
        self.state.withLockedValue { state in
            guard let entry = state.addresses[address], let until = entry.lockedUntil else { return .allowed }
            if until > now { return .lockedOut(remaining: until - now) }
            state.addresses[address] = nil
            return .allowed
        }
    }

    /// Records a failed login; returns how long to hold back the answer, and whether this
    /// failure locked the address out.
    public func recordFailure(
        address: String,
        user: String?,
        now: NIODeadline = .now()
    ) -> (delay: TimeAmount, lockedOut: Bool) {
        self.state.withLockedValue { state in
            let settings = self.settings
            var lockedOut = false
            let addressFailures = Self.count(&state.addresses, key: address, now: now, settings: settings) { entry in
                if entry.failures >= settings.threshold, entry.lockedUntil == nil {
                    entry.lockedUntil = now + settings.lockout
                    lockedOut = true
                }
            }
            var userFailures = 0
            if let user {
                userFailures = Self.count(&state.users, key: user, now: now, settings: settings) { _ in }
            }
            return (self.delay(forFailures: max(addressFailures, userFailures)), lockedOut)
        }
    }

    /// A successful login from `address` clears its failures (not those of the user name: a
    /// success elsewhere says nothing about who is guessing).
    public func recordSuccess(address: String) {
        self.state.withLockedValue { state in
            if let entry = state.addresses[address], entry.lockedUntil == nil {
                state.addresses[address] = nil
            }
        }
    }

    /// Failures after which answers are delayed: halfway to the lockout.
    var backoffAfter: Int { max(1, self.settings.threshold / 2) }

    func delay(forFailures failures: Int) -> TimeAmount {
        let over = failures - self.backoffAfter
        guard over >= 0 else { return .zero }
        // 100 ms, 200 ms, 400 ms … capped.
        let nanoseconds = Int64(100_000_000) << Int64(min(over, 20))
        return .nanoseconds(min(nanoseconds, self.settings.maximumDelay.nanoseconds))
    }

    var trackedEntries: Int { self.state.withLockedValue { $0.addresses.count + $0.users.count } }

    private static func count(
        _ table: inout [String: Entry],
        key: String,
        now: NIODeadline,
        settings: Settings,
        _ update: (inout Entry) -> Void
    ) -> Int {
        if table[key] == nil, table.count >= settings.maximumEntries {
            Self.prune(&table, now: now, settings: settings)
        }
        var entry = table[key] ?? Entry(failures: 0, windowStart: now, lockedUntil: nil, lastSeen: now)
        if let until = entry.lockedUntil, until <= now {
            entry = Entry(failures: 0, windowStart: now, lockedUntil: nil, lastSeen: now)
        }
        if now - entry.windowStart > settings.window, entry.lockedUntil == nil {
            entry.failures = 0
            entry.windowStart = now
        }
        entry.failures += 1
        entry.lastSeen = now
        update(&entry)
        table[key] = entry
        return entry.failures
    }

    private static func prune(_ table: inout [String: Entry], now: NIODeadline, settings: Settings) {
        table = table.filter { _, entry in
            if let until = entry.lockedUntil { return until > now }
            return now - entry.windowStart <= settings.window
        }
        if table.count >= settings.maximumEntries {
            // Still full of live entries: forget the least recently seen tenth.
            let drop = table.sorted { $0.value.lastSeen < $1.value.lastSeen }.prefix(max(1, table.count / 10))
            for (key, _) in drop { table[key] = nil }
        }
    }
}
