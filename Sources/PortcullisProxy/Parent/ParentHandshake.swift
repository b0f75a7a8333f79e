import Foundation
import NIOCore
import PortcullisAuth

/// What the proxy knows of a parent's authentication from earlier requests: the scheme that
/// worked, so the next request starts with it (Basic pre-emptively, NTLM with its NEGOTIATE,
/// Digest with the last challenge and the next nonce count).
enum ParentAuthMemory: Sendable, Equatable {
    case basic
    case digest(DigestChallenge, nonceCount: Int)
    case ntlm
    case negotiate
}

/// Why a parent's answer ended the request (the client gets a 502 that says so; never the
/// parent's 407, which would make the client send its own secret to the wrong hop).
enum ParentAuthFailure: Error, Equatable, Sendable {
    /// The parent asks for credentials and none are configured.
    case credentialsMissing(offered: [String])
    /// None of the schemes the parent offers is allowed (`--parent-auth`) and implemented.
    case noCommonScheme(offered: [String])
    /// The parent refused the credentials sent with `scheme`.
    case credentialsRefused(ParentAuthScheme)
    /// The parent's challenge could not be answered (no nonce, an unknown Digest algorithm or
    /// qop, an NTLM CHALLENGE that does not parse).
    case malformedChallenge(ParentAuthScheme)
    /// A connection-bound handshake (NTLM) lost its connection half-way.
    case connectionClosedMidHandshake
    /// The parent wants Negotiate alone and this machine has no Kerberos ticket for it (the
    /// reason from GSSAPI: no-ticket, ticket-expired, no-service-principal, …).
    case negotiateUnavailable(String)

    /// For the client's 502 and the log: never a credential, only what went wrong.
    var details: String {
        switch self {
        case .credentialsMissing(let offered):
            return "the parent asks for credentials (\(offered.joined(separator: ", "))) and none are configured"
        case .noCommonScheme(let offered):
            return
                "the parent offers \(offered.isEmpty ? "no scheme" : offered.joined(separator: ", ")), none of which --parent-auth allows"
        case .credentialsRefused(let scheme):
            return "the parent refused the proxy's \(scheme.token) credentials"
        case .malformedChallenge(let scheme):
            return "the parent's \(scheme.token) challenge could not be answered"
        case .connectionClosedMidHandshake:
            return "the parent closed the connection in the middle of an NTLM handshake"
        case .negotiateUnavailable(let reason):
            return "the parent asks for Negotiate (Kerberos) and no ticket could be had for it (\(reason))"
        }
    }
}

/// The client side of one request's exchange with an authenticating parent: which
/// `Proxy-Authorization` to send first, and what to do with each answer (RFC 9110 §11.7.1;
/// RFC 7617 Basic, RFC 7616 Digest, MS-NLMP NTLM over HTTP). Pure: the caller sends, reads
/// the parent's status and challenges, and carries out the returned action; randomness and
/// time come in from outside.
///
/// A request takes at most three sends: NTLM's NEGOTIATE and AUTHENTICATE (after an unanswered
/// first try), or Digest's pre-emptive try, a stale nonce's retry and a fresh challenge's.
struct ParentHandshake {
    enum Action: Equatable {
        /// Send the request (again) with this `Proxy-Authorization` (none: nil), on the same
        /// connection.
        case send(authorization: String?)
        /// The parent closed the connection after its 407: send again on a new one.
        case sendOnNewConnection(authorization: String?)
        /// Make the next Negotiate token (GSSAPI blocks: off the event loop) from the parent's
        /// `input` (nil: the first token), then call ``negotiateStepped(_:)``.
        case negotiate(input: [UInt8]?)
        /// The answer is not a 407: relay it (a CONNECT's 2xx opens the tunnel).
        case done
        case fail(ParentAuthFailure)
    }

    struct Credentials: Equatable {
        let user: String
        let password: String
        /// The Basic answer, made once (it is sent with every request to a Basic parent).
        let basic: String

        init(user: String, password: String) {
            self.user = user
            self.password = password
            self.basic = "Basic " + Data("\(user):\(password)".utf8).base64EncodedString()
        }
    }

    /// Randomness and time for the client's nonces (Digest's cnonce, NTLM's client challenge
    /// and session key, and the NTLM timestamp when the CHALLENGE carries none).
    struct Entropy: Sendable {
        var bytes: @Sendable (Int) -> [UInt8]
        var now: @Sendable () -> Date

        static let system = Entropy(
            bytes: { count in (0..<count).map { _ in UInt8.random(in: .min ... .max) } },
            now: { Date() }
        )
    }

    private enum State {
        case initial
        /// A request went out carrying `scheme` (nil: no credentials).
        case sent(scheme: ParentAuthScheme?)
        /// NTLM's NEGOTIATE went out; its CHALLENGE is due.
        case ntlmNegotiateSent(negotiate: [UInt8])
        /// A Negotiate token is being made; `reusable` says where it goes.
        case makingToken(reusable: Bool)
        case finished
    }

    let method: String
    /// The request target the Digest response covers (`host:port` for a CONNECT, the absolute
    /// URI otherwise).
    let uri: String
    let credentials: Credentials?
    let allowed: Set<ParentAuthScheme>
    private var state = State.initial
    private var sends = 0
    private var staleRetried = false
    /// Schemes tried and given up on for this request (Negotiate without a ticket).
    private var excluded: Set<ParentAuthScheme> = []
    /// The challenges of the last 407, to choose again from when a scheme cannot be used.
    private var lastChallenges: [Challenge] = []
    private let entropy: Entropy

    /// What to remember for this parent once the exchange is over (nil: nothing learnt).
    private(set) var memory: ParentAuthMemory?

    init(
        method: String,
        uri: String,
        credentials: Credentials?,
        allowed: Set<ParentAuthScheme>,
        memory: ParentAuthMemory?,
        entropy: Entropy = .system
    ) {
        self.method = method
        self.uri = uri
        self.credentials = credentials
        self.allowed = allowed
        self.memory = memory
        self.entropy = entropy
    }

    static let maximumSends = 3

    /// The first send: pre-emptive with what worked last time.
    mutating func start() -> Action {
        guard case .initial = self.state else { return .fail(.connectionClosedMidHandshake) }
        if self.memory == .negotiate, self.allowed.contains(.negotiate) {
            self.state = .makingToken(reusable: true)
            return .negotiate(input: nil)
        }
        guard let credentials, let memory, memory != .negotiate, self.allowed.contains(Self.scheme(of: memory)) else {
            self.state = .sent(scheme: nil)
            return self.send(nil)
        }
        switch memory {
        case .basic:
            self.state = .sent(scheme: .basic)
            return self.send(Self.basic(credentials))
        case .digest(let challenge, let count):
            guard let authorization = self.digest(challenge, nonceCount: count, credentials) else {
                self.memory = nil
                self.state = .sent(scheme: nil)
                return self.send(nil)
            }
            self.memory = .digest(challenge, nonceCount: count + 1)
            self.state = .sent(scheme: .digest)
            return self.send(authorization)
        case .ntlm:
            let negotiate = self.ntlmClient(credentials).negotiate()
            self.state = .ntlmNegotiateSent(negotiate: negotiate)
            return self.send("NTLM " + Data(negotiate).base64EncodedString())
        case .negotiate:
            self.state = .sent(scheme: nil)
            return self.send(nil)
        }
    }

    /// What ``Action/negotiate(input:)`` came to: the token to send, or why none could be made
    /// (then the next strongest scheme the parent offered is used, if any).
    enum NegotiateResult: Equatable {
        case token([UInt8])
        case failed(reason: String)
    }

    mutating func negotiateStepped(_ result: NegotiateResult) -> Action {
        guard case .makingToken(let reusable) = self.state else { return .fail(.connectionClosedMidHandshake) }
        switch result {
        case .token(let token):
            self.state = .sent(scheme: .negotiate)
            self.memory = .negotiate
            return self.send("Negotiate " + Data(token).base64EncodedString(), reusable: reusable)
        case .failed(let reason):
            self.excluded.insert(.negotiate)
            if self.memory == .negotiate { self.memory = nil }
            guard !self.lastChallenges.isEmpty else {
                // Pre-emptive: go without, and choose from the parent's challenges.
                self.state = .sent(scheme: nil)
                return self.send(nil, reusable: reusable)
            }
            return self.choose(from: self.lastChallenges, reusable: reusable, unavailable: reason)
        }
    }

    /// The parent's answer: its status, its `Proxy-Authenticate` challenges, and whether the
    /// connection stays open for another request.
    mutating func received(status: Int, challenges: [Challenge], reusable: Bool) -> Action {
        guard status == 407 else {
            if case .sent(nil) = self.state { self.memory = nil }
            self.state = .finished
            return .done
        }
        let offered = challenges.map(\.scheme)
        self.lastChallenges = challenges
        let previous: ParentAuthScheme?
        switch self.state {
        case .initial, .finished, .makingToken:
            return .fail(.connectionClosedMidHandshake)
        case .ntlmNegotiateSent(let negotiate):
            guard let credentials else { return self.finish(.credentialsMissing(offered: offered)) }
            guard reusable else { return self.finish(.connectionClosedMidHandshake) }
            guard let token = challenges.first(where: { $0.schemeIs("NTLM") })?.token68,
                let bytes = Data(base64Encoded: token), NTLMClient.read(Array(bytes)) != nil
            else {
                // A bare `NTLM` again: the parent did not take the NEGOTIATE.
                return self.finish(.malformedChallenge(.ntlm))
            }
            var client = self.ntlmClient(credentials)
            if NTLMClient.read(Array(bytes))?.timestamp == nil {
                let milliseconds = UInt64(max(0, self.entropy.now().timeIntervalSince1970 * 1000))
                client.timestamp = NTLMFileTime(unixMilliseconds: milliseconds)
            }
            let authenticate = client.authenticate(negotiate: negotiate, challenge: Array(bytes))
            self.state = .sent(scheme: .ntlm)
            self.memory = .ntlm
            return self.send("NTLM " + Data(authenticate).base64EncodedString(), reusable: true)
        case .sent(let scheme):
            previous = scheme
        }
        // A Digest answer whose nonce went stale is answered again with the new nonce (once).
        if previous == .digest, !self.staleRetried,
            let stale = challenges.compactMap(DigestChallenge.init).first(where: \.stale)
        {
            self.staleRetried = true
            return self.answerDigest(stale, reusable: reusable)
        }
        // A Negotiate continuation (SPNEGO with more than one leg) carries a token.
        if previous == .negotiate,
            let token = challenges.first(where: { $0.schemeIs("Negotiate") })?.token68,
            let bytes = Data(base64Encoded: token), !bytes.isEmpty
        {
            self.state = .makingToken(reusable: reusable)
            return .negotiate(input: Array(bytes))
        }
        if let previous {
            // Credentials went out and came back refused.
            self.memory = nil
            return self.finish(.credentialsRefused(previous))
        }
        return self.choose(from: challenges, reusable: reusable, unavailable: nil)
    }

    /// Answers the strongest scheme among `challenges` that is allowed, not given up on, and
    /// answerable with what is configured.
    private mutating func choose(from challenges: [Challenge], reusable: Bool, unavailable: String?) -> Action {
        let offered = challenges.map(\.scheme)
        let usable = challenges.compactMap { challenge -> (ParentAuthScheme, Challenge)? in
            guard let scheme = ParentAuthScheme.allCases.first(where: { challenge.schemeIs($0.token) }),
                self.allowed.contains(scheme), !self.excluded.contains(scheme)
            else { return nil }
            switch scheme {
            case .negotiate:
                return (scheme, challenge)
            case .digest:
                guard let credentials = self.credentials, let parsed = DigestChallenge(challenge),
                    self.digestResponder(parsed, credentials) != nil
                else { return nil }
                return (scheme, challenge)
            case .basic, .ntlm:
                return self.credentials == nil ? nil : (scheme, challenge)
            }
        }
        guard let (scheme, challenge) = usable.max(by: { $0.0 < $1.0 }) else {
            if let unavailable { return self.finish(.negotiateUnavailable(unavailable)) }
            let answerable = challenges.contains { challenge in
                ParentAuthScheme.allCases.contains { challenge.schemeIs($0.token) && self.allowed.contains($0) }
            }
            if self.credentials == nil, answerable { return self.finish(.credentialsMissing(offered: offered)) }
            let malformedDigest = challenges.contains { $0.schemeIs("Digest") } && self.allowed.contains(.digest)
            return self.finish(malformedDigest ? .malformedChallenge(.digest) : .noCommonScheme(offered: offered))
        }
        guard let credentials = self.credentials else {
            // Only Negotiate needs no configured credentials (the ticket cache or keytab has them).
            self.state = .makingToken(reusable: reusable)
            return .negotiate(input: nil)
        }
        switch scheme {
        case .basic:
            self.state = .sent(scheme: .basic)
            self.memory = .basic
            return self.send(Self.basic(credentials), reusable: reusable)
        case .digest:
            return self.answerDigest(DigestChallenge(challenge)!, reusable: reusable)
        case .ntlm:
            // The NEGOTIATE opens a handshake bound to the connection: a closed one is replaced.
            let negotiate = self.ntlmClient(credentials).negotiate()
            self.state = .ntlmNegotiateSent(negotiate: negotiate)
            return self.send("NTLM " + Data(negotiate).base64EncodedString(), reusable: reusable)
        case .negotiate:
            self.state = .makingToken(reusable: reusable)
            return .negotiate(input: nil)
        }
    }

    /// The connection closed before the parent answered a send of this handshake.
    mutating func connectionClosed() -> Action {
        switch self.state {
        case .ntlmNegotiateSent:
            return self.finish(.connectionClosedMidHandshake)
        case .initial, .sent, .finished, .makingToken:
            self.state = .finished
            return .fail(.connectionClosedMidHandshake)
        }
    }

    // MARK: - Helpers

    private mutating func answerDigest(_ challenge: DigestChallenge, reusable: Bool) -> Action {
        guard let credentials, let authorization = self.digest(challenge, nonceCount: 1, credentials) else {
            return self.finish(.malformedChallenge(.digest))
        }
        self.state = .sent(scheme: .digest)
        self.memory = .digest(challenge, nonceCount: 2)
        return self.send(authorization, reusable: reusable)
    }

    private mutating func send(_ authorization: String?, reusable: Bool = true) -> Action {
        self.sends += 1
        guard self.sends <= Self.maximumSends else {
            if case .sent(let scheme?) = self.state { return self.finish(.credentialsRefused(scheme)) }
            return self.finish(.connectionClosedMidHandshake)
        }
        return reusable ? .send(authorization: authorization) : .sendOnNewConnection(authorization: authorization)
    }

    private mutating func finish(_ failure: ParentAuthFailure) -> Action {
        self.state = .finished
        return .fail(failure)
    }

    private static func scheme(of memory: ParentAuthMemory) -> ParentAuthScheme {
        switch memory {
        case .basic: return .basic
        case .digest: return .digest
        case .ntlm: return .ntlm
        case .negotiate: return .negotiate
        }
    }

    static func basic(_ credentials: Credentials) -> String {
        credentials.basic
    }

    private func digestResponder(_ challenge: DigestChallenge, _ credentials: Credentials) -> DigestResponder? {
        DigestResponder(challenge: challenge, user: credentials.user, password: credentials.password)
    }

    private func digest(_ challenge: DigestChallenge, nonceCount: Int, _ credentials: Credentials) -> String? {
        guard let responder = self.digestResponder(challenge, credentials) else { return nil }
        let cnonce = self.entropy.bytes(16).map { String(format: "%02x", $0) }.joined()
        return responder.authorization(method: self.method, uri: self.uri, nonceCount: nonceCount, cnonce: cnonce)
    }

    /// `DOMAIN\user` names the domain; otherwise the parent's own.
    private func ntlmClient(_ credentials: Credentials) -> NTLMClient {
        var client = NTLMClient()
        if let slash = credentials.user.firstIndex(of: "\\") {
            client.domain = String(credentials.user[..<slash])
            client.user = String(credentials.user[credentials.user.index(after: slash)...])
        } else {
            client.domain = ""
            client.user = credentials.user
        }
        client.password = credentials.password
        client.workstation = "PORTCULLIS"
        client.clientChallenge = self.entropy.bytes(8)
        client.randomSessionKey = self.entropy.bytes(16)
        client.timestamp = nil
        return client
    }
}
