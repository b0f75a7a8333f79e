import NIOCore
import Testing

@testable import PortcullisProxy

@Suite struct UserLimitsTests {
    private let t0 = NIODeadline.uptimeNanoseconds(5_000_000_000_000)
    private final class Conn {}

    @Test func connectionsPerUserAreCountedOncePerConnectionAndReleased() {
        var settings = UserLimits.Settings()
        settings.maximumConnections = 2
        let limits = UserLimits(settings: settings)
        let (a, b, c) = (Conn(), Conn(), Conn())
        #expect(limits.admit(user: "u", connection: ObjectIdentifier(a), address: "1.1.1.1", now: t0) == .allowed)
        #expect(limits.admit(user: "u", connection: ObjectIdentifier(a), address: "1.1.1.1", now: t0) == .allowed)
        #expect(limits.admit(user: "u", connection: ObjectIdentifier(b), address: "1.1.1.1", now: t0) == .allowed)
        #expect(
            limits.admit(user: "u", connection: ObjectIdentifier(c), address: "1.1.1.1", now: t0)
                == .tooManyConnections(limit: 2)
        )
        #expect(limits.admit(user: "v", connection: ObjectIdentifier(c), address: "1.1.1.1", now: t0) == .allowed)
        limits.release(user: "u", connection: ObjectIdentifier(a))
        #expect(limits.admit(user: "u", connection: ObjectIdentifier(c), address: "1.1.1.1", now: t0) == .allowed)
    }

    @Test func distinctAddressesWithinTheWindow() {
        var settings = UserLimits.Settings()
        settings.maximumAddresses = 2
        settings.addressWindow = .seconds(60)
        let limits = UserLimits(settings: settings)
        let conn = ObjectIdentifier(Conn())
        #expect(limits.admit(user: "u", connection: conn, address: "10.0.0.1", now: t0) == .allowed)
        #expect(limits.admit(user: "u", connection: conn, address: "10.0.0.2", now: t0) == .allowed)
        #expect(limits.admit(user: "u", connection: conn, address: "10.0.0.3", now: t0) == .tooManyAddresses(limit: 2))
        #expect(limits.admit(user: "u", connection: conn, address: "10.0.0.1", now: t0 + .seconds(1)) == .allowed)
        // Once the others have been quiet for the window, a new address is fine.
        #expect(limits.admit(user: "u", connection: conn, address: "10.0.0.3", now: t0 + .seconds(62)) == .allowed)
    }

    @Test func tokenBucketAllowsABurstOfTwiceTheRateThenTheRate() {
        var settings = UserLimits.Settings()
        settings.requestsPerSecond = 5
        let limits = UserLimits(settings: settings)
        let conn = ObjectIdentifier(Conn())
        var allowed = 0
        for _ in 0..<20 where limits.admit(user: "u", connection: conn, address: "a", now: t0) == .allowed {
            allowed += 1
        }
        #expect(allowed == 10)
        #expect(limits.admit(user: "u", connection: conn, address: "a", now: t0) == .rateLimited(perSecond: 5))
        // One second later five more tokens.
        allowed = 0
        for _ in 0..<20 where limits.admit(user: "u", connection: conn, address: "a", now: t0 + .seconds(1)) == .allowed
        {
            allowed += 1
        }
        #expect(allowed == 5)
    }
}
