import Foundation
import Logging
import NIOConcurrencyHelpers
import PortcullisProxy
import PortcullisStores

/// Looks at the user database once a minute: the `portcullis_users{state}` and
/// `portcullis_tokens_active` gauges, and one warning a day for each user whose password ends
/// within `--expiry-warning` — days before its 407.
final class ExpiryWatch: Sendable {
    private let store: any UserAdministration
    private let warning: TimeInterval
    private let metrics: ProxyMetrics
    private let logger: Logger
    private let interval: TimeInterval
    private let state = NIOLockedValueBox<(last: Date?, warned: [String: Date])>((nil, [:]))

    init(
        store: any UserAdministration,
        warning: TimeInterval,
        metrics: ProxyMetrics,
        logger: Logger,
        interval: TimeInterval = 60
    ) {
        self.store = store
        self.warning = warning
        self.metrics = metrics
        self.logger = logger
        self.interval = interval
    }

    /// Runs a look when the last one is `interval` old (the reload loop asks every second).
    func check(now: Date = Date()) async {
        let due = self.state.withLockedValue { state -> Bool in
            if let last = state.last, now.timeIntervalSince(last) < self.interval { return false }
            state.last = now
            return true
        }
        guard due, let users = try? await self.store.list(), let tokens = try? await self.store.tokens(user: nil) else {
            return
        }
        var counts: [String: Int] = [:]
        var ending: [(key: String, what: String, name: String, at: Date)] = []
        for user in users {
            let state: String
            if user.state == "disabled" || user.state == "expired" {
                state = user.state
            } else if let expires = user.expiresAt, expires.timeIntervalSince(now) <= self.warning {
                state = "expiring"
                ending.append(("user \(user.name)", "password", user.name, expires))
            } else {
                state = user.state == "rotating" ? "rotating" : "active"
            }
            counts[state, default: 0] += 1
        }
        // Tokens end by design (within a day by default): counted, not warned about.
        let active = tokens.filter { $0.state == .active }
        self.metrics.credentials(users: counts, tokensActive: active.count)
        let iso = ISO8601DateFormatter()
        let toWarn = self.state.withLockedValue { state -> [(key: String, what: String, name: String, at: Date)] in
            let due = ending.filter { state.warned[$0.key].map { now.timeIntervalSince($0) >= 86400 } ?? true }
            for item in due { state.warned[item.key] = now }
            // Forget what no longer ends soon (renewed, removed): bounded by the database's rows.
            let current = Set(ending.map(\.key))
            state.warned = state.warned.filter { current.contains($0.key) }
            return due
        }
        for item in toWarn {
            self.logger.warning(
                "credential expires soon",
                metadata: [
                    "user": "\(item.name)", "credential": "\(item.what)", "expires_at": "\(iso.string(from: item.at))",
                    "in_seconds": "\(max(0, Int(item.at.timeIntervalSince(now))))",
                ]
            )
        }
    }
}
