import Testing

@testable import PortcullisAuth

@Suite struct BasicCredentialsTests {
    private func decode(_ token: String) -> Result<BasicCredentials, AuthFailure> {
        BasicCredentials.decode(token68: token[...])
    }

    @Test func decodesTheRFC7617Example() throws {
        let credentials = try decode("QWxhZGRpbjpvcGVuIHNlc2FtZQ==").get()
        #expect(credentials == BasicCredentials(user: "Aladdin", password: "open sesame"))
    }

    @Test func decodesUTF8AsInRFC7617Section2_1() throws {
        // RFC 7617 §2.1: user "test", password "123£" with charset UTF-8.
        let credentials = try decode("dGVzdDoxMjPCow==").get()
        #expect(credentials == BasicCredentials(user: "test", password: "123£"))
    }

    @Test func readsNonUTF8OctetsAsLatin1() throws {
        // "test:123\u{A3}" in ISO-8859-1, as clients that ignore charset="UTF-8" send it.
        let credentials = try decode("dGVzdDoxMjOj").get()
        #expect(credentials.password == "123£")
    }

    @Test func onlyTheFirstColonSeparatesUserFromPassword() throws {
        // "bob:p:a@s% s"
        let credentials = try decode("Ym9iOnA6YUBzJSBz").get()
        #expect(credentials == BasicCredentials(user: "bob", password: "p:a@s% s"))
    }

    @Test func emptyPasswordIsAllowed() throws {
        #expect(try decode("Ym9iOg==").get() == BasicCredentials(user: "bob", password: ""))
    }

    @Test(arguments: [
        "QWxhZGRpbjpvcGVuIHNlc2FtZQ",  // unpadded
        "QWxhZGRpbjpvcGVuIHNlc2FtZR==",  // non-canonical trailing bits
        "!!!!",
        "QWxh ZGRp",
        "Ym9iOg=",
        "",
    ])
    func rejectsBase64ThatIsNotStrict(token: String) {
        guard case .failure(let failure) = decode(token) else {
            Issue.record("accepted \(token)")
            return
        }
        #expect(failure.reason == .malformedCredentials)
        #expect(failure.explanation.contains("base64"))
    }

    @Test func rejectsMissingColon() {
        // "Aladdin"
        guard case .failure(let failure) = decode("QWxhZGRpbg==") else {
            Issue.record("accepted")
            return
        }
        #expect(failure.reason == .malformedCredentials)
        #expect(failure.explanation.contains("':'"))
    }

    @Test func rejectsEmptyUserAndControlCharacters() {
        // ":pw" and "a\u{1}:pw"
        for token in ["OnB3", "YQE6cHc="] {
            guard case .failure(let failure) = decode(token) else {
                Issue.record("accepted \(token)")
                continue
            }
            #expect(failure.reason == .malformedCredentials)
        }
    }

    @Test func failuresNeverEchoTheSecret() {
        // "user:hunter2" with a stray "=": malformed, and the message must not hold any of it.
        guard case .failure(let failure) = decode("dXNlcjpodW50ZXIy=") else {
            Issue.record("accepted")
            return
        }
        #expect(!failure.explanation.contains("hunter2"))
        #expect(!failure.explanation.contains("dXNlcjpodW50ZXIy"))
    }
}
