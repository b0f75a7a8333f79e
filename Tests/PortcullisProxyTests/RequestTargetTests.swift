import Testing

@testable import PortcullisProxy

@Suite struct RequestTargetTests {
    private func absolute(_ text: String) throws -> (OriginAuthority, String) {
        guard case .success(.absolute(let authority, let path)) = RequestTarget.parse(text, isConnect: false) else {
            throw ParseFailure(text: text)
        }
        return (authority, path)
    }

    struct ParseFailure: Error { var text: String }

    @Test func absoluteFormWithDefaultPort() throws {
        let (authority, path) = try absolute("http://Example.COM/a/b?c=d")
        #expect(authority.host == "example.com")
        #expect(authority.port == 80)
        #expect(authority.hostHeader == "Example.COM")
        #expect(path == "/a/b?c=d")
    }

    @Test func absoluteFormWithPortEmptyPathQueryOnlyAndFragment() throws {
        #expect(try absolute("HTTP://h:8080").1 == "/")
        #expect(try absolute("http://h:8080").0.port == 8080)
        #expect(try absolute("http://h?x=1").1 == "/?x=1")
        #expect(try absolute("http://h/p#frag").1 == "/p")
    }

    /// Read as bytes, not Characters: a combining mark after `?` or `/` must not hide it (the
    /// Character-wise parser once sent `GET ?\u{301}x` upstream, without the leading `/`).
    @Test func combiningMarksDoNotHideDelimiters() throws {
        #expect(try absolute("http://h?\u{301}x").1 == "/?\u{301}x")
        #expect(RequestTarget.parse("http://H\u{301}/", isConnect: false) == .failure(.invalidPort))
        #expect(RequestTarget.parse("/\u{301}x", isConnect: false) == .success(.origin("/\u{301}x")))
        #expect(RequestTarget.parse("h/\u{301}:443", isConnect: true) == .failure(.connectNeedsAuthority))
    }

    @Test func ipv6Literal() throws {
        let (authority, _) = try absolute("http://[::1]:8080/")
        #expect(authority.host == "::1")
        #expect(authority.port == 8080)
        #expect(authority.hostHeader == "[::1]:8080")
    }

    @Test(arguments: [
        ("http://user:pw@h/", RequestTarget.ParseError.userinfoNotAllowed),
        ("https://h/", .unsupportedScheme("https")),
        ("ftp://h/", .unsupportedScheme("ftp")),
        ("http:///x", .invalidHost),
        ("http://h:0/", .invalidPort),
        ("http://h:65536/", .invalidPort),
        ("http://h:80a/", .invalidPort),
        ("http://h h/", .invalidPort),
        ("http://h\r\nX: y/", .invalidPort),
        ("h/x", .malformed),
    ])
    func rejectsBadAbsoluteTargets(text: String, error: RequestTarget.ParseError) {
        #expect(RequestTarget.parse(text, isConnect: false) == .failure(error))
    }

    @Test func originFormAndAsteriskAreForTheProxyItself() {
        #expect(RequestTarget.parse("/index.html", isConnect: false) == .success(.origin("/index.html")))
        #expect(RequestTarget.parse("*", isConnect: false) == .success(.asterisk))
    }

    /// The resolver reads all these as 127.0.0.1; the proxy's rules, pool and logs must too.
    @Test(arguments: ["127.1", "2130706433", "0x7f000001", "0177.0.0.1", "017700000001", "0x7f.1", "127.0.0.1."])
    func ipv4LiteralsInAnySpellingBecomeTheDottedQuad(spelling: String) throws {
        let (authority, _) = try absolute("http://\(spelling):8080/")
        #expect(authority.host == "127.0.0.1")
        #expect(authority.hostHeader == "\(spelling):8080")
        guard case .success(.authority(let tunnel)) = RequestTarget.parse("\(spelling):443", isConnect: true) else {
            Issue.record("CONNECT \(spelling):443 not parsed")
            return
        }
        #expect(tunnel.host == "127.0.0.1")
    }

    @Test func ipv6LiteralsTakeTheirCompressedForm() throws {
        #expect(try absolute("http://[0:0:0:0:0:0:0:1]/").0.host == "::1")
        #expect(try absolute("http://[::FFFF:127.0.0.1]/").0.host == "::ffff:127.0.0.1")
    }

    /// A name keeps its trailing dot (it tells the resolver not to try search domains); the
    /// access rules compare names without it.
    @Test func namesKeepTheirTrailingDot() throws {
        #expect(try absolute("http://Denied.Example./").0.host == "denied.example.")
    }

    @Test(arguments: ["1.2.3.4.5", "08.1", "256.0.0.1", "host.123", "a..b", ".a", "a..", ".", "[127.0.0.1]", "[::g]"])
    func ambiguousOrMalformedHostsAreRefused(host: String) {
        #expect(RequestTarget.parse("\(host):443", isConnect: true) == .failure(.invalidHost))
        #expect(RequestTarget.parse("http://\(host)/", isConnect: false) == .failure(.invalidPort))
    }

    @Test func connectNeedsHostAndPort() throws {
        guard case .success(.authority(let a)) = RequestTarget.parse("example.com:443", isConnect: true) else {
            Issue.record("not parsed")
            return
        }
        #expect(a.host == "example.com" && a.port == 443)
        guard case .success(.authority(let v6)) = RequestTarget.parse("[2001:db8::1]:8443", isConnect: true) else {
            Issue.record("not parsed")
            return
        }
        #expect(v6.host == "2001:db8::1" && v6.port == 8443)
        #expect(RequestTarget.parse("example.com", isConnect: true) == .failure(.invalidHost))
        #expect(RequestTarget.parse("http://example.com:443/", isConnect: true) == .failure(.connectNeedsAuthority))
        #expect(RequestTarget.parse("[::1", isConnect: true) == .failure(.invalidHost))
    }
}
