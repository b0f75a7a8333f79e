import Foundation
import NIOCore
import PortcullisAuth
import PortcullisStores
import Testing

@testable import PortcullisProxy

/// `--auth certificate`: a verified client certificate's user, checked against the store once per
/// connection, then the connection bound to it like an NTLM one.
extension GateStateMachineTests {
    func certificateEnvironment(schemes: [AuthScheme] = [.certificate, .basic], user: String? = "carol") -> FakeGateEnvironment {
        let env = FakeGateEnvironment()
        env.gate = ProxyAuthGate(realm: "R", schemes: schemes)
        env.certificateUser = user
        return env
    }

    @Test func aCertificateUserInGoodStandingIsLetInAndTheConnectionStaysBound() throws {
        var gate = GateStateMachine()
        let env = self.certificateEnvironment()
        let first = gate.startRequest(try self.request(), in: env)
        guard case .lookUpAccount(let id, let name) = first else { Issue.record("\(first)"); return }
        #expect(name == "carol")
        let expiry = env.currentDate.addingTimeInterval(3600)
        let done = gate.accountFound(
            id,
            lookup: .found(user: "carol", standing: AccountStanding(expiresAt: expiry)),
            in: env
        )
        #expect(self.seen(done) == .allow(self.record("ok", scheme: "certificate", user: "carol"), authenticationInfo: false))
        // Later requests: no store call, whatever header they carry.
        let later = gate.startRequest(try self.request("Basic Ym9iOnNlY3JldA=="), in: env)
        #expect(self.seen(later) == .allow(self.record("ok", scheme: "certificate", user: "carol"), authenticationInfo: false))
        // The account's expiry ends the binding: asked again.
        env.currentDate = expiry.addingTimeInterval(1)
        guard case .lookUpAccount = gate.startRequest(try self.request(), in: env) else {
            Issue.record("an expired binding was kept")
            return
        }
    }

    @Test func aStoreChangeMakesTheConnectionAskAgain() throws {
        var gate = GateStateMachine()
        let env = self.certificateEnvironment()
        guard case .lookUpAccount(let id, _) = gate.startRequest(try self.request(), in: env) else { return }
        _ = gate.accountFound(id, lookup: .found(user: "carol", standing: AccountStanding()), in: env)
        env.credentials?.storeGeneration += 1
        let again = gate.startRequest(try self.request(), in: env)
        guard case .lookUpAccount(let id2, _) = again else { Issue.record("\(again)"); return }
        let refused = gate.accountFound(id2, lookup: .found(user: "carol", standing: AccountStanding(disabled: true)), in: env)
        guard case .refuse(let record, let response, close: false) = refused else { Issue.record("\(refused)"); return }
        #expect(record.result == "disabled")
        #expect(response.status == .proxyAuthenticationRequired)
        #expect(response.proxyStatus.contains("credentials-no-longer-valid"))
    }

    @Test(arguments: [
        (AccountLookup.unknownUser, 407, "invalid-credentials"),
        (.unavailable, 503, "store-unavailable"),
    ])
    func anUnknownUserIsA407ThatCountsNothingAndADownStoreA503(lookup: AccountLookup, status: Int, reason: String) throws {
        var gate = GateStateMachine()
        let env = self.certificateEnvironment()
        guard case .lookUpAccount(let id, _) = gate.startRequest(try self.request(), in: env) else { return }
        let done = gate.accountFound(id, lookup: lookup, in: env)
        guard case .refuse(_, let response, _) = done else { Issue.record("\(done)"); return }
        #expect(Int(response.status.code) == status)
        #expect(response.proxyStatus.contains(reason))
        #expect(!env.throttleCalls.contains("failed"))
    }

    @Test func implicitUsersNeedNoStore() throws {
        var gate = GateStateMachine()
        let env = self.certificateEnvironment()
        env.certificateUsersImplicit = true
        let done = gate.startRequest(try self.request(), in: env)
        #expect(self.seen(done) == .allow(self.record("ok", scheme: "certificate", user: "carol"), authenticationInfo: false))
    }

    @Test func withoutACertificateTheOtherSchemesApply() throws {
        var gate = GateStateMachine()
        let env = self.certificateEnvironment(user: nil)
        let done = gate.startRequest(try self.request(), in: env)
        guard case .refuse(_, let response, _) = done else { Issue.record("\(done)"); return }
        #expect(response.status == .proxyAuthenticationRequired)
        // Basic is challenged; a certificate has no challenge.
        #expect(response.extraHeaders.filter { $0.0 == "Proxy-Authenticate" }.map(\.1) == ["Basic realm=\"R\", charset=\"UTF-8\""])
        #expect(response.message.contains("a client certificate"))
    }

    @Test func aCertificateIsIgnoredWhenTheSchemeIsNotOffered() throws {
        var gate = GateStateMachine()
        let env = self.certificateEnvironment(schemes: [.basic])
        let done = gate.startRequest(try self.request(), in: env)
        guard case .refuse(_, let response, _) = done else { Issue.record("\(done)"); return }
        #expect(response.status == .proxyAuthenticationRequired)
    }
}
