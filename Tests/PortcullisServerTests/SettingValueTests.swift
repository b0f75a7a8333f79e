import ArgumentParser
import Testing

@testable import PortcullisServer

/// A value a setting must refuse, as a command-line argument and as a YAML value.
struct RefusedValue: Sendable, CustomTestStringConvertible {
    var key: String
    /// `nil`: every argument is a valid value.
    var argument: String?
    var yaml: String
    var requirement: String

    var testDescription: String { "\(self.key) \(self.argument ?? "-") / \(self.yaml)" }

    static let all: [RefusedValue] = [
        RefusedValue(key: "upstream-connect-timeout", argument: "0", yaml: "0", requirement: Seconds.requirement),
        RefusedValue(key: "shutdown-grace", argument: "soon", yaml: "soon", requirement: Seconds.requirement),
        RefusedValue(key: "tunnel-idle-timeout", argument: "1e9", yaml: "1e9", requirement: Seconds.requirement),
        RefusedValue(key: "lockout-threshold", argument: "0", yaml: "1.5", requirement: Count.requirement),
        RefusedValue(key: "max-connections", argument: "many", yaml: "[1]", requirement: Count.requirement),
        RefusedValue(key: "max-request-body", argument: "-1", yaml: "-1", requirement: ByteCount.requirement),
        RefusedValue(key: "user-max-rate", argument: "0", yaml: "-2", requirement: RequestRate.requirement),
        RefusedValue(
            key: "connect-ports",
            argument: "443,70000",
            yaml: "[443, 70000]",
            requirement: PortList.requirement
        ),
        RefusedValue(key: "connect-ports", argument: "https", yaml: "443, https", requirement: PortList.requirement),
        RefusedValue(key: "auth", argument: nil, yaml: "{basic: yes}", requirement: CommaList.requirement),
    ]
}

@Suite struct SettingValueTests {
    @Test(arguments: RefusedValue.all)
    func aBadValueIsRefusedWithTheSameRequirementFromBothSources(bad: RefusedValue) throws {
        if let argument = bad.argument {
            do {
                _ = try ServeOptions.parse(["--\(bad.key)=\(argument)"])
                Issue.record("the command line accepted \(argument)")
            } catch {
                let message = ServeOptions.message(for: error)
                #expect(message.contains("'--\(bad.key) <"), "\(message)")
                #expect(message.hasSuffix(": must be \(bad.requirement)"), "\(message)")
            }
        }
        do {
            _ = try ServeOptions.parse(yaml: "\(bad.key): \(bad.yaml)", source: "f.yaml")
            Issue.record("the file accepted \(bad.yaml)")
        } catch let error as ServeError {
            #expect(error.message == "f.yaml: '\(bad.key)' must be \(bad.requirement)")
        }
    }

    @Test func wrongTypesInTheFileAreNamed() throws {
        let cases = [
            ("allow-open-proxy: maybe", "'allow-open-proxy' must be true or false"),
            ("allow-open-proxy: [true]", "'allow-open-proxy' must be a single value, not a list or mapping"),
            ("realm: [a, b]", "'realm' must be a single value, not a list or mapping"),
            ("listen: {a: b}", "'listen' must be a list"),
        ]
        for (yaml, expected) in cases {
            #expect(throws: ServeError.self) {
                do {
                    _ = try ServeOptions.parse(yaml: yaml)
                } catch let error as ServeError {
                    #expect(error.message == "config: \(expected)")
                    throw error
                }
            }
        }
    }

    @Test func listsTrimTheirItemsAndDropEmptyOnes() throws {
        #expect(CommaList(argument: " basic, ,digest ").items == ["basic", "digest"])
        #expect(try PortList(argument: "443, 8443").ports == [443, 8443])
        let file = try ServeOptions.parse(yaml: "auth: ' basic ,digest'\nconnect-ports: '443, 8443'")
        #expect(file.auth?.items == ["basic", "digest"])
        #expect(file.connectPorts?.ports == [443, 8443])
    }

    @Test func boundsAreInclusiveWhereTheyShouldBe() throws {
        #expect(try Count(1).value == 1)
        #expect(try ByteCount(0).value == 0)
        #expect(try PortList(argument: "1,65535").ports == [1, 65535])
        #expect(throws: SettingValueError.self) { try PortList(argument: "0") }
        #expect(throws: SettingValueError.self) { try Seconds(.infinity) }
        #expect(throws: SettingValueError.self) { try Seconds(.nan) }
        #expect(throws: SettingValueError.self) { try RequestRate(.infinity) }
    }
}
