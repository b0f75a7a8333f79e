/// Why a request did not pass the proxy's authentication gate.
///
/// The same reasons feed the client's 407 body, the `Proxy-Status` header, logs and (later)
/// metrics, so their ``token`` values are stable identifiers, never free text.
public enum AuthFailureReason: String, Sendable, Hashable, CaseIterable {
    /// No `Proxy-Authorization` header at all.
    case missingCredentials = "missing-credentials"
    /// A `Proxy-Authorization` header with a scheme this proxy does not offer.
    case unsupportedScheme = "unsupported-scheme"
    /// The scheme is right but the credentials cannot be decoded.
    case malformedCredentials = "malformed-credentials"
    /// Unknown user or wrong password: deliberately one reason so the client cannot tell them apart.
    case invalidCredentials = "invalid-credentials"
    /// The right password of a credential that has expired, was disabled, or was rotated and its
    /// grace has passed. One reason towards the client on purpose: it is only ever given to
    /// someone who knew the password, and the operator's log names which one it was.
    case credentialsNoLongerValid = "credentials-no-longer-valid"
    /// A right Digest answer to a nonce that has expired, was not issued here, or whose count
    /// was already used: the 407 carries a new nonce with `stale=true`, and clients retry with
    /// it without asking the user (RFC 7616 §3.3).
    case staleNonce = "stale-nonce"
    /// Too many failed logins from this client address: it is locked out for a while.
    case lockedOut = "locked-out"

    // Negotiate (Kerberos) and NTLM.

    /// GSSAPI refused the token for another reason (its major and minor status are logged).
    case gssFailure = "gss-failure"
    /// The client's clock (Kerberos authenticator, NTLMv2 timestamp) is too far from the proxy's.
    case clockSkew = "clock-skew"
    /// The ticket is for a key the proxy's keytab does not hold (a stale or wrong keytab).
    case noKeytabKey = "no-keytab-key"
    /// A Negotiate token of a mechanism the proxy does not accept (NTLM inside Negotiate when
    /// NTLM is not offered, or not Kerberos at all).
    case unsupportedMechanism = "unsupported-mechanism"
    /// An NTLMv1 or LM-only answer: crackable offline, refused whatever the password.
    case ntlmV1Refused = "ntlm-v1-refused"
    /// An NTLM AUTHENTICATE with no user or no answer.
    case anonymousRefused = "anonymous-refused"
    /// An NTLM message integrity code that does not match the handshake.
    case badMIC = "bad-mic"
    /// An NTLM AUTHENTICATE too long after its CHALLENGE.
    case staleHandshake = "stale-handshake"
    /// An NTLM message out of order on this connection (an AUTHENTICATE without a CHALLENGE).
    case unexpectedMessage = "unexpected-message"
    /// Too many Negotiate/NTLM handshakes are in progress on the proxy: 503, try again.
    case tooManyHandshakes = "too-many-handshakes"
    /// Basic on a plain-text connection of a proxy that takes Basic only inside TLS
    /// (`--basic-requires-tls`): the password was not checked.
    case basicRequiresTLS = "basic-requires-tls"

    /// A stable identifier for headers, logs and metrics labels.
    public var token: String { self.rawValue }
}

/// The detail behind a ``AuthFailureReason``: what the client sent wrong, in words it can act on.
///
/// Never contains any part of the submitted credentials.
public struct AuthFailure: Error, Sendable, Hashable {
    public var reason: AuthFailureReason
    /// A sentence for the client (407 body) and the operator's log.
    public var explanation: String
    /// The scheme the client used, if any (lower-cased); useful in logs, never a secret.
    public var presentedScheme: String?

    public init(reason: AuthFailureReason, explanation: String, presentedScheme: String? = nil) {
        self.reason = reason
        self.explanation = explanation
        self.presentedScheme = presentedScheme
    }
}
