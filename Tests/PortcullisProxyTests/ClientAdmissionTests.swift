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
}

@Suite struct ClientAdmissionTests {
    @Test func limitsCountPerAddressAndInTotalAndAreReleased() {
        var settings = ClientAdmission.Settings()
        settings.maximumConnections = 3
        settings.maximumConnectionsPerClient = 2
        let admission = ClientAdmission(settings: settings)
        #expect(admission.admit("10.0.0.1") == .admitted)
        #expect(admission.admit("10.0.0.1") == .admitted)
        #expect(admission.admit("10.0.0.1") == .tooManyFromClient)
        #expect(admission.admit("10.0.0.2") == .admitted)
        #expect(admission.admit("10.0.0.3") == .tooManyConnections)
        admission.release("10.0.0.1")
        #expect(admission.admit("10.0.0.1") == .admitted)
        #expect(admission.openConnections == 3)
    }

    @Test func theAllowListIsCheckedFirst() throws {
        var settings = ClientAdmission.Settings()
        settings.allowedClients = [try #require(IPNetwork("127.0.0.1")), try #require(IPNetwork("10.0.0.0/8"))]
        let admission = ClientAdmission(settings: settings)
        #expect(admission.admit("127.0.0.1") == .admitted)
        #expect(admission.admit("10.9.9.9") == .admitted)
        #expect(admission.admit("127.0.0.2") == .notAllowed)
        #expect(admission.openConnections == 2)
    }
}
