import Foundation
import NIOConcurrencyHelpers
import PortcullisAuth

/// The users of an Apache htdigest file (`user:realm:HA1` lines, HA1 = MD5(user:realm:password)),
/// for one realm.
public struct HtdigestFile: Sendable {
    public struct Entry: Sendable, Hashable {
        public var ha1: String
    }

    public private(set) var entries: [String: Entry] = [:]
    /// H(user:realm) of every algorithm this machine computes (RFC 7616 `userhash`), so a client
    /// hashing the name is recognised even for an algorithm the file has no HA1 for.
    public private(set) var byUserhash: [DigestAlgorithm.Hash: [String: String]] = [:]
    /// Users of other realms in the file (ignored: a realm's HA1 is useless in another).
    public private(set) var otherRealms = 0
    /// Skipped lines: their number and why, never their content.
    public private(set) var problems: [String] = []

    public init(contents: String, realm: String) {
        let algorithms = DigestAlgorithm.Hash.allCases.map { DigestAlgorithm(hash: $0) }
        var lineNumber = 0
        for line in contents.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline) {
            lineNumber += 1
            if line.isEmpty || line.first == "#" { continue }
            // The realm may itself contain ':'; the user name cannot, and the HA1 is the last field.
            guard let firstColon = line.firstIndex(of: ":"), let lastColon = line.lastIndex(of: ":"),
                firstColon < lastColon
            else {
                self.problems.append("line \(lineNumber): expected user:realm:hash")
                continue
            }
            let user = String(line[..<firstColon])
            let lineRealm = String(line[line.index(after: firstColon)..<lastColon])
            let ha1 = line[line.index(after: lastColon)...].lowercased()
            guard !user.isEmpty else {
                self.problems.append("line \(lineNumber): empty user name")
                continue
            }
            guard ha1.utf8.count == 32, ha1.utf8.allSatisfy(HTTPGrammar.isHexDigit) else {
                self.problems.append("line \(lineNumber): user '\(user)' has no MD5 hash (32 hex digits)")
                continue
            }
            guard lineRealm == realm else {
                self.otherRealms += 1
                continue
            }
            if self.entries[user] != nil {
                self.problems.append("line \(lineNumber): user '\(user)' appears again; the first entry wins")
                continue
            }
            self.entries[user] = Entry(ha1: ha1)
            for algorithm in algorithms {
                self.byUserhash[algorithm.hash, default: [:]][algorithm.hex("\(user):\(realm)")] = user
            }
        }
    }

    /// Reads and parses a file. Blocking: call it on a thread pool.
    public static func load(path: String, realm: String) throws -> HtdigestFile {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw StoreError("cannot read htdigest file \(path): \(HtpasswdFile.describe(error))")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw StoreError("htdigest file \(path) is not UTF-8 text")
        }
        return HtdigestFile(contents: text, realm: realm)
    }
}

/// Users from an Apache htdigest file, re-read when it changes: MD5 Digest, and Basic too
/// (a Basic password is checked by computing its HA1).
public final class HtdigestStore: CredentialStore {
    private struct Snapshot {
        var file: HtdigestFile
        var identity: FileIdentity?
        var generation: UInt64
    }

    public let path: String
    public let realm: String
    private let state: NIOLockedValueBox<Snapshot>

    public init(path: String, realm: String) throws {
        self.path = path
        self.realm = realm
        let file = try HtdigestFile.load(path: path, realm: realm)
        self.state = NIOLockedValueBox(Snapshot(file: file, identity: FileIdentity(path: path), generation: 1))
    }

    public var generation: UInt64 { self.state.withLockedValue { $0.generation } }
    public var file: HtdigestFile { self.state.withLockedValue { $0.file } }

    /// A few MD5 blocks, cheap like a Digest answer's check: no trip to a thread pool.
    public func verify(user: String, password: String) async -> VerificationOutcome {
        let entry = self.state.withLockedValue { $0.file.entries[user] }
        // Computed for unknown users too: the same cost either way.
        let computed = DigestAlgorithm(hash: .md5).hex("\(user):\(self.realm):\(password)")
        guard let entry, ConstantTime.equal(computed, entry.ha1) else {
            return .rejected(.invalid)
        }
        return .accepted(user: user)
    }

    public func digestSecrets(name: String, isUserhash: Bool, hash: DigestAlgorithm.Hash) async -> DigestLookup {
        let (user, entry) = self.state.withLockedValue { state -> (String?, HtdigestFile.Entry?) in
            let user = isUserhash ? state.file.byUserhash[hash]?[name.lowercased()] : name
            return (user, user.flatMap { state.file.entries[$0] })
        }
        guard let user, let entry else { return .unknownUser }
        // htdigest holds MD5 only.
        guard hash == .md5 else { return .notEnrolled(user: user) }
        return .found(DigestSecrets(user: user, ha1: entry.ha1))
    }

    /// An htdigest file holds no NT hashes (an HA1 cannot be turned into one): its users cannot
    /// use NTLM.
    public func ntlmSecrets(name: String) async -> NTLMLookup {
        let known = self.state.withLockedValue { $0.file.entries[name] != nil }
        return known ? .notEnrolled(user: name) : .unknownUser
    }

    public func account(named name: String) async -> AccountLookup {
        let known = self.state.withLockedValue { $0.file.entries[name] != nil }
        return known ? .found(user: name, standing: AccountStanding()) : .unknownUser
    }

    /// Re-reads the file when it changed. Blocking. Returns the new file, or `nil` when unchanged.
    @discardableResult
    public func reloadIfChanged() throws -> HtdigestFile? {
        let identity = FileIdentity(path: self.path)
        if identity == self.state.withLockedValue({ $0.identity }) { return nil }
        let file = try HtdigestFile.load(path: self.path, realm: self.realm)
        self.state.withLockedValue { $0 = Snapshot(file: file, identity: identity, generation: $0.generation + 1) }
        return file
    }
}
