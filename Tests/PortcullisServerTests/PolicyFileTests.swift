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

    /// A save that is not atomic passes through an empty or cut-short file; taking it for "no
    /// rules" would allow everything until the next poll. Only `rules: []` means no rules.
    @Test(arguments: [
        ("", "is empty"),
        ("   \n\t\n", "is empty"),
        ("# rules are coming\n", "is empty"),
        ("groups:\n  ops: [carol]\n", "has no 'rules'"),
        ("rules:\n", "'rules' must be a list"),
        ("rules:\n  - name: r\n    action: deny\n    hosts: [a, b", "not valid YAML"),
    ])
    func anEmptyOrCutShortFileIsAnError(text: String, phrase: String) {
        #expect {
            _ = try PolicyFile.parse(text)
        } throws: { error in
            "\(error)".contains(phrase)
        }
    }

    @Test func anExplicitEmptyRuleListAllowsEverything() throws {
        #expect(try PolicyFile.parse("rules: []\n") == AccessPolicy.allowAll)
    }

    @Test func patternsAndMethodsMeanWhatTheResolverAndOriginsWouldRead() throws {
        let policy = try PolicyFile.parse(
            """
            rules:
              - name: no-denied
                action: deny
                hosts: ["Denied.Example.", "0x7f.1"]
              - name: no-post
                action: deny
                methods: [post]
              - name: everyone
                action: allow
            """
        )
        #expect(policy.decide(user: "u", host: "denied.example", port: 80, method: "GET") == .denied(rule: "no-denied"))
        #expect(
            policy.decide(user: "u", host: "denied.example.", port: 80, method: "GET") == .denied(rule: "no-denied")
        )
        #expect(policy.decide(user: "u", host: "127.0.0.1", port: 80, method: "GET") == .denied(rule: "no-denied"))
        #expect(policy.decide(user: "u", host: "ok.example", port: 80, method: "POST") == .denied(rule: "no-post"))
        #expect(policy.decide(user: "u", host: "ok.example", port: 80, method: "Post") == .denied(rule: "no-post"))
        #expect(policy.rules[1].methods == ["POST"])
    }

    @Test(arguments: [
        ("rules:\n  - action: deny\n    methods: ['GET, POST']\n", "method 'GET, POST'"),
        ("rules:\n  - action: deny\n    methods: ['']\n", "method ''"),
        ("rules:\n  - action: deny\n    hosts: ['1.2.3.4.5']\n", "host pattern '1.2.3.4.5'"),
        ("rules:\n  - action: deny\n    hosts: ['bücher.example']\n", "punycode"),
    ])
    func rulesThatCouldNeverMatchAreErrors(text: String, phrase: String) {
        #expect {
            _ = try PolicyFile.parse(text)
        } throws: { error in
            "\(error)".contains(phrase)
        }
    }
}
