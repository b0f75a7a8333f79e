import Testing

@testable import PortcullisProxy

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
