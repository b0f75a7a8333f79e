import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Keeps refusals from flooding the log: of each kind of per-client log event, at most
/// ``Settings/linesPerInterval`` lines pass per ``Settings/interval``; the rest are counted
/// and summed up in one line ("N similar lines suppressed in the last 10 s").
///
/// Anyone can make the proxy refuse them: 8,000 requests from a locked-out address wrote
/// 8,012 info lines in 7.5 s, burying everything else and filling disks. The counts live in
/// a table keyed by the fixed ``Kind``, never by anything a client sends, so its memory is
/// the same under any flood.
///
/// A connection handler asks before it logs:
/// ```swift
/// if shared.refusalLog.admit(.authenticationFailed, now: now) {
///     logger.info("authentication failed", metadata: [...])
/// }
/// ```
/// ``admit(_:now:)`` writes the summary of an interval that ended itself, before the caller's
/// line; the server's periodic ``logEndedIntervals(now:)`` writes those nobody asked about
/// since, so a flood that stops is still summed up within seconds.
public final class RefusalLogLimiter: Sendable {
    /// The per-client log events that a client can make the proxy repeat at will.
    public enum Kind: Int, CaseIterable, Sendable {
        /// A 407 for credentials that were wrong, malformed or stale (not the first 407 of a
        /// handshake, which is logged at debug and needs no limit).
        case authenticationFailed
        /// A login refused because the address is locked out.
        case addressLockedOut
        /// An address reached the failed-login threshold and was locked out.
        case lockoutStarted
        /// A client stuck in a 407 loop.
        case challengeLoop
        /// A connection closed after repeated failed Digest answers.
        case digestFailures
        /// A request over a per-user limit.
        case userLimit
        /// A request the access rules deny.
        case policyDenial
        /// A login that could not be checked: the users store is unavailable.
        case storeUnavailable
        /// A connection refused by the client allow-list or a connection limit.
        case connectionRefused
        /// A Negotiate/NTLM handshake refused: too many in progress.
        case tooManyHandshakes
        /// A verified client certificate without the field `--cert-user-from` names.
        case certificateWithoutUser

        /// The words of the event's own line, which its summary repeats.
        public var event: String {
            switch self {
            case .authenticationFailed: return "authentication failed"
            case .addressLockedOut: return "login refused: address locked out"
            case .lockoutStarted: return "client address locked out after repeated failed logins"
            case .challengeLoop: return "challenge loop"
            case .digestFailures: return "closing a connection after repeated failed Digest answers"
            case .userLimit: return "request over a user limit"
            case .policyDenial: return "request denied by policy"
            case .storeUnavailable: return "user store unavailable"
            case .connectionRefused: return "connection refused"
            case .tooManyHandshakes: return "too many Negotiate/NTLM handshakes in progress; refusing new ones"
            case .certificateWithoutUser: return "client certificate names no user"
            }
        }

        /// The level of the event's own line, and so of its summary: an operator who sees one
        /// sees the other.
        public var level: Logger.Level {
            switch self {
            case .authenticationFailed, .addressLockedOut, .userLimit, .policyDenial, .connectionRefused,
                .certificateWithoutUser:
                return .info
            case .lockoutStarted, .challengeLoop, .digestFailures, .tooManyHandshakes: return .warning
            case .storeUnavailable: return .error
            }
        }
    }

    public struct Settings: Sendable, Equatable {
        /// Lines of one kind logged per interval; the rest are only counted.
        public var linesPerInterval = 10
        public var interval: TimeAmount = .seconds(10)

        public init() {}
    }

    /// Lines of one kind suppressed in an interval that has ended.
    public struct Summary: Sendable, Equatable {
        public var kind: Kind
        public var suppressed: Int
        /// From the interval's first line until the summary: the suppressed lines all fall
        /// in it.
        public var span: TimeAmount

        /// "N similar lines suppressed in the last S s", S rounded up to whole seconds.
        public var message: String {
            let seconds = (self.span.nanoseconds + 999_999_999) / 1_000_000_000
            return "\(self.kind.event): \(self.suppressed) similar lines suppressed in the last \(seconds) s"
        }
    }

    /// The decision for one line.
    public struct Admission: Sendable, Equatable {
        /// Whether to write the line.
        public var log: Bool
        /// The summary of this kind's interval that just ended, to write before the line.
        public var summary: Summary?
    }

    private struct Interval {
        var started: NIODeadline
        var logged = 0
        var suppressed = 0
    }

    public let settings: Settings
    private let logger: Logger
    /// Indexed by ``Kind/rawValue``: one slot per kind, whatever clients send.
    private let intervals = NIOLockedValueBox([Interval?](repeating: nil, count: Kind.allCases.count))

    /// `logger` writes the summaries.
    public init(settings: Settings = Settings(), logger: Logger) {
        self.settings = settings
        self.logger = logger
    }

    /// Whether to log a line of `kind` now. When this call ends an interval in which lines
    /// were suppressed, their summary is logged first.
    public func admit(_ kind: Kind, now: NIODeadline) -> Bool {
        let admission = self.decide(kind, now: now)
        if let summary = admission.summary { self.log(summary) }
        return admission.log
    }

    /// The decision ``admit(_:now:)`` acts on, without logging anything.
    public func decide(_ kind: Kind, now: NIODeadline) -> Admission {
        self.intervals.withLockedValue { intervals in
            if let current = intervals[kind.rawValue], now - current.started < self.settings.interval {
                if current.logged < self.settings.linesPerInterval {
                    intervals[kind.rawValue]?.logged += 1
                    return Admission(log: true, summary: nil)
                }
                intervals[kind.rawValue]?.suppressed += 1
                return Admission(log: false, summary: nil)
            }
            let ended = intervals[kind.rawValue].flatMap { self.summary(of: $0, kind: kind, now: now) }
            let logs = self.settings.linesPerInterval > 0
            intervals[kind.rawValue] = Interval(started: now, logged: logs ? 1 : 0, suppressed: logs ? 0 : 1)
            return Admission(log: logs, summary: ended)
        }
    }

    /// Logs the summaries of intervals that ended with lines suppressed (see ``endedIntervals(now:)``).
    public func logEndedIntervals(now: NIODeadline) {
        for summary in self.endedIntervals(now: now) { self.log(summary) }
    }

    /// Closes every interval that has ended and returns the summaries of those in which lines
    /// were suppressed; the next line of those kinds starts a fresh interval.
    public func endedIntervals(now: NIODeadline) -> [Summary] {
        self.intervals.withLockedValue { intervals in
            var summaries: [Summary] = []
            for kind in Kind.allCases {
                guard let interval = intervals[kind.rawValue], now - interval.started >= self.settings.interval
                else { continue }
                intervals[kind.rawValue] = nil
                if let summary = self.summary(of: interval, kind: kind, now: now) { summaries.append(summary) }
            }
            return summaries
        }
    }

    private func summary(of interval: Interval, kind: Kind, now: NIODeadline) -> Summary? {
        guard interval.suppressed > 0 else { return nil }
        return Summary(kind: kind, suppressed: interval.suppressed, span: now - interval.started)
    }

    private func log(_ summary: Summary) {
        self.logger.log(
            level: summary.kind.level,
            "\(summary.message)",
            metadata: ["suppressed": "\(summary.suppressed)"]
        )
    }
}
