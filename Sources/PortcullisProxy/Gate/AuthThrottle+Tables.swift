import NIOCore

// The records behind `AuthThrottle`'s lock, and how a full table makes room.
extension AuthThrottle {
    /// Everything behind the lock. Keys are keyed hashes (see `AuthThrottle.key(tag:_:)`) and
    /// records hold only hashes, times and counts: no byte the client chose, so a record's size
    /// is fixed by `threshold`, never by what a client sends.
    struct State {
        var addresses: [UInt64: AddressRecord] = [:]
        var users: [UInt64: UserRecord] = [:]
        /// Slot ids are never reused, so a late ticket cannot release a newer check's slot.
        var nextSlot: UInt64 = 0
    }

    /// A record a full table may drop, least recently seen first.
    protocol SeenRecord {
        var lastSeen: NIODeadline { get }
    }

    /// One failed (user, credential) pair at an address, with its last repetition.
    struct AddressFailure {
        var user: UInt64
        var credential: UInt64
        var at: NIODeadline
    }

    /// A check in flight, shared by concurrent checks of the same (user, credential).
    struct Slot {
        var user: UInt64
        var credential: UInt64
        var id: UInt64
        var holders: Int
    }

    struct AddressRecord: SeenRecord {
        enum Admission {
            case lockedOut(TimeAmount)
            case busy
            case proceed(slot: UInt64)
        }

        /// Distinct pairs; fewer than `threshold`, since reaching it locks and clears them.
        var failures: [AddressFailure] = []
        /// Distinct pairs in flight; at most `2 × threshold`.
        var slots: [Slot] = []
        var lockedUntil: NIODeadline?
        var lastSeen: NIODeadline

        init(lastSeen: NIODeadline) {
            self.lastSeen = lastSeen
        }

        var isEmpty: Bool { self.failures.isEmpty && self.slots.isEmpty && self.lockedUntil == nil }

        /// Nothing left to say: may be dropped to make room.
        func isSpent(now: NIODeadline, window: TimeAmount) -> Bool {
            guard self.slots.isEmpty else { return false }
            if let until = self.lockedUntil { return until <= now }
            return self.failures.allSatisfy { now - $0.at > window }
        }

        func remainingLockout(now: NIODeadline) -> TimeAmount? {
            guard let until = self.lockedUntil, until > now else { return nil }
            return until - now
        }

        /// Forgets failures past the window, and an ended lockout: the address starts clean.
        mutating func expire(now: NIODeadline, window: TimeAmount) {
            if let until = self.lockedUntil, until <= now {
                self.lockedUntil = nil
                self.failures.removeAll()
            }
            self.failures.removeAll { now - $0.at > window }
        }

        mutating func admit(
            user: UInt64,
            credential: UInt64,
            newSlot: UInt64,
            threshold: Int,
            window: TimeAmount,
            now: NIODeadline
        ) -> Admission {
            if let remaining = self.remainingLockout(now: now) { return .lockedOut(remaining) }
            self.expire(now: now, window: window)
            self.lastSeen = max(self.lastSeen, now)
            if let index = self.slots.firstIndex(where: { $0.user == user && $0.credential == credential }) {
                self.slots[index].holders += 1
                return .proceed(slot: self.slots[index].id)
            }
            // A repeat of a counted failure cannot add to the count, so it needs no room under the
            // threshold; anything else might fail too, and all of those must fit under it.
            let failedBefore = self.failures.contains { $0.user == user && $0.credential == credential }
            if !failedBefore {
                let pending = self.slots.count { slot in
                    !self.failures.contains { $0.user == slot.user && $0.credential == slot.credential }
                }
                if self.failures.count + pending >= threshold { return .busy }
            }
            // Repeats' slots turn into pending ones when their failures expire mid-check; this
            // keeps the array bounded whatever the timing.
            guard self.slots.count < 2 * threshold else { return .busy }
            self.slots.append(Slot(user: user, credential: credential, id: newSlot, holders: 1))
            return .proceed(slot: newSlot)
        }

        mutating func release(slot id: UInt64) {
            guard let index = self.slots.firstIndex(where: { $0.id == id }) else { return }
            self.slots[index].holders -= 1
            if self.slots[index].holders == 0 { self.slots.remove(at: index) }
        }

        mutating func clearFailures(ofUser user: UInt64) {
            self.failures.removeAll { $0.user == user }
        }

        /// - Returns: the distinct failures to base the delay on, and whether this one locked.
        mutating func countFailure(
            user: UInt64,
            credential: UInt64,
            threshold: Int,
            settings: Settings,
            now: NIODeadline
        ) -> (Int, Bool) {
            self.expire(now: now, window: settings.window)
            self.lastSeen = max(self.lastSeen, now)
            // A check begun before the lockout: already refused, and the address starts clean.
            guard self.lockedUntil == nil else { return (threshold, false) }
            if let index = self.failures.firstIndex(where: { $0.user == user && $0.credential == credential }) {
                self.failures[index].at = now
            } else {
                self.failures.append(AddressFailure(user: user, credential: credential, at: now))
            }
            guard self.failures.count >= threshold else { return (self.failures.count, false) }
            self.lockedUntil = now + settings.lockout
            self.failures.removeAll()
            return (threshold, true)
        }
    }

    /// One failed credential for a user name, with its last repetition.
    struct UserFailure {
        var credential: UInt64
        var at: NIODeadline
    }

    struct UserRecord: SeenRecord {
        /// Distinct credentials; at most `userFailureCap`.
        var failures: [UserFailure] = []
        var lastSeen: NIODeadline

        init(lastSeen: NIODeadline) {
            self.lastSeen = lastSeen
        }

        func isSpent(now: NIODeadline, window: TimeAmount) -> Bool {
            self.failures.allSatisfy { now - $0.at > window }
        }

        /// - Returns: the distinct failures to base the delay on.
        mutating func countFailure(credential: UInt64, cap: Int, window: TimeAmount, now: NIODeadline) -> Int {
            self.failures.removeAll { now - $0.at > window }
            self.lastSeen = max(self.lastSeen, now)
            let failure = UserFailure(credential: credential, at: now)
            if let index = self.failures.firstIndex(where: { $0.credential == credential }) {
                self.failures[index].at = now
            } else if self.failures.count < cap {
                self.failures.append(failure)
            } else if let oldest = self.failures.indices.min(by: { self.failures[$0].at < self.failures[$1].at }) {
                // At the cap the delay is already the maximum; the oldest matters least.
                self.failures[oldest] = failure
            }
            return self.failures.count
        }
    }

    /// Before inserting into a full table: drops what has nothing left to say, then, if that
    /// was not enough, the least recently seen down to seven eighths of `capacity`. So it runs
    /// at most once per `capacity / 8` insertions: O(1) amortised.
    static func makeRoom<Record: SeenRecord>(
        in table: inout [UInt64: Record],
        capacity: Int,
        isSpent: (Record) -> Bool
    ) {
        guard table.count >= capacity else { return }
        for key in table.compactMap({ isSpent($0.value) ? $0.key : nil }) { table[key] = nil }
        let target = capacity - max(1, capacity / 8)
        let excess = table.count - target
        guard excess > 0 else { return }
        var seen = table.values.map { $0.lastSeen.uptimeNanoseconds }
        let cutoff = Self.select(excess - 1, in: &seen)
        var victims = table.compactMap { $0.value.lastSeen.uptimeNanoseconds < cutoff ? $0.key : nil }
        for (key, record) in table where victims.count < excess && record.lastSeen.uptimeNanoseconds == cutoff {
            victims.append(key)
        }
        for key in victims { table[key] = nil }
    }

    /// The `rank`-th smallest of `values` (0-based), reordering them: Hoare's selection with a
    /// random pivot and a three-way partition (many records share a time), O(n) expected
    /// whatever order an attacker arranged.
    private static func select(_ rank: Int, in values: inout [UInt64]) -> UInt64 {
        var low = 0
        var high = values.count - 1
        while low < high {
            let pivot = values[Int.random(in: low...high)]
            var less = low
            var index = low
            var greater = high
            while index <= greater {
                if values[index] < pivot {
                    values.swapAt(less, index)
                    less += 1
                    index += 1
                } else if values[index] > pivot {
                    values.swapAt(index, greater)
                    greater -= 1
                } else {
                    index += 1
                }
            }
            if rank < less {
                high = less - 1
            } else if rank > greater {
                low = greater + 1
            } else {
                return pivot
            }
        }
        return values[low]
    }
}
