import Foundation

/// Authentication schemes the gate can offer, in challenge order.
public enum AuthScheme: String, Sendable, Hashable, CaseIterable {
    case basic
    case digest
    /// RFC 4559: Kerberos through SPNEGO (or raw Kerberos), bound to the connection.
    case negotiate
    /// MS-NLMP, NTLMv2 only, bound to the connection.
    case ntlm
    /// A client certificate on a TLS listener (`--tls-client-ca`): no header, no challenge.
    case certificate
    /// RFC 6750's `Bearer` with a short-lived token (``AccessToken``) of the user store.
    case bearer

    /// Authenticates the connection rather than each request: several legs on one connection,
    /// then later requests on it pass without credentials.
    public var isConnectionBound: Bool { self == .negotiate || self == .ntlm }

    /// Whether a 407 can ask for it (a certificate is asked for by the TLS handshake).
    public var isChallenged: Bool { self != .certificate }

    /// The scheme as it is written in a header.
    public var headerName: String {
        switch self {
        case .basic: return "Basic"
        case .digest: return "Digest"
        case .negotiate: return "Negotiate"
        case .ntlm: return "NTLM"
        case .certificate: return "Certificate"
        case .bearer: return "Bearer"
        }
    }
}

/// The gate's verdict on a request's `Proxy-Authorization` fields, before any store is asked.
public enum GateDecision: Sendable, Hashable {
    /// Well-formed Basic credentials that a credential store must now verify.
    case verifyBasic(BasicCredentials)
    /// A Bearer token: its user (read from the token) and the token as the password, for the
    /// store to verify as it verifies a token sent as a Basic password.
    case verifyBearer(BasicCredentials)
    /// Well-formed Digest credentials: the proxy must now check them against the user's secrets.
    case verifyDigest(DigestAuthorization)
    /// A Negotiate token (decoded from base64) for the Kerberos acceptor.
    case negotiate([UInt8])
    /// An NTLM message (decoded), sent as `NTLM …` or, by Windows clients without Kerberos,
    /// inside `Negotiate …`: `wireScheme` is the one the answer's challenge must use.
    case ntlm([UInt8], wireScheme: AuthScheme)
    /// Unusable credentials: answer 407 with this failure.
    case reject(AuthFailure)
}

/// Decides, from the request's `Proxy-Authorization` field values alone, whether credentials are
/// usable and for which scheme; renders the challenges of the 407 response.
///
/// Pure logic: no I/O, no clock. The channel handler asks it, then asks a store.
public struct ProxyAuthGate: Sendable {
    public var realm: String
    public var schemes: [AuthScheme]
    /// Basic is offered on the proxy's TLS connections but not on this one: a Basic answer is
    /// refused unchecked, with a 407 that names the https:// address (`--basic-requires-tls`).
    public var basicOnlyOverTLS = false

    public init(realm: String, schemes: [AuthScheme] = [.basic]) {
        self.realm = realm
        self.schemes = schemes
    }

    /// This gate for a plain-text connection when Basic is accepted only inside TLS.
    public func withoutBasic() -> ProxyAuthGate {
        var gate = self
        gate.schemes.removeAll { $0 == .basic }
        gate.basicOnlyOverTLS = self.schemes.contains(.basic)
        return gate
    }

    /// The `Proxy-Authenticate` field values of a 407, in the order of ``schemes``: Basic as one
    /// field, and `digest`, the Digest field values of this 407 made by a ``DigestAuthority``
    /// (see ``DigestAuthority/Settings/oneField`` for their layout).
    public func challenges(digest: [String] = []) -> [String] {
        self.schemes.flatMap { scheme -> [String] in
            switch scheme {
            case .basic:
                return ["Basic realm=\(Self.quoted(self.realm)), charset=\"UTF-8\""]
            case .digest:
                return digest
            case .negotiate, .ntlm:
                return [scheme.headerName]
            case .bearer:
                return ["Bearer realm=\(Self.quoted(self.realm))"]
            case .certificate:
                return []
            }
        }
    }

    /// Evaluates the `Proxy-Authorization` field values of one request.
    public func evaluate(proxyAuthorization values: [String]) -> GateDecision {
        guard let first = values.first else {
            return .reject(
                AuthFailure(
                    reason: .missingCredentials,
                    explanation:
                        "no Proxy-Authorization header was sent; this proxy requires \(self.offeredNames) credentials"
                )
            )
        }
        guard values.count == 1 else {
            return .reject(
                AuthFailure(
                    reason: .malformedCredentials,
                    explanation: "more than one Proxy-Authorization header was sent; send exactly one"
                )
            )
        }
        guard let credentials = Credentials(fieldValue: first) else {
            return .reject(
                AuthFailure(
                    reason: .malformedCredentials,
                    explanation: "the Proxy-Authorization header does not start with an authentication scheme"
                )
            )
        }
        if credentials.schemeIs(AuthScheme.basic.rawValue), self.basicOnlyOverTLS {
            return .reject(
                AuthFailure(
                    reason: .basicRequiresTLS,
                    explanation:
                        "this proxy takes Basic credentials only over TLS, where the password is not readable on the way: use its https:// address (an https:// proxy URL)\(self.schemes.isEmpty ? "" : ", or \(self.offeredNames)")",
                    presentedScheme: AuthScheme.basic.rawValue
                )
            )
        }
        if credentials.schemeIs(AuthScheme.basic.rawValue), self.schemes.contains(.basic) {
            switch BasicCredentials.decode(token68: credentials.parameters) {
            case .success(let basic):
                return .verifyBasic(basic)
            case .failure(let failure):
                return .reject(failure)
            }
        }
        if credentials.schemeIs(AuthScheme.bearer.rawValue), self.schemes.contains(.bearer) {
            let value = credentials.parameters.trimmingCharacters(in: .whitespaces)
            guard let token = AccessToken.peek(value) else {
                return .reject(
                    AuthFailure(
                        reason: .malformedCredentials,
                        explanation:
                            "the Bearer value is not a token of this proxy (portcullis tokens issue makes one)",
                        presentedScheme: AuthScheme.bearer.rawValue
                    )
                )
            }
            return .verifyBearer(BasicCredentials(user: token.user, password: value))
        }
        if credentials.schemeIs(AuthScheme.digest.rawValue),
            let decision = self.evaluateDigest(fieldValue: Array(first.utf8))
        {
            return decision
        }
        for scheme in [AuthScheme.negotiate, .ntlm] where credentials.schemeIs(scheme.rawValue) {
            if let decision = self.evaluateConnectionBound(scheme, token68: credentials.parameters) {
                return decision
            }
        }
        let scheme = Self.knownScheme(credentials.scheme)
        return .reject(
            AuthFailure(
                reason: .unsupportedScheme,
                explanation:
                    "the Proxy-Authorization header uses \(scheme.map { "the \(Self.displayName($0)) scheme" } ?? "an unrecognized scheme"); this proxy accepts \(self.offeredNames)",
                presentedScheme: scheme ?? "other"
            )
        )
    }

    /// The verdict on the one `Proxy-Authorization` field of a request when it uses the Digest
    /// scheme, from its bytes (the handler's path: no String is made of the answer); `nil` when
    /// Digest is not offered, for ``evaluate(proxyAuthorization:)`` to word the refusal.
    public func evaluateDigest(fieldValue: consuming [UInt8]) -> GateDecision? {
        guard self.schemes.contains(.digest) else { return nil }
        switch DigestAuthorization.parse(bytes: fieldValue) {
        case .success(let digest):
            return .verifyDigest(digest)
        case .failure(let failure):
            return .reject(failure)
        }
    }

    /// Negotiate and NTLM: the token's bytes, routed by what they carry; `nil` when the scheme is
    /// not offered (and no NTLM rides in it), for ``evaluate(proxyAuthorization:)`` to word the refusal.
    func evaluateConnectionBound(_ scheme: AuthScheme, token68: Substring) -> GateDecision? {
        guard let bytes = Self.decodeBase64(token68) else {
            guard self.schemes.contains(scheme) else { return nil }
            return .reject(
                AuthFailure(
                    reason: .malformedCredentials,
                    explanation: "the \(scheme.headerName) token is missing or not valid base64",
                    presentedScheme: scheme.rawValue
                )
            )
        }
        let carriesNTLM = bytes.starts(with: Self.ntlmSignature)
        switch (scheme, carriesNTLM) {
        case (.ntlm, _), (.negotiate, true):
            guard self.schemes.contains(.ntlm) else {
                guard scheme == .negotiate, self.schemes.contains(.negotiate) else { return nil }
                return .reject(
                    AuthFailure(
                        reason: .unsupportedMechanism,
                        explanation:
                            "the Negotiate token carries NTLM, which this proxy does not offer; the client has no Kerberos ticket for the proxy (run kinit, and name the proxy by its host name, not its address)",
                        presentedScheme: scheme.rawValue
                    )
                )
            }
            return .ntlm(bytes, wireScheme: scheme)
        default:
            guard self.schemes.contains(.negotiate) else { return nil }
            return .negotiate(bytes)
        }
    }

    /// Every NTLM message starts so (MS-NLMP §2.2).
    static let ntlmSignature: [UInt8] = Array("NTLMSSP\0".utf8)

    /// Strict base64 (padding required, canonical), as clients send these tokens; `nil` when empty.
    static func decodeBase64(_ text: Substring) -> [UInt8]? {
        guard !text.isEmpty, let data = Data(base64Encoded: String(text)), !data.isEmpty,
            data.base64EncodedString() == text
        else { return nil }
        return Array(data)
    }

    private var offeredNames: String {
        self.schemes.map { $0 == .certificate ? "a client certificate (over TLS)" : $0.headerName }
            .joined(separator: " or ")
    }

    /// Schemes of IANA's HTTP Authentication Scheme registry (and NTLM), lower-cased. Only these
    /// names are ever echoed, logged or counted: whatever else stands where a scheme should is
    /// client input that may be a secret pasted in the wrong place (a bare token, a password).
    static let registeredSchemes: Set<String> = [
        "basic", "bearer", "concealed", "digest", "dpop", "gnap", "hoba", "mutual", "negotiate", "ntlm",
        "oauth", "privatetoken", "scram-sha-1", "scram-sha-256", "vapid", "aws4-hmac-sha256",
    ]

    /// The lower-cased scheme name if it is a registered one, else `nil`.
    public static func knownScheme(_ scheme: some StringProtocol) -> String? {
        guard scheme.utf8.count <= 20 else { return nil }
        let lower = scheme.lowercased()
        return Self.registeredSchemes.contains(lower) ? lower : nil
    }

    private static func displayName(_ lowercasedScheme: String) -> String {
        if let scheme = AuthScheme(rawValue: lowercasedScheme) { return scheme.headerName }
        return lowercasedScheme == "bearer" ? "Bearer" : lowercasedScheme
    }

    /// quoted-string (RFC 9110 §5.6.4) with `"` and `\` escaped.
    static func quoted(_ s: String) -> String {
        var s = s
        var out: [UInt8] = []
        s.withUTF8 { Self.appendQuoted($0, to: &out) }
        return String(decoding: out, as: UTF8.self)
    }

    /// ``quoted(_:)`` over bytes, appended to `out`. Byte-wise is exact: `"` and `\` are ASCII
    /// and never part of a multi-byte UTF-8 sequence.
    static func appendQuoted(_ bytes: UnsafeBufferPointer<UInt8>, to out: inout [UInt8]) {
        out.reserveCapacity(out.count + bytes.count + 2)
        out.append(UInt8(ascii: "\""))
        for c in bytes {
            if c == UInt8(ascii: "\"") || c == UInt8(ascii: "\\") { out.append(UInt8(ascii: "\\")) }
            out.append(c)
        }
        out.append(UInt8(ascii: "\""))
    }
}
