import PortcullisProxy
import Testing

@testable import PortcullisServer

@Suite struct PolicyFileTests {
    @Test func readsGroupsAndRules() throws {
        let policy = try PolicyFile.parse(
            """
            groups:
              ops: [carol, dave]
            rules:
              - name: ops-ssh
                action: allow
                groups: [ops]
                hosts: ["*.corp.example", "10.0.0.0/8"]
                ports: [22]
                methods: [connect]
              - action: deny
            """
        )
        #expect(policy.groups["ops"] == ["carol", "dave"])
        #expect(policy.rules.count == 2)
        #expect(policy.rules[0].methods == ["CONNECT"])
        #expect(policy.rules[0].ports == [22])
        #expect(policy.rules[1].name == "rule-2")
        #expect(
            policy.decide(user: "dave", host: "git.corp.example", port: 22, method: "CONNECT")
                == .allowed(rule: "ops-ssh")
        )
    }

    @Test(arguments: [
        ("rules:\n  - action: allow\n    hostz: [a]\n", "unknown key 'hostz'"),
        ("rules:\n  - action: maybe\n", "'action' must be allow or deny"),
        ("rules:\n  - action: allow\n    ports: [0]\n", "port '0'"),
        ("rules:\n  - action: allow\n    hosts: ['a*b']\n", "host pattern 'a*b'"),
        ("rules:\n  - action: allow\n    groups: [ghosts]\n", "group 'ghosts'"),
        ("rulez: []\n", "unknown key 'rulez'"),
        ("rules: [\n", "not valid YAML"),
    ])
    func mistakesAreErrorsThatSayWhere(text: String, phrase: String) {
        #expect {
            _ = try PolicyFile.parse(text)
        } throws: { error in
            "\(error)".contains(phrase)
        }
    }

    @Test func anEmptyFileAllowsEverything() throws {
        #expect(try PolicyFile.parse("") == AccessPolicy.allowAll)
    }
}
