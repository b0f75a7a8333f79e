import NIOCore
import PortcullisAuth
import Testing

@testable import PortcullisProxy

@Suite struct AuthThrottleTests {
    private let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    private func throttle(threshold: Int = 10, maximumEntries: Int = 100_000) -> AuthThrottle {
        var settings = AuthThrottle.Settings()
        settings.threshold = threshold
        settings.window = .seconds(60)
        settings.lockout = .seconds(120)
        settings.maximumEntries = maximumEntries
        return AuthThrottle(settings: settings)
    }

    /// A Basic credential's MAC stand-in: distinct `n`, distinct credential.
    private func credential(_ n: Int) -> AuthThrottle.Fingerprint {
        let words = (UInt64(truncatingIfNeeded: n), UInt64(0x5eed), UInt64(n &* 31), UInt64(7))
        return withUnsafeBytes(of: words) { AuthThrottle.Fingerprint(Key256($0)) }
    }

    private func begin(
        _ throttle: AuthThrottle,
        _ credential: AuthThrottle.Fingerprint,
        from address: String = "10.0.0.1",
        user: String? = "alice",
        at now: NIODeadline
    ) -> AuthThrottle.Admission {
        throttle.begin(address: address, user: user, credential: credential, now: now)
    }

    private func ticket(_ admission: AuthThrottle.Admission) -> AuthThrottle.Ticket? {
        guard case .proceed(let ticket) = admission else { return nil }
        return ticket
    }

    /// One whole failed check; `nil` when it was not admitted.
    @discardableResult
    private func fail(
        _ throttle: AuthThrottle,
        _ credential: AuthThrottle.Fingerprint,
        from address: String = "10.0.0.1",
        user: String? = "alice",
        at now: NIODeadline
    ) -> (delay: TimeAmount, lockedOut: Bool)? {
        guard let ticket = self.ticket(self.begin(throttle, credential, from: address, user: user, at: now)) else {
            return nil
        }
        return throttle.failed(ticket, now: now)
    }

    private func succeed(
        _ throttle: AuthThrottle,
        _ credential: AuthThrottle.Fingerprint,
        from address: String = "10.0.0.1",
        user: String,
        at now: NIODeadline
    ) {
        guard let ticket = self.ticket(self.begin(throttle, credential, from: address, user: user, at: now)) else {
            Issue.record("a success was not admitted")
            return
        }
        throttle.succeeded(ticket, now: now)
    }

    // MARK: Counting distinct credentials

    @Test func tenDistinctWrongPasswordsLockTheAddress() {
        let throttle = self.throttle()
        for n in 0..<9 {
            #expect(self.fail(throttle, self.credential(n), at: t0)?.lockedOut == false)
        }
        #expect(self.fail(throttle, self.credential(9), at: t0 + .seconds(1))?.lockedOut == true)
        #expect(throttle.check(address: "10.0.0.1", now: t0 + .seconds(2)) == .lockedOut(remaining: .seconds(119)))
        #expect(throttle.check(address: "10.0.0.2", now: t0 + .seconds(2)) == .allowed)
    }

    @Test func sprayingTenUnknownUserNamesLocksTheAddress() {
        let throttle = self.throttle()
        for n in 0..<9 {
            #expect(self.fail(throttle, self.credential(n), user: "nobody\(n)", at: t0)?.lockedOut == false)
        }
        #expect(self.fail(throttle, self.credential(9), user: "nobody9", at: t0)?.lockedOut == true)
    }

    @Test func theSameWrongCredentialRepeatedCountsOnceAndIsNeverSlowedFurther() {
        let throttle = self.throttle()
        let stale = self.credential(1)
        for i in 0..<100 {
            let outcome = self.fail(throttle, stale, at: t0 + .milliseconds(Int64(i * 100)))
            #expect(outcome?.lockedOut == false)
            #expect(outcome?.delay == .zero)
        }
        #expect(throttle.check(address: "10.0.0.1", now: t0 + .seconds(11)) == .allowed)
    }

    @Test func guessesBesideARepeatedCredentialStillLock() {
        let throttle = self.throttle()
        for _ in 0..<20 { self.fail(throttle, self.credential(0), at: t0) }
        for n in 1..<9 { #expect(self.fail(throttle, self.credential(n), at: t0)?.lockedOut == false) }
        #expect(self.fail(throttle, self.credential(9), at: t0)?.lockedOut == true)
    }

    @Test func digestFailuresCannotBeRecognisedSoEachCounts() {
        let throttle = self.throttle()
        for _ in 0..<9 { #expect(self.fail(throttle, .unrepeatable(), at: t0)?.lockedOut == false) }
        #expect(self.fail(throttle, .unrepeatable(), at: t0)?.lockedOut == true)
    }

    @Test func failuresOutsideTheWindowStartOver() {
        let throttle = self.throttle()
        for n in 0..<9 { self.fail(throttle, self.credential(n), at: t0) }
        for n in 9..<18 {
            #expect(self.fail(throttle, self.credential(n), at: t0 + .seconds(61))?.lockedOut == false)
        }
        #expect(throttle.check(address: "10.0.0.1", now: t0 + .seconds(62)) == .allowed)
    }

    // MARK: Checks in flight

    @Test func concurrentDistinctGuessesBeyondTheThresholdAreBusy() {
        let throttle = self.throttle()
        var tickets: [AuthThrottle.Ticket] = []
        for n in 0..<10 {
            let ticket = self.ticket(self.begin(throttle, self.credential(n), at: t0))
            #expect(ticket != nil)
            if let ticket { tickets.append(ticket) }
        }
        let eleventh = self.begin(throttle, self.credential(10), at: t0)
        #expect(eleventh == .busy(retryAfter: AuthThrottle.busyRetryAfter))
        // Another address is not held up by this one.
        #expect(self.ticket(self.begin(throttle, self.credential(10), from: "10.0.0.2", user: "a", at: t0)) != nil)
        // All ten fail: locked at the tenth, so the burst got no more guesses than a sequence.
        let outcomes = tickets.map { throttle.failed($0, now: t0 + .seconds(1)) }
        #expect(outcomes.filter(\.lockedOut).count == 1)
        #expect(outcomes.last?.lockedOut == true)
    }

    @Test func failuresAndChecksInFlightShareTheThreshold() {
        let throttle = self.throttle()
        for n in 0..<7 { self.fail(throttle, self.credential(n), at: t0) }
        for n in 7..<10 {
            #expect(self.ticket(self.begin(throttle, self.credential(n), at: t0)) != nil)
        }
        #expect(self.begin(throttle, self.credential(10), user: "bob", at: t0) == .busy(retryAfter: .seconds(1)))
        // A repeat of a counted failure cannot add to the count: it is let through.
        #expect(self.ticket(self.begin(throttle, self.credential(0), at: t0)) != nil)
    }

    @Test func oneCredentialOnManyConnectionsSharesOneSlot() {
        let throttle = self.throttle()
        let password = self.credential(42)
        let tickets = (0..<50).compactMap { _ in
            self.ticket(self.begin(throttle, password, at: t0))
        }
        #expect(tickets.count == 50)
        for ticket in tickets { throttle.succeeded(ticket, now: t0) }
        #expect(throttle.trackedEntries == 0)
    }

    @Test func anAbandonedCheckReleasesItsSlotAndCountsNothing() {
        let throttle = self.throttle()
        let tickets = (0..<10).compactMap { n in
            self.ticket(self.begin(throttle, self.credential(n), at: t0))
        }
        #expect(self.begin(throttle, self.credential(10), at: t0) == .busy(retryAfter: .seconds(1)))
        throttle.abandoned(tickets[0])
        #expect(self.ticket(self.begin(throttle, self.credential(10), at: t0)) != nil)
        for n in 100..<200 {
            if let ticket = self.ticket(self.begin(throttle, self.credential(n), from: "10.0.0.2", user: "a", at: t0)) {
                throttle.abandoned(ticket)
            }
        }
        #expect(throttle.check(address: "10.0.0.2", now: t0) == .allowed)
    }

    // MARK: Successes

    @Test func anOwnSuccessDoesNotClearGuessesAtAnotherUser() {
        let throttle = self.throttle()
        for n in 0..<9 { self.fail(throttle, self.credential(n), user: "alice", at: t0) }
        self.succeed(throttle, self.credential(1000), user: "bob", at: t0 + .seconds(1))
        #expect(self.fail(throttle, self.credential(9), user: "alice", at: t0 + .seconds(2))?.lockedOut == true)
        #expect(throttle.check(address: "10.0.0.1", now: t0 + .seconds(3)) != .allowed)
    }

    @Test func aSuccessClearsThatUsersTyposAtThatAddressOnly() {
        let throttle = self.throttle(threshold: 5)
        self.fail(throttle, self.credential(100), user: "bob", at: t0)
        self.fail(throttle, self.credential(101), user: "bob", at: t0)
        for n in 0..<2 { self.fail(throttle, self.credential(n), user: "alice", at: t0) }
        self.succeed(throttle, self.credential(7), user: "alice", at: t0 + .seconds(1))
        // Alice's two are gone (else 2 + 2 + 2 would have locked); Bob's two remain (2 + 3 locks).
        #expect(self.fail(throttle, self.credential(200), user: "mallory", at: t0 + .seconds(2))?.lockedOut == false)
        #expect(self.fail(throttle, self.credential(201), user: "mallory", at: t0 + .seconds(2))?.lockedOut == false)
        #expect(self.fail(throttle, self.credential(202), user: "mallory", at: t0 + .seconds(2))?.lockedOut == true)
    }

    @Test func aSuccessDoesNotLiftALockout() {
        let throttle = self.throttle(threshold: 3)
        self.fail(throttle, self.credential(0), from: "a", at: t0)
        // Checked again (the password was reset meanwhile, say) and slow to answer…
        let slow = self.ticket(self.begin(throttle, self.credential(0), from: "a", at: t0))
        #expect(slow != nil)
        self.fail(throttle, self.credential(1), from: "a", at: t0)
        #expect(self.fail(throttle, self.credential(2), from: "a", at: t0)?.lockedOut == true)
        // …it succeeds after the lockout began: the lockout stays.
        if let slow { throttle.succeeded(slow, now: t0 + .seconds(1)) }
        #expect(throttle.check(address: "a", now: t0 + .seconds(2)) == .lockedOut(remaining: .seconds(118)))
    }

    // MARK: Lockout

    @Test func aLockedAddressIsRefusedWhateverItSends() {
        let throttle = self.throttle(threshold: 3)
        for n in 0..<3 { self.fail(throttle, self.credential(n), at: t0) }
        let later = t0 + .seconds(20)
        // The handler asks before its credential cache: a right or cached password learns nothing.
        #expect(throttle.check(address: "10.0.0.1", now: later) == .lockedOut(remaining: .seconds(100)))
        for (user, credential) in [
            ("alice", self.credential(77)), ("bob", self.credential(0)), ("carol", .unrepeatable()),
        ] {
            #expect(
                self.begin(throttle, credential, user: user, at: later)
                    == .lockedOut(remaining: .seconds(100))
            )
        }
        #expect(
            self.begin(throttle, .unrepeatable(), user: nil, at: later)
                == .lockedOut(remaining: .seconds(100))
        )
    }

    @Test func theLockoutEndsAndTheAddressStartsClean() {
        let throttle = self.throttle(threshold: 3)
        for n in 0..<3 { self.fail(throttle, self.credential(n), at: t0) }
        #expect(throttle.check(address: "10.0.0.1", now: t0 + .seconds(119)) != .allowed)
        #expect(throttle.check(address: "10.0.0.1", now: t0 + .seconds(120)) == .allowed)
        #expect(self.fail(throttle, self.credential(3), at: t0 + .seconds(121))?.lockedOut == false)
        #expect(self.fail(throttle, self.credential(4), at: t0 + .seconds(121))?.lockedOut == false)
        #expect(self.fail(throttle, self.credential(5), at: t0 + .seconds(121))?.lockedOut == true)
    }

    // MARK: User names

    @Test func aUserNameIsNeverLockedOnlySlowed() {
        let throttle = self.throttle(threshold: 3)
        // Guesses against one user from many addresses: none of them reaches the threshold…
        for i in 0..<50 {
            self.fail(
                throttle,
                self.credential(i),
                from: "10.0.\(i).1",
                user: "victim",
                at: t0 + .milliseconds(Int64(i))
            )
        }
        // …the user's own, well-behaved address is not locked…
        #expect(throttle.check(address: "192.0.2.7", now: t0 + .seconds(1)) == .allowed)
        let own = self.begin(throttle, self.credential(99), from: "192.0.2.7", user: "victim", at: t0 + .seconds(1))
        #expect(self.ticket(own) != nil)
        // …but another failed guess for that user name is held back.
        let outcome = self.fail(throttle, self.credential(500), from: "10.9.9.9", user: "victim", at: t0 + .seconds(1))
        #expect(outcome?.lockedOut == false)
        #expect(outcome?.delay == .seconds(5))
    }

    @Test func aRepeatedWrongPasswordForAUserFromManyAddressesIsNotSlowedFurther() {
        let throttle = self.throttle()
        let stale = self.credential(3)
        for i in 0..<50 {
            #expect(self.fail(throttle, stale, from: "10.0.\(i).1", user: "victim", at: t0)?.delay == .zero)
        }
    }

    @Test func backoffDoublesFromHalfTheThresholdAndIsCapped() {
        let throttle = self.throttle(threshold: 5)
        #expect(throttle.delay(forFailures: 1) == .zero)
        #expect(throttle.delay(forFailures: 2) == .milliseconds(100))
        #expect(throttle.delay(forFailures: 3) == .milliseconds(200))
        #expect(throttle.delay(forFailures: 4) == .milliseconds(400))
        #expect(throttle.delay(forFailures: 40) == .seconds(5))
        // A user name remembers just enough failures for the delay to reach its maximum.
        #expect(throttle.delay(forFailures: throttle.userFailureCap) == .seconds(5))
        #expect(throttle.delay(forFailures: throttle.userFailureCap - 1) < .seconds(5))
    }

    @Test func delaysGrowWithDistinctFailuresAtTheAddress() {
        let throttle = self.throttle()
        let delays = (0..<9).compactMap { n in self.fail(throttle, self.credential(n), user: "u\(n)", at: t0)?.delay }
        #expect(
            delays == [
                .zero, .zero, .zero, .zero, .milliseconds(100), .milliseconds(200), .milliseconds(400),
                .milliseconds(800), .milliseconds(1600),
            ]
        )
    }

    // MARK: Bounds

    @Test func aFloodOfLongUserNamesAndAddressesStaysBounded() {
        var settings = AuthThrottle.Settings()
        settings.maximumEntries = 1_000
        // Every failure is counted: an address is locked for a millisecond, then starts clean.
        settings.lockout = .milliseconds(1)
        let throttle = AuthThrottle(settings: settings)
        // One 45 KB buffer, its tail rewritten in place: 200,000 distinct names, no 9 GB of them.
        var name = String(repeating: "n", count: 45_000)
        var counted = 0
        for i in 0..<200_000 {
            name.removeLast(9)
            name.append(String(100_000_000 + i))
            let now = t0 + .milliseconds(Int64(i))
            if self.fail(
                throttle,
                self.credential(i),
                from: "198.51.\(i % 1_000 / 250).\(i % 250)",
                user: name,
                at: now
            ) != nil {
                counted += 1
            }
            if i % 10_000 == 0 { #expect(throttle.trackedEntries <= 2 * settings.maximumEntries) }
        }
        #expect(counted == 200_000)
        #expect(throttle.trackedEntries <= 2 * settings.maximumEntries)
        // No table can hold a name: records are keyed by 64-bit hashes and hold only hashes,
        // times and counts (see `AuthThrottle.State` in AuthThrottle+Tables.swift), so their size is fixed by
        // construction, not by what a client sends.
    }

    @Test func aFullTableDropsSpentRecordsBeforeLiveOnes() {
        let throttle = self.throttle(threshold: 3, maximumEntries: 8)
        // A guesser locked out first, so the least recently seen…
        for n in 0..<3 { self.fail(throttle, self.credential(n), from: "203.0.113.66", at: t0) }
        // …then addresses whose failures the window has let go by the time a newcomer comes.
        for i in 0..<7 {
            self.fail(throttle, self.credential(i), from: "192.0.2.\(i)", user: nil, at: t0 + .seconds(1))
        }
        self.fail(throttle, self.credential(1), from: "198.51.100.1", user: nil, at: t0 + .seconds(62))
        #expect(throttle.check(address: "203.0.113.66", now: t0 + .seconds(62)) == .lockedOut(remaining: .seconds(58)))
    }

    /// An IPv6 host holds a whole /64: guesses from any address in it share one count, and an
    /// IPv4-mapped address shares its IPv4 address's count.
    @Test func ipv6ClientsAreCountedByTheirSlash64() {
        let throttle = self.throttle(threshold: 4)
        for n in 0..<4 {
            self.fail(throttle, self.credential(n), from: "2001:db8:1:2::\(n + 1)", at: t0)
        }
        #expect(throttle.check(address: "2001:db8:1:2:ffff::9", now: t0) != .allowed)
        #expect(throttle.check(address: "2001:db8:1:3::1", now: t0) == .allowed)
        for n in 0..<4 { self.fail(throttle, self.credential(n), from: "::ffff:192.0.2.9", at: t0) }
        #expect(throttle.check(address: "192.0.2.9", now: t0) != .allowed)
    }
}
