import Foundation

/// What `portcullis doctor` found, in the stable shape of its `--json` output (schema 1,
/// documented in docs/DOCTOR.md). Nothing in it may hold a password or a credential.
public struct DoctorReport: Encodable, Sendable {
    public enum Status: String, Encodable, Sendable {
        case pass, warn, fail, skip
    }

    public enum Verdict: String, Encodable, Sendable {
        case ok
        case configError = "config-error"
        case proxyUnreachable = "proxy-unreachable"
        case authFailed = "auth-failed"
        case denied
        case targetFailed = "target-failed"

        public var exitCode: Int32 {
            switch self {
            case .ok: return 0
            case .configError, .proxyUnreachable: return 1
            case .authFailed: return 2
            case .denied: return 3
            case .targetFailed: return 4
            }
        }
    }

    public struct Step: Encodable, Sendable {
        public var name: String
        public var status: Status
        public var message: String
        public var fix: String?
        public var elapsedMs: Double?
        public var details: [String: JSONValue]

        enum CodingKeys: String, CodingKey {
            case name, status, message, fix, details
            case elapsedMs = "elapsed_ms"
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(self.name, forKey: .name)
            try c.encode(self.status, forKey: .status)
            try c.encode(self.message, forKey: .message)
            try c.encode(self.fix, forKey: .fix)
            try c.encode(self.elapsedMs.map { ($0 * 10).rounded() / 10 }, forKey: .elapsedMs)
            try c.encode(self.details, forKey: .details)
        }
    }

    public struct ChallengeInfo: Encodable, Sendable {
        public var scheme: String
        public var realm: String?
        public var params: [String: String]
        /// `Proxy-Authenticate`, or `WWW-Authenticate` for a proxy that answered 401.
        public var field: String
    }

    public struct Authentication: Encodable, Sendable {
        public var outcome: String
        public var scheme: String?
        public var status: Int?
        public var proxyReason: String?
        /// Why this client could not answer (Negotiate: `no-ticket`, `ticket-expired`, …).
        public var clientReason: String? = nil

        enum CodingKeys: String, CodingKey {
            case outcome, scheme, status
            case proxyReason = "proxy_reason"
            case clientReason = "client_reason"
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(self.outcome, forKey: .outcome)
            try c.encode(self.scheme, forKey: .scheme)
            try c.encode(self.status, forKey: .status)
            try c.encode(self.proxyReason, forKey: .proxyReason)
            try c.encode(self.clientReason, forKey: .clientReason)
        }
    }

    public struct Target: Encodable, Sendable {
        public var url: String
        public var viaProxy: Bool
        public var status: Status
        public var httpStatus: Int?
        public var message: String
        /// The proxy's next hop for this target when the proxy said (RFC 9209 `next-hop`: the
        /// parent proxy a Portcullis with `--parent` used).
        public var nextHop: String? = nil

        enum CodingKeys: String, CodingKey {
            case url, status, message
            case viaProxy = "via_proxy"
            case httpStatus = "http_status"
            case nextHop = "next_hop"
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(self.url, forKey: .url)
            try c.encode(self.viaProxy, forKey: .viaProxy)
            try c.encode(self.status, forKey: .status)
            try c.encode(self.httpStatus, forKey: .httpStatus)
            try c.encode(self.message, forKey: .message)
            try c.encodeIfPresent(self.nextHop, forKey: .nextHop)
        }
    }

    public var schema = 1
    public var verdict: Verdict = .ok
    public var summary = ""
    public var proxy: String?
    public var proxySource: String?
    public var steps: [Step] = []
    public var challenges: [ChallengeInfo] = []
    public var authentication: Authentication?
    public var targets: [Target] = []

    public var exitCode: Int32 { self.verdict.exitCode }

    enum CodingKeys: String, CodingKey {
        case schema, verdict, summary, proxy, steps, challenges, authentication, targets
        case exitCode = "exit_code"
        case proxySource = "proxy_source"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(self.schema, forKey: .schema)
        try c.encode(self.verdict, forKey: .verdict)
        try c.encode(self.exitCode, forKey: .exitCode)
        try c.encode(self.summary, forKey: .summary)
        try c.encode(self.proxy, forKey: .proxy)
        try c.encode(self.proxySource, forKey: .proxySource)
        try c.encode(self.steps, forKey: .steps)
        try c.encode(self.challenges, forKey: .challenges)
        try c.encode(self.authentication, forKey: .authentication)
        try c.encode(self.targets, forKey: .targets)
    }

    public func json() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(self)) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    /// The verdict line: `portcullis doctor: OK (exit 0) — …`.
    public var verdictLine: String {
        let word = self.verdict == .ok ? "OK" : "FAIL"
        return "portcullis doctor: \(word) (exit \(self.exitCode)) — \(self.summary)"
    }

    /// The report for people: the verdict line, then one line per step and a fix line after
    /// each warning or failure.
    public func text() -> String {
        var lines = [self.verdictLine]
        let width = max(14, self.steps.map(\.name.count).max() ?? 0)
        for step in self.steps {
            let name = step.name.padding(toLength: width, withPad: " ", startingAt: 0)
            var line =
                "  \(step.status.rawValue.padding(toLength: 4, withPad: " ", startingAt: 0))  \(name)  \(step.message)"
            if let ms = step.elapsedMs { line += String(format: " (%.1f ms)", ms) }
            lines.append(line)
            if let fix = step.fix, step.status == .warn || step.status == .fail {
                lines.append(String(repeating: " ", count: width + 10) + "fix: " + fix)
            }
        }
        return lines.joined(separator: "\n")
    }
}

/// A small JSON value for step details.
public enum JSONValue: Encodable, Sendable, Equatable {
    case string(String)
    case number(Double)
    case int(Int)
    case bool(Bool)
    case array([JSONValue])
    case object([String: JSONValue])
    case null

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .string(let s): try c.encode(s)
        case .number(let d): try c.encode((d * 10).rounded() / 10)
        case .int(let i): try c.encode(i)
        case .bool(let b): try c.encode(b)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        case .null: try c.encodeNil()
        }
    }
}

extension DoctorReport {
    mutating func add(
        _ name: String,
        _ status: Status,
        _ message: String,
        fix: String? = nil,
        ms: Double? = nil,
        details: [String: JSONValue] = [:]
    ) {
        self.steps.append(Step(name: name, status: status, message: message, fix: fix, elapsedMs: ms, details: details))
    }

    /// Records a failing step, and the run's verdict and summary if it is the first failure.
    /// - Returns: `false`, for a step to end the run with.
    mutating func fail(
        _ name: String,
        _ verdict: Verdict,
        _ message: String,
        fix: String?,
        ms: Double? = nil,
        details: [String: JSONValue] = [:]
    ) -> Bool {
        self.add(name, .fail, message, fix: fix, ms: ms, details: details)
        if self.verdict == .ok {
            self.verdict = verdict
            self.summary = message
        }
        return false
    }
}
