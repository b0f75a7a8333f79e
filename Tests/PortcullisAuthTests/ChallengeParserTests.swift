import Testing

@testable import PortcullisAuth

@Suite struct ChallengeParserTests {
    private func parse(_ values: String...) throws -> [Challenge] {
        try ChallengeParser.parse(fieldValues: values)
    }

    @Test func basicWithRealmAndCharset() throws {
        let c = try parse(#"Basic realm="Portcullis", charset="UTF-8""#)
        #expect(c.count == 1)
        #expect(c[0].schemeIs("basic"))
        #expect(c[0].parameter("realm") == "Portcullis")
        #expect(c[0].parameter("CHARSET") == "UTF-8")
    }

    @Test func severalChallengesInOneFieldWithCommasInsideQuotes() throws {
        // RFC 9110 §11.6.1's example shape: commas separate challenges and parameters alike.
        let c = try parse(
            #"Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple", Digest realm="d", qop="auth, auth-int", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#
        )
        #expect(c.map(\.scheme) == ["Newauth", "Basic", "Digest"])
        #expect(c[0].parameter("title") == #"Login to "apps""#)
        #expect(c[0].parameter("type") == "1")
        #expect(c[2].parameter("qop") == "auth, auth-int")
        #expect(c[2].parameter("algorithm") == "SHA-256")
        #expect(c[2].parameters.first { $0.name == "algorithm" }?.wasQuoted == false)
        #expect(c[2].parameter("opaque") == "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS")
    }

    @Test func challengesAcrossFieldsKeepTheirOrder() throws {
        let c = try parse("Negotiate", "NTLM", #"Basic realm="r""#)
        #expect(c.map(\.scheme) == ["Negotiate", "NTLM", "Basic"])
        #expect(c[0].token68 == nil && c[0].parameters.isEmpty)
    }

    @Test func token68FormsWithAndWithoutPadding() throws {
        let c = try parse(
            "NTLM TlRMTVNTUAACAAAADAAMADgAAAAFgoEC, Negotiate YIIGhgYJKoZIhvcSAQICAQBuggZ1MIIGcaADAgEFoQMCAQ6i=="
        )
        #expect(c[0].token68 == "TlRMTVNTUAACAAAADAAMADgAAAAFgoEC")
        #expect(c[1].token68 == "YIIGhgYJKoZIhvcSAQICAQBuggZ1MIIGcaADAgEFoQMCAQ6i==")
        #expect(try parse("Foo abc=").first?.token68 == "abc=")
        // `realm=` with no value is, by the grammar, a token68 — not an empty parameter.
        #expect(try parse("Basic realm=").first?.token68 == "realm=")
    }

    @Test func whitespaceAroundEqualsAndEmptyListElements() throws {
        let c = try parse(#" , Basic realm = "a" ,, charset= "UTF-8" , "#)
        #expect(c.count == 1)
        #expect(c[0].parameter("realm") == "a")
        #expect(c[0].parameter("charset") == "UTF-8")
    }

    @Test func ourOwnChallengesRoundTrip() throws {
        let gate = ProxyAuthGate(realm: #"Corp "HQ", \ proxy"#)
        let c = try ChallengeParser.parse(fieldValues: gate.challenges())
        #expect(c.count == 1)
        #expect(c[0].parameter("realm") == #"Corp "HQ", \ proxy"#)
        #expect(c[0].parameter("charset") == "UTF-8")
    }

    @Test(arguments: [
        #"realm="x""#,  // a parameter before any scheme
        #"Basic realm="unterminated"#,
        #"Basic realm="a" junk"#,
        #"Basic realm="a", =x"#,
        "(bad) x",
        "Basic realm=\"a\u{01}\"",
    ])
    func malformedChallengesAreErrors(value: String) {
        #expect(throws: ChallengeParser.ParseError.self) { try ChallengeParser.parse(fieldValue: value) }
    }
}
