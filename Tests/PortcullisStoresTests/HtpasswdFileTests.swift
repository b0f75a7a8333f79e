import Foundation
import Testing

@testable import PortcullisStores

@Suite struct HtpasswdFileTests {
    @Test func parsesUsersAndSkipsCommentsBlankLinesAndCRLF() {
        let file = HtpasswdFile(
            contents: "# users\n\nalice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\r\nbob:$apr1$abc$PZF73YJz5hJ9yyI.7OP.R.\n"
        )
        #expect(file.entries.keys.sorted() == ["alice", "bob"])
        #expect(file.problems.isEmpty)
    }

    @Test func reportsBadLinesWithoutTheirContent() {
        let file = HtpasswdFile(contents: "carol:plaintextpassword\nnocolon\n:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n")
        #expect(file.entries.isEmpty)
        #expect(file.problems.count == 3)
        #expect(!file.problems.joined().contains("plaintextpassword"))
    }

    @Test func firstEntryOfADuplicatedUserWins() throws {
        let file = HtpasswdFile(
            contents: "dave:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\ndave:$apr1$abc$PZF73YJz5hJ9yyI.7OP.R.\n"
        )
        #expect(file.entries["dave"]?.format == .sha1)
        #expect(file.problems.count == 1)
    }

    @Test func storeRejectsUnknownUsersAndReloadsOnChange() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("htpasswd-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("users").path
        try "alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n".write(toFile: path, atomically: true, encoding: .utf8)

        let store = try HtpasswdStore(path: path)
        #expect(await store.verify(user: "alice", password: "secret") == .accepted(user: "alice"))
        #expect(await store.verify(user: "alice", password: "wrong") == .rejected(.invalid))
        #expect(await store.verify(user: "mallory", password: "secret") == .rejected(.invalid))
        #expect(try store.reloadIfChanged() == nil)

        let before = store.generation
        try "bob:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(try store.reloadIfChanged() != nil)
        #expect(store.generation == before + 1)
        #expect(await store.verify(user: "alice", password: "secret") == .rejected(.invalid))
        #expect(await store.verify(user: "bob", password: "secret") == .accepted(user: "bob"))
    }

    @Test func itsUsersAreNotEnrolledForNTLM() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("htpasswd-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("users").path
        try "alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n".write(toFile: path, atomically: true, encoding: .utf8)
        let store = try HtpasswdStore(path: path)
        #expect(await store.ntlmSecrets(name: "alice") == .notEnrolled(user: "alice"))
        #expect(await store.ntlmSecrets(name: "mallory") == .unknownUser)
    }

    @Test func missingFileIsAClearError() {
        #expect(throws: StoreError.self) { try HtpasswdStore(path: "/nonexistent/users") }
    }
}
