import NIOCore
import Testing

@testable import PortcullisProxy

@Suite struct DestinationPolicyTests {
    @Test(arguments: [
        "127.0.0.1", "127.255.0.9", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254",
        "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1",
        "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1",
    ])
    func internalAddressesAreDeniedByDefault(ip: String) throws {
        let address = try SocketAddress(ipAddress: ip, port: 80)
        #expect(DestinationPolicy.isInternal(address))
        #expect(!DestinationPolicy(allowPrivateDestinations: false).allows(address))
        #expect(DestinationPolicy(allowPrivateDestinations: true).allows(address))
    }

    @Test(arguments: ["93.184.216.34", "8.8.8.8", "172.32.0.1", "192.169.0.1", "2606:4700::1111", "::ffff:8.8.8.8"])
    func publicAddressesAreAllowed(ip: String) throws {
        let address = try SocketAddress(ipAddress: ip, port: 80)
        #expect(!DestinationPolicy.isInternal(address))
        #expect(DestinationPolicy(allowPrivateDestinations: false).allows(address))
    }

    @Test func getaddrinfoResolvesLiteralsAndFailsForInvalidNames() throws {
        let addresses = try PolicyResolver.getaddrinfo(host: "127.0.0.1", port: 8080)
        #expect(addresses.contains { $0.ipAddress == "127.0.0.1" && $0.port == 8080 })
        #expect(throws: ResolutionError.self) {
            try PolicyResolver.getaddrinfo(host: "does-not-exist.invalid", port: 80)
        }
    }
}
