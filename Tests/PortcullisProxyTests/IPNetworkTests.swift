import NIOCore
import Testing

@testable import PortcullisProxy

@Suite struct IPNetworkTests {
    @Test(arguments: [
        ("10.0.0.0/8", "10.255.1.2", true),
        ("10.0.0.0/8", "11.0.0.1", false),
        ("10.1.2.3", "10.1.2.3", true),
        ("10.1.2.3", "10.1.2.4", false),
        ("0.0.0.0/0", "203.0.113.9", true),
        ("192.168.1.77/24", "192.168.1.200", true),
        ("fd00::/8", "fd12:3456::1", true),
        ("fd00::/8", "fe80::1", false),
        ("::1", "::1", true),
        ("127.0.0.0/8", "::ffff:127.0.0.9", true),
        ("127.0.0.0/8", "::1", false),
        ("10.0.0.0/8", "not-an-ip", false),
    ])
    func containment(network: String, address: String, inside: Bool) throws {
        let net = try #require(IPNetwork(network))
        #expect(net.contains(address) == inside)
    }

    @Test(arguments: ["10.0.0.0/33", "fd00::/129", "10.0.0/8", "host.example", "10.0.0.0/x", ""])
    func invalidNetworks(text: String) {
        #expect(IPNetwork(text) == nil)
    }

    @Test func hostBitsAreCleared() throws {
        #expect(try #require(IPNetwork("192.168.1.77/24")).description == "192.168.1.0/24")
    }

    @Test func containsLiteralsAndSocketAddresses() throws {
        let net = try #require(IPNetwork("10.0.0.0/8"))
        #expect(net.contains("10.200.0.1"))
        #expect(!net.contains("11.0.0.1"))
        #expect(net.contains(try SocketAddress(ipAddress: "10.0.0.1", port: 80)))
        #expect(!net.contains(try SocketAddress(ipAddress: "fd00::1", port: 80)))
    }

    /// A dual-stack socket connects `::ffff:a.b.c.d` to a.b.c.d: one address, two spellings.
    @Test func ipv4MappedAddressesAreTheirIPv4Address() throws {
        let v4 = try #require(IPNetwork("127.0.0.0/8"))
        #expect(v4.contains("::ffff:127.0.0.1"))
        #expect(v4.contains(try SocketAddress(ipAddress: "::ffff:127.0.0.1", port: 80)))
        let mapped = try #require(IPNetwork("::ffff:127.0.0.0/104"))
        #expect(mapped.contains("127.9.9.9"))
        #expect(!mapped.contains("128.0.0.1"))
    }

    @Test func oneAddressIsANetworkOfItsOwn() throws {
        let one = try #require(IPNetwork(address: [127, 0, 0, 1]))
        #expect(one.description == "127.0.0.1/32")
        #expect(one.contains("127.0.0.1") && !one.contains("127.0.0.2"))
        #expect(IPNetwork(address: [1, 2, 3]) == nil)
    }

    /// Rules are written in the strict forms; other spellings go through CanonicalHost.
    @Test(arguments: ["127.1", "0x7f.0.0.1/8", "10.0.0.0/33", "fd00::/129", "a/b"])
    func onlyStrictAddressesAreNetworks(text: String) {
        #expect(IPNetwork(text) == nil)
    }
}
