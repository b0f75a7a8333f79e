import Foundation
import PortcullisStores

/// Where a PostgreSQL user database is: `postgres://user:password@host:port/database`
/// (also `postgresql://`), parsed with Foundation's URL parser, user and password
/// percent-decoded.
///
/// The password is needed to connect and nowhere else: ``redacted`` (what every message, log
/// line and `location` shows) replaces it with `***`, and no error here ever quotes the URL.
public struct PostgresURL: Sendable, Equatable {
    public var host: String
    public var port: Int
    public var user: String
    public var password: String?
    public var database: String

    public init(host: String, port: Int = 5432, user: String, password: String?, database: String) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
    }

    /// Whether `text` names a PostgreSQL store at all (then ``init(parsing:environment:)``
    /// says what is wrong with it).
    public static func isPostgres(_ text: String) -> Bool {
        let lower = text.lowercased()
        return lower.hasPrefix("postgres://") || lower.hasPrefix("postgresql://")
    }

    /// Parses `postgres://user[:password]@host[:port][/database][?sslmode=disable]`.
    ///
    /// Without a password in the URL, `PGPASSWORD` is used (as libpq does), so the password
    /// need not be on a command line where `ps` shows it. The database defaults to the user
    /// name, the port to 5432. Only `sslmode=disable` is understood: this version does not
    /// speak TLS to the database, and says so rather than silently sending cleartext when
    /// `require` was asked for.
    public init(parsing text: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws {
        let example = "postgres://user:password@host:5432/database"
        guard Self.isPostgres(text) else { throw StoreError("--store: not a postgres:// URL (\(example))") }
        guard let components = URLComponents(string: text) else {
            throw StoreError(
                "--store: the postgres URL cannot be parsed (percent-encode special characters of the password, e.g. @ as %40)"
            )
        }
        guard let host = components.host.map(Self.unbracketed), !host.isEmpty else {
            throw StoreError("--store: the postgres URL needs a host (\(example))")
        }
        guard let user = components.user, !user.isEmpty else {
            throw StoreError("--store: the postgres URL needs a user name (\(example))")
        }
        let port = components.port ?? 5432
        guard (1...65535).contains(port) else { throw StoreError("--store: the postgres URL's port must be 1-65535") }
        var database = components.path
        if database.hasPrefix("/") { database.removeFirst() }
        guard !database.contains("/") else {
            throw StoreError("--store: the postgres URL's path must be just the database name (\(example))")
        }
        for item in components.queryItems ?? [] {
            switch (item.name, item.value) {
            case ("sslmode", "disable"):
                continue
            case ("sslmode", let mode):
                throw StoreError(
                    "--store: sslmode=\(mode ?? "") is not supported: only sslmode=disable (no TLS to the database) is"
                )
            default:
                throw StoreError("--store: unknown postgres URL parameter '\(item.name)' (only sslmode=disable)")
            }
        }
        self.host = host
        self.port = port
        self.user = user
        self.password = components.password ?? environment["PGPASSWORD"]
        self.database = database.isEmpty ? user : database
    }

    /// The URL without its password: safe for messages, logs and `users` output.
    public var redacted: String {
        let host = self.host.contains(":") ? "[\(self.host)]" : self.host
        let user = Self.encode(self.user)
        let credentials = self.password == nil ? user : "\(user):***"
        return "postgres://\(credentials)@\(host):\(self.port)/\(Self.encode(self.database))"
    }

    private static func unbracketed(_ host: String) -> String {
        host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
    }

    private static func encode(_ text: String) -> String {
        var allowed = CharacterSet.urlUserAllowed
        allowed.remove(charactersIn: ":@/")
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text
    }
}

extension PostgresURL: CustomStringConvertible {
    /// The redacted URL: interpolating a ``PostgresURL`` into a message can never leak the password.
    public var description: String { self.redacted }
}

extension PostgresURL: CustomDebugStringConvertible, CustomReflectable {
    public var debugDescription: String { self.redacted }
    /// `dump()` and `String(reflecting:)` show the redacted URL too, never the password field.
    public var customMirror: Mirror { Mirror(self, children: ["url": self.redacted]) }
}
