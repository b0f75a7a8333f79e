import Foundation
import PortcullisAuth
import PortcullisStores

/// The local users store and the directory, the local one first unless `directoryFirst`
/// (`--ldap-first`): a name the first does not know, or a password it refuses, is tried against
/// the second (so a directory user needs no local entry). An expired, disabled or rotated-out
/// account is final. When one of them cannot be read, the other still decides a success; a
/// refusal then is `unavailable` (503), as the unread one might have said yes. What only a local
/// store can hold (Digest and NTLM secrets, accounts for certificates, the nonce key, short-lived
/// tokens) comes from it alone: a token is never sent to the directory as a password.
public final class ChainedStore: CredentialStore {
    public let local: any CredentialStore
    public let directory: any CredentialStore
    public let directoryFirst: Bool

    public init(local: any CredentialStore, directory: any CredentialStore, directoryFirst: Bool = false) {
        self.local = local
        self.directory = directory
        self.directoryFirst = directoryFirst
    }

    public var generation: UInt64 { self.local.generation }

    public func verify(user: String, password: String) async -> VerificationOutcome {
        if AccessToken.peek(password) != nil {
            let local = await self.local.verify(user: user, password: password)
            // Not one of ours after all (a password that looks like a token): the usual order.
            guard case .rejected(.invalid) = local else { return local }
        }
        let (first, second): (any CredentialStore, any CredentialStore) =
            self.directoryFirst ? (self.directory, self.local) : (self.local, self.directory)
        let firstOutcome = await first.verify(user: user, password: password)
        switch firstOutcome {
        case .accepted, .rejected(.expired), .rejected(.disabled), .rejected(.rotatedOut), .rejected(.tokenExpired),
            .rejected(.tokenRevoked):
            return firstOutcome
        case .rejected(.invalid), .rejected(.unavailable):
            break
        }
        let secondOutcome = await second.verify(user: user, password: password)
        if case .rejected(.invalid) = secondOutcome, case .rejected(.unavailable) = firstOutcome {
            return .rejected(.unavailable)
        }
        return secondOutcome
    }

    public func digestSecrets(name: String, isUserhash: Bool, hash: DigestAlgorithm.Hash) async -> DigestLookup {
        await self.local.digestSecrets(name: name, isUserhash: isUserhash, hash: hash)
    }

    public func ntlmSecrets(name: String) async -> NTLMLookup {
        await self.local.ntlmSecrets(name: name)
    }

    public func account(named name: String) async -> AccountLookup {
        await self.local.account(named: name)
    }

    public func nonceKey() async -> [UInt8]? {
        await self.local.nonceKey()
    }

    public func noteLogin(_ user: String, at date: Date) async {
        await self.local.noteLogin(user, at: date)
    }
}
