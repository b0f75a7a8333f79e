import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@testable import PortcullisProxy

@Suite struct DestinationGuardTests {
    private static func address(_ ip: String, _ port: Int = 443) -> SocketAddress {
        try! SocketAddress(ipAddress: ip, port: port)
    }

    private static let loopbackDenied = AccessPolicy(rules: [
        .init(name: "no-loopback", action: .deny, hosts: [AccessPolicy.HostPattern("127.0.0.0/8")!]),
        .init(name: "no-lab", action: .deny, users: ["bob"], hosts: [AccessPolicy.HostPattern("192.0.2.0/24")!]),
        .init(name: "everyone", action: .allow),
    ])

    private func check(
        _ policy: AccessPolicy = Self.loopbackDenied,
        user: String? = "alice",
        privateAllowed: Bool = true
    ) -> DestinationGuard {
        DestinationGuard(
            destinations: DestinationPolicy(allowPrivateDestinations: privateAllowed),
            policy: policy,
            user: user,
            method: "GET"
        )
    }

    /// A name pointing into a denied network is refused like the literal, on the addresses the
    /// connection would actually go to.
    @Test func aNameResolvingIntoADeniedNetworkIsRefusedNamingTheRule() {
        #expect(throws: ResolutionError.policyDenied(rule: "no-loopback")) {
            try check().admit(
                [Self.address("127.0.0.1"), Self.address("::ffff:127.0.0.2")],
                host: "evil.example",
                port: 443
            )
        }
    }

    @Test func onlyTheAllowedAddressesAreConnectedTo() throws {
        let all = [Self.address("192.0.2.7"), Self.address("127.0.0.1"), Self.address("198.51.100.1")]
        #expect(try check(user: "bob").admit(all, host: "mixed.example", port: 443) == [all[2]])
        #expect(try check(user: "alice").admit(all, host: "mixed.example", port: 443) == [all[0], all[2]])
    }

    @Test func aNameNoRuleAllowsAtItsAddressIsRefusedWithoutARule() throws {
        let lab = AccessPolicy(rules: [
            .init(name: "lab", action: .allow, hosts: [AccessPolicy.HostPattern("10.0.0.0/8")!])
        ])
        #expect(throws: ResolutionError.policyDenied(rule: nil)) {
            try check(lab).admit([Self.address("192.0.2.1")], host: "www.example", port: 443)
        }
        #expect(try check(lab).admit([Self.address("10.0.0.1")], host: "lab.example", port: 443).count == 1)
    }

    @Test func theDestinationPolicyComesFirst() throws {
        let internalOnly = [Self.address("127.0.0.1"), Self.address("10.0.0.1")]
        #expect(throws: ResolutionError.destinationDenied) {
            try check(privateAllowed: false).admit(internalOnly, host: "x.example", port: 443)
        }
        #expect(throws: ResolutionError.destinationDenied) {
            try check(.allowAll, privateAllowed: false).admit(internalOnly, host: "x.example", port: 443)
        }
        #expect(try check(.allowAll).admit(internalOnly, host: "x.example", port: 443) == internalOnly)
    }

    /// A pooled connection was opened for another request (another user, older rules).
    @Test func aPooledConnectionIsReusedOnlyWhereTheRulesAllowItsAddress() {
        let lab = Self.address("192.0.2.7", 80)
        #expect(check(user: "alice").allowsReuse(of: lab, host: "lab.example", port: 80))
        #expect(!check(user: "bob").allowsReuse(of: lab, host: "lab.example", port: 80))
        #expect(!check(user: "alice").allowsReuse(of: nil, host: "lab.example", port: 80))
        // Rules without networks do not depend on the address.
        let names = AccessPolicy(rules: [.init(name: "all", action: .allow)])
        #expect(check(names, user: "bob").allowsReuse(of: nil, host: "lab.example", port: 80))
    }

    /// End to end through getaddrinfo (`localhost` is in /etc/hosts): the resolver fails the
    /// lookup with the rule, and reports it for the log.
    @Test func theResolverFiltersWithTheGuard() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        defer {
            try? pool.syncShutdownGracefully()
            try? group.syncShutdownGracefully()
        }
        let policy = AccessPolicy(rules: [
            .init(
                name: "no-loopback",
                action: .deny,
                hosts: ["127.0.0.0/8", "::1"].map { AccessPolicy.HostPattern($0)! }
            ),
            .init(name: "everyone", action: .allow),
        ])
        let denials = NIOLockedValueBox<[String]>([])
        let loop = group.next()
        let resolver = PolicyResolver(
            eventLoop: loop,
            threadPool: pool,
            guard: check(policy)
        ) { rule, _ in denials.withLockedValue { $0.append(rule ?? "-") } }
        #expect(throws: ResolutionError.policyDenied(rule: "no-loopback")) {
            // NIO queries its resolver on the connection's loop.
            try loop.flatSubmit { resolver.initiateAQuery(host: "localhost", port: 80) }.wait()
        }
        #expect(denials.withLockedValue { $0 } == ["no-loopback"])
    }
}
