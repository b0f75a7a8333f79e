import Foundation
import PortcullisAuth
import PortcullisStores

/// The local users store first, then the directory: a name the local store does not know, or a
/// password it refuses, is tried against the directory (so a directory user needs no local
/// entry, and a local account is never looked up remotely when its password is right). An
/// expired, disabled or rotated-out local account is final. What only a local store can hold
/// (Digest and NTLM secrets, accounts for certificates, the nonce key) comes from it alone.
public final class ChainedStore: CredentialStore {
    public let local: any CredentialStore
    public let directory: LDAPDirectory

    public init(local: any CredentialStore, directory: LDAPDirectory) {
        self.local = local
        self.directory = directory
    }

    public var generation: UInt64 { self.local.generation }

    public func verify(user: String, password: String) async -> VerificationOutcome {
        let first = await self.local.verify(user: user, password: password)
        guard case .rejected(.invalid) = first else { return first }
        return await self.directory.verify(user: user, password: password)
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
