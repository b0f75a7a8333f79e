import NIOCore
import Testing

@testable import PortcullisProxy

@Suite struct AuthThrottleTests {
    private let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    private func throttle(threshold: Int = 5) -> AuthThrottle {
        var settings = AuthThrottle.Settings()
        settings.threshold = threshold
        settings.window = .seconds(60)
        settings.lockout = .seconds(120)
        return AuthThrottle(settings: settings)
    }

    @Test func anAddressIsLockedOutAtTheThresholdAndFreedAfterTheLockout() {
        let throttle = self.throttle(threshold: 3)
        #expect(throttle.recordFailure(address: "10.0.0.1", user: "u", now: t0).lockedOut == false)
        #expect(throttle.recordFailure(address: "10.0.0.1", user: "u", now: t0 + .seconds(1)).lockedOut == false)
        #expect(throttle.recordFailure(address: "10.0.0.1", user: "u", now: t0 + .seconds(2)).lockedOut == true)
        #expect(throttle.check(address: "10.0.0.1", now: t0 + .seconds(3)) == .lockedOut(remaining: .seconds(119)))
        #expect(throttle.check(address: "10.0.0.2", now: t0 + .seconds(3)) == .allowed)
        #expect(throttle.check(address: "10.0.0.1", now: t0 + .seconds(123)) == .allowed)
    }

    @Test func aUserNameIsNeverLockedOnlySlowed() {
        let throttle = self.throttle(threshold: 3)
        // Guesses against one user from many addresses: none of them reaches the threshold…
        for i in 0..<50 {
            _ = throttle.recordFailure(address: "10.0.\(i).1", user: "victim", now: t0 + .milliseconds(Int64(i)))
        }
        // …the user's own, well-behaved address is not locked…
        #expect(throttle.check(address: "192.0.2.7", now: t0 + .seconds(1)) == .allowed)
        // …but another failed guess for that user name is held back.
        let (delay, locked) = throttle.recordFailure(address: "10.9.9.9", user: "victim", now: t0 + .seconds(1))
        #expect(!locked)
        #expect(delay == .seconds(5))
    }

    @Test func failuresOutsideTheWindowStartOver() {
        let throttle = self.throttle(threshold: 3)
        _ = throttle.recordFailure(address: "a", user: nil, now: t0)
        _ = throttle.recordFailure(address: "a", user: nil, now: t0 + .seconds(1))
        #expect(throttle.recordFailure(address: "a", user: nil, now: t0 + .seconds(90)).lockedOut == false)
        #expect(throttle.check(address: "a", now: t0 + .seconds(91)) == .allowed)
    }

    @Test func backoffDoublesFromTheConfiguredFailureAndIsCapped() {
        let throttle = self.throttle()
        #expect(throttle.delay(forFailures: 1) == .zero)
        #expect(throttle.delay(forFailures: 2) == .milliseconds(100))
        #expect(throttle.delay(forFailures: 3) == .milliseconds(200))
        #expect(throttle.delay(forFailures: 4) == .milliseconds(400))
        #expect(throttle.delay(forFailures: 40) == .seconds(5))
    }

    @Test func aSuccessClearsTheAddressButNotALockout() {
        let throttle = self.throttle(threshold: 3)
        _ = throttle.recordFailure(address: "a", user: nil, now: t0)
        _ = throttle.recordFailure(address: "a", user: nil, now: t0)
        throttle.recordSuccess(address: "a")
        #expect(throttle.recordFailure(address: "a", user: nil, now: t0).lockedOut == false)
        _ = throttle.recordFailure(address: "b", user: nil, now: t0)
        _ = throttle.recordFailure(address: "b", user: nil, now: t0)
        _ = throttle.recordFailure(address: "b", user: nil, now: t0)
        throttle.recordSuccess(address: "b")
        #expect(throttle.check(address: "b", now: t0 + .seconds(1)) != .allowed)
    }

    @Test func memoryStaysBoundedUnderAFloodOfAddresses() {
        var settings = AuthThrottle.Settings()
        settings.maximumEntries = 1000
        let throttle = AuthThrottle(settings: settings)
        for i in 0..<5000 {
            _ = throttle.recordFailure(address: "addr-\(i)", user: nil, now: t0 + .milliseconds(Int64(i)))
        }
        #expect(throttle.trackedEntries <= 1000)
    }
}
