import NIOConcurrencyHelpers
import NIOCore
import PortcullisAuth

/// Slows down and then stops password guessing, one client address at a time.
///
/// - Per client address: each *distinct* failed credential inside ``Settings/window`` counts
///   once, however often it is repeated (pip and Java retry one wrong password many times).
///   From half of ``Settings/threshold`` on, the 407 is delayed exponentially; at
///   ``Settings/threshold`` the address is locked out for ``Settings/lockout``, during which it
///   gets 429 for everything, right passwords and cached ones included. It then starts clean.
/// - Checks in flight count: ``begin(address:user:credential:now:)`` refuses (``Admission/busy(retryAfter:)``)
///   a new credential while the address's failures plus its distinct unfinished checks could
///   pass the threshold, so 200 simultaneous guesses get no more tries than 10 sequential ones.
/// - A success clears only the failures of *that* user at that address (someone who mistyped,
///   then got it right). Logging in as one's own account must not wipe the guesses at another's.
/// - Per user name: distinct failures are counted across addresses but only ever *delay failed
///   attempts* for that name. A user name is never locked: an attacker guessing a real user's
///   password from elsewhere must not be able to lock that user out (the classic complaint
///   about NTLM proxies locking Active Directory accounts).
///
/// Nothing a client sent is stored: addresses, user names and credentials are kept as 64-bit
/// hashes keyed by a per-instance random seed, so a 45 KB user name costs what a short one
/// does. Each table holds at most ``Settings/maximumEntries`` records, each of bounded size
/// (at most `threshold` failures and `2 × threshold` checks in flight per address, and a few
/// more failures per user name than the delay needs to reach ``Settings/maximumDelay``).
///
/// Every call is O(`threshold`) whatever the tables hold; a full table is pruned in O(n) at
/// most once per `maximumEntries / 8` insertions.
public final class AuthThrottle: Sendable {
    public struct Settings: Sendable, Equatable {
        /// Distinct failed credentials per address within ``window`` that lock the address.
        public var threshold: Int = 10
        /// How long a failure counts, from its last repetition.
        public var window: TimeAmount = .minutes(5)
        /// How long a locked address gets 429 for everything.
        public var lockout: TimeAmount = .minutes(5)
        /// The longest a failed attempt's 407 is held back.
        public var maximumDelay: TimeAmount = .seconds(5)
        /// Records per table (addresses, user names); the least recently seen go first.
        public var maximumEntries: Int = 100_000

        public init() {}
    }

    /// Identifies a presented credential without holding it.
    ///
    /// Basic: the 32-byte MAC the credential cache already computes of the whole field value.
    /// Digest answers differ on every request, so a Digest failure cannot be recognised as a
    /// repeat: ``unrepeatable()`` (each one counts, and never shares a slot in flight).
    public struct Fingerprint: Sendable, Hashable {
        private enum Source: Sendable, Hashable {
            case mac(Key256)
            case unrepeatable(UInt64)
        }

        private let source: Source

        public init(_ key: Key256) {
            self.source = .mac(key)
        }

        private init(source: Source) {
            self.source = source
        }

        /// A fingerprint equal to no other (64 random bits).
        public static func unrepeatable() -> Fingerprint {
            Fingerprint(source: .unrepeatable(.random(in: .min ... .max)))
        }

        fileprivate func combine(into hasher: inout Hasher) {
            switch self.source {
            case .mac(let key): key.withBytes { hasher.combine(bytes: $0) }
            case .unrepeatable(let value): hasher.combine(value)
            }
        }
    }

    public enum Verdict: Equatable, Sendable {
        case allowed
        case lockedOut(remaining: TimeAmount)
    }

    public enum Admission: Equatable, Sendable {
        /// Check the credential, then hand the ticket to exactly one of ``AuthThrottle/succeeded(_:now:)``,
        /// ``AuthThrottle/failed(_:now:)`` or ``AuthThrottle/abandoned(_:)``.
        case proceed(Ticket)
        /// The address is locked: answer 429 without looking at the credential.
        case lockedOut(remaining: TimeAmount)
        /// Too many checks already in flight from this address (their failures would pass the
        /// threshold): answer 429 without looking at the credential.
        case busy(retryAfter: TimeAmount)
    }

    /// One admitted check: three 64-bit hashes, a slot id and a flag, whatever the client sent.
    public struct Ticket: Sendable, Equatable {
        fileprivate let address: UInt64
        fileprivate let user: UInt64
        fileprivate let credential: UInt64
        fileprivate let slot: UInt64
        /// A user name was presented (a malformed credential may have none).
        fileprivate let named: Bool
    }

    /// How long a busy client should wait: the checks it waits for take a store round trip or
    /// a bcrypt, and Retry-After counts whole seconds.
    static let busyRetryAfter = TimeAmount.seconds(1)

    public let settings: Settings
    private let threshold: Int
    private let capacity: Int
    /// Failures remembered per user name: enough for the delay to reach its maximum.
    let userFailureCap: Int
    private let state = NIOLockedValueBox(State())
    // Swift's `Hasher` is already seeded per process, except under SWIFT_DETERMINISTIC_HASHING;
    // this keeps the keys secret even then. Nobody sees a key, so 64 bits leave no collision
    // to search for offline.
    private let seedHigh: UInt64
    private let seedLow: UInt64

    public init(settings: Settings = Settings()) {
        self.settings = settings
        self.threshold = max(1, settings.threshold)
        self.capacity = max(1, settings.maximumEntries)
        var generator = SystemRandomNumberGenerator()
        self.seedHigh = generator.next()
        self.seedLow = generator.next()
        self.userFailureCap = Self.failuresForMaximumDelay(threshold: self.threshold, maximum: settings.maximumDelay)
    }

    /// Cheap: is the address locked? Asked for requests without a credential, and before the
    /// credential cache, so that a locked address learns nothing from a right password.
    public func check(address: String, now: NIODeadline) -> Verdict {
        let key = self.key(address: address)
        return self.state.withLockedValue { state in
            guard var record = state.addresses[key], record.lockedUntil != nil else { return .allowed }
            if let remaining = record.remainingLockout(now: now) { return .lockedOut(remaining: remaining) }
            record.expire(now: now, window: self.settings.window)
            state.addresses[key] = record.isEmpty ? nil : record
            return .allowed
        }
    }

    /// Before a credential is checked against the store: reserves a slot in flight. Busy when
    /// the address's failures plus its distinct checks in flight would reach the threshold.
    /// Concurrent checks of the same (user, credential) share one slot (a browser opening 6
    /// connections with one password is not busy), and a repeat of a counted failure is let
    /// through, since it cannot add to the count (a client retrying a stale password).
    public func begin(address: String, user: String?, credential: Fingerprint, now: NIODeadline) -> Admission {
        let addressKey = self.key(address: address)
        let userKey = self.key(user: user)
        let credentialKey = self.key(credential: credential)
        return self.state.withLockedValue { state in
            if state.addresses[addressKey] == nil {
                Self.makeRoom(in: &state.addresses, capacity: self.capacity) {
                    $0.isSpent(now: now, window: self.settings.window)
                }
            }
            let newSlot = state.nextSlot
            let admission = state.addresses[addressKey, default: AddressRecord(lastSeen: now)].admit(
                user: userKey,
                credential: credentialKey,
                newSlot: newSlot,
                threshold: self.threshold,
                window: self.settings.window,
                now: now
            )
            switch admission {
            case .lockedOut(let remaining):
                return .lockedOut(remaining: remaining)
            case .busy:
                return .busy(retryAfter: Self.busyRetryAfter)
            case .proceed(let slot):
                if slot == newSlot { state.nextSlot &+= 1 }
                let ticket = Ticket(
                    address: addressKey,
                    user: userKey,
                    credential: credentialKey,
                    slot: slot,
                    named: user != nil
                )
                return .proceed(ticket)
            }
        }
    }

    /// The check found the credential right: releases the slot and clears that user's failures
    /// at that address, and nothing else (not a lockout, not other users' failures, not the
    /// user name's failures elsewhere: a success here says nothing about who guesses there).
    public func succeeded(_ ticket: Ticket, now: NIODeadline) {
        self.state.withLockedValue { state in
            guard var record = state.addresses[ticket.address] else { return }
            record.release(slot: ticket.slot)
            record.clearFailures(ofUser: ticket.user)
            record.lastSeen = max(record.lastSeen, now)
            state.addresses[ticket.address] = record.isEmpty ? nil : record
        }
    }

    /// The check found the credential wrong (unknown user, wrong password, malformed): releases
    /// the slot and counts the failure once per distinct (user, credential) per window.
    /// - Returns: how long to hold back the 407, and whether this failure locked the address.
    public func failed(_ ticket: Ticket, now: NIODeadline) -> (delay: TimeAmount, lockedOut: Bool) {
        self.state.withLockedValue { state in
            state.addresses[ticket.address]?.release(slot: ticket.slot)
            return self.count(ticket, in: &state, now: now)
        }
    }

    /// The connection went away before the answer mattered: releases the slot, counts nothing.
    public func abandoned(_ ticket: Ticket) {
        self.state.withLockedValue { state in
            guard var record = state.addresses[ticket.address] else { return }
            record.release(slot: ticket.slot)
            state.addresses[ticket.address] = record.isEmpty ? nil : record
        }
    }

    /// Records in all tables (addresses and user names), for metrics and tests.
    var trackedEntries: Int { self.state.withLockedValue { $0.addresses.count + $0.users.count } }

    /// Distinct failures after which answers are delayed: halfway to the lockout.
    var backoffAfter: Int { max(1, self.threshold / 2) }

    func delay(forFailures failures: Int) -> TimeAmount {
        Self.delay(forFailures: failures, backoffAfter: self.backoffAfter, maximum: self.settings.maximumDelay)
    }

    private static func delay(forFailures failures: Int, backoffAfter: Int, maximum: TimeAmount) -> TimeAmount {
        let over = failures - backoffAfter
        guard over >= 0 else { return .zero }
        // 100 ms, 200 ms, 400 ms … capped.
        let nanoseconds = Int64(100_000_000) << Int64(min(over, 20))
        return .nanoseconds(max(0, min(nanoseconds, maximum.nanoseconds)))
    }

    /// The fewest failures whose delay is the maximum: a user name needs remember no more.
    private static func failuresForMaximumDelay(threshold: Int, maximum: TimeAmount) -> Int {
        let backoffAfter = max(1, threshold / 2)
        var failures = backoffAfter
        // The shift is capped at 20, so the delay stops growing 20 failures past the start.
        while failures < backoffAfter + 20,
            delay(forFailures: failures, backoffAfter: backoffAfter, maximum: maximum) < maximum
        {
            failures += 1
        }
        return failures
    }

    /// Counts a failure at the address and for the user name; the slot is already released.
    private func count(_ ticket: Ticket, in state: inout State, now: NIODeadline) -> (TimeAmount, Bool) {
        let window = self.settings.window
        if state.addresses[ticket.address] == nil {
            Self.makeRoom(in: &state.addresses, capacity: self.capacity) { $0.isSpent(now: now, window: window) }
        }
        let (addressFailures, lockedOut) = state.addresses[ticket.address, default: AddressRecord(lastSeen: now)]
            .countFailure(
                user: ticket.user,
                credential: ticket.credential,
                threshold: self.threshold,
                settings: self.settings,
                now: now
            )
        var userFailures = 0
        if ticket.named {
            if state.users[ticket.user] == nil {
                Self.makeRoom(in: &state.users, capacity: self.capacity) { $0.isSpent(now: now, window: window) }
            }
            userFailures = state.users[ticket.user, default: UserRecord(lastSeen: now)].countFailure(
                credential: ticket.credential,
                cap: self.userFailureCap,
                window: window,
                now: now
            )
        }
        return (self.delay(forFailures: max(addressFailures, userFailures)), lockedOut)
    }

    // MARK: Keys

    /// An IPv6 client is counted by its /64: a host is given a whole /64 and could otherwise
    /// take a fresh count for every guess. An IPv4-mapped address counts as its IPv4 address.
    private func key(address: String) -> UInt64 {
        if address.utf8.contains(UInt8(ascii: ":")), let bytes = IPNetwork.bytes(of: address), bytes.count == 16 {
            let mapped = bytes[0..<10].allSatisfy { $0 == 0 } && bytes[10] == 0xFF && bytes[11] == 0xFF
            if mapped {
                let v4 = bytes[12..<16].map(String.init).joined(separator: ".")
                return self.key(tag: 0) { hasher in Self.combine(v4, into: &hasher) }
            }
            return self.key(tag: 4) { hasher in bytes[0..<8].withUnsafeBytes { hasher.combine(bytes: $0) } }
        }
        return self.key(tag: 0) { hasher in Self.combine(address, into: &hasher) }
    }

    /// Kept apart from every name by the tag, so "no name" is not the empty name.
    private func key(user: String?) -> UInt64 {
        guard let user else { return self.key(tag: 1) { _ in } }
        return self.key(tag: 2) { hasher in Self.combine(user, into: &hasher) }
    }

    private func key(credential: Fingerprint) -> UInt64 {
        self.key(tag: 3) { hasher in credential.combine(into: &hasher) }
    }

    private func key(tag: UInt8, _ body: (inout Hasher) -> Void) -> UInt64 {
        var hasher = Hasher()
        hasher.combine(self.seedHigh)
        hasher.combine(self.seedLow)
        hasher.combine(tag)
        body(&hasher)
        return UInt64(truncatingIfNeeded: hasher.finalize())
    }

    /// The bytes as sent: a name in another Unicode normalisation is another name to the store.
    private static func combine(_ text: String, into hasher: inout Hasher) {
        var text = text
        text.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    }
}
