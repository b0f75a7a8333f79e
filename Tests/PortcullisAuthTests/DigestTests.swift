import PortcullisAuth
import Testing

@Suite struct DigestTests {
    /// RFC 7616 §3.9.1: the same request answered with MD5 and with SHA-256.
    private func rfcChallenge(algorithm: String) throws -> DigestChallenge {
        let challenges = try ChallengeParser.parse(
            fieldValue: """
                Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=\(algorithm), \
                nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", \
                opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
                """
        )
        return try #require(DigestChallenge(challenges[0]))
    }

    @Test(arguments: [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ])
    func rfc7616Section391Vectors(algorithm: String, expected: String) throws {
        let challenge = try rfcChallenge(algorithm: algorithm)
        #expect(challenge.qop == ["auth", "auth-int"])
        let responder = try #require(DigestResponder(challenge: challenge, user: "Mufasa", password: "Circle of Life"))
        let response = responder.response(
            method: "GET",
            uri: "/dir/index.html",
            nonceCount: 1,
            cnonce: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
        )
        #expect(response == expected)
    }

    @Test func authorizationCarriesEveryParameterTheServerNeeds() throws {
        let challenge = try rfcChallenge(algorithm: "SHA-256")
        let responder = try #require(DigestResponder(challenge: challenge, user: "Mufasa", password: "Circle of Life"))
        let value = responder.authorization(method: "GET", uri: "/dir/index.html", nonceCount: 1, cnonce: "abc")
        let parsed = try #require(Credentials(fieldValue: value))
        #expect(parsed.schemeIs("Digest"))
        for part in [
            "username=\"Mufasa\"", "realm=\"http-auth@example.org\"", "uri=\"/dir/index.html\"", "algorithm=SHA-256",
            "nc=00000001", "cnonce=\"abc\"", "qop=auth", "opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"",
        ] {
            #expect(value.contains(part), "\(part)")
        }
    }

    @Test func userhashSendsTheHashedNameNotTheName() throws {
        var challenge = try rfcChallenge(algorithm: "SHA-256")
        challenge.userhash = true
        let responder = try #require(DigestResponder(challenge: challenge, user: "Mufasa", password: "x"))
        let value = responder.authorization(method: "GET", uri: "/", nonceCount: 1, cnonce: "c")
        #expect(!value.contains("Mufasa"))
        #expect(value.contains("userhash=true"))
        #expect(value.contains("username=\"\(DigestAlgorithm(hash: .sha256).hex("Mufasa:http-auth@example.org"))\""))
    }

    @Test func nonAsciiNamesGoInUsernameStar() throws {
        let challenge = try rfcChallenge(algorithm: "MD5")
        let responder = try #require(DigestResponder(challenge: challenge, user: "Jäsøn Doe", password: "x"))
        let value = responder.authorization(method: "GET", uri: "/", nonceCount: 1, cnonce: "c")
        #expect(value.contains("username*=UTF-8''J%C3%A4s%C3%B8n%20Doe"))
    }

    @Test func algorithmTokensAndDefaults() {
        #expect(DigestAlgorithm(token: nil) == DigestAlgorithm(hash: .md5))
        #expect(DigestAlgorithm(token: "md5-sess") == DigestAlgorithm(hash: .md5, session: true))
        #expect(DigestAlgorithm(token: "SHA-512-256-sess") == DigestAlgorithm(hash: .sha512_256, session: true))
        #expect(DigestAlgorithm(token: "SHA-1") == nil)
    }

    @Test func sessionVariantHashesTheNonceIntoHA1() throws {
        let plain = try #require(
            DigestResponder(challenge: try rfcChallenge(algorithm: "MD5"), user: "u", password: "p")
        )
        let sess = try #require(
            DigestResponder(challenge: try rfcChallenge(algorithm: "MD5-sess"), user: "u", password: "p")
        )
        #expect(
            plain.response(method: "GET", uri: "/", nonceCount: 1, cnonce: "c")
                != sess.response(method: "GET", uri: "/", nonceCount: 1, cnonce: "c")
        )
    }

    /// FIPS 180-4 example "abc" for SHA-512/256: its own initial hash values, not a truncated
    /// SHA-512.
    @Test func sha512_256MatchesTheFIPSExample() {
        #expect(
            DigestAlgorithm(hash: .sha512_256).hex("abc")
                == "53048e2681941ef99b2e29b76b4c7dabe4c2d0c634fc6d46e0e2f13107e7af23"
        )
    }
}
