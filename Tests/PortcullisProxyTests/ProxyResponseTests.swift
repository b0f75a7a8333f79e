import Testing

@testable import PortcullisProxy

@Suite struct ProxyResponseTests {
    private let target = OriginAuthority(host: "intranet.example", port: 443, hostHeader: "intranet.example:443")

    /// A policy denial on the connected address is a 403 naming the rule, as one decided on
    /// the target; the address itself stays in the proxy's log.
    @Test func aPolicyDenialOfTheResolvedAddressesIsA403NamingTheRule() {
        let response = ProxyResponse.upstreamConnectFailure(
            ResolutionError.policyDenied(rule: "no-internal"),
            target: target
        )
        #expect(response.status == .forbidden)
        #expect(response.proxyError == "destination_ip_prohibited")
        #expect(response.details == "policy: rule no-internal")
        #expect(!response.message.contains("10."))
        let unnamed = ProxyResponse.upstreamConnectFailure(ResolutionError.policyDenied(rule: nil), target: target)
        #expect(unnamed.details == "policy: no rule allows this request")
    }
}
