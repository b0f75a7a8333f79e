import Foundation
import PortcullisAuth
import PortcullisStores
import Testing

/// Short-lived tokens, on every ``StoreKind``: issued, accepted as a Basic password by this and
/// another instance, refused once expired, revoked, or their user disabled or removed.
@Suite struct AccountStoreTokenTests {
    private let actor = ChangeActor(name: "tester", host: "test-host")

    @Test(arguments: StoreKind.available)
    func anIssuedTokenIsAPasswordForItsUserOnEveryInstance(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            try await f.store.add("ci", password: "long-lived", cost: 4, by: actor)
            let (token, info) = try await f.store.issueToken(for: "ci", ttl: 3600, label: "job-42", by: actor)
            #expect(info.user == "ci" && info.label == "job-42" && info.state == .active)
            #expect(info.expiresAt == f.clock.now.addingTimeInterval(3600))
            #expect(
                await f.store.verify(user: "ci", password: token)
                    == .accepted(user: "ci", validFor: 3600, token: "job-42")
            )
            // Another proxy on the same database: the same key, the token read by its id.
            let other = try await f.open("R")
            #expect(
                await other.verify(user: "ci", password: token)
                    == .accepted(user: "ci", validFor: 3600, token: "job-42")
            )
            // Someone else's name with it, and the user's own password, as before.
            try await f.store.add("other", password: "x", cost: 4, by: actor)
            #expect(await f.store.verify(user: "other", password: token) == .rejected(.invalid))
            #expect(await f.store.verify(user: "ci", password: "long-lived") == .accepted(user: "ci", validFor: nil))
            // Never the token in the database.
            #expect(try await !f.everything().contains(token))
            #expect(try await !f.everything().contains(String(token.dropFirst(4).prefix(40))))
        }
    }

    @Test(arguments: StoreKind.available)
    func anExpiredTokenIsNoLongerValid(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            try await f.store.add("ci", password: "pw", cost: 4, by: actor)
            let (token, _) = try await f.store.issueToken(for: "ci", ttl: 60, label: "", by: actor)
            f.clock.advance(59)
            guard case .accepted(_, let validFor, let label) = await f.store.verify(user: "ci", password: token) else {
                Issue.record("refused before its end")
                return
            }
            #expect(validFor == 1)
            #expect(label?.hasPrefix("id=") == true)
            f.clock.advance(1)
            #expect(await f.store.verify(user: "ci", password: token) == .rejected(.tokenExpired))
            #expect(try await f.store.tokens(user: "ci").map(\.state) == [.expired])
        }
    }

    @Test(arguments: StoreKind.available)
    func revokedTokensAndTheirUsersStateAreSeenAfterARefresh(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            try await f.store.add("ci", password: "pw", cost: 4, by: actor)
            let other = try await f.open("R")
            let (a, _) = try await f.store.issueToken(for: "ci", ttl: 3600, label: "a", by: actor)
            let (b, _) = try await f.store.issueToken(for: "ci", ttl: 3600, label: "b", by: actor)
            #expect(await other.verify(user: "ci", password: a) == .accepted(user: "ci", validFor: 3600, token: "a"))
            #expect(try await f.store.revokeTokens(id: nil, label: "a", user: nil, by: actor) == 1)
            #expect(try await f.store.revokeTokens(id: nil, label: "a", user: nil, by: actor) == 0)
            _ = try await other.refresh()
            #expect(await other.verify(user: "ci", password: a) == .rejected(.tokenRevoked))
            #expect(await other.verify(user: "ci", password: b) == .accepted(user: "ci", validFor: 3600, token: "b"))
            try await f.store.setDisabled("ci", true, by: actor)
            _ = try await other.refresh()
            #expect(await other.verify(user: "ci", password: b) == .rejected(.disabled))
            try await f.store.setDisabled("ci", false, by: actor)
            try await f.store.remove("ci", by: actor)
            _ = try await other.refresh()
            #expect(await other.verify(user: "ci", password: b) == .rejected(.invalid))
            // Removed with their user.
            #expect(try await f.store.tokens(user: nil).isEmpty)
        }
    }

    @Test(arguments: StoreKind.available)
    func listingAndRevokingByIdAndUser(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            try await f.store.add("a", password: "pw", cost: 4, by: actor)
            try await f.store.add("b", password: "pw", cost: 4, by: actor)
            let (_, first) = try await f.store.issueToken(for: "a", ttl: 60, label: "one", by: actor)
            f.clock.advance(1)
            _ = try await f.store.issueToken(for: "a", ttl: 60, label: "two", by: actor)
            f.clock.advance(1)
            _ = try await f.store.issueToken(for: "b", ttl: 60, label: "three", by: actor)
            #expect(try await f.store.tokens(user: nil).map(\.label) == ["three", "two", "one"])
            #expect(try await f.store.tokens(user: "a").map(\.label) == ["two", "one"])
            #expect(try await f.store.revokeTokens(id: first.id.uppercased(), label: nil, user: nil, by: actor) == 1)
            #expect(try await f.store.revokeTokens(id: nil, label: nil, user: "a", by: actor) == 1)
            #expect(try await f.store.tokens(user: nil).map(\.state) == [.active, .revoked, .revoked])
            await #expect(throws: StoreError.self) {
                _ = try await f.store.revokeTokens(id: nil, label: nil, user: nil, by: actor)
            }
            // Each issue and revocation is audited, without the token.
            let actions = try await f.store.audit().map(\.action)
            #expect(actions.filter { $0 == "token-issue" }.count == 3)
            #expect(actions.filter { $0 == "token-revoke" }.count == 2)
        }
    }

    @Test(arguments: StoreKind.available)
    func noTokenForAnUnknownDisabledOrExpiredUser(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            await #expect(throws: StoreError("no user ghost")) {
                _ = try await f.store.issueToken(for: "ghost", ttl: 60, label: "", by: actor)
            }
            try await f.store.add("off", password: "pw", cost: 4, by: actor)
            try await f.store.setDisabled("off", true, by: actor)
            await #expect(throws: StoreError.self) {
                _ = try await f.store.issueToken(for: "off", ttl: 60, label: "", by: actor)
            }
            try await f.store.add("old", password: "pw", cost: 4, by: actor)
            try await f.store.setExpiry("old", at: f.clock.now, by: actor)
            await #expect(throws: StoreError.self) {
                _ = try await f.store.issueToken(for: "old", ttl: 60, label: "", by: actor)
            }
            await #expect(throws: StoreError.self) {
                _ = try await f.store.issueToken(for: "old", ttl: 60, label: "bad\nlabel", by: actor)
            }
        }
    }

    @Test(arguments: StoreKind.available)
    func issuingDoesNotDropEveryProxysCachedLogins(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            try await f.store.add("ci", password: "pw", cost: 4, by: actor)
            let before = f.store.generation
            _ = try await f.store.issueToken(for: "ci", ttl: 60, label: "", by: actor)
            _ = try await f.store.refresh()
            #expect(f.store.generation == before)
        }
    }

    @Test(arguments: StoreKind.available)
    func aPasswordThatLooksLikeATokenIsStillAPassword(_ kind: StoreKind) async throws {
        try await kind.withStore { f in
            let lookalike = AccessToken(id: Array(0..<12), user: "odd", expires: 4_000_000_000)
                .encoded(key: [UInt8](repeating: 3, count: 32))
            try await f.store.add("odd", password: lookalike, cost: 4, by: actor)
            #expect(await f.store.verify(user: "odd", password: lookalike) == .accepted(user: "odd", validFor: nil))
        }
    }
}
