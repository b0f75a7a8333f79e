import Logging
import NIOConcurrencyHelpers
import NIOCore
import Testing

@testable import PortcullisProxy

@Suite struct RefusalLogLimiterTests {
    private let t0 = NIODeadline.uptimeNanoseconds(7_000_000_000_000)

    /// Keeps what is logged through it.
    struct CapturingHandler: LogHandler {
        let lines: NIOLockedValueBox<[(Logger.Level, String, Logger.Metadata)]>
        var logLevel: Logger.Level = .trace
        var metadata: Logger.Metadata = [:]
        var metadataProvider: Logger.MetadataProvider?

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { self.metadata[key] }
            set { self.metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            self.lines.withLockedValue { $0.append((event.level, "\(event.message)", event.metadata ?? [:])) }
        }
    }

    private func limiter(lines: Int = 10, interval: TimeAmount = .seconds(10))
        -> (RefusalLogLimiter, NIOLockedValueBox<[(Logger.Level, String, Logger.Metadata)]>)
    {
        let captured = NIOLockedValueBox<[(Logger.Level, String, Logger.Metadata)]>([])
        var settings = RefusalLogLimiter.Settings()
        settings.linesPerInterval = lines
        settings.interval = interval
        let logger = Logger(label: "test") { _ in CapturingHandler(lines: captured) }
        return (RefusalLogLimiter(settings: settings, logger: logger), captured)
    }

    @Test func theFirstLinesOfAnIntervalPassAndTheRestAreOnlyCounted() {
        let (limiter, _) = self.limiter()
        let decisions = (0..<8_000).map { i in
            limiter.decide(.addressLockedOut, now: t0 + .milliseconds(Int64(i)))
        }
        #expect(decisions.prefix(10).allSatisfy { $0.log && $0.summary == nil })
        #expect(decisions.dropFirst(10).allSatisfy { !$0.log && $0.summary == nil })
    }

    @Test func theFirstLineAfterTheIntervalCarriesTheSummary() {
        let (limiter, _) = self.limiter()
        for i in 0..<25 {
            _ = limiter.decide(.authenticationFailed, now: t0 + .milliseconds(Int64(i)))
        }
        #expect(!limiter.decide(.authenticationFailed, now: t0 + .milliseconds(9_999)).log)
        let next = limiter.decide(.authenticationFailed, now: t0 + .seconds(12))
        #expect(next.log)
        #expect(next.summary == .init(kind: .authenticationFailed, suppressed: 16, span: .seconds(12)))
        #expect(next.summary?.message == "authentication failed: 16 similar lines suppressed in the last 12 s")
        // A fresh interval: its own budget, nothing left to report.
        #expect(limiter.decide(.authenticationFailed, now: t0 + .seconds(13)) == .init(log: true, summary: nil))
    }

    @Test func anIntervalWithoutSuppressedLinesNeedsNoSummary() {
        let (limiter, _) = self.limiter()
        for i in 0..<10 {
            #expect(limiter.decide(.policyDenial, now: t0 + .seconds(Int64(i))).log)
        }
        #expect(limiter.decide(.policyDenial, now: t0 + .seconds(30)) == .init(log: true, summary: nil))
        #expect(limiter.endedIntervals(now: t0 + .seconds(60)).isEmpty)
    }

    @Test func eachKindHasItsOwnBudget() {
        let (limiter, _) = self.limiter(lines: 2)
        #expect(limiter.decide(.userLimit, now: t0).log)
        #expect(limiter.decide(.userLimit, now: t0).log)
        #expect(!limiter.decide(.userLimit, now: t0).log)
        for kind in RefusalLogLimiter.Kind.allCases where kind != .userLimit {
            #expect(limiter.decide(kind, now: t0).log)
        }
    }

    @Test func endedIntervalsAreSummedUpWithoutWaitingForTheNextLine() {
        let (limiter, _) = self.limiter(lines: 1)
        for _ in 0..<5 { _ = limiter.decide(.challengeLoop, now: t0) }
        for _ in 0..<3 { _ = limiter.decide(.connectionRefused, now: t0 + .seconds(5)) }
        // Neither interval has ended yet.
        #expect(limiter.endedIntervals(now: t0 + .seconds(9)).isEmpty)
        #expect(
            limiter.endedIntervals(now: t0 + .seconds(11))
                == [.init(kind: .challengeLoop, suppressed: 4, span: .seconds(11))]
        )
        // Reported once; the next line starts afresh.
        #expect(limiter.endedIntervals(now: t0 + .seconds(12)).isEmpty)
        #expect(limiter.decide(.challengeLoop, now: t0 + .seconds(12)) == .init(log: true, summary: nil))
        #expect(
            limiter.endedIntervals(now: t0 + .seconds(16))
                == [.init(kind: .connectionRefused, suppressed: 2, span: .seconds(11))]
        )
    }

    @Test func admitLogsTheSummaryAtTheEventsLevelBeforeTheCallersLine() {
        let (limiter, captured) = self.limiter(lines: 1)
        #expect(limiter.admit(.lockoutStarted, now: t0))
        #expect(!limiter.admit(.lockoutStarted, now: t0 + .seconds(1)))
        #expect(!limiter.admit(.lockoutStarted, now: t0 + .seconds(2)))
        #expect(captured.withLockedValue { $0.isEmpty })
        #expect(limiter.admit(.lockoutStarted, now: t0 + .seconds(10)))
        let lines = captured.withLockedValue { $0 }
        #expect(lines.count == 1)
        #expect(lines.first?.0 == .warning)
        #expect(
            lines.first?.1
                == "client address locked out after repeated failed logins: 2 similar lines suppressed in the last 10 s"
        )
        #expect(lines.first?.2["suppressed"] == "2")
    }

    @Test func logEndedIntervalsWritesTheSummaries() {
        let (limiter, captured) = self.limiter(lines: 0)
        #expect(!limiter.admit(.storeUnavailable, now: t0))
        limiter.logEndedIntervals(now: t0 + .seconds(10))
        let lines = captured.withLockedValue { $0 }
        #expect(lines.map(\.0) == [.error])
        #expect(lines.map(\.1) == ["user store unavailable: 1 similar lines suppressed in the last 10 s"])
    }

    @Test func aFloodFromManyThreadsLogsNoMoreThanTheBudget() async {
        let (limiter, _) = self.limiter()
        let now = t0
        let logged = await withTaskGroup(of: Int.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    (0..<10_000).reduce(0) { count, _ in
                        count + (limiter.decide(.addressLockedOut, now: now).log ? 1 : 0)
                    }
                }
            }
            return await group.reduce(0, +)
        }
        #expect(logged == 10)
        #expect(limiter.endedIntervals(now: now + .seconds(10)).first?.suppressed == 79_990)
    }
}
