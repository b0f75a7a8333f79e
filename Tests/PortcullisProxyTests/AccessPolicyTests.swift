import Testing

@testable import PortcullisProxy

@Suite struct AccessPolicyTests {
    private let policy = AccessPolicy(
        rules: [
            .init(
                name: "no-internal",
                action: .deny,
                hosts: [.suffix("internal.example"), .network(IPNetwork("10.0.0.0/8")!)]
            ),
            .init(name: "ops-tunnels", action: .allow, groups: ["ops"], methods: ["CONNECT"]),
            .init(name: "web", action: .allow, ports: [80, 443], methods: ["GET", "HEAD"]),
        ],
        groups: ["ops": ["carol"]]
    )

    @Test func firstMatchWins() {
        #expect(
            policy.decide(user: "carol", host: "db.internal.example", port: 443, method: "CONNECT")
                == .denied(rule: "no-internal")
        )
        #expect(
            policy.decide(user: "carol", host: "10.1.2.3", port: 443, method: "GET") == .denied(rule: "no-internal")
        )
        #expect(
            policy.decide(user: "carol", host: "github.com", port: 22, method: "CONNECT")
                == .allowed(rule: "ops-tunnels")
        )
        #expect(policy.decide(user: "dave", host: "example.com", port: 443, method: "GET") == .allowed(rule: "web"))
    }

    @Test func nothingMatchingIsDeniedOnceRulesExist() {
        #expect(policy.decide(user: "dave", host: "github.com", port: 22, method: "CONNECT") == .denied(rule: nil))
        #expect(policy.decide(user: "dave", host: "example.com", port: 8080, method: "GET") == .denied(rule: nil))
        #expect(AccessPolicy.allowAll.decide(user: nil, host: "x", port: 1, method: "GET") == .allowed(rule: nil))
    }

    @Test func userRulesNeverMatchAnonymousRequests() {
        let p = AccessPolicy(rules: [.init(name: "alice", action: .allow, users: ["alice"])])
        #expect(p.decide(user: nil, host: "x", port: 80, method: "GET") == .denied(rule: nil))
    }

    @Test(arguments: [
        ("*", "anything.example", true),
        ("*.example.com", "a.example.com", true),
        ("*.example.com", "example.com", false),
        ("*.example.com", "badexample.com", false),
        ("Example.COM", "example.com", true),
        ("192.168.0.0/16", "192.168.4.4", true),
        ("192.168.0.0/16", "example.com", false),
    ])
    func hostPatterns(pattern: String, host: String, matches: Bool) throws {
        let p = try #require(AccessPolicy.HostPattern(pattern))
        #expect(p.matches(host.lowercased()) == matches)
    }

    @Test(arguments: ["", "a*b.com", "*.", "*.*.com", "a/b"])
    func badHostPatterns(pattern: String) {
        #expect(AccessPolicy.HostPattern(pattern) == nil)
    }
}
