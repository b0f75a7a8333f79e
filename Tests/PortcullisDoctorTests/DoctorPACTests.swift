import Testing

@testable import PortcullisDoctor

/// The entries of a PAC result as `doctor --pac` reads them.
@Suite struct DoctorPACTests {
    typealias Route = DoctorPAC.Route

    @Test func theEntriesComeInOrder() {
        #expect(
            Route.parse("PROXY proxy.corp:3128; HTTPS secure.corp:443;DIRECT")
                == [
                    .proxy(ProxyURL(isTLS: false, host: "proxy.corp", port: 3128)),
                    .proxy(ProxyURL(isTLS: true, host: "secure.corp", port: 443)),
                    .direct,
                ]
        )
    }

    @Test(arguments: ["", " ", ";", "DIRECT", "direct"])
    func emptyOrDirectIsDirect(result: String) {
        #expect(Route.parse(result).first == .direct)
    }

    @Test func keywordsAreCaseInsensitiveAndHTTPIsAProxy() {
        #expect(Route.parse("proxy p:1") == [.proxy(ProxyURL(isTLS: false, host: "p", port: 1))])
        #expect(Route.parse("HTTP p:8080") == [.proxy(ProxyURL(isTLS: false, host: "p", port: 8080))])
        #expect(
            Route.parse("PROXY [2001:db8::1]:3128") == [.proxy(ProxyURL(isTLS: false, host: "2001:db8::1", port: 3128))]
        )
    }

    @Test(arguments: ["SOCKS s:1080", "SOCKS5 s:1080", "PROXY", "PROXY a b", "QUIC q:443"])
    func anythingElseIsNotTested(result: String) {
        guard case .other = Route.parse(result).first else {
            Issue.record("\(result) read as \(Route.parse(result))")
            return
        }
    }
}
