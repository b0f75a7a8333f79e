import NIOCore
import PortcullisAuth
import PortcullisStores
import Testing

@testable import PortcullisProxy

/// A user whose directory groups the access rules need waits for them once; then the rules
/// decide with them.
extension GateStateMachineTests {
    func groupsEnvironment() -> FakeGateEnvironment {
        let env = FakeGateEnvironment()
        env.policy = AccessPolicy(rules: [.init(name: "staff-only", action: .allow, groups: ["staff"])])
        return env
    }

    @Test func groupsAreLookedUpBeforeTheRulesDecideThenTheyDecide() throws {
        var gate = GateStateMachine()
        let env = self.groupsEnvironment()
        env.groupsToLookUp = ["alice"]
        let first = gate.startRequest(try self.request(Self.alice), in: env)
        guard case .verifyBasic(let check, _, _) = first else {
            Issue.record("a Basic check expected, got \(first)")
            return
        }
        let looked = gate.basicCheckFinished(check, outcome: .accepted(user: "alice"), now: t0, in: env)
        guard case .lookUpGroups(let id, "alice", "alice") = looked else {
            Issue.record("a groups look-up expected, got \(looked)")
            return
        }
        // A completion of something else finds nothing.
        #expect(self.seen(gate.groupsFound(CheckID(value: 999), in: env)) == .none)
        env.groupsToLookUp = []
        env.userGroups["alice"] = ["staff"]
        #expect(
            self.seen(gate.groupsFound(id, in: env))
                == .allow(self.record("ok", scheme: "basic", user: "alice"), authenticationInfo: false)
        )
        // Once.
        #expect(self.seen(gate.groupsFound(id, in: env)) == .none)
    }

    /// alice's Basic check accepted: the gate asks for her groups (the look-up's id).
    func waitingForGroups(_ gate: inout GateStateMachine, _ env: FakeGateEnvironment) throws -> CheckID? {
        guard case .verifyBasic(let check, _, _) = gate.startRequest(try self.request(Self.alice), in: env),
            case .lookUpGroups(let id, _, _) = gate.basicCheckFinished(
                check,
                outcome: .accepted(user: "alice"),
                now: t0,
                in: env
            )
        else {
            Issue.record("a check, then a look-up, expected")
            return nil
        }
        return id
    }

    @Test func aUserInNoGroupIsRefusedByTheRulesAfterTheLookUp() throws {
        var gate = GateStateMachine()
        let env = self.groupsEnvironment()
        env.groupsToLookUp = ["alice"]
        guard let id = try self.waitingForGroups(&gate, env) else { return }
        env.groupsToLookUp = []
        guard case .refuse(_, let response, _) = gate.groupsFound(id, in: env) else {
            Issue.record("the rules' 403 expected")
            return
        }
        #expect(response.status == .forbidden)
    }

    @Test func aRequestThatEndsWhileGroupsAreLookedUpLeavesNothingBehind() throws {
        var gate = GateStateMachine()
        let env = self.groupsEnvironment()
        env.groupsToLookUp = ["alice"]
        guard let id = try self.waitingForGroups(&gate, env) else { return }
        gate.cancel()
        #expect(self.seen(gate.groupsFound(id, in: env)) == .none)
    }
}
