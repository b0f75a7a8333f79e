import NIOConcurrencyHelpers
import NIOCore

/// Per-user limits (issue 6): connections at once, distinct client addresses within a window
/// (Squid's `max_user_ip`: one credential shared around a company shows up here), and requests
/// per second (a token bucket). Over a limit → 429 naming which one.
public final class UserLimits: Sendable {
    public struct Settings: Sendable, Equatable {
        /// `nil`: no limit.
        public var maximumConnections: Int?
        public var maximumAddresses: Int?
        public var addressWindow: TimeAmount = .minutes(1)
        /// Sustained requests per second; bursts up to twice that.
        public var requestsPerSecond: Double?

        public init() {}

        public var isEmpty: Bool {
            self.maximumConnections == nil && self.maximumAddresses == nil && self.requestsPerSecond == nil
        }
    }

    public enum Verdict: Equatable, Sendable {
        case allowed
        case tooManyConnections(limit: Int)
        case tooManyAddresses(limit: Int)
        case rateLimited(perSecond: Double)

        var details: String {
            switch self {
            case .allowed: return ""
            case .tooManyConnections: return "user connection limit"
            case .tooManyAddresses: return "user address limit"
            case .rateLimited: return "user rate limit"
            }
        }

        var message: String {
            switch self {
            case .allowed: return ""
            case .tooManyConnections(let n):
                return "this user already has \(n) connections open (the limit); reuse them."
            case .tooManyAddresses(let n):
                return "this user is signed in from \(n) other addresses already (the limit); is the credential shared?"
            case .rateLimited(let r):
                return "this user sends more than \(Self.format(r)) requests per second; slow down."
            }
        }

        private static func format(_ r: Double) -> String {
            r == r.rounded() ? "\(Int(r))" : "\(r)"
        }
    }

    private struct UserState {
        var connections: Set<ObjectIdentifier> = []
        var addresses: [String: NIODeadline] = [:]
        var tokens: Double = 0
        var refilled: NIODeadline
    }

    public let settings: Settings
    private let state = NIOLockedValueBox<[String: UserState]>([:])

    public init(settings: Settings) {
        self.settings = settings
    }

    /// Decides one request of `user` on `connection` from `address`, and counts it if allowed.
    public func admit(user: String, connection: ObjectIdentifier, address: String, now: NIODeadline = .now()) -> Verdict
    {
        let settings = self.settings
        return self.state.withLockedValue { users in
            let burst = (settings.requestsPerSecond ?? 0) * 2
            var entry = users[user] ?? UserState(tokens: burst, refilled: now)
            if let limit = settings.maximumConnections, !entry.connections.contains(connection),
                entry.connections.count >= limit
            {
                return .tooManyConnections(limit: limit)
            }
            if let limit = settings.maximumAddresses {
                entry.addresses = entry.addresses.filter { now - $0.value <= settings.addressWindow }
                if entry.addresses[address] == nil, entry.addresses.count >= limit {
                    users[user] = entry
                    return .tooManyAddresses(limit: limit)
                }
            }
            if let rate = settings.requestsPerSecond {
                let elapsed = Double((now - entry.refilled).nanoseconds) / 1e9
                entry.tokens = min(burst, entry.tokens + elapsed * rate)
                entry.refilled = now
                guard entry.tokens >= 1 else {
                    users[user] = entry
                    return .rateLimited(perSecond: rate)
                }
                entry.tokens -= 1
            }
            entry.connections.insert(connection)
            entry.addresses[address] = now
            users[user] = entry
            return .allowed
        }
    }

    /// A connection that carried requests of `user` has closed.
    public func release(user: String, connection: ObjectIdentifier) {
        self.state.withLockedValue { users in
            guard var entry = users[user] else { return }
            entry.connections.remove(connection)
            if entry.connections.isEmpty && entry.addresses.isEmpty && self.settings.requestsPerSecond == nil {
                users[user] = nil
            } else {
                users[user] = entry
            }
        }
    }
}
