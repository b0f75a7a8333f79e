import Foundation
import NIOConcurrencyHelpers
import NIOPosix
import PortcullisAuth

/// The outcome of checking one user name and password against a store.
public enum VerificationOutcome: Sendable, Hashable {
    /// `validFor`: seconds until the credential stops working (expiry, end of a rotation's
    /// grace, a token's end), so a cached success never outlives it. `token`: the label (or
    /// `id=…`) of the short-lived token the login used, for the access log.
    case accepted(user: String, validFor: TimeInterval? = nil, token: String? = nil)
    case rejected(RejectionReason)
}

/// Why a store refused a credential.
public enum RejectionReason: String, Sendable, Hashable {
    /// Unknown user or wrong password: one reason, so nothing downstream can tell them apart.
    case invalid = "invalid-credentials"
    /// The right password of an account past its `expires_at`.
    case expired
    /// The right password of a disabled account.
    case disabled
    /// The previous secret of a rotated account, after its grace window.
    case rotatedOut = "rotated-out"
    /// The store could not be read (database down): never a reason to let anyone in.
    case unavailable = "store-unavailable"
    /// A short-lived token past its end.
    case tokenExpired = "token-expired"
    /// A short-lived token that was revoked.
    case tokenRevoked = "token-revoked"
}

/// A source of users and their secrets.
///
/// Asynchronous: database I/O is awaited, and password hashing (bcrypt) runs on a thread pool
/// the store was given, never on the caller's executor. ``generation`` is read from memory (on
/// an event loop too); it changes whenever the users change, which invalidates cached
/// verifications.
public protocol CredentialStore: AnyObject, Sendable {
    func verify(user: String, password: String) async -> VerificationOutcome
    var generation: UInt64 { get }
    /// The Digest secrets of a user (by name, or by RFC 7616 user hash when `isUserhash`).
    func digestSecrets(name: String, isUserhash: Bool, hash: DigestAlgorithm.Hash) async -> DigestLookup
    /// The NT hash of a user, by the name exactly as stored (as for Basic).
    func ntlmSecrets(name: String) async -> NTLMLookup
    /// Whether an account of that name (exactly as stored) exists and its standing, for an
    /// identity proved without a secret of the store (a client certificate).
    func account(named name: String) async -> AccountLookup
    /// A key for signing Digest nonces that every proxy sharing this store uses, so a nonce one
    /// instance minted is good on another; `nil` when the store cannot keep one.
    func nonceKey() async -> [UInt8]?
    /// Records a successful login (for `users list`); best effort.
    func noteLogin(_ user: String, at date: Date) async
}

/// Users from an Apache htpasswd file, re-read when the file changes.
public final class HtpasswdStore: CredentialStore {
    private struct Snapshot {
        var file: HtpasswdFile
        var identity: FileIdentity?
        var generation: UInt64
        /// Verified against when the user is unknown, so an unknown user costs as much as a wrong password.
        var decoy: PasswordHash?
    }

    public let path: String
    private let state: NIOLockedValueBox<Snapshot>
    private let threadPool: NIOThreadPool

    /// Loads the file. Blocking. Passwords are checked on `threadPool`.
    public init(path: String, threadPool: NIOThreadPool = .singleton) throws {
        self.path = path
        self.threadPool = threadPool
        let file = try HtpasswdFile.load(path: path)
        self.state = NIOLockedValueBox(
            Snapshot(file: file, identity: FileIdentity(path: path), generation: 1, decoy: Self.decoy(for: file))
        )
    }

    public var generation: UInt64 { self.state.withLockedValue { $0.generation } }
    public var userCount: Int { self.state.withLockedValue { $0.file.entries.count } }
    public var problems: [String] { self.state.withLockedValue { $0.file.problems } }

    public func verify(user: String, password: String) async -> VerificationOutcome {
        let (hash, decoy) = self.state.withLockedValue { ($0.file.entries[user], $0.decoy) }
        guard let hash else {
            _ = await decoy?.verify(password, on: self.threadPool)
            return .rejected(.invalid)
        }
        return await hash.verify(password, on: self.threadPool) ? .accepted(user: user) : .rejected(.invalid)
    }

    /// An htpasswd file holds password hashes only: its users cannot use Digest.
    public func digestSecrets(name: String, isUserhash: Bool, hash: DigestAlgorithm.Hash) async -> DigestLookup {
        guard !isUserhash else { return .unknownUser }
        let known = self.state.withLockedValue { $0.file.entries[name] != nil }
        return known ? .notEnrolled(user: name) : .unknownUser
    }

    /// An htpasswd file holds no NT hashes: its users cannot use NTLM.
    public func ntlmSecrets(name: String) async -> NTLMLookup {
        let known = self.state.withLockedValue { $0.file.entries[name] != nil }
        return known ? .notEnrolled(user: name) : .unknownUser
    }

    /// A users file has no account rules: a user in it is in good standing.
    public func account(named name: String) async -> AccountLookup {
        let known = self.state.withLockedValue { $0.file.entries[name] != nil }
        return known ? .found(user: name, standing: AccountStanding()) : .unknownUser
    }

    /// Re-reads the file when its size, modification time or inode changed. Blocking.
    /// - Returns: the new file when it was reloaded, `nil` when unchanged.
    @discardableResult
    public func reloadIfChanged() throws -> HtpasswdFile? {
        let identity = FileIdentity(path: self.path)
        if identity == self.state.withLockedValue({ $0.identity }) { return nil }
        let file = try HtpasswdFile.load(path: self.path)
        self.state.withLockedValue {
            $0 = Snapshot(file: file, identity: identity, generation: $0.generation + 1, decoy: Self.decoy(for: file))
        }
        return file
    }

    private static func decoy(for file: HtpasswdFile) -> PasswordHash? {
        // The most expensive hash in the file: an unknown user must never be the cheap path.
        let order: [PasswordHash.Format] = [.bcrypt, .sha512Crypt, .sha256Crypt, .apr1, .md5Crypt, .desCrypt, .sha1]
        return order.lazy.compactMap { format in file.entries.values.first { $0.format == format } }.first
    }
}

/// What identifies one version of a file on disk, for cheap change detection.
public struct FileIdentity: Equatable, Sendable {
    var device: UInt64
    var inode: UInt64
    var size: Int64
    var modified: timespec

    public init?(path: String) {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        self.device = UInt64(st.st_dev)
        self.inode = UInt64(st.st_ino)
        self.size = Int64(st.st_size)
        self.modified = st.st_mtim
    }

    public static func == (a: FileIdentity, b: FileIdentity) -> Bool {
        a.device == b.device && a.inode == b.inode && a.size == b.size
            && a.modified.tv_sec == b.modified.tv_sec && a.modified.tv_nsec == b.modified.tv_nsec
    }
}
