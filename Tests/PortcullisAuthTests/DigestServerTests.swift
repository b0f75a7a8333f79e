import Foundation
import NIOConcurrencyHelpers
import Testing

@testable import PortcullisAuth

@Suite struct DigestServerTests {
    /// Milliseconds since 1970, moved by hand: nonce lifetimes are tested without sleeping.
    final class Clock: Sendable {
        private let value = NIOLockedValueBox<UInt64>(1_800_000_000_000)
        var now: UInt64 { self.value.withLockedValue { $0 } }
        func advance(seconds: UInt64) { self.value.withLockedValue { $0 += seconds * 1000 } }
    }

    private let key = Array("0123456789abcdef0123456789abcdef".utf8)

    private func authority(
        _ clock: Clock,
        realm: String = "R",
        lifetime: Int = 60,
        tracked: Int = 1000
    ) -> DigestAuthority {
        DigestAuthority(
            settings: .init(realm: realm, nonceLifetime: lifetime, maximumTrackedNonces: tracked),
            key: self.key,
            clock: { clock.now }
        )
    }

    /// RFC 7616 §3.9.1 answered by the server side: the expected responses are the RFC's.
    @Test(arguments: [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ])
    func rfc7616Vectors(algorithm: String, expected: String) throws {
        let field = """
            Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", \
            algorithm=\(algorithm), nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, \
            cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, response="\(expected)", \
            opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
            """
        let parsed = try DigestAuthorization.parse(field).get()
        let a = try #require(DigestAlgorithm(token: algorithm))
        let ha1 = a.hex("Mufasa:http-auth@example.org:Circle of Life")
        let server = self.authority(Clock(), realm: "http-auth@example.org")
        #expect(server.expectedResponse(parsed, ha1: ha1, method: "GET") == expected)
        #expect(
            server.expectedResponse(parsed, ha1: a.hex("Mufasa:http-auth@example.org:circle of life"), method: "GET")
                != expected
        )
    }

    /// RFC 2617 §3.5 (MD5, qop=auth).
    @Test func rfc2617Vector() throws {
        let field = """
            Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", \
            uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", \
            response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41"
            """
        let parsed = try DigestAuthorization.parse(field).get()
        let ha1 = DigestAlgorithm(hash: .md5).hex("Mufasa:testrealm@host.com:Circle Of Life")
        #expect(
            self.authority(Clock(), realm: "testrealm@host.com").expectedResponse(parsed, ha1: ha1, method: "GET")
                == "6629fae49393a05397450978507c4ef1"
        )
    }

    /// RFC 7616 §3.9.2: a user hash, computed by the client (DigestResponder) and the way a store
    /// computes it for look-up. The RFC prints 488869…; the value here is the corrected one from
    /// its errata (SHA-512/256 of the UTF-8 "Jäsøn Doe:api@example.org"). The example's
    /// `response` is not checked: from the printed inputs it comes out different here, and the
    /// §3.9.1 vectors already pin the response computation.
    @Test func userhashBothWays() throws {
        let sha512 = DigestAlgorithm(hash: .sha512_256)
        #expect(
            sha512.hex("J\u{E4}s\u{F8}n Doe:api@example.org")
                == "793263caabb707a56211940d90411ea4a575adeccb7e360aeb624ed06ece9b0b"
        )
        let md5 = DigestAlgorithm(hash: .md5)
        let challenge = try #require(
            DigestChallenge(
                try ChallengeParser.parse(fieldValue: #"Digest realm="R", nonce="n", qop="auth", userhash=true"#)[0]
            )
        )
        let client = try #require(DigestResponder(challenge: challenge, user: "alice", password: "pw"))
        let field = client.authorization(method: "GET", uri: "/", nonceCount: 1, cnonce: "c")
        let parsed = try DigestAuthorization.parse(field).get()
        #expect(parsed.userhash && parsed.username == md5.hex("alice:R"))
        #expect(
            self.authority(Clock()).expectedResponse(parsed, ha1: md5.hex("alice:R:pw"), method: "GET")
                == parsed.response
        )
    }

    @Test func nonAsciiNamesTravelAsExtendedValues() throws {
        let parsed = try DigestAuthorization.parse(
            #"Digest username*=UTF-8''J%C3%A4s%C3%B8n%20Doe, realm="R", nonce="n", uri="/", qop=auth, nc=00000001, cnonce="c", response="00000000000000000000000000000000""#
        ).get()
        #expect(parsed.username == "J\u{E4}s\u{F8}n Doe")
    }

    /// Malformed answers: each a 407 with a reason, never a crash or an echo of the value.
    @Test(arguments: [
        #"Digest username="a, realm="R""#,  // unterminated quote
        #"Digest username="a", username="b", realm="R", nonce="n", uri="/", qop=auth, nc=00000001, cnonce="c", response="00000000000000000000000000000000""#,
        #"Digest realm="R", nonce="n", uri="/", qop=auth, nc=00000001, cnonce="c", response="00000000000000000000000000000000""#,
        #"Digest username="a", nonce="n", uri="/", qop=auth, nc=00000001, cnonce="c", response="00000000000000000000000000000000""#,
        #"Digest username="a", realm="R", nonce="n", uri="/", response="00000000000000000000000000000000""#,  // no qop
        #"Digest username="a", realm="R", nonce="n", uri="/", qop=auth-int, nc=00000001, cnonce="c", response="00000000000000000000000000000000""#,
        #"Digest username="a", realm="R", nonce="n", uri="/", qop=auth, nc=1, cnonce="c", response="00000000000000000000000000000000""#,
        #"Digest username="a", realm="R", nonce="n", uri="/", qop=auth, nc=0000000g, cnonce="c", response="00000000000000000000000000000000""#,
        #"Digest username="a", realm="R", nonce="n", uri="/", qop=auth, nc=00000000, cnonce="c", response="00000000000000000000000000000000""#,
        #"Digest username="a", realm="R", nonce="n", uri="/", qop=auth, nc=00000001, response="00000000000000000000000000000000""#,
        #"Digest username="a", realm="R", nonce="n", uri="/", qop=auth, nc=00000001, cnonce="c", response="short""#,
        #"Digest username="a", realm="R", nonce="n", uri="/", qop=auth, nc=00000001, cnonce="c", response="00000000000000000000000000000000", algorithm=SHA-1"#,
        #"Digest username="a", realm="R", nonce="n", uri="/", qop=auth, nc=00000001, cnonce="c", algorithm=SHA-256, response="00000000000000000000000000000000""#,
        #"Digest username="a", username*=UTF-8''a, realm="R", nonce="n", uri="/", qop=auth, nc=00000001, cnonce="c", response="00000000000000000000000000000000""#,
        #"Digest username*=latin1''a, realm="R", nonce="n", uri="/", qop=auth, nc=00000001, cnonce="c", response="00000000000000000000000000000000""#,
        #"Digest username*=UTF-8''%ff, realm="R", nonce="n", uri="/", qop=auth, nc=00000001, cnonce="c", response="00000000000000000000000000000000""#,
        #"Digest username="a", realm="R", nonce="n", uri="/", qop=auth, nc=00000001, cnonce="c", response="00000000000000000000000000000000", userhash=maybe"#,
        #"Digest abc=="#,
        #"Digest username="a", realm="R", Basic YTpi"#,
        "Digest username=\"\(String(repeating: "x", count: 5000))\", realm=\"R\"",
    ])
    func malformedAnswers(field: String) {
        guard case .failure(let failure) = DigestAuthorization.parse(field) else {
            Issue.record("accepted: \(field.prefix(60))")
            return
        }
        #expect(failure.reason == .malformedCredentials)
        #expect(!failure.explanation.contains("xxxx"))
    }

    @Test func noncesExpireAreBoundToTheKeyAndCountsAreNotReplayed() {
        let clock = Clock()
        let server = self.authority(clock, lifetime: 60)
        let nonce = server.mintNonce()
        #expect(server.checkNonce(nonce, nonceCount: 1) == .valid(age: 0))
        #expect(server.checkNonce(nonce, nonceCount: 1) == .stale("nonce count replayed"))
        #expect(server.checkNonce(nonce, nonceCount: 3) == .valid(age: 0))
        // Out of order inside the window (parallel requests) is fine, once.
        #expect(server.checkNonce(nonce, nonceCount: 2) == .valid(age: 0))
        #expect(server.checkNonce(nonce, nonceCount: 2) == .stale("nonce count replayed"))
        #expect(server.checkNonce(nonce, nonceCount: 200) == .valid(age: 0))
        #expect(server.checkNonce(nonce, nonceCount: 100) == .stale("nonce count replayed"))
        clock.advance(seconds: 30)
        #expect(server.checkNonce(nonce, nonceCount: 201) == .valid(age: 30))
        clock.advance(seconds: 31)
        #expect(server.checkNonce(nonce, nonceCount: 202) == .stale("nonce expired"))
        // Another key, another realm, or a tampered nonce: not ours.
        let other = DigestAuthority(
            settings: .init(realm: "R"),
            key: Array(repeating: 7, count: 32),
            clock: { clock.now }
        )
        #expect(other.checkNonce(server.mintNonce(), nonceCount: 1) == .stale("nonce not issued by this proxy"))
        var tampered = Array(server.mintNonce())
        tampered[3] = tampered[3] == "A" ? "B" : "A"
        #expect(server.checkNonce(String(tampered), nonceCount: 1) == .stale("nonce not issued by this proxy"))
        #expect(server.checkNonce("AAAA", nonceCount: 1) == .stale("nonce not issued by this proxy"))
        // A sibling with the same key accepts it (nonces travel between instances).
        let sibling = self.authority(clock)
        clock.advance(seconds: 1)
        #expect(sibling.checkNonce(server.mintNonce(), nonceCount: 1) == .valid(age: 0))
        #expect(sibling.opaque == server.opaque)
    }

    @Test func aFullReplayTableForgetsSafely() {
        let clock = Clock()
        let server = self.authority(clock, tracked: 2)
        let a = server.mintNonce()
        let b = server.mintNonce()
        #expect(server.checkNonce(a, nonceCount: 1) == .valid(age: 0))
        #expect(server.checkNonce(b, nonceCount: 1) == .valid(age: 0))
        clock.advance(seconds: 1)
        let c = server.mintNonce()
        // Full of live nonces: everything is forgotten and older nonces become stale, so a
        // replay of `a` cannot pass; new nonces work.
        #expect(server.checkNonce(c, nonceCount: 1) == .stale("nonce older than this proxy's replay record"))
        #expect(server.checkNonce(a, nonceCount: 1) == .stale("nonce older than this proxy's replay record"))
        clock.advance(seconds: 1)
        #expect(server.checkNonce(server.mintNonce(), nonceCount: 1) == .valid(age: 0))
    }

    @Test func challengesAndAuthenticationInfo() throws {
        let clock = Clock()
        let server = self.authority(clock, lifetime: 60)
        let fields = server.challenges()
        #expect(fields.count == 1)
        let parsed = try ChallengeParser.parse(fieldValues: fields)
        #expect(parsed.map { $0.parameter("algorithm") } == ["SHA-256", "MD5"])
        #expect(Set(parsed.map { $0.parameter("nonce") }).count == 1)
        for challenge in parsed {
            #expect(challenge.parameter("realm") == "R" && challenge.parameter("qop") == "auth")
            #expect(challenge.parameter("userhash") == "true" && challenge.parameter("charset") == "UTF-8")
            #expect(challenge.parameter("opaque") == server.opaque && challenge.parameter("stale") == nil)
        }
        #expect(try ChallengeParser.parse(fieldValues: server.challenges(stale: true))[0].parameter("stale") == "true")
        var perAlgorithm = server.settings
        perAlgorithm.oneField = false
        #expect(DigestAuthority(settings: perAlgorithm, key: self.key).challenges().count == 2)

        // rspauth = KD(HA1, nonce:nc:cnonce:qop:H(":" uri)); nextnonce once half the lifetime is gone.
        let md5 = DigestAlgorithm(hash: .md5)
        let answer = try DigestAuthorization.parse(
            #"Digest username="u", realm="R", nonce="n", uri="/x", qop=auth, nc=00000002, cnonce="c", response="00000000000000000000000000000000""#
        ).get()
        let ha1 = md5.hex("u:R:pw")
        let rspauth = md5.hex("\(ha1):n:00000002:c:auth:\(md5.hex(":/x"))")
        let info = server.authenticationInfo(answer, ha1: ha1, nonceAge: 10)
        #expect(info == "qop=auth, rspauth=\"\(rspauth)\", cnonce=\"c\", nc=00000002")
        #expect(server.authenticationInfo(answer, ha1: ha1, nonceAge: 30).hasPrefix("nextnonce=\""))
    }

    @Test func sessionAlgorithmsHashTheNonceIntoTheKey() throws {
        let sha = DigestAlgorithm(hash: .sha256, session: true)
        let answer = try DigestAuthorization.parse(
            #"Digest username="u", realm="R", nonce="n", uri="/", algorithm=SHA-256-sess, qop=auth, nc=00000001, cnonce="c", response="\#(String(repeating: "0", count: 64))""#
        ).get()
        let ha1 = sha.hex("u:R:pw")
        let sessionKey = sha.hex("\(ha1):n:c")
        let expected = sha.hex("\(sessionKey):n:00000001:c:auth:\(sha.hex("GET:/"))")
        #expect(self.authority(Clock()).expectedResponse(answer, ha1: ha1, method: "GET") == expected)
        // And it is what the client side computes.
        let challenge = try #require(
            DigestChallenge(
                try ChallengeParser.parse(
                    fieldValue: #"Digest realm="R", nonce="n", qop="auth", algorithm=SHA-256-sess"#
                )[0]
            )
        )
        let client = try #require(DigestResponder(challenge: challenge, user: "u", password: "pw"))
        #expect(client.response(method: "GET", uri: "/", nonceCount: 1, cnonce: "c") == expected)
    }

    @Test(arguments: [
        ("http://example.com/a?b=1", "http://example.com/a?b=1", false, true),
        ("/a?b=1", "http://example.com/a?b=1", false, true),
        ("/", "http://example.com", false, true),
        ("/other", "http://example.com/a", false, false),
        ("http://evil.example/a", "http://example.com/a", false, false),
        ("example.com:443", "example.com:443", true, true),
        ("EXAMPLE.com:443", "example.com:443", true, true),
        ("example.com:8443", "example.com:443", true, false),
        ("/", "example.com:443", true, false),
    ])
    func uriMustNameTheRequest(uri: String, target: String, isConnect: Bool, matches: Bool) {
        #expect(DigestAuthority.uriMatches(uri, requestTarget: target, isConnect: isConnect) == matches)
    }

    @Test func base64urlRoundTripsAndRefusesWhatFoundationWouldNotProduce() {
        for length in 0..<40 {
            let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            let text = Base64URL.encode(bytes)
            let foundation = Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-")
                .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
            #expect(text == foundation)
            #expect(Base64URL.decode(text) == bytes)
        }
        #expect(Base64URL.decode("ab+c") == nil)  // not the URL alphabet
        #expect(Base64URL.decode("AB") == nil)  // non-zero leftover bits: not canonical
        #expect(Base64URL.decode("A") == nil)
    }

    /// The byte-level parser reads every spelling the RFC 9110 grammar allows exactly as the
    /// general challenge grammar (``ChallengeParser``) does: parameter order, name case, tokens
    /// or quoted-strings with escapes, whitespace around `=` and `,`, empty list elements.
    @Test func byteParserAgreesWithTheGeneralGrammar() throws {
        var rng = SplitMix(seed: 7)
        let hex = Array("0123456789abcdef")
        for round in 0..<3000 {
            func pick<T>(_ options: [T]) -> T { options[Int(rng.next() % UInt64(options.count))] }
            func ows() -> String { pick(["", "", " ", "\t", "  "]) }
            func text(_ alphabet: String, _ range: ClosedRange<Int>) -> String {
                let chars = Array(alphabet)
                return String((0..<Int(rng.next() % UInt64(range.count)) + range.lowerBound).map { _ in pick(chars) })
            }
            let tokenish = "abcXYZ019-._~!#$%&'*+^`|"
            let quotedOnly = tokenish + " ,;:/?=()[]{}@\"\\\u{E9}"
            let algorithm = pick(["MD5", "md5", "SHA-256", "sha-256-SESS", "MD5-sess"])
            let hexLength = algorithm.lowercased().hasPrefix("md5") ? 32 : 64
            let values: [(String, String, Bool)] = [
                ("username", text(quotedOnly, 1...12), true),
                ("realm", text(quotedOnly, 0...12), true),
                ("nonce", text(tokenish, 1...50), pick([true, false])),
                ("uri", "/" + text(tokenish + "/?=", 0...30), true),
                ("response", String((0..<hexLength).map { _ in pick(hex) }), pick([true, false])),
                ("algorithm", algorithm, pick([true, false])),
                ("cnonce", text(tokenish, 1...20), pick([true, false])),
                ("nc", String(format: "%08x", Int(rng.next() % 100_000) + 1), false),
                ("qop", pick(["auth", "AUTH", "Auth"]), pick([true, false])),
                ("opaque", text(quotedOnly, 0...20), true),
                ("userhash", pick(["false", "FALSE"]), pick([true, false])),
                ("foo\(round)", text(quotedOnly, 0...8), true),
            ].shuffled(using: &rng)
            var field =
                ows() + pick(["Digest", "digest", "DIGEST"]) + pick([" ", "  ", "\t"]) + pick(["", ", ", ",, "])
            for (i, (name, value, quoted)) in values.enumerated() {
                let spelled = pick([name, name.uppercased(), name.capitalized])
                let rendered =
                    quoted || value.isEmpty || !value.allSatisfy(HTTPGrammar.isTokenCharacter)
                    ? "\""
                        + value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(
                            of: "\"",
                            with: "\\\""
                        )
                        + "\"" : value
                field += spelled + ows() + "=" + ows() + rendered
                if i < values.count - 1 { field += ows() + pick([",", ",", ", ,"]) + ows() }
            }
            field += ows()
            let general = try ChallengeParser.parse(fieldValue: field)
            try #require(general.count == 1, "\(field)")
            let parsed: DigestAuthorization
            switch DigestAuthorization.parse(field) {
            case .success(let p): parsed = p
            case .failure(let failure):
                Issue.record("refused \(field): \(failure.explanation)")
                return
            }
            let expected = general[0]
            #expect(parsed.username == expected.parameter("username"), "\(field)")
            #expect(parsed.realm == expected.parameter("realm"), "\(field)")
            #expect(parsed.nonce == expected.parameter("nonce"), "\(field)")
            #expect(parsed.uri == expected.parameter("uri"), "\(field)")
            #expect(parsed.response == expected.parameter("response"), "\(field)")
            #expect(parsed.cnonce == expected.parameter("cnonce"), "\(field)")
            #expect(parsed.nonceCountText == expected.parameter("nc"), "\(field)")
            #expect(parsed.opaque == expected.parameter("opaque"), "\(field)")
            #expect(parsed.algorithm == DigestAlgorithm(token: expected.parameter("algorithm")), "\(field)")
            #expect(parsed.nonceCount == UInt32(expected.parameter("nc")!, radix: 16), "\(field)")
            #expect(!parsed.userhash)
        }
    }

    @Test func aNonceWithNonCanonicalTrailingBitsIsNotOurs() {
        let server = self.authority(Clock())
        var nonce = Array(server.mintNonce())
        #expect(nonce.count == 43)
        // The last character carries 4 bits of the tag and 2 zero bits; set one of those.
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        let value = alphabet.firstIndex(of: nonce[42])!
        nonce[42] = alphabet[value | 1]
        #expect(server.checkNonce(String(nonce), nonceCount: 1) == .stale("nonce not issued by this proxy"))
    }
}

/// A small seeded generator (SplitMix64), so a failing case can be run again.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { self.state = seed }
    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
