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

/// A failed NTLM handshake: the reason, a sentence the client and the operator can act on
/// (never any part of the credentials), and who the client claimed to be when that is known.
public struct NTLMRefusal: Error, Sendable, Hashable {
    public var reason: AuthFailureReason
    public var explanation: String
    public var claimed: NTLMIdentity?

    public init(_ reason: AuthFailureReason, _ explanation: String, claimed: NTLMIdentity? = nil) {
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
