import NIOCore
import PortcullisAuth

// After the credential (or without one, when authentication is off): the access rules, then
// the body limit and the per-user limits.
extension GateStateMachine {
    /// The credential is right: on to the access rules and the limits.
    mutating func accepted(
        _ request: Request,
        user: String,
        otherName: String? = nil,
        scheme: AuthScheme,
        token: String? = nil,
        validFor: TimeAmount? = nil,
        authenticationInfo: SuccessHeader?,
        _ environment: some GateEnvironment
    ) -> Action {
        self.digestFailuresInARow = 0
        environment.metrics.authOutcome(scheme: scheme, reason: "ok")
        environment.loginSucceeded(for: Self.loopClient(request))
        var record = Record(user: user, otherName: otherName, scheme: scheme, result: "ok")
        record.token = token
        // Tokens end by design, within a day by default: no hint for them.
        if token == nil, let validFor, validFor <= environment.expiryWarning {
            record.expiresIn = max(0, Int(validFor.nanoseconds / 1_000_000_000))
        }
        return self.authorized(request, record, authenticationInfo: authenticationInfo, environment)
    }

    struct GroupsWait {
        var id: CheckID
        var request: Request
        var record: Record
        var authenticationInfo: SuccessHeader?
    }

    /// The access rules, then the limits, with the record of how the request authenticated.
    /// A user whose directory groups the rules need and nobody knows yet (a Kerberos or NTLM
    /// identity: a Basic login through the directory brings its groups) waits for them first.
    mutating func authorized(
        _ request: Request,
        _ record: Record,
        authenticationInfo: SuccessHeader?,
        _ environment: some GateEnvironment
    ) -> Action {
        if let user = record.user, environment.directoryGroupsNeeded(for: user) {
            let id = self.newCheckID()
            self.transition(
                to: .lookingUpGroups(
                    GroupsWait(id: id, request: request, record: record, authenticationInfo: authenticationInfo)
                )
            )
            // A principal is looked up by its local name, the directory's spelling.
            return .lookUpGroups(id, name: record.otherName ?? user, user: user)
        }
        return Self.decided(request, record, authenticationInfo: authenticationInfo, environment)
    }

    /// The directory answered (or not: then the user has no directory groups for now).
    mutating func groupsFound(_ id: CheckID, in environment: some GateEnvironment) -> Action {
        guard case .lookingUpGroups(let wait) = self.state, wait.id == id else { return .none }
        self.transition(to: .idle)
        return Self.decided(wait.request, wait.record, authenticationInfo: wait.authenticationInfo, environment)
    }

    private static func decided(
        _ request: Request,
        _ record: Record,
        authenticationInfo: SuccessHeader?,
        _ environment: some GateEnvironment
    ) -> Action {
        if let refusal = Self.policyRefusal(request, record, environment)
            ?? Self.limitRefusal(request, record, environment)
        {
            return refusal
        }
        return .allow(record, authenticationInfo: authenticationInfo)
    }

    /// The 403 for a request the access rules do not allow, if they do not.
    private static func policyRefusal(
        _ request: Request,
        _ record: Record,
        _ environment: some GateEnvironment
    ) -> Action? {
        let policy = environment.policy
        guard !policy.rules.isEmpty else { return nil }
        let host: String
        let port: Int
        switch request.target {
        case .authority(let authority), .absolute(let authority, _):
            host = authority.host
            port = authority.port
        default:
            return nil
        }
        let method = String(decoding: request.head.methodBytes, as: UTF8.self)
        let groups = record.user.map(environment.directoryGroups(of:)) ?? []
        guard
            case .denied(let rule) = policy.decide(
                user: record.user,
                otherName: record.otherName,
                groups: groups,
                host: host,
                port: port,
                method: method
            )
        else { return nil }
        let why = rule.map { "rule \($0)" } ?? "no rule allows this request"
        environment.metrics.refused("policy")
        if environment.mayLog(.policyDenial) {
            environment.log(
                .info,
                "request denied by policy",
                metadata: [
                    "client": "\(request.clientAddress)", "user": "\(record.user ?? "-")", "rule": "\(rule ?? "-")",
                ]
            )
        }
        let response = ProxyResponse(
            status: .forbidden,
            proxyError: "http_request_denied",
            details: "policy: \(why)",
            message:
                "\(method) to \(host):\(port) is not allowed for \(record.user.map { "user \"\($0)\"" } ?? "this client") (\(why))."
        )
        return .refuse(record, response, close: false)
    }

    /// The 413 or 429 for a request over the body limit or a per-user limit, if it is.
    private static func limitRefusal(
        _ request: Request,
        _ record: Record,
        _ environment: some GateEnvironment
    ) -> Action? {
        if let limit = environment.maximumRequestBody, case .length(let n) = request.head.framing, n > limit {
            environment.metrics.refused("request body too large")
            return .refuse(record, .bodyTooLarge(limit: limit), close: true)
        }
        guard let user = record.user else { return nil }
        let verdict = environment.admit(user: user, address: request.clientAddress)
        guard verdict != .allowed else { return nil }
        environment.metrics.refused(verdict.details)
        if environment.mayLog(.userLimit) {
            environment.log(
                .info,
                "request over a user limit",
                metadata: ["client": "\(request.clientAddress)", "user": "\(user)", "limit": "\(verdict.details)"]
            )
        }
        let response = ProxyResponse(
            status: .tooManyRequests,
            proxyError: nil,
            details: verdict.details,
            message: verdict.message
        )
        return .refuse(record, response, close: false)
    }
}
