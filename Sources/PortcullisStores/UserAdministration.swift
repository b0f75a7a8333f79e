import Foundation
import PortcullisAuth

/// What decides whether a right secret still opens an account: the same rules for every store
/// and every scheme.
public struct AccountStanding: Sendable, Hashable {
    public var disabled: Bool
    public var expiresAt: Date?
    /// End of a rotation's grace: until then the previous secret still works.
    public var previousValidUntil: Date?

    public init(disabled: Bool = false, expiresAt: Date? = nil, previousValidUntil: Date? = nil) {
        self.disabled = disabled
        self.expiresAt = expiresAt
        self.previousValidUntil = previousValidUntil
    }

    /// The outcome once the secret matched: the current one (`matchedCurrent`) or the previous.
    /// From here the secret was right, so saying why it no longer works tells an attacker
    /// nothing they could not already do (the client still only sees one reason).
    public func outcome(user: String, matchedCurrent: Bool, now: Date) -> VerificationOutcome {
        if self.disabled { return .rejected(.disabled) }
        if !matchedCurrent {
            guard let end = self.previousValidUntil, end > now else { return .rejected(.rotatedOut) }
        }
        if let expires = self.expiresAt, expires <= now { return .rejected(.expired) }
        let limits = [matchedCurrent ? nil : self.previousValidUntil, self.expiresAt].compactMap { $0 }
        let validFor = limits.min().map { max(0, $0.timeIntervalSince(now)) }
        return .accepted(user: user, validFor: validFor)
    }
}

/// The Digest secrets of one account for one hash algorithm (RFC 7616 §3.4.2): `HA1 =
/// H(user:realm:password)`, lower-case hex. Password-equivalent for the realm, which is why a
/// store keeps them only for users enrolled with `--digest`.
public struct DigestSecrets: Sendable, Hashable {
    public var user: String
    public var ha1: String
    /// The HA1 of the secret before the last rotation, valid until `standing.previousValidUntil`.
    public var previousHA1: String?
    /// The HA1 over the Latin-1 bytes of `user:realm:password`, kept when they differ from the
    /// UTF-8 ones (``DigestEnrollment/latin1HA1``): Java's `HttpURLConnection` hashes those,
    /// whatever `charset=UTF-8` says. And the previous secret's, during a rotation's grace.
    public var latin1HA1: String?
    public var previousLatin1HA1: String?
    public var standing: AccountStanding

    public init(
        user: String,
        ha1: String,
        previousHA1: String? = nil,
        latin1HA1: String? = nil,
        previousLatin1HA1: String? = nil,
        standing: AccountStanding = .init()
    ) {
        self.user = user
        self.ha1 = ha1
        self.previousHA1 = previousHA1
        self.latin1HA1 = latin1HA1
        self.previousLatin1HA1 = previousLatin1HA1
        self.standing = standing
    }
}

/// What a store answers when asked for a user's Digest secrets.
public enum DigestLookup: Sendable, Hashable {
    case found(DigestSecrets)
    /// The user exists but has no HA1 for this algorithm (not enrolled with `--digest`, or an
    /// htpasswd file, which holds password hashes only).
    case notEnrolled(user: String)
    case unknownUser
    case unavailable
}

/// The NTLM secret of one account: its NT hash, MD4 of the UTF-16LE password (MS-NLMP §3.3.1).
/// Password-equivalent wherever NTLM is accepted — NTLMv2 answers are keyed by it, not by the
/// password — which is why a store keeps it only for users enrolled with `--ntlm`.
public struct NTLMSecrets: Sendable, Hashable {
    /// The name as the store spells it.
    public var user: String
    public var ntHash: NTHash
    /// The NT hash of the secret before the last rotation, valid until
    /// `standing.previousValidUntil`.
    public var previousNTHash: NTHash?
    public var standing: AccountStanding

    public init(user: String, ntHash: NTHash, previousNTHash: NTHash? = nil, standing: AccountStanding = .init()) {
        self.user = user
        self.ntHash = ntHash
        self.previousNTHash = previousNTHash
        self.standing = standing
    }
}

/// What a store answers when asked for a user's NT hash.
/// An account by name, for an identity the store holds no secret for (a client certificate).
public enum AccountLookup: Sendable, Hashable {
    /// `user`: the name as the store spells it.
    case found(user: String, standing: AccountStanding)
    case unknownUser
    /// The store could not be read: never grounds for a 407 (the proxy answers 503).
    case unavailable
}

public enum NTLMLookup: Sendable, Hashable {
    case found(NTLMSecrets)
    /// The user exists but has no NT hash (not enrolled with `--ntlm`, or a user of an htpasswd
    /// or htdigest file, which hold no NT hashes).
    case notEnrolled(user: String)
    case unknownUser
    /// The store could not be read: never grounds for a 407 (the proxy answers 503).
    case unavailable
}

extension CredentialStore {
    /// Default for stores that hold no Digest secrets.
    public func digestSecrets(name: String, isUserhash: Bool, hash: DigestAlgorithm.Hash) async -> DigestLookup {
        .unknownUser
    }

    /// Default for stores that hold no NT hashes.
    public func ntlmSecrets(name: String) async -> NTLMLookup { .unknownUser }

    /// Default: no shared nonce key; the proxy makes a random one per process.
    public func nonceKey() async -> [UInt8]? { nil }

    /// Default: logins are not recorded (files).
    public func noteLogin(_ user: String, at date: Date) async {}
}

/// A user as `users list` shows it: never a hash.
public struct UserInfo: Sendable, Equatable, Codable {
    public var name: String
    public var realm: String
    public var groups: [String]
    public var state: String
    /// Whether Digest secrets are stored for the user.
    public var digest: Bool
    /// Whether an NT hash is stored for the user.
    public var ntlm: Bool
    public var createdAt: Date
    public var updatedAt: Date
    public var expiresAt: Date?
    public var previousValidUntil: Date?
    public var lastLoginAt: Date?

    public init(
        name: String,
        realm: String,
        groups: [String],
        state: String,
        digest: Bool,
        ntlm: Bool,
        createdAt: Date,
        updatedAt: Date,
        expiresAt: Date?,
        previousValidUntil: Date?,
        lastLoginAt: Date?
    ) {
        self.name = name
        self.realm = realm
        self.groups = groups
        self.state = state
        self.digest = digest
        self.ntlm = ntlm
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        self.expiresAt = expiresAt
        self.previousValidUntil = previousValidUntil
        self.lastLoginAt = lastLoginAt
    }

    /// The state word of `users list`.
    public static func state(standing: AccountStanding, now: Date) -> String {
        if standing.disabled { return "disabled" }
        if let expires = standing.expiresAt, expires <= now { return "expired" }
        if let end = standing.previousValidUntil, end > now { return "rotating" }
        return "active"
    }

    enum CodingKeys: String, CodingKey {
        case name, realm, groups, state, digest, ntlm
        case createdAt = "created_at"
        case updatedAt = "updated_at"
        case expiresAt = "expires_at"
        case previousValidUntil = "previous_valid_until"
        case lastLoginAt = "last_login_at"
    }
}

/// Who made a change, for the audit trail.
public struct ChangeActor: Sendable {
    public var name: String
    public var host: String

    public init(name: String, host: String) {
        self.name = name
        self.host = host
    }

    public static var current: ChangeActor {
        let env = ProcessInfo.processInfo.environment
        return ChangeActor(
            name: env["SUDO_USER"] ?? env["USER"] ?? env["LOGNAME"] ?? "uid \(getuid())",
            host: ProcessInfo.processInfo.hostName
        )
    }
}

/// One credential change: who, when, what, from where. Never a secret or a hash.
public struct AuditEntry: Sendable, Codable, Equatable {
    public var at: Date
    public var actor: String
    public var host: String
    public var action: String
    public var realm: String
    public var name: String
    public var detail: String

    public init(at: Date, actor: String, host: String, action: String, realm: String, name: String, detail: String) {
        self.at = at
        self.actor = actor
        self.host = host
        self.action = action
        self.realm = realm
        self.name = name
        self.detail = detail
    }
}

/// A store whose users can be changed (`portcullis users …`): SQLite and PostgreSQL, both an
/// ``AccountStore``.
///
/// Every change is one transaction with its audit row and a bump of the store's change counter,
/// so a running proxy notices it (``refresh()``) and drops cached verifications. With
/// `digest: true`, the HA1 values of every supported algorithm are stored for the realm; with
/// `ntlm: true`, the NT hash. A user already enrolled keeps up-to-date HA1 values and NT hash
/// on every password change, so an old password can never keep working through Digest or NTLM.
public protocol UserAdministration: CredentialStore {
    var realm: String { get }
    /// Where the store is, for messages (a path, or a URL without its password).
    var location: String { get }
    func add(
        _ name: String,
        password: String,
        groups: [String],
        cost: Int,
        digest: Bool,
        ntlm: Bool,
        by actor: ChangeActor
    ) async throws
    func setPassword(
        _ name: String,
        password: String,
        cost: Int,
        digest: Bool,
        ntlm: Bool,
        by actor: ChangeActor
    ) async throws
    func rotate(
        _ name: String,
        password: String,
        grace: TimeInterval,
        cost: Int,
        digest: Bool,
        ntlm: Bool,
        by actor: ChangeActor
    ) async throws
    func setDisabled(_ name: String, _ disabled: Bool, by actor: ChangeActor) async throws
    func setExpiry(_ name: String, at date: Date?, by actor: ChangeActor) async throws
    func remove(_ name: String, by actor: ChangeActor) async throws
    func importHtpasswd(_ file: HtpasswdFile, by actor: ChangeActor) async throws -> (imported: Int, skipped: [String])
    func exportHtpasswd() async throws -> (lines: [String], skipped: [String])
    func list() async throws -> [UserInfo]
    func audit() async throws -> [AuditEntry]
    /// Issues a short-lived token for `user` (``AccessToken``); the token is returned once.
    func issueToken(
        for user: String,
        ttl: TimeInterval,
        label: String,
        by actor: ChangeActor
    ) async throws -> (token: String, info: TokenInfo)
    func tokens(user: String?) async throws -> [TokenInfo]
    /// Revokes the tokens matching every given criterion; returns how many.
    func revokeTokens(id: String?, label: String?, user: String?, by actor: ChangeActor) async throws -> Int
    /// The audit entry of the last change this instance made (for the JSON-lines audit file).
    var lastAudit: AuditEntry? { get }
    /// Reads the change counter; `true` when the users changed since the last call. Throws
    /// when the store cannot be reached.
    @discardableResult func refresh() async throws -> Bool
    /// The users of the realm.
    var userCount: Int { get async throws }
}

/// Without `ntlm:`, no NTLM enrolment (an enrolled user's NT hash still follows the password).
extension UserAdministration {
    public func add(
        _ name: String,
        password: String,
        groups: [String] = [],
        cost: Int = 10,
        digest: Bool = false,
        by actor: ChangeActor
    ) async throws {
        try await self.add(name, password: password, groups: groups, cost: cost, digest: digest, ntlm: false, by: actor)
    }

    public func setPassword(
        _ name: String,
        password: String,
        cost: Int = 10,
        digest: Bool = false,
        by actor: ChangeActor
    ) async throws {
        try await self.setPassword(name, password: password, cost: cost, digest: digest, ntlm: false, by: actor)
    }

    public func rotate(
        _ name: String,
        password: String,
        grace: TimeInterval,
        cost: Int = 10,
        digest: Bool = false,
        by actor: ChangeActor
    ) async throws {
        try await self.rotate(
            name,
            password: password,
            grace: grace,
            cost: cost,
            digest: digest,
            ntlm: false,
            by: actor
        )
    }
}

/// The HA1 values and user hashes to store for one password (RFC 7616 §3.4.2, §3.4.4).
public struct DigestEnrollment: Sendable, Hashable {
    public var hash: DigestAlgorithm.Hash
    public var userhash: String
    public var ha1: String
    /// The HA1 over the ISO-8859-1 bytes of `name:realm:password`, when every character has one
    /// and they differ from the UTF-8 bytes (a character from U+0080 to U+00FF): what Java's
    /// `HttpURLConnection` computes, ignoring `charset=UTF-8`. Never kept when the two agree.
    public var latin1HA1: String?

    /// One per hash algorithm.
    public static func make(name: String, realm: String, password: String) -> [DigestEnrollment] {
        let text = "\(name):\(realm):\(password)"
        let latin1 = Self.latin1Bytes(text)
        return DigestAlgorithm.Hash.allCases.map { hash in
            let algorithm = DigestAlgorithm(hash: hash)
            return DigestEnrollment(
                hash: hash,
                userhash: algorithm.hex("\(name):\(realm)"),
                ha1: algorithm.hex(text),
                latin1HA1: latin1.map { algorithm.hex(bytes: $0) }
            )
        }
    }

    /// The ISO-8859-1 bytes of `text` if it has them and they are not its UTF-8 bytes.
    static func latin1Bytes(_ text: String) -> [UInt8]? {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.unicodeScalars.count)
        for scalar in text.unicodeScalars {
            guard scalar.value <= 0xFF else { return nil }
            bytes.append(UInt8(scalar.value))
        }
        return bytes.elementsEqual(text.utf8) ? nil : bytes
    }
}
