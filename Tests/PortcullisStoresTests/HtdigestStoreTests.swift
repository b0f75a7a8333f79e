import Foundation
import PortcullisAuth
import PortcullisStores
import Testing

@Suite struct HtdigestStoreTests {
    @Test func itsUsersAreNotEnrolledForNTLM() async throws {
        let path = NSTemporaryDirectory() + "htdigest-\(UUID().uuidString)"
        defer { unlink(path) }
        let ha1 = DigestAlgorithm(hash: .md5).hex("alice:R:secret")
        try "alice:R:\(ha1)\nbob:Other:\(ha1)\n".write(toFile: path, atomically: true, encoding: .utf8)
        let store = try HtdigestStore(path: path, realm: "R")
        #expect(await store.ntlmSecrets(name: "alice") == .notEnrolled(user: "alice"))
        #expect(await store.ntlmSecrets(name: "bob") == .unknownUser, "a user of another realm is no user here")
        #expect(await store.ntlmSecrets(name: "mallory") == .unknownUser)
    }
}
