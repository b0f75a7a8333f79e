import NIOCore
import Testing

@testable import PortcullisDoctor

@Suite struct ProxyURLTests {
    @Test func credentialsArePercentDecodedAndNeverInTheRedactedForm() throws {
        let parsed = ProxyURL.parse("http://al%40ice:p%3Ass%25w0rd@proxy.corp:3128")
        let url = try #require(parsed.url)
        #expect(parsed.errors.isEmpty && parsed.warnings.isEmpty)
        #expect(url.user == "al@ice")
        #expect(url.password == "p:ss%w0rd")
        #expect(url.host == "proxy.corp" && url.port == 3128 && !url.isTLS)
        #expect(url.redacted == "http://al%40ice:***@proxy.corp:3128")
        #expect(!url.redacted.contains("w0rd"))
    }

    @Test func anUnencodedAtInThePasswordParsesLikeCurlButIsNamed() throws {
        let parsed = ProxyURL.parse("http://alice:p@ss@127.0.0.1:3128")
        #expect(parsed.url?.password == "p@ss")
        #expect(parsed.warnings.contains { $0.contains("%40") })
        #expect(!parsed.warnings.joined().contains("p@ss"))
    }

    @Test(arguments: [
        ("http://alice:bad%zz@h:1", "percent"),
        ("http://alice:pa#ss@h:1", "%23"),
        ("http://alice:pa/ss@h:1", "%2F"),
        ("socks5://h:1080", "SOCKS"),
        ("ftp://h:21", "not http or https"),
        ("http://h:99999", "port"),
        ("http://:3128", "no host"),
        ("http://[::1:3128", "IPv6"),
    ])
    func unusableURLsAreErrorsThatSayWhy(text: String, phrase: String) {
        let parsed = ProxyURL.parse(text)
        #expect(parsed.url == nil)
        #expect(parsed.errors.joined().contains(phrase), "\(parsed.errors)")
    }

    @Test func missingSchemeAndPortAreWarnings() throws {
        let parsed = ProxyURL.parse("proxy.corp")
        #expect(parsed.url?.port == 1080)
        #expect(parsed.warnings.count == 2)
    }

    @Test func ipv6AndHTTPSProxies() throws {
        let url = try #require(ProxyURL.parse("https://[::1]:8443").url)
        #expect(url.host == "::1" && url.port == 8443 && url.isTLS)
        #expect(url.authority == "[::1]:8443")
    }
}

@Suite struct NoProxyTests {
    @Test(arguments: [
        ("example.com", "example.com", true),
        ("example.com", "www.example.com", true),
        (".example.com", "www.example.com", true),
        ("example.com", "notexample.com", false),
        ("*", "anything", true),
        ("10.0.0.0/8", "10.1.2.3", true),
        ("10.0.0.0/8", "11.1.2.3", false),
        ("127.0.0.1", "127.0.0.1", true),
        ("localhost:8080", "localhost", true),
    ])
    func matchesLikeCurl(entries: String, host: String, bypass: Bool) {
        #expect((NoProxyList(entries).match(host: host) != nil) == bypass)
    }

    @Test func entriesNoClientCanMatchAreReported() {
        let list = NoProxyList("http://example.com, good.com, a/b")
        #expect(list.invalid == ["http://example.com", "a/b"])
        #expect(list.entries == ["good.com"])
    }
}

@Suite struct ProxyEnvironmentTests {
    @Test func lowerCaseWinsAndConflictsAreNamed() {
        let env = ProxyEnvironment(["http_proxy": "http://a:1", "HTTP_PROXY": "http://b:2", "ALL_PROXY": "http://c:3"])
        #expect(env.proxyVariable(forScheme: "http")?.value == "http://a:1")
        #expect(env.proxyVariable(forScheme: "https")?.value == "http://c:3")
        #expect(env.caseConflicts().count == 1)
    }
}

@Suite struct DoctorTargetTests {
    @Test func targetsBecomeAbsoluteFormOrAuthority() throws {
        let plain = try #require(DoctorSetup.parseTarget("http://example.com:8080/a?b=1"))
        #expect(plain.requestTarget == "http://example.com:8080/a?b=1" && plain.hostHeader == "example.com:8080")
        let tls = try #require(DoctorSetup.parseTarget("https://example.com/"))
        #expect(tls.requestTarget == "example.com:443" && tls.isTLS)
        #expect(DoctorSetup.parseTarget("ftp://x/") == nil)
        #expect(DoctorSetup.parseTarget("http://u:secret@example.com/x")?.url == "http://example.com/x")
    }

    @Test func schemeAdviceNamesTheClientSettings() {
        let advice = Diagnosis.schemeAdvice(offered: ["Negotiate", "NTLM"])
        #expect(advice.contains("--proxy-negotiate"))
        #expect(advice.contains("jdk.http.auth.tunneling.disabledSchemes"))
        #expect(advice.contains("Python requests"))
        #expect(Diagnosis.schemeAdvice(offered: ["Digest"]).contains("--proxy-digest"))
    }

    @Test func proxyReasonComesFromProxyStatusOrSquid() {
        let portcullis = ProbeResponse(
            status: 407,
            reason: "",
            headers: [("Proxy-Status", "portcullis; details=\"invalid-credentials\"")],
            body: [],
            keepAlive: true
        )
        #expect(Diagnosis.proxyReason(RecordedResponse(portcullis)) == "invalid-credentials")
        let squid = ProbeResponse(
            status: 407,
            reason: "",
            headers: [("X-Squid-Error", "ERR_CACHE_ACCESS_DENIED 0")],
            body: [],
            keepAlive: true
        )
        #expect(Diagnosis.proxyReason(RecordedResponse(squid)) == "ERR_CACHE_ACCESS_DENIED")
    }
}

@Suite struct ProbeHandlerParsingTests {
    @Test func chunkedBodiesAreDecodedOnlyWhenComplete() {
        var buffer = ByteBuffer(string: "4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\nnext")
        let decoded = ProbeHandler.dechunk(buffer, maximumBody: 64 * 1024)
        #expect(decoded.map { String(decoding: $0.body, as: UTF8.self) } == "wikipedia")
        #expect(decoded?.consumed == buffer.readableBytes - 4)
        buffer = ByteBuffer(string: "4\r\nwiki\r\n5\r\npe")
        #expect(ProbeHandler.dechunk(buffer, maximumBody: 64 * 1024) == nil)
    }

    @Test func statusLineAndFields() throws {
        let head = try #require(ProbeHandler.parseHead("HTTP/1.0 407 Proxy Authentication Required\r\nA: 1\r\nB:2"))
        #expect(head.status == 407 && head.minor == 0 && head.reason == "Proxy Authentication Required")
        #expect(head.headers.map(\.value) == ["1", "2"])
        #expect(ProbeHandler.parseHead("SSH-2.0-OpenSSH") == nil)
    }
}

@Suite struct TLSErrorTextTests {
    @Test func boringSSLReasonsAreShortened() {
        let raw =
            "handshakeFailed(NIOSSL.BoringSSLError.sslError([Error: 268435581 error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED at /x/y.c:123]))"
        #expect(ProbeConnection.shortTLS(raw) == "certificate verify failed")
    }
}
