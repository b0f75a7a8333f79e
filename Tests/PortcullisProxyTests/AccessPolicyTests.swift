import NIOCore
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

    /// A public address, for names: `no-internal`'s network depends on where a name points.
    private let github = try! SocketAddress(ipAddress: "140.82.121.4", port: 22)

    @Test func firstMatchWins() {
        #expect(
            policy.decide(user: "carol", host: "db.internal.example", port: 443, method: "CONNECT")
                == .denied(rule: "no-internal")
        )
        #expect(
            policy.decide(user: "carol", host: "10.1.2.3", port: 443, method: "GET") == .denied(rule: "no-internal")
        )
        #expect(
            policy.decide(user: "carol", host: "github.com", port: 22, method: "CONNECT", address: github)
                == .allowed(rule: "ops-tunnels")
        )
        #expect(
            policy.decide(user: "dave", host: "example.com", port: 443, method: "GET", address: github)
                == .allowed(rule: "web")
        )
        // Before the name is resolved, the rule that applies is not known.
        #expect(policy.decide(user: "dave", host: "example.com", port: 443, method: "GET") == .dependsOnAddress)
    }

    @Test func nothingMatchingIsDeniedOnceRulesExist() {
        // Denied whatever the address: decided without it.
        #expect(policy.decide(user: "dave", host: "github.com", port: 22, method: "CONNECT") == .denied(rule: nil))
        #expect(policy.decide(user: "dave", host: "example.com", port: 8080, method: "GET") == .denied(rule: nil))
        #expect(AccessPolicy.allowAll.decide(user: nil, host: "x", port: 1, method: "GET") == .allowed(rule: nil))
    }

    /// A user's other spelling (a Kerberos principal's local name) matches rules and groups;
    /// without one, a name is matched only as it is (a Basic user called `alice@EXAMPLE.ORG` is
    /// not `alice`).
    @Test func eitherSpellingOfAUserMatchesRulesAndGroups() {
        let p = AccessPolicy(
            rules: [
                .init(name: "by-name", action: .allow, users: ["alice"], ports: [80]),
                .init(name: "by-group", action: .allow, groups: ["ops"], ports: [443]),
            ],
            groups: ["ops": ["alice@EXAMPLE.ORG"]]
        )
        #expect(p.decide(user: "alice@EXAMPLE.ORG", otherName: "alice", host: "1.2.3.4", port: 80, method: "GET") == .allowed(rule: "by-name"))
        #expect(p.decide(user: "alice", otherName: "alice@EXAMPLE.ORG", host: "1.2.3.4", port: 443, method: "GET") == .allowed(rule: "by-group"))
        #expect(p.decide(user: "alice@EXAMPLE.ORG", host: "1.2.3.4", port: 80, method: "GET") == .denied(rule: nil))
        #expect(p.decide(user: "alice", host: "1.2.3.4", port: 443, method: "GET") == .denied(rule: nil))
    }

    /// A directory's groups count like the file's: a rule naming `staff` matches a user the
    /// directory puts in `staff`, and only that user.
    @Test func directoryGroupsMatchGroupRules() {
        let p = AccessPolicy(
            rules: [
                .init(name: "staff-web", action: .allow, groups: ["staff"], ports: [443]),
                .init(name: "ops", action: .allow, groups: ["ops"]),
            ],
            groups: ["ops": ["carol"]]
        )
        #expect(p.decide(user: "dora", groups: ["staff"], host: "1.2.3.4", port: 443, method: "CONNECT") == .allowed(rule: "staff-web"))
        #expect(p.decide(user: "dora", groups: ["staff"], host: "1.2.3.4", port: 80, method: "GET") == .denied(rule: nil))
        #expect(p.decide(user: "oscar", host: "1.2.3.4", port: 443, method: "CONNECT") == .denied(rule: nil))
        // The file's groups still count, with or without directory groups.
        #expect(p.decide(user: "carol", groups: ["staff"], host: "1.2.3.4", port: 80, method: "GET") == .allowed(rule: "ops"))
        // No user, no group.
        #expect(p.decide(user: nil, groups: ["staff"], host: "1.2.3.4", port: 443, method: "GET") == .denied(rule: nil))
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
        // One spelling per host: case and one trailing dot, in the target or the pattern.
        ("denied.example", "denied.example.", true),
        ("denied.example", "DENIED.Example.", true),
        ("denied.example.", "denied.example", true),
        ("*.denied.example", "a.denied.example.", true),
        ("*.denied.example.", "a.denied.example", true),
        ("1e100.net", "1e100.net", true),
    ])
    func hostPatterns(pattern: String, host: String, matches: Bool) throws {
        let p = AccessPolicy(rules: [
            .init(name: "r", action: .allow, hosts: [try #require(AccessPolicy.HostPattern(pattern))])
        ])
        #expect((p.decide(user: nil, host: host, port: 80, method: "GET") == .allowed(rule: "r")) == matches)
    }

    @Test(arguments: ["", "a*b.com", "*.", "*.*.com", "a/b", "*.0.1", "1.2.3.4.5", "bücher.example", "a..b", "."])
    func badHostPatterns(pattern: String) {
        #expect(AccessPolicy.HostPattern(pattern) == nil)
    }

    /// getaddrinfo reads `127.1`, `2130706433`, `0x7f000001`... as 127.0.0.1: a CIDR rule holds
    /// for every spelling, in the target and in the pattern.
    @Test(arguments: [
        "127.0.0.1", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "017700000001", "0x7f.1", "127.0.0.1.",
        "::ffff:127.0.0.1", "[::ffff:7f00:1]",
    ])
    func networkRulesHoldForEverySpellingOfAnAddress(spelling: String) throws {
        let loopback = AccessPolicy(rules: [
            .init(name: "no-loopback", action: .deny, hosts: [try #require(AccessPolicy.HostPattern("127.0.0.0/8"))]),
            .init(name: "everyone", action: .allow),
        ])
        #expect(loopback.decide(user: "u", host: spelling, port: 80, method: "GET") == .denied(rule: "no-loopback"))
        #expect(
            loopback.decide(user: "u", host: spelling, port: 443, method: "CONNECT") == .denied(rule: "no-loopback")
        )
        let one = AccessPolicy(rules: [
            .init(name: "one", action: .deny, hosts: [try #require(AccessPolicy.HostPattern("0x7f.1"))])
        ])
        #expect(one.decide(user: "u", host: spelling, port: 80, method: "GET") == .denied(rule: "one"))
    }

    /// A network rule is about the address connected to: for a name, the decision waits for
    /// the resolved address, then holds for names and literals alike.
    @Test func networkRulesDecideNamesByTheirResolvedAddress() throws {
        let p = AccessPolicy(rules: [
            .init(name: "public-names", action: .allow, hosts: [.suffix("public.example")]),
            .init(name: "no-internal", action: .deny, hosts: [try #require(AccessPolicy.HostPattern("10.0.0.0/8"))]),
            .init(name: "everyone", action: .allow),
        ])
        let privateAddress = try SocketAddress(ipAddress: "10.1.2.3", port: 443)
        let external = try SocketAddress(ipAddress: "93.184.216.34", port: 443)
        let mapped = try SocketAddress(ipAddress: "::ffff:10.1.2.3", port: 443)
        #expect(p.decide(user: "u", host: "intranet.example", port: 443, method: "GET") == .dependsOnAddress)
        #expect(
            p.decide(user: "u", host: "intranet.example", port: 443, method: "GET", address: privateAddress)
                == .denied(rule: "no-internal")
        )
        #expect(
            p.decide(user: "u", host: "intranet.example", port: 443, method: "GET", address: mapped)
                == .denied(rule: "no-internal")
        )
        #expect(
            p.decide(user: "u", host: "intranet.example", port: 443, method: "GET", address: external)
                == .allowed(rule: "everyone")
        )
        // A rule before the network rule decides without the address.
        #expect(
            p.decide(user: "u", host: "www.public.example", port: 443, method: "GET") == .allowed(rule: "public-names")
        )
        // A literal is its own address.
        #expect(p.decide(user: "u", host: "10.9.9.9", port: 443, method: "GET") == .denied(rule: "no-internal"))
    }

    /// When every address would get the same action, no lookup is needed to decide: the
    /// request is denied at once, naming the rule that matches whatever the address.
    @Test func aDecisionThatHoldsForEveryAddressIsMadeWithoutOne() throws {
        let p = AccessPolicy(rules: [
            .init(name: "no-internal", action: .deny, hosts: [try #require(AccessPolicy.HostPattern("10.0.0.0/8"))]),
            .init(name: "no-post", action: .deny, methods: ["POST"]),
            .init(name: "lab", action: .allow, hosts: [try #require(AccessPolicy.HostPattern("192.0.2.0/24"))]),
            .init(name: "everyone", action: .allow),
        ])
        #expect(p.decide(user: "u", host: "ok.example", port: 80, method: "POST") == .denied(rule: "no-post"))
        #expect(p.decide(user: "u", host: "ok.example", port: 80, method: "GET") == .dependsOnAddress)
        let allowOnly = AccessPolicy(rules: [
            .init(name: "lab", action: .allow, hosts: [try #require(AccessPolicy.HostPattern("192.0.2.0/24"))]),
            .init(name: "everyone", action: .allow),
        ])
        #expect(allowOnly.decide(user: "u", host: "ok.example", port: 80, method: "GET") == .allowed(rule: "everyone"))
        let denyOnly = AccessPolicy(rules: [
            .init(name: "no-internal", action: .deny, hosts: [try #require(AccessPolicy.HostPattern("10.0.0.0/8"))])
        ])
        #expect(denyOnly.decide(user: "u", host: "ok.example", port: 80, method: "GET") == .denied(rule: nil))
    }

    @Test func anAllowNetworkRuleAllowsNamesThatResolveIntoIt() throws {
        let p = AccessPolicy(rules: [
            .init(name: "lab", action: .allow, hosts: [try #require(AccessPolicy.HostPattern("10.0.0.0/8"))])
        ])
        let inside = try SocketAddress(ipAddress: "10.0.0.7", port: 80)
        let outside = try SocketAddress(ipAddress: "192.0.2.1", port: 80)
        #expect(p.decide(user: nil, host: "lab.example", port: 80, method: "GET") == .dependsOnAddress)
        #expect(
            p.decide(user: nil, host: "lab.example", port: 80, method: "GET", address: inside) == .allowed(rule: "lab")
        )
        #expect(
            p.decide(user: nil, host: "lab.example", port: 80, method: "GET", address: outside) == .denied(rule: nil)
        )
        #expect(p.hasNetworkRules)
        #expect(!AccessPolicy(rules: [.init(name: "n", action: .deny, hosts: [.suffix("a.example")])]).hasNetworkRules)
    }

    /// Some origins read `post` as POST: a rule about POST holds for every spelling.
    @Test(arguments: ["POST", "post", "Post", "pOsT"])
    func methodRulesIgnoreCase(method: String) {
        let p = AccessPolicy(rules: [
            .init(name: "no-post", action: .deny, methods: ["POST"]),
            .init(name: "lower-written", action: .deny, methods: ["delete"]),
            .init(name: "everyone", action: .allow),
        ])
        #expect(p.decide(user: "u", host: "example.com", port: 80, method: method) == .denied(rule: "no-post"))
        #expect(p.decide(user: "u", host: "example.com", port: 80, method: "Delete") == .denied(rule: "lower-written"))
        #expect(p.decide(user: "u", host: "example.com", port: 80, method: "GET") == .allowed(rule: "everyone"))
    }

    @Test func aTargetNoResolverWouldReadAlikeIsDenied() {
        let p = AccessPolicy(rules: [.init(name: "everyone", action: .allow)])
        #expect(p.decide(user: "u", host: "1.2.3.4.5", port: 80, method: "GET") == .denied(rule: nil))
        #expect(
            AccessPolicy.allowAll.decide(user: "u", host: "1.2.3.4.5", port: 80, method: "GET") == .allowed(rule: nil)
        )
    }
}
