/// Who a client says it is in its AUTHENTICATE message, decoded (not case-folded: a store
/// decides how it compares names).
public struct NTLMIdentity: Sendable, Hashable {
    public var user: String
    public var domain: String
    public var workstation: String

    public init(user: String, domain: String, workstation: String = "") {
        self.user = user
        self.domain = domain
        self.workstation = workstation
    }
}

/// Why an NTLM handshake failed. The raw values are stable tokens for the 407 body,
/// `Proxy-Status`, logs and metrics; the two that ``AuthFailureReason`` already has are spelled
/// the same.
public enum NTLMRefusalReason: String, Sendable, Hashable, CaseIterable {
    /// Unknown user or wrong password (NTProofStr does not match): one reason for both, as for
    /// Basic, so a client cannot probe for user names.
    case invalidCredentials = "invalid-credentials"
    /// An NTLMv1 response (24 bytes) or an LM response alone: both fall to offline cracking
    /// of a captured exchange, so they are refused whatever the password.
    case ntlmV1Refused = "ntlm-v1-refused"
    /// No user name or no response: anonymous NTLM would authenticate nobody.
    case anonymousRefused = "anonymous-refused"
    /// The NTLMv2 response's timestamp is too far from the proxy's clock.
    case clockSkew = "clock-skew"
    /// The client announced a MIC (MsvAvFlags) and it does not match the three messages: they
    /// were altered on the way, or the client derived its session key differently.
    case badMIC = "bad-mic"
    /// Not a well-formed message.
    case malformedCredentials = "malformed-credentials"
    /// The AUTHENTICATE came later than the handshake's lifetime after its CHALLENGE.
    case staleHandshake = "stale-handshake"
    /// A message that does not fit where the handshake stands: an AUTHENTICATE with no
    /// CHALLENGE on this connection (NTLM binds its three messages to one connection), or a
    /// CHALLENGE sent by the client.
    case unexpectedMessage = "unexpected-message"

    public var token: String { self.rawValue }
}

/// A failed NTLM handshake: the reason, a sentence the client and the operator can act on
/// (never any part of the credentials), and who the client claimed to be when that is known.
public struct NTLMRefusal: Error, Sendable, Hashable {
    public var reason: NTLMRefusalReason
    public var explanation: String
    public var claimed: NTLMIdentity?

    public init(_ reason: NTLMRefusalReason, _ explanation: String, claimed: NTLMIdentity? = nil) {
        self.reason = reason
        self.explanation = explanation
        self.claimed = claimed
    }

    static func malformed(_ error: NTLMMessageError) -> NTLMRefusal {
        NTLMRefusal(.malformedCredentials, error.message)
    }

    public static func invalidCredentials(_ claimed: NTLMIdentity) -> NTLMRefusal {
        NTLMRefusal(.invalidCredentials, "unknown user or wrong password", claimed: claimed)
    }
}
