import ArgumentParser
import Foundation
import PortcullisPostgres
import PortcullisServer
import PortcullisStores

/// `portcullis users …`: manage the users of a writable store (the embedded database by default).
struct UsersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "users",
        abstract: "Add, rotate, disable, expire, list, import and export users.",
        discussion: """
            Every change is written to the store's audit table (who, when, what, from which host; never a secret) and, with --audit-log, appended to a JSON-lines file. A running proxy notices changes within 2 seconds and drops cached logins of changed users at once.
            """,
        subcommands: [
            Add.self, Passwd.self, Rotate.self, Disable.self, Enable.self, Expire.self, Remove.self, List.self,
            Import.self, Export.self,
        ]
    )

    struct StoreOptions: ParsableArguments {
        @Option(
            name: .long,
            help: ArgumentHelp(
                "sqlite:PATH or postgres://user:password@host:port/db (password also from PGPASSWORD). (default: <data dir>/portcullis.db)",
                valueName: "url"
            )
        )
        var store: String?

        @Option(name: .long, help: ArgumentHelp("Data directory of the default store.", valueName: "dir"))
        var dataDir: String?

        @Option(name: .long, help: ArgumentHelp("Realm the users belong to. (default: Portcullis)", valueName: "text"))
        var realm: String = "Portcullis"

        @Option(name: .long, help: ArgumentHelp("Also append each change to this JSON-lines file.", valueName: "file"))
        var auditLog: String?

        @Flag(name: .long, help: "Print results as JSON.")
        var json = false

        func open(creating: Bool = false) async throws -> any UserAdministration {
            let path: String
            if let store {
                let location: StoreLocation
                do {
                    location = try StoreLocation.parse(store)
                } catch let error as ServeError {
                    throw Failure(error.description)
                }
                switch location {
                case .sqlite(let p), .embedded(let p): path = p
                case .postgres(let url):
                    do {
                        return try await PostgresStore(url: url, realm: self.realm)
                    } catch let error as StoreError {
                        throw Failure(error.message)
                    }
                case .htpasswd, .htdigest:
                    throw Failure("--store: user files are read-only here; use sqlite:PATH or postgres://…")
                }
            } else {
                let dir =
                    self.dataDir
                    ?? ServerConfiguration.defaultDataDirectory(
                        environment: ProcessInfo.processInfo.environment
                    )
                path = dir + "/portcullis.db"
                if !FileManager.default.fileExists(atPath: path) {
                    guard creating else {
                        throw Failure(
                            "no user database at \(path) (run portcullis serve once, or pass --store sqlite:PATH)"
                        )
                    }
                    try FileManager.default.createDirectory(
                        atPath: dir,
                        withIntermediateDirectories: true,
                        attributes: [.posixPermissions: 0o700]
                    )
                }
            }
            if !FileManager.default.fileExists(atPath: path) {
                guard creating else { throw Failure("no user database at \(path)") }
                let fd = Foundation.open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
                if fd >= 0 { close(fd) }
            }
            do {
                return try await SQLiteStore(path: path, realm: self.realm)
            } catch let error as StoreError {
                throw Failure(error.message)
            }
        }

        /// Runs one change, then appends its audit entry to --audit-log.
        func change(_ store: any UserAdministration, _ body: () async throws -> Void) async throws {
            do {
                try await body()
            } catch let error as StoreError {
                throw Failure(error.message)
            }
            guard let path = self.auditLog, let entry = store.lastAudit else { return }
            let encoder = JSONEncoder()
            encoder.dateEncodingStrategy = .iso8601
            encoder.outputFormatting = [.sortedKeys]
            guard let data = try? encoder.encode(entry) else { return }
            if !FileManager.default.fileExists(atPath: path) {
                _ = FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o640])
            }
            guard let handle = FileHandle(forWritingAtPath: path) else {
                throw Failure("cannot append to the audit log \(path) (the change itself was made)")
            }
            handle.seekToEndOfFile()
            handle.write(data + Data("\n".utf8))
            try? handle.close()
        }

        func report(_ fields: [String: String], human: String) {
            if self.json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                print(String(decoding: (try? encoder.encode(fields)) ?? Data("{}".utf8), as: UTF8.self))
            } else {
                print(human)
            }
        }
    }

    struct PasswordOptions: ParsableArguments {
        @Flag(name: .long, help: "Read the password from the first line of standard input (else one is generated).")
        var passwordStdin = false

        @Option(name: .long, help: ArgumentHelp("bcrypt cost, 4-31. (default: 10)", valueName: "n"))
        var cost: Int = 10

        @Flag(
            name: .long,
            help: ArgumentHelp(
                "Also store Digest secrets (HA1 per algorithm) for the realm, needed to log in with Digest.",
                discussion:
                    "An HA1 value is password-equivalent for its realm; store it only where Digest is offered. A user already enrolled stays enrolled on every password change."
            )
        )
        var digest = false

        @Flag(
            name: .long,
            help: ArgumentHelp(
                "Also store the NT hash (MD4 of the password), needed to log in with NTLM.",
                discussion:
                    "An NT hash is password-equivalent wherever NTLM is accepted; it is stored only when asked. A user already enrolled stays enrolled on every password change, and a rotation's grace applies to the old NT hash too."
            )
        )
        var ntlm = false

        /// The password to set and whether it was generated (then it is printed once).
        func password() throws -> (String, generated: Bool) {
            guard (4...31).contains(self.cost) else { throw Failure("--cost must be 4 to 31") }
            if self.passwordStdin {
                guard let line = readLine(strippingNewline: true), !line.isEmpty else {
                    throw Failure("--password-stdin: no password on standard input")
                }
                return (line, false)
            }
            return (Self.generate(), true)
        }

        static func generate() -> String {
            let alphabet = Array("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789")
            var generator = SystemRandomNumberGenerator()
            return String((0..<24).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &generator)] })
        }
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
        init(_ message: String) { self.description = message }
    }

    /// Runs a subcommand body: a failure is one line on stderr and exit code 1, store untouched.
    static func run(command: String = "users", _ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let failure as Failure {
            FileHandle.standardError.write(Data("portcullis \(command): \(failure.description)\n".utf8))
            throw ExitCode(1)
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a user.")
        @Argument var name: String
        @Option(name: .long, help: ArgumentHelp("Comma-separated groups.", valueName: "list")) var groups: String?
        @OptionGroup var storeOptions: StoreOptions
        @OptionGroup var passwordOptions: PasswordOptions

        func run() async throws {
            try await UsersCommand.run {
                let store = try await self.storeOptions.open(creating: true)
                let (password, generated) = try self.passwordOptions.password()
                let groups = self.groups?.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } ?? []
                try await self.storeOptions.change(store) {
                    try await store.add(
                        self.name,
                        password: password,
                        groups: groups,
                        cost: self.passwordOptions.cost,
                        digest: self.passwordOptions.digest,
                        ntlm: self.passwordOptions.ntlm,
                        by: .current
                    )
                }
                var fields = ["action": "add", "user": self.name]
                if generated { fields["password"] = password }
                self.storeOptions.report(
                    fields,
                    human: generated
                        ? "added user \(self.name); password (shown once):\n\(password)" : "added user \(self.name)"
                )
            }
        }
    }

    struct Passwd: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set a new password at once (the old one stops working)."
        )
        @Argument var name: String
        @OptionGroup var storeOptions: StoreOptions
        @OptionGroup var passwordOptions: PasswordOptions

        func run() async throws {
            try await UsersCommand.run {
                let store = try await self.storeOptions.open()
                let (password, generated) = try self.passwordOptions.password()
                try await self.storeOptions.change(store) {
                    try await store.setPassword(
                        self.name,
                        password: password,
                        cost: self.passwordOptions.cost,
                        digest: self.passwordOptions.digest,
                        ntlm: self.passwordOptions.ntlm,
                        by: .current
                    )
                }
                var fields = ["action": "passwd", "user": self.name]
                if generated { fields["password"] = password }
                self.storeOptions.report(
                    fields,
                    human: generated
                        ? "new password for \(self.name) (shown once):\n\(password)"
                        : "password of \(self.name) changed"
                )
            }
        }
    }

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "A new secret; the old one keeps working until the grace period ends.",
            discussion: "The new secret is printed once, alone on its line (or as JSON with --json)."
        )
        @Argument var name: String
        @Option(
            name: .long,
            help: ArgumentHelp("How long the old secret still works: 90s, 15m, 2h, 1d.", valueName: "duration")
        )
        var grace: String = "15m"
        @OptionGroup var storeOptions: StoreOptions
        @OptionGroup var passwordOptions: PasswordOptions

        func run() async throws {
            try await UsersCommand.run {
                guard let seconds = UsersCommand.duration(self.grace) else {
                    throw Failure("--grace: '\(self.grace)' is not a duration like 90s, 15m, 2h or 1d")
                }
                let store = try await self.storeOptions.open()
                let (password, _) = try self.passwordOptions.password()
                try await self.storeOptions.change(store) {
                    try await store.rotate(
                        self.name,
                        password: password,
                        grace: seconds,
                        cost: self.passwordOptions.cost,
                        digest: self.passwordOptions.digest,
                        ntlm: self.passwordOptions.ntlm,
                        by: .current
                    )
                }
                let until = ISO8601DateFormatter().string(from: Date().addingTimeInterval(seconds))
                if self.storeOptions.json {
                    self.storeOptions.report(
                        ["action": "rotate", "user": self.name, "password": password, "old_valid_until": until],
                        human: ""
                    )
                } else {
                    FileHandle.standardError.write(
                        Data("rotated \(self.name); the old secret works until \(until); new secret:\n".utf8)
                    )
                    print(password)
                }
            }
        }
    }

    struct Disable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop a user's logins (reversible with enable).")
        @Argument var name: String
        @OptionGroup var storeOptions: StoreOptions

        func run() async throws {
            try await UsersCommand.run {
                let store = try await self.storeOptions.open()
                try await self.storeOptions.change(store) { try await store.setDisabled(self.name, true, by: .current) }
                self.storeOptions.report(["action": "disable", "user": self.name], human: "disabled \(self.name)")
            }
        }
    }

    struct Enable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Let a disabled user log in again.")
        @Argument var name: String
        @OptionGroup var storeOptions: StoreOptions

        func run() async throws {
            try await UsersCommand.run {
                let store = try await self.storeOptions.open()
                try await self.storeOptions.change(store) {
                    try await store.setDisabled(self.name, false, by: .current)
                }
                self.storeOptions.report(["action": "enable", "user": self.name], human: "enabled \(self.name)")
            }
        }
    }

    struct Expire: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Set when a user's credential stops working.")
        @Argument var name: String
        @Option(name: .long, help: ArgumentHelp("ISO 8601 time (2026-12-31T23:59:59Z), or never.", valueName: "time"))
        var at: String
        @OptionGroup var storeOptions: StoreOptions

        func run() async throws {
            try await UsersCommand.run {
                var date: Date?
                if self.at.lowercased() != "never" {
                    guard let parsed = UsersCommand.iso8601(self.at) else {
                        throw Failure("--at: '\(self.at)' is not an ISO 8601 time like 2026-12-31T23:59:59Z (or never)")
                    }
                    date = parsed
                }
                let store = try await self.storeOptions.open()
                try await self.storeOptions.change(store) {
                    try await store.setExpiry(self.name, at: date, by: .current)
                }
                let when = date.map { ISO8601DateFormatter().string(from: $0) } ?? "never"
                self.storeOptions.report(
                    ["action": "expire", "user": self.name, "expires_at": when],
                    human: "\(self.name) expires: \(when)"
                )
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a user.")
        @Argument var name: String
        @OptionGroup var storeOptions: StoreOptions

        func run() async throws {
            try await UsersCommand.run {
                let store = try await self.storeOptions.open()
                try await self.storeOptions.change(store) { try await store.remove(self.name, by: .current) }
                self.storeOptions.report(["action": "remove", "user": self.name], human: "removed \(self.name)")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Users with their state, expiry and last login (never a hash).",
            discussion:
                "With --expiring-within: only the users and tokens whose credential ends within that time (not ended yet), and exit 1 when there is any — for cron and CI."
        )
        @OptionGroup var storeOptions: StoreOptions

        @Option(
            name: .long,
            help: ArgumentHelp("Only credentials ending within this: 90s, 12h, 7d.", valueName: "duration")
        )
        var expiringWithin: String?

        func run() async throws {
            try await UsersCommand.run {
                let store = try await self.storeOptions.open()
                let users: [UserInfo]
                do { users = try await store.list() } catch let error as StoreError { throw Failure(error.message) }
                if let text = self.expiringWithin {
                    guard let window = UsersCommand.duration(text) else {
                        throw Failure("--expiring-within: '\(text)' is not a duration like 90s, 12h or 7d")
                    }
                    try await Self.listExpiring(
                        users: users,
                        store: store,
                        window: window,
                        json: self.storeOptions.json
                    )
                    return
                }
                if self.storeOptions.json {
                    let encoder = JSONEncoder()
                    encoder.dateEncodingStrategy = .iso8601
                    encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
                    print(String(decoding: try encoder.encode(users), as: UTF8.self))
                    return
                }
                let iso = ISO8601DateFormatter()
                func date(_ d: Date?) -> String { d.map { iso.string(from: $0) } ?? "-" }
                print(
                    "USER".padding(toLength: 20, withPad: " ", startingAt: 0)
                        + " STATE     EXPIRES               LAST LOGIN            DIGEST NTLM GROUPS"
                )
                func column(_ text: String, _ width: Int) -> String {
                    text.padding(toLength: max(width, text.count), withPad: " ", startingAt: 0)
                }
                for u in users {
                    let groups = u.groups.isEmpty ? "-" : u.groups.joined(separator: ",")
                    let parts: [String] = [
                        column(u.name, 20), column(u.state, 9), column(date(u.expiresAt), 21),
                        column(date(u.lastLoginAt), 21), column(u.digest ? "yes" : "no", 6),
                        column(u.ntlm ? "yes" : "no", 4), groups,
                    ]
                    print(parts.joined(separator: " "))
                }
            }
        }
    }

    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Copy users from an Apache htpasswd file (existing users are kept)."
        )
        @Option(name: .long, help: ArgumentHelp("The htpasswd file.", valueName: "file")) var htpasswd: String
        @OptionGroup var storeOptions: StoreOptions

        func run() async throws {
            try await UsersCommand.run {
                let file: HtpasswdFile
                do { file = try HtpasswdFile.load(path: self.htpasswd) } catch let error as StoreError {
                    throw Failure(error.message)
                }
                let store = try await self.storeOptions.open(creating: true)
                var result: (imported: Int, skipped: [String]) = (0, [])
                try await self.storeOptions.change(store) {
                    result = try await store.importHtpasswd(file, by: .current)
                }
                self.storeOptions.report(
                    [
                        "action": "import", "imported": "\(result.imported)",
                        "skipped": result.skipped.joined(separator: ","),
                    ],
                    human: "imported \(result.imported) users"
                        + (result.skipped.isEmpty ? "" : "; kept existing: \(result.skipped.joined(separator: ", "))")
                        + (file.problems.isEmpty ? "" : "; lines skipped: \(file.problems.count)")
                )
            }
        }
    }

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the users as an htpasswd file (bcrypt hashes only)."
        )
        @Flag(name: .long, help: "htpasswd format (the only one).") var htpasswd = false
        @OptionGroup var storeOptions: StoreOptions

        func run() async throws {
            try await UsersCommand.run {
                guard self.htpasswd else { throw Failure("say which format: --htpasswd") }
                let store = try await self.storeOptions.open()
                let (lines, skipped) = try await store.exportHtpasswd()
                for line in lines { print(line) }
                if !skipped.isEmpty {
                    FileHandle.standardError.write(
                        Data("not exported (no bcrypt hash): \(skipped.joined(separator: ", "))\n".utf8)
                    )
                }
            }
        }
    }

    /// `90s`, `15m`, `2h`, `1d` (or plain seconds).
    static func duration(_ text: String) -> TimeInterval? {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
        if let last = text.last, let unit = units[last], let n = Double(text.dropLast()), n >= 0 { return n * unit }
        if let n = Double(text), n >= 0 { return n }
        return nil
    }

    static func iso8601(_ text: String) -> Date? {
        let formatter = ISO8601DateFormatter()
        if let date = formatter.date(from: text) { return date }
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.date(from: text)
    }
}

extension UsersCommand.List {
    /// Users whose expiry and tokens whose end fall within `window` from now (not past yet);
    /// exit 1 when there is any.
    static func listExpiring(users: [UserInfo], store: any UserAdministration, window: TimeInterval, json: Bool)
        async throws
    {
        let now = Date()
        let limit = now.addingTimeInterval(window)
        let expiring = users.filter { user in
            guard user.state != "disabled", let expires = user.expiresAt else { return false }
            return expires > now && expires <= limit
        }
        let tokens: [TokenInfo]
        do {
            tokens = try await store.tokens(user: nil).filter { $0.state == .active && $0.expiresAt <= limit }
        } catch let error as StoreError {
            throw UsersCommand.Failure(error.message)
        }
        if json {
            struct Document: Encodable {
                var users: [UserInfo]
                var tokens: [TokenInfo]
            }
            let encoder = JSONEncoder()
            encoder.dateEncodingStrategy = .iso8601
            encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
            print(String(decoding: try encoder.encode(Document(users: expiring, tokens: tokens)), as: UTF8.self))
        } else {
            let iso = ISO8601DateFormatter()
            func left(_ date: Date) -> String {
                let seconds = Int(date.timeIntervalSince(now))
                return seconds >= 86400
                    ? "\(seconds / 86400)d \(seconds % 86400 / 3600)h" : "\(seconds / 3600)h \(seconds % 3600 / 60)m"
            }
            if expiring.isEmpty && tokens.isEmpty {
                print("nothing ends within \(Int(window)) s")
            }
            for user in expiring {
                guard let expires = user.expiresAt else { continue }
                print("user   \(user.name)  expires \(iso.string(from: expires))  (in \(left(expires)))")
            }
            for token in tokens {
                let label = token.label.isEmpty ? token.id : token.label
                print(
                    "token  \(token.user) \(label)  expires \(iso.string(from: token.expiresAt))  (in \(left(token.expiresAt)))"
                )
            }
        }
        if !expiring.isEmpty || !tokens.isEmpty { throw ExitCode(1) }
    }
}
