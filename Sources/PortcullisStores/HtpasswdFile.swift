import Foundation

/// The users of an Apache htpasswd file (`user:hash` lines).
public struct HtpasswdFile: Sendable {
    public private(set) var entries: [String: PasswordHash] = [:]
    /// Lines that were skipped, with their line number and why (never their content: it may hold
    /// a plain-text password).
    public private(set) var problems: [String] = []

    public init(entries: [String: PasswordHash]) {
        self.entries = entries
    }

    /// Parses the text of an htpasswd file. Comments (`#`) and blank lines are ignored; a line
    /// with an unknown hash format is skipped and reported in ``problems``.
    public init(contents: String) {
        var lineNumber = 0
        // `isNewline`, because Swift reads "\r\n" as one Character: splitting on "\n" alone
        // would leave files written on Windows as one long line.
        for line in contents.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline) {
            lineNumber += 1
            if line.isEmpty || line.first == "#" { continue }
            guard let colon = line.firstIndex(of: ":") else {
                self.problems.append("line \(lineNumber): no ':' between user name and hash")
                continue
            }
            let user = String(line[..<colon])
            // htdigest-like or extended lines (user:hash:comment) keep only the hash field.
            let hashField =
                line[line.index(after: colon)...].split(separator: ":", maxSplits: 1).first.map(String.init) ?? ""
            guard !user.isEmpty else {
                self.problems.append("line \(lineNumber): empty user name")
                continue
            }
            guard let hash = PasswordHash(hashField) else {
                self.problems.append(
                    "line \(lineNumber): user '\(user)' has an unsupported or plain-text password hash; use htpasswd -B"
                )
                continue
            }
            if self.entries[user] != nil {
                self.problems.append("line \(lineNumber): user '\(user)' appears again; the first entry wins")
                continue
            }
            self.entries[user] = hash
        }
    }

    /// Reads and parses a file. Blocking: call it on a thread pool.
    public static func load(path: String) throws -> HtpasswdFile {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw StoreError(message: "cannot read htpasswd file \(path): \(Self.describe(error))")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw StoreError(message: "htpasswd file \(path) is not UTF-8 text")
        }
        return HtpasswdFile(contents: text)
    }

    static func describe(_ error: Error) -> String {
        if let posix = (error as NSError).userInfo[NSUnderlyingErrorKey] as? NSError {
            return posix.localizedDescription
        }
        return (error as NSError).localizedDescription
    }

    /// The file's text, one `user:hash` line each, sorted by user name.
    public var serialized: String {
        self.entries.keys.sorted().map { "\($0):\(self.entries[$0]!.encoded)\n" }.joined()
    }
}

/// An error of a credential store, with a message an operator can act on.
public struct StoreError: Error, CustomStringConvertible, Sendable, Equatable {
    public var message: String
    public init(message: String) { self.message = message }
    public init(_ message: String) { self.message = message }
    public var description: String { self.message }
}
