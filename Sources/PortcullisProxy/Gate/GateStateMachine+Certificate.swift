import PortcullisAuth
import PortcullisStores

// A client certificate (`--auth certificate`): the TLS handshake verified it against
// `--tls-client-ca` and the handler read the user's name from it; here the name becomes the
// connection's user once the store says the account exists and is in good standing (unless
// `--cert-users-implicit`). The connection stays bound to it until the store changes or the
// account's expiry, like an NTLM one.
extension GateStateMachine {
    struct AccountWait {
        var id: CheckID
        var request: Request
        var name: String
    }

    mutating func startCertificate(_ request: Request, name: String, in environment: some GateEnvironment) -> Action {
        if self.boundIdentity?.scheme == .certificate, let action = self.continueBound(request, in: environment) {
            return action
        }
        if environment.certificateUsersImplicit {
            self.boundIdentity = BoundIdentity(user: name, scheme: .certificate, generation: nil, validUntil: nil)
            return self.accepted(request, user: name, scheme: .certificate, authenticationInfo: nil, environment)
        }
        let id = self.newCheckID()
        self.transition(to: .lookingUpAccount(AccountWait(id: id, request: request, name: name)))
        return .lookUpAccount(id, name: name)
    }

    /// The store's answer for the account a certificate names.
    mutating func accountFound(_ id: CheckID, lookup: AccountLookup, in environment: some GateEnvironment) -> Action {
        guard case .lookingUpAccount(let wait) = self.state, wait.id == id else { return .none }
        self.transition(to: .idle)
        switch lookup {
        case .found(let user, let standing):
            switch standing.outcome(user: user, matchedCurrent: true, now: environment.currentDate) {
            case .accepted(let user, let validFor, _):
                return self.bindStoreUser(
                    wait.request,
                    user: user,
                    scheme: .certificate,
                    validFor: validFor,
                    environment
                )
            case .rejected(let reason):
                return self.noLongerValid(wait.request, reason: reason, user: user, scheme: .certificate, environment)
            }
        case .unknownUser:
            // Not a guess (the CA vouched for the certificate): nothing counts against the
            // address; the operator's log says what to do.
            return self.reject(
                wait.request,
                AuthFailure(
                    reason: .invalidCredentials,
                    explanation:
                        "the client certificate names a user this proxy does not know; ask the proxy's administrator to add it",
                    presentedScheme: AuthScheme.certificate.rawValue
                ),
                user: wait.name,
                counted: (delay: .zero, lockedOut: false),
                logDetail: [
                    "user": "\(wait.name)",
                    "detail": "no such user (add it with users add, or run with --cert-users-implicit)",
                ],
                environment
            )
        case .unavailable:
            return Self.storeUnavailable(wait.request, scheme: .certificate, environment)
        }
    }
}
