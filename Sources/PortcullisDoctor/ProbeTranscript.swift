import PortcullisAuth
import PortcullisKerberos

/// A request doctor asks the probe to send. It names the credentials to answer with but never
/// holds a password or an `Authorization` value: only the probe, which keeps the password,
/// computes the `Proxy-Authorization` field, so a transcript can be kept, printed or compared.
struct ProbeRequest: Sendable, Equatable {
    enum Credentials: Sendable, Equatable {
        case none
        case basic(user: String)
        /// A Digest answer to `challenge` with this nonce count; the probe picks the cnonce.
        case digest(user: String, challenge: DigestChallenge, nonceCount: Int)
        /// NTLM's first message (it names nobody).
        case ntlmNegotiate
        /// NTLMv2's answer to the proxy's CHALLENGE message; the probe picks the client
        /// challenge and the session key.
        case ntlmAuthenticate(user: String, domain: String, challenge: [UInt8])
        /// The token the last ``ProbeAction/kerberos(host:token:)`` made, which only the probe holds.
        case negotiate
    }

    /// Which connection a request goes on.
    enum Connection: Sendable, Equatable {
        /// The current one while the proxy keeps it open, else a new one.
        case reuse
        /// A new one (a CONNECT that opens a tunnel, or the first leg of its handshake).
        case new
        /// The current one or none: a later leg of a handshake that authenticates the
        /// connection (NTLM, Negotiate). Fails with ``ProbeError/Kind/closed`` when it is gone.
        case same
    }

    /// `GET` (absolute-form) for an http:// target, `CONNECT` for an https:// one.
    var method: String
    var requestTarget: String
    var hostHeader: String
    var credentials: Credentials
    var connection: Connection

    /// Whether the request needs a connection of its own.
    var newConnection: Bool { self.connection == .new }

    init(method: String, requestTarget: String, hostHeader: String, credentials: Credentials, connection: Connection) {
        self.method = method
        self.requestTarget = requestTarget
        self.hostHeader = hostHeader
        self.credentials = credentials
        self.connection = connection
    }

    init(target: DoctorTarget, credentials: Credentials, connection: Connection = .reuse) {
        self.init(
            method: target.isTLS ? "CONNECT" : "GET",
            requestTarget: target.requestTarget,
            hostHeader: target.hostHeader,
            credentials: credentials,
            connection: connection
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
    /// A leg of Kerberos (SPNEGO) for `HTTP@host` from the caller's ticket cache: `token` `nil`
    /// starts a new handshake, else it is the proxy's last token. The token made stays in the
    /// probe for the next ``ProbeRequest/Credentials/negotiate`` request.
    case kerberos(host: String, token: [UInt8]?)
}

/// What the Kerberos initiator made of a ``ProbeAction/kerberos(host:token:)`` (its own token
/// is not recorded: it is a credential).
enum KerberosOutcome: Sendable, Equatable {
    /// A token to send, from the ticket of `client`; `complete`: the handshake needs nothing
    /// more from the proxy.
    case token(client: String, complete: Bool)
    /// The handshake is complete with nothing to send: the proxy's final token verified.
    case established(client: String)
    case failed(NegotiateInitiatorFailure)
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
    case kerberos(KerberosOutcome)
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
