import Testing

@testable import PortcullisAuth

/// Every state × event of ``NTLMAcceptor``, as a table: the action and the state after.
extension NTLMAcceptorTests {
    enum StateKind: String, Sendable { case idle, challenged, lookingUp, authenticated }

    enum Event: String, Sendable {
        case negotiate, authenticate, clientSentChallenge, garbage
        /// The store answers the look-up in flight (or, in a state without one, some look-up).
        case hashForPendingLookup
        case hashForAnotherLookup
    }

    enum ActionKind: Hashable, Sendable {
        case sendChallenge, lookUp, accept, ignore
        case refuse(AuthFailureReason)
    }

    struct Transition: Sendable, CustomTestStringConvertible {
        var from: StateKind
        var event: Event
        var action: ActionKind
        var to: StateKind
        var testDescription: String { "\(self.from.rawValue) + \(self.event.rawValue)" }
    }

    static let transitions: [Transition] = [
        .init(from: .idle, event: .negotiate, action: .sendChallenge, to: .challenged),
        .init(from: .idle, event: .authenticate, action: .refuse(.unexpectedMessage), to: .idle),
        .init(from: .idle, event: .clientSentChallenge, action: .refuse(.unexpectedMessage), to: .idle),
        .init(from: .idle, event: .garbage, action: .refuse(.malformedCredentials), to: .idle),
        .init(from: .idle, event: .hashForPendingLookup, action: .ignore, to: .idle),
        .init(from: .idle, event: .hashForAnotherLookup, action: .ignore, to: .idle),

        .init(from: .challenged, event: .negotiate, action: .sendChallenge, to: .challenged),
        .init(from: .challenged, event: .authenticate, action: .lookUp, to: .lookingUp),
        .init(from: .challenged, event: .clientSentChallenge, action: .refuse(.unexpectedMessage), to: .idle),
        .init(from: .challenged, event: .garbage, action: .refuse(.malformedCredentials), to: .idle),
        .init(from: .challenged, event: .hashForPendingLookup, action: .ignore, to: .challenged),
        .init(from: .challenged, event: .hashForAnotherLookup, action: .ignore, to: .challenged),

        .init(from: .lookingUp, event: .negotiate, action: .sendChallenge, to: .challenged),
        .init(from: .lookingUp, event: .authenticate, action: .refuse(.unexpectedMessage), to: .idle),
        .init(from: .lookingUp, event: .clientSentChallenge, action: .refuse(.unexpectedMessage), to: .idle),
        .init(from: .lookingUp, event: .garbage, action: .refuse(.malformedCredentials), to: .idle),
        .init(from: .lookingUp, event: .hashForPendingLookup, action: .accept, to: .authenticated),
        .init(from: .lookingUp, event: .hashForAnotherLookup, action: .ignore, to: .lookingUp),

        .init(from: .authenticated, event: .negotiate, action: .sendChallenge, to: .challenged),
        .init(from: .authenticated, event: .authenticate, action: .refuse(.unexpectedMessage), to: .idle),
        .init(from: .authenticated, event: .clientSentChallenge, action: .refuse(.unexpectedMessage), to: .idle),
        .init(from: .authenticated, event: .garbage, action: .refuse(.malformedCredentials), to: .idle),
        .init(from: .authenticated, event: .hashForPendingLookup, action: .ignore, to: .authenticated),
        .init(from: .authenticated, event: .hashForAnotherLookup, action: .ignore, to: .authenticated),
    ]

    static func kind(_ state: NTLMAcceptor.State) -> StateKind {
        switch state {
        case .idle: return .idle
        case .challenged: return .challenged
        case .lookingUp: return .lookingUp
        case .authenticated: return .authenticated
        }
    }

    static func kind(_ action: NTLMAcceptor.Action) -> ActionKind {
        switch action {
        case .sendChallenge: return .sendChallenge
        case .lookUpNTHash: return .lookUp
        case .accept, .acceptPrevious: return .accept
        case .ignore: return .ignore
        case .refuse(let refusal): return .refuse(refusal.reason)
        }
    }

    /// An acceptor in `state`, an AUTHENTICATE that answers its CHALLENGE (or another
    /// acceptor's, where it has none), and the look-up in flight, if any.
    static func acceptor(in state: StateKind) -> (NTLMAcceptor, authenticate: [UInt8], pending: NTLMAcceptor.LookupID?)
    {
        let client = NTLMClient()
        var (acceptor, negotiate, challenge) = Self.challenged(client)
        let authenticate = client.authenticate(negotiate: negotiate, challenge: challenge)
        switch state {
        case .idle:
            return (NTLMAcceptor(settings: Self.settings), authenticate, nil)
        case .challenged:
            return (acceptor, authenticate, nil)
        case .lookingUp, .authenticated:
            guard case .lookUpNTHash(let lookup) = acceptor.authenticateReceived(authenticate, now: Self.at(1)) else {
                return (acceptor, authenticate, nil)
            }
            if state == .lookingUp { return (acceptor, authenticate, lookup.id) }
            _ = acceptor.ntHashFound(NTHash(password: "Password"), for: lookup.id)
            return (acceptor, authenticate, nil)
        }
    }

    @Test(arguments: Self.transitions)
    func transition(_ row: Transition) {
        var (acceptor, authenticate, pending) = Self.acceptor(in: row.from)
        #expect(Self.kind(acceptor.state) == row.from)
        var random = SeededGenerator(seed: 5)
        let hash = NTHash(password: "Password")
        let action: NTLMAcceptor.Action
        switch row.event {
        case .negotiate:
            action = acceptor.messageReceived(NTLMClient().negotiate(), now: Self.at(2), random: &random)
        case .authenticate:
            action = acceptor.messageReceived(authenticate, now: Self.at(2), random: &random)
        case .clientSentChallenge:
            action = acceptor.messageReceived(NTLMVectors.challenge, now: Self.at(2), random: &random)
        case .garbage:
            action = acceptor.messageReceived([0x4e, 0x54, 0x4c], now: Self.at(2), random: &random)
        case .hashForPendingLookup:
            action = acceptor.ntHashFound(hash, for: pending ?? NTLMAcceptor.LookupID(value: 1))
        case .hashForAnotherLookup:
            action = acceptor.ntHashFound(hash, for: NTLMAcceptor.LookupID(value: 99))
        }
        #expect(Self.kind(action) == row.action)
        #expect(Self.kind(acceptor.state) == row.to)
    }

    /// A look-up answered after the client started over finds a new handshake, not its own:
    /// ignored, even though the new handshake's look-up is pending too.
    @Test func lookUpAnsweredAfterARestartIsIgnored() {
        let client = NTLMClient()
        var (acceptor, _, challenge) = Self.challenged(client)
        guard
            case .lookUpNTHash(let first) = acceptor.authenticateReceived(
                client.authenticate(negotiate: client.negotiate(), challenge: challenge),
                now: Self.at(1)
            )
        else {
            Issue.record("no look-up")
            return
        }
        var random = SeededGenerator(seed: 9)
        guard
            case .sendChallenge(let second) = acceptor.negotiateReceived(
                client.negotiate(),
                now: Self.at(2),
                random: &random
            )
        else {
            Issue.record("no CHALLENGE")
            return
        }
        guard
            case .lookUpNTHash(let again) = acceptor.authenticateReceived(
                client.authenticate(negotiate: client.negotiate(), challenge: second),
                now: Self.at(3)
            )
        else {
            Issue.record("no second look-up")
            return
        }
        #expect(first.id != again.id)
        #expect(acceptor.ntHashFound(NTHash(password: "Password"), for: first.id) == .ignore)
        #expect(
            acceptor.ntHashFound(NTHash(password: "Password"), for: again.id)
                == .accept(NTLMIdentity(user: "User", domain: "Domain", workstation: "COMPUTER"))
        )
    }
}
