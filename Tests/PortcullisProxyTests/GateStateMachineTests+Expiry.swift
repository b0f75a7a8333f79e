import NIOCore
import PortcullisAuth
import PortcullisStores
import Testing

@testable import PortcullisProxy

/// Credentials that end soon: the allowed request's record carries the seconds left when they
/// are within `--expiry-warning`, and tokens carry their label, on the checked and the cached
/// path alike.
extension GateStateMachineTests {
    func allowed(_ outcome: VerificationOutcome, _ env: FakeGateEnvironment) throws -> Record? {
        var gate = GateStateMachine()
        _ = gate.startRequest(try self.request(Self.wrong), in: env)
        guard
            case .allow(let record, _) = gate.basicCheckFinished(CheckID(value: 1), outcome: outcome, now: t0, in: env)
        else { return nil }
        return record
    }

    @Test func aCredentialEndingWithinTheWarningSaysSo() throws {
        let env = FakeGateEnvironment()
        env.expiryWarning = .hours(24)
        #expect(try self.allowed(.accepted(user: "u", validFor: 3600.4), env)?.expiresIn == 3600)
        #expect(try self.allowed(.accepted(user: "u", validFor: 86400), env)?.expiresIn == 86400)
        #expect(try self.allowed(.accepted(user: "u", validFor: 86401), env)?.expiresIn == nil)
        #expect(try self.allowed(.accepted(user: "u"), env)?.expiresIn == nil)
    }

    @Test func aTokensLabelReachesTheRecord() throws {
        let env = FakeGateEnvironment()
        let record = try self.allowed(.accepted(user: "u", validFor: 60, token: "job-1"), env)
        #expect(record?.token == "job-1")
        #expect(record?.user == "u")
        // A token ends by design: no expiry hint.
        #expect(record?.expiresIn == nil)
    }
}
