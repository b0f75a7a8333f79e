import ArgumentParser
import Foundation
import PortcullisServer
import PortcullisStores

/// `portcullis tokens …`: short-lived credentials for CI jobs and automation.
struct TokensCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokens",
        abstract: "Issue, list and revoke short-lived tokens.",
        discussion: """
            A token is sent as the Basic password (NAME:TOKEN), so every client that does Basic can use it, or as Proxy-Authorization: Bearer TOKEN when serve's --auth includes bearer. It is signed under a key the user database holds: every proxy sharing the database accepts it without asking the database. A revocation, and the user being disabled, expired or removed, apply within 2 seconds. Tokens are shown once, when issued, and never logged.
            """,
        subcommands: [Issue.self, List.self, Revoke.self]
    )

    struct Issue: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a new token for a user, alone on its line.")

        @Option(name: .long, help: ArgumentHelp("The user the token logs in as.", valueName: "name"))
        var user: String

        @Option(name: .long, help: ArgumentHelp("How long it works: 90s, 30m, 1h, 7d.", valueName: "duration"))
        var ttl: String = "1h"

        @Option(
            name: .long,
            help: ArgumentHelp("A name for it, shown in lists and the access log (the CI job).", valueName: "text")
        )
        var label: String = ""

        @Option(name: .long, help: ArgumentHelp("The longest --ttl allowed. (default: 24h)", valueName: "duration"))
        var tokenMaxTtl: String = "24h"

        @OptionGroup var storeOptions: UsersCommand.StoreOptions

        func run() async throws {
            try await UsersCommand.run(command: "tokens") {
                let ttl = try Self.seconds(self.ttl, option: "--ttl")
                let maximum = try Self.seconds(self.tokenMaxTtl, option: "--token-max-ttl")
                guard ttl <= maximum else {
                    throw UsersCommand.Failure("--ttl \(self.ttl) is longer than --token-max-ttl \(self.tokenMaxTtl)")
                }
                let store = try await self.storeOptions.open()
                var issued: (token: String, info: TokenInfo)?
                try await self.storeOptions.change(store) {
                    issued = try await store.issueToken(for: self.user, ttl: ttl, label: self.label, by: .current)
                }
                guard let issued else { return }
                if self.storeOptions.json {
                    let document = TokenIssued(
                        user: issued.info.user,
                        token: issued.token,
                        expiresAt: issued.info.expiresAt,
                        id: issued.info.id
                    )
                    print(try document.json())
                } else {
                    print(issued.token)
                }
            }
        }

        static func seconds(_ text: String, option: String) throws -> TimeInterval {
            guard let value = UsersCommand.duration(text), value > 0 else {
                throw UsersCommand.Failure("\(option): '\(text)' is not a duration like 90s, 30m, 1h or 7d")
            }
            return value
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Tokens with their id, label, user, expiry and last use (never the token)."
        )

        @Option(name: .long, help: ArgumentHelp("Only this user's tokens.", valueName: "name"))
        var user: String?

        @OptionGroup var storeOptions: UsersCommand.StoreOptions

        func run() async throws {
            try await UsersCommand.run(command: "tokens") {
                let store = try await self.storeOptions.open()
                let tokens: [TokenInfo]
                do { tokens = try await store.tokens(user: self.user) } catch let error as StoreError {
                    throw UsersCommand.Failure(error.message)
                }
                if self.storeOptions.json {
                    let encoder = JSONEncoder()
                    encoder.dateEncodingStrategy = .iso8601
                    encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
                    print(String(decoding: try encoder.encode(tokens), as: UTF8.self))
                    return
                }
                let iso = ISO8601DateFormatter()
                func column(_ text: String, _ width: Int) -> String {
                    text.padding(toLength: max(width, text.count), withPad: " ", startingAt: 0)
                }
                print(
                    [
                        column("ID", 24), column("USER", 16), column("STATE", 7), column("EXPIRES", 20),
                        column("LAST USE", 20), "LABEL",
                    ]
                    .joined(separator: " ")
                )
                for token in tokens {
                    print(
                        [
                            column(token.id, 24), column(token.user, 16), column(token.state.rawValue, 7),
                            column(iso.string(from: token.expiresAt), 20),
                            column(token.lastUsedAt.map { iso.string(from: $0) } ?? "-", 20),
                            token.label.isEmpty ? "-" : token.label,
                        ]
                        .joined(separator: " ")
                    )
                }
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke tokens by id, label or user (every given criterion must match)."
        )

        @Option(name: .long, help: ArgumentHelp("The token's id (from tokens list).", valueName: "id"))
        var id: String?

        @Option(name: .long, help: ArgumentHelp("Every token with this label.", valueName: "text"))
        var label: String?

        @Option(name: .long, help: ArgumentHelp("Every token of this user.", valueName: "name"))
        var user: String?

        @OptionGroup var storeOptions: UsersCommand.StoreOptions

        func validate() throws {
            if self.id == nil && self.label == nil && self.user == nil {
                throw ValidationError("say which tokens: --id, --label or --user")
            }
        }

        func run() async throws {
            try await UsersCommand.run(command: "tokens") {
                let store = try await self.storeOptions.open()
                var count = 0
                try await self.storeOptions.change(store) {
                    count = try await store.revokeTokens(id: self.id, label: self.label, user: self.user, by: .current)
                }
                self.storeOptions.report(
                    ["action": "token-revoke", "revoked": "\(count)"],
                    human: "revoked \(count) token\(count == 1 ? "" : "s")"
                )
            }
        }
    }
}

/// What `tokens issue --json` and `POST /v1/tokens` answer.
struct TokenIssued: Encodable {
    var user: String
    var token: String
    var expiresAt: Date
    var id: String

    enum CodingKeys: String, CodingKey {
        case user, token, id
        case expiresAt = "expires_at"
    }

    func json() throws -> String {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(self), as: UTF8.self)
    }
}
