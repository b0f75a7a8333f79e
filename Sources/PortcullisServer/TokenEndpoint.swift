import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOHTTP1
import PortcullisAuth
import PortcullisProxy
import PortcullisStores

/// `POST /v1/tokens` on the admin listener: a runner trades its long-lived secret for a
/// short-lived token per job. The caller authenticates with its own Basic credentials
/// (`Authorization`); it may issue tokens for itself, and members of the `token-issuers` group
/// (of the access rules or of the user database) for other users. The body is JSON:
/// `{"user": "name", "ttl": "1h", "label": "job-42"}`, every field optional (the caller, 1 h, no
/// label); the answer `{"user", "token", "expires_at", "id"}`. Lifetimes past `--token-max-ttl`
/// are refused. Never logs a token or a password.
struct TokenEndpoint: Sendable {
    /// Checks the caller's password (the proxy's users store, whatever it chains).
    let credentials: any CredentialStore
    /// Where tokens are issued.
    let store: any UserAdministration
    let policy: @Sendable () -> AccessPolicy
    let maximumTTL: TimeInterval
    let logger: Logger
    /// Password checks in progress (bcrypt is expensive): more than `maximumChecks` get a 429.
    private let checks = NIOLockedValueBox(0)
    static let maximumChecks = 4
    static let issuerGroup = "token-issuers"
    static let maximumBody = 4096

    init(
        credentials: any CredentialStore,
        store: any UserAdministration,
        policy: @escaping @Sendable () -> AccessPolicy,
        maximumTTL: TimeInterval,
        logger: Logger
    ) {
        self.credentials = credentials
        self.store = store
        self.policy = policy
        self.maximumTTL = maximumTTL
        self.logger = logger
    }

    struct Response: Sendable {
        var status: HTTPResponseStatus
        /// JSON.
        var body: String
        var headers: [(String, String)] = []
    }

    private struct Request: Decodable {
        var user: String?
        var ttl: Flexible?
        var label: String?

        /// `"1h"` or a number of seconds.
        struct Flexible: Decodable {
            var seconds: Double?
            init(from decoder: any Decoder) throws {
                let container = try decoder.singleValueContainer()
                if let number = try? container.decode(Double.self) {
                    self.seconds = number
                } else {
                    self.seconds = DurationText.parse(try container.decode(String.self))
                }
            }
        }
    }

    static func error(_ status: HTTPResponseStatus, _ message: String, headers: [(String, String)] = []) -> Response {
        let encoded = (try? JSONEncoder().encode(["error": message])).map { String(decoding: $0, as: UTF8.self) }
        return Response(status: status, body: (encoded ?? "{}") + "\n", headers: headers)
    }

    func handle(authorization: [String], body: [UInt8], client: String) async -> Response {
        let challenge = [("WWW-Authenticate", "Basic realm=\"portcullis admin\", charset=\"UTF-8\"")]
        guard authorization.count == 1, let credentials = Credentials(fieldValue: authorization[0]),
            credentials.schemeIs("basic"),
            case .success(let caller) = BasicCredentials.decode(token68: credentials.parameters)
        else {
            return Self.error(
                .unauthorized,
                "send your own credentials with Basic (Authorization: Basic …)",
                headers: challenge
            )
        }
        guard body.count <= Self.maximumBody else {
            return Self.error(.payloadTooLarge, "the body is larger than 4 KiB")
        }
        let request: Request
        do {
            request = body.isEmpty ? Request() : try JSONDecoder().decode(Request.self, from: Data(body))
        } catch {
            return Self.error(
                .badRequest,
                "the body is not JSON like {\"user\": \"name\", \"ttl\": \"1h\", \"label\": \"job-42\"}"
            )
        }
        let ttl = request.ttl.map { $0.seconds ?? -1 } ?? 3600
        guard ttl > 0 else { return Self.error(.badRequest, "ttl is not a duration like 90s, 30m or 1h") }
        guard ttl <= self.maximumTTL else {
            return Self.error(
                .badRequest,
                "ttl is longer than this proxy's --token-max-ttl (\(Int(self.maximumTTL)) s)"
            )
        }
        let admitted = self.checks.withLockedValue { count -> Bool in
            guard count < Self.maximumChecks else { return false }
            count += 1
            return true
        }
        guard admitted else {
            return Self.error(
                .tooManyRequests,
                "too many token requests are being checked; try again",
                headers: [("Retry-After", "1")]
            )
        }
        let outcome = await self.credentials.verify(user: caller.user, password: caller.password)
        self.checks.withLockedValue { $0 -= 1 }
        guard case .accepted(let callerName, _, let callerToken) = outcome else {
            if case .rejected(.unavailable) = outcome {
                return Self.error(.serviceUnavailable, "the users store cannot be read now")
            }
            self.logger.notice(
                "token request refused: wrong credentials",
                metadata: ["client": "\(client)", "user": "\(caller.user)"]
            )
            return Self.error(.unauthorized, "unknown user or wrong password", headers: challenge)
        }
        // A token does not mint tokens: only the long-lived secret does.
        guard callerToken == nil else {
            return Self.error(.forbidden, "a token cannot issue tokens; use the long-lived password")
        }
        let user = request.user ?? callerName
        if user != callerName {
            guard await self.isIssuer(callerName) else {
                return Self.error(
                    .forbidden,
                    "\(callerName) may issue tokens only for itself (not a member of \(Self.issuerGroup))"
                )
            }
        }
        do {
            let (token, info) = try await self.store.issueToken(
                for: user,
                ttl: ttl,
                label: request.label ?? "",
                by: ChangeActor(name: callerName, host: client)
            )
            self.logger.notice(
                "token issued",
                metadata: [
                    "by": "\(callerName)", "user": "\(user)", "id": "\(info.id)", "label": "\(info.label)",
                    "expires_at": "\(ISO8601DateFormatter().string(from: info.expiresAt))",
                ]
            )
            let answer: [String: String] = [
                "user": user, "token": token, "id": info.id,
                "expires_at": ISO8601DateFormatter().string(from: info.expiresAt),
            ]
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            return Response(status: .ok, body: String(decoding: try encoder.encode(answer), as: UTF8.self) + "\n")
        } catch let error as StoreError {
            return Self.error(.badRequest, error.message)
        } catch {
            return Self.error(.internalServerError, "the token could not be issued")
        }
    }

    /// A member of `token-issuers` in the access rules' groups or in the user database.
    private func isIssuer(_ user: String) async -> Bool {
        if self.policy().groups[Self.issuerGroup]?.contains(user) == true { return true }
        guard let users = try? await self.store.list() else { return false }
        return users.first { $0.name == user }?.groups.contains(Self.issuerGroup) ?? false
    }
}
