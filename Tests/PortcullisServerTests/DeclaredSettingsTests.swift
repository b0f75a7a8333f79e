import ArgumentParser
import Testing

@testable import PortcullisServer

/// A settings type with one setting, declared here and nowhere else: what adding a setting to
/// `ServeOptions` takes.
private struct ThrowawaySettings: DeclaredSettings {
    static let reloadableKeys: Set<String> = ["throwaway-thing"]

    @Option(name: .long, help: ArgumentHelp("Exists only in this test.", valueName: "n"))
    var throwawayThing: Count?

    @Flag(inversion: .prefixedNo, help: "Also only here.")
    var throwawaySwitch: Bool?

    init() {}
}

@Suite struct DeclaredSettingsTests {
    @Test func aSettingDeclaredOnceArrivesFromTheCommandLineAndFromYAML() throws {
        #expect(try ThrowawaySettings.settingKeys() == ["throwaway-switch", "throwaway-thing"])

        let flags = try ThrowawaySettings.parse(["--throwaway-thing", "5", "--throwaway-switch"])
        #expect(flags.throwawayThing == (try Count(5)))
        #expect(flags.throwawaySwitch == true)

        let file = try ThrowawaySettings.parse(yaml: "throwaway-thing: 5\nthrowaway-switch: false")
        #expect(file.throwawayThing == (try Count(5)))
        #expect(file.throwawaySwitch == false)

        #expect(ThrowawaySettings.helpMessage().contains("Exists only in this test."))
    }

    @Test func itsCheckAppliesToBothSources() throws {
        #expect(throws: (any Error).self) { try ThrowawaySettings.parse(["--throwaway-thing", "0"]) }
        #expect(throws: ServeError.self) { try ThrowawaySettings.parse(yaml: "throwaway-thing: 0") }
    }

    @Test func anUnknownKeyIsRefusedByName() {
        do {
            _ = try ThrowawaySettings.parse(yaml: "throwaway-thng: 5", source: "t.yaml")
            Issue.record("accepted an unknown key")
        } catch let error as ServeError {
            #expect(
                error.message == "t.yaml: unknown setting 'throwaway-thng' (known: throwaway-switch, throwaway-thing)"
            )
        } catch {
            Issue.record("\(error)")
        }
    }

    @Test func itIsLayeredAndComparedWithoutFurtherCode() throws {
        let file = try ThrowawaySettings.parse(yaml: "throwaway-thing: 5\nthrowaway-switch: true")
        let merged = try ThrowawaySettings.parse(["--throwaway-thing", "6"]).layered(over: file)
        #expect(merged.throwawayThing == (try Count(6)))
        #expect(merged.throwawaySwitch == true)
        let change = try ThrowawaySettings.reload(startup: file, inForce: file, fresh: merged)
        #expect(change == SettingsReload(applied: ["throwaway-thing"], needsRestart: []))
        #expect(try ThrowawaySettings.changedKeys(file, file).isEmpty)
    }

    @Test func propertyNamesBecomeArgumentParsersOptionNames() {
        #expect(ThrowawaySettings.settingKey("listen") == "listen")
        #expect(ThrowawaySettings.settingKey("allowOpenProxy") == "allow-open-proxy")
        #expect(ThrowawaySettings.settingKey("credentialCacheTTL") == "credential-cache-ttl")
        #expect(ThrowawaySettings.settingKey("myURLThing") == "my-url-thing")
        #expect(ThrowawaySettings.settingKey("ipV6Only") == "ip-v6-only")
    }
}
