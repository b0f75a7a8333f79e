import Testing

@testable import PortcullisAuth

@Suite struct CredentialsTests {
    @Test func splitsSchemeAndToken68() throws {
        let c = try #require(Credentials(fieldValue: "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="))
        #expect(c.scheme == "Basic")
        #expect(c.parameters == "QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
    }

    @Test(arguments: ["basic", "BASIC", "bAsIc", "Basic"])
    func schemeComparisonIgnoresCase(scheme: String) throws {
        let c = try #require(Credentials(fieldValue: "\(scheme) abc="))
        #expect(c.schemeIs("basic"))
        #expect(!c.schemeIs("digest"))
    }

    @Test func acceptsSeveralSpacesAfterSchemeAndOptionalWhitespaceAround() throws {
        let c = try #require(Credentials(fieldValue: " \tBasic    abc=  "))
        #expect(c.schemeIs("basic"))
        #expect(c.parameters == "abc=")
    }

    @Test func schemeAloneHasNoParameters() throws {
        let c = try #require(Credentials(fieldValue: "Negotiate"))
        #expect(c.parameters.isEmpty)
    }

    @Test(arguments: ["", "   ", "\"Basic\" abc", "Basic\tabc", "Ba/sic abc", "(Basic) x"])
    func rejectsValuesWithoutAValidSchemeOrSeparator(value: String) {
        #expect(Credentials(fieldValue: value) == nil)
    }

    @Test(arguments: [
        ("abc", true), ("abc==", true), ("a-b.c_d~e+f/g=", true), ("=", false), ("ab=c", false), ("a b", false),
        ("ab,c", false), ("", false),
    ])
    func token68Grammar(value: String, valid: Bool) {
        #expect(HTTPGrammar.isToken68(value[...]) == valid)
    }

    /// The bit masks behind `isTokenByte` say exactly RFC 9110 §5.6.2's tchar, for all 256 bytes.
    @Test func tokenBytesAreTheRFCsTchar() {
        let tchar = Set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)
        for byte in UInt8.min...UInt8.max {
            #expect(HTTPGrammar.isTokenByte(byte) == tchar.contains(byte), "byte \(byte)")
        }
    }
}
