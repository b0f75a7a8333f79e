import PortcullisAuth
import Testing

@testable import PortcullisStores

/// Vectors made with Apache's `htpasswd` (apache2-utils 2.4) and `openssl passwd`.
@Suite struct PasswordHashTests {
    static let vectors: [(hash: String, password: String, format: PasswordHash.Format)] = [
        ("$2y$04$Yo/PlLx7mMIo9NLGobxjAuKFm/3APIZYD9LAtBgVMwC7O/N.qlafK", "secret", .bcrypt),
        ("$2b$04$Yo/PlLx7mMIo9NLGobxjAuKFm/3APIZYD9LAtBgVMwC7O/N.qlafK", "secret", .bcrypt),
        ("$2a$04$Yo/PlLx7mMIo9NLGobxjAuKFm/3APIZYD9LAtBgVMwC7O/N.qlafK", "secret", .bcrypt),
        ("$apr1$OergLt9f$HtvMmIK0NbjyZJ5t4Mgj91", "secret", .apr1),
        ("$apr1$abc$PZF73YJz5hJ9yyI.7OP.R.", "secret", .apr1),
        ("$apr1$saltsalt$XevkEqeWiNTGwRFmGcDAb/", "pässwörd:@% x", .apr1),
        ("{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=", "secret", .sha1),
        ("$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA", "secret", .sha256Crypt),
        (
            "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1",
            "secret", .sha512Crypt
        ),
        ("gK/wbvySY3E6k", "secret", .desCrypt),
    ]

    @Test(arguments: 0..<vectors.count)
    func verifiesTheRightPasswordOnly(index: Int) throws {
        let vector = Self.vectors[index]
        let hash = try #require(PasswordHash(vector.hash))
        #expect(hash.format == vector.format)
        #expect(hash.verify(vector.password))
        #expect(!hash.verify(vector.password + "x"))
        #expect(!hash.verify(""))
    }

    @Test(arguments: ["secret", "plain:text", "$2y$04$short", "{SHA}tooShort", "$apr1$nosep", "$9$unknown$x", ""])
    func refusesPlainTextAndUnknownFormats(encoded: String) {
        #expect(PasswordHash(encoded) == nil)
    }

    @Test func newBcryptHashesVerifyAndUseApachesPrefix() throws {
        let hash = try PasswordHash.bcrypt("correct horse", cost: 4)
        #expect(hash.encoded.hasPrefix("$2y$04$"))
        #expect(hash.verify("correct horse"))
        #expect(!hash.verify("correct horsE"))
    }

    @Test func constantTimeEqualityComparesWholeArrays() {
        #expect(ConstantTime.equal([1, 2, 3], [1, 2, 3]))
        #expect(!ConstantTime.equal([1, 2, 3], [1, 2, 4]))
        #expect(!ConstantTime.equal([1, 2, 3], [1, 2]))
        #expect(ConstantTime.equal([], []))
    }
}
