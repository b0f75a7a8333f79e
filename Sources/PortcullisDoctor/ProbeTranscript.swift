import PortcullisAuth

/// A request doctor asks the probe to send. It names the credentials to answer with but never
/// holds a password or an `Authorization` value: only the probe, which keeps the password,
/// computes the `Proxy-Authorization` field, so a transcript can be kept, printed or compared.
struct ProbeRequest: Sendable, Equatable {
    enum Credentials: Sendable, Equatable {
        case none
        case basic(user: String)
        /// A Digest answer to `challenge` with this nonce count; the probe picks the cnonce.
        case digest(user: String, challenge: DigestChallenge, nonceCount: Int)
    }

    /// `GET` (absolute-form) for an http:// target, `CONNECT` for an https:// one.
    var method: String
    var requestTarget: String
    var hostHeader: String
    var credentials: Credentials
    /// Whether the request needs a connection of its own (a CONNECT that opens a tunnel); else
    /// the current connection is used while the proxy keeps it open.
    var newConnection: Bool

    init(method: String, requestTarget: String, hostHeader: String, credentials: Credentials, newConnection: Bool) {
        self.method = method
        self.requestTarget = requestTarget
        self.hostHeader = hostHeader
        self.credentials = credentials
        self.newConnection = newConnection
    }

    init(target: DoctorTarget, credentials: Credentials, newConnection: Bool = false) {
        self.init(
            method: target.isTLS ? "CONNECT" : "GET",
            requestTarget: target.requestTarget,
            hostHeader: target.hostHeader,
            credentials: credentials,
            newConnection: newConnection
        )
    }
}

/// One thing the probe does on the network.
enum ProbeAction: Sendable, Equatable {
    /// Opens a connection to the proxy (with TLS for an https:// proxy); it becomes the current one.
    case open
    /// Sends a request and waits for the whole response.
    case send(ProbeRequest)
    /// A TLS handshake with `serverName` through the tunnel the last CONNECT opened; the tunnel
    /// is closed after it. Fails with ``ProbeError/Kind/closed`` when that tunnel is gone.
    case handshake(serverName: String)
}

/// A response as diagnosis needs it: the status and only the fields it reads. Neither the body
/// nor any other field is kept.
struct RecordedResponse: Sendable, Equatable {
    static let keptFields: Set<String> = [
        "proxy-authenticate", "www-authenticate", "proxy-status", "x-squid-error", "via",
    ]

    struct Field: Sendable, Equatable {
        var name: String
        var value: String
    }

    var status: Int
    var reason: String
    var fields: [Field]

    init(status: Int, reason: String = "", fields: [(String, String)] = []) {
        self.status = status
        self.reason = reason
        self.fields = fields.map { Field(name: $0.0, value: $0.1) }
    }

    init(_ response: ProbeResponse) {
        self.status = response.status
        self.reason = response.reason
        self.fields = response.headers.filter { Self.keptFields.contains($0.name.lowercased()) }
            .map { Field(name: $0.name, value: $0.value) }
    }

    func values(_ name: String) -> [String] {
        self.fields.filter { $0.name.lowercased() == name.lowercased() }.map(\.value)
    }
}

/// What came of one ``ProbeAction``.
enum ProbeOutcome: Sendable {
    case opened(ProbeConnection.Timings, tlsMs: Double?)
    case response(RecordedResponse)
    case handshake
    case failed(ProbeError)
}

/// One action and its outcome, with the time it took (connects and handshakes included).
struct ProbeRecord: Sendable {
    var action: ProbeAction
    var outcome: ProbeOutcome
    var elapsedMs: Double
}

/// Everything the probe did and saw, in order: the only input of ``Diagnosis`` besides the
/// ``DoctorSetup``. It holds no password and no `Authorization` value.
struct ProbeTranscript: Sendable {
    var records: [ProbeRecord] = []

    mutating func append(_ action: ProbeAction, _ outcome: ProbeOutcome, ms: Double = 0) {
        self.records.append(ProbeRecord(action: action, outcome: outcome, elapsedMs: ms))
    }
}
