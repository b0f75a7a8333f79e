import NIOCore
import PortcullisAuth
import Testing

@testable import PortcullisProxy

struct ChallengeLoopDetectorTests {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    private func client(_ address: String, _ agent: String) -> ChallengeLoopDetector.Client {
        ChallengeLoopDetector.Client(address: address, userAgent: Array(agent.utf8))
    }

    @Test func fiveChallengesInARowAreFlaggedOnce() {
        let detector = ChallengeLoopDetector()
        let curl = self.client("10.0.0.1", "curl/8")
        var flagged: [ChallengeLoopDetector.Loop] = []
        for i in 0..<8 {
            if let loop = detector.challenged(
                client: curl,
                reason: .missingCredentials,
                schemeSent: nil,
                offered: ["Basic"],
                now: self.start + .seconds(Int64(i))
            ) {
                flagged.append(loop)
            }
        }
        #expect(flagged.count == 1)
        #expect(flagged.first?.count == 5)
        #expect(flagged.first?.cause.contains("never answers the challenge") == true)
    }

    @Test func aSuccessEndsTheStreak() {
        let detector = ChallengeLoopDetector()
        let curl = self.client("10.0.0.1", "curl/8")
        for i in 0..<4 {
            _ = detector.challenged(
                client: curl,
                reason: .invalidCredentials,
                schemeSent: "basic",
                offered: ["Basic"],
                now: self.start + .seconds(Int64(i))
            )
        }
        detector.succeeded(client: curl)
        #expect(detector.trackedClients == 0)
        let loop = detector.challenged(
            client: curl,
            reason: .invalidCredentials,
            schemeSent: "basic",
            offered: ["Basic"],
            now: self.start
        )
        #expect(loop == nil)
    }

    @Test func theSameAddressWithAnotherUserAgentIsAnotherClient() {
        #expect(self.client("10.0.0.1", "curl/8") != self.client("10.0.0.1", "Mozilla/5.0"))
        #expect(self.client("10.0.0.1", "curl/8") == self.client("10.0.0.1", "curl/8"))
        #expect(self.client("10.0.0.1", "2curl") != self.client("10.0.0.12", "curl"))
    }

    /// A unique long user agent per request: the table stays within its entry bound, and an
    /// entry holds a fixed-size key, never the agent (a 60 KB agent per request once grew the
    /// process past a gigabyte).
    @Test func aFloodOfUniqueUserAgentsStaysBounded() {
        var settings = ChallengeLoopDetector.Settings()
        settings.maximumClients = 500
        let detector = ChallengeLoopDetector(settings: settings)
        let tail = String(repeating: "a", count: 60_000)
        for i in 0..<5_000 {
            _ = detector.challenged(
                client: self.client("10.0.\(i % 200).1", "\(i)\(tail)"),
                reason: .missingCredentials,
                schemeSent: nil,
                offered: ["Basic"],
                now: self.start
            )
            #expect(detector.trackedClients <= 500)
        }
        #expect(MemoryLayout<ChallengeLoopDetector.Client>.size == MemoryLayout<Int>.size)
    }
}
