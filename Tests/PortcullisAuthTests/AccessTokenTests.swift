import Testing

@testable import PortcullisAuth

/// The token format: what a proxy accepts without the database, and everything it must refuse.
@Suite struct AccessTokenTests {
    let key = [UInt8](repeating: 7, count: 32)
    let token = AccessToken(id: Array(0..<12), user: "ci-runner", expires: 1_800_003_600)

    @Test func aTokenRoundTripsUnderItsKey() {
        let text = self.token.encoded(key: self.key)
        #expect(text.hasPrefix("pct_"))
        #expect(AccessToken.verified(text, key: self.key) == self.token)
        #expect(AccessToken.peek(text) == self.token)
        #expect(self.token.idText == "000102030405060708090a0b")
        // Base64url without padding: a Basic password and a Bearer value as they are.
        #expect(!text.contains("=") && !text.contains("+") && !text.contains("/"))
    }

    @Test func anotherKeyRefusesIt() {
        let text = self.token.encoded(key: self.key)
        #expect(AccessToken.verified(text, key: [UInt8](repeating: 8, count: 32)) == nil)
    }

    @Test func everyChangedCharacterIsRefused() {
        let text = Array(self.token.encoded(key: self.key))
        for index in AccessToken.prefix.count..<text.count {
            var changed = text
            changed[index] = changed[index] == "A" ? "B" : "A"
            #expect(AccessToken.verified(String(changed), key: self.key) == nil, "position \(index)")
        }
    }

    @Test func anotherUserOrExpiryIsAnotherMAC() {
        var forged = self.token
        forged.user = "admin"
        let signed = self.token.encoded(key: self.key)
        let mac = signed.suffix(43)
        let forgedText = String(forged.encoded(key: [UInt8](repeating: 1, count: 32)).dropLast(43)) + mac
        #expect(AccessToken.verified(forgedText, key: self.key) == nil)
    }

    @Test(arguments: ["", "pct_", "pct_!!!!", "pct_AAAA", "Basic pct_x", "pct_" + String(repeating: "A", count: 2000)])
    func malformedTextIsNoToken(text: String) {
        #expect(AccessToken.peek(text) == nil)
        #expect(AccessToken.verified(text, key: self.key) == nil)
    }

    @Test func aNameTooLongForATokenIsNotRead() {
        let long = AccessToken(id: Array(0..<12), user: String(repeating: "u", count: 300), expires: 1)
        #expect(AccessToken.peek(long.encoded(key: self.key)) == nil)
    }

    @Test func randomTokensDiffer() {
        let a = AccessToken.random(user: "u", expires: 1)
        let b = AccessToken.random(user: "u", expires: 1)
        #expect(a.id != b.id && a.id.count == 12)
    }
}
