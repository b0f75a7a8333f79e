import NIOCore
import PortcullisProxy
import Testing

@testable import PortcullisServer

@Suite struct ServerConfigurationTests {
    @Test func defaults() throws {
        let c = try ServerConfiguration(options: ServeOptions(), environment: ["HOME": "/home/u"])
        #expect(c.listenText == ["127.0.0.1:3128"])
        #expect(c.proxy.realm == "Portcullis")
        #expect(c.proxy.authSchemes == [.basic])
        #expect(c.proxy.connectPorts == [443])
        #expect(!c.proxy.destinationPolicy.allowPrivateDestinations)
        #expect(c.dataDirectory == "/home/u/.local/share/portcullis")
    }

    @Test func xdgDataHomeWins() throws {
        let c = try ServerConfiguration(options: ServeOptions(), environment: ["HOME": "/h", "XDG_DATA_HOME": "/x"])
        #expect(c.dataDirectory == "/x/portcullis")
    }

    @Test func yamlKeysAreTheFlagNamesAndFlagsWin() throws {
        let file = try ServeOptions.parse(
            yaml: """
                listen: ["127.0.0.1:3130", "[::1]:3130"]
                allow-private-destinations: true
                connect-ports: [443, 8443]
                realm: File
                upstream-response-timeout: 2.5
                """
        )
        var flags = ServeOptions()
        flags.realm = "Flag"
        let merged = flags.layered(over: file)
        let c = try ServerConfiguration(options: merged, environment: [:])
        #expect(c.listenText == ["127.0.0.1:3130", "[::1]:3130"])
        #expect(c.proxy.realm == "Flag")
        #expect(c.proxy.destinationPolicy.allowPrivateDestinations)
        #expect(c.proxy.connectPorts == [443, 8443])
        #expect(c.proxy.upstreamResponseTimeout == .milliseconds(2500))
    }

    @Test func unknownYamlKeysAndWrongTypesAreErrors() {
        #expect(throws: ServeError.self) { try ServeOptions.parse(yaml: "allow-privat-destinations: true") }
        #expect(throws: ServeError.self) { try ServeOptions.parse(yaml: "allow-open-proxy: maybe") }
        #expect(throws: ServeError.self) { try ServeOptions.parse(yaml: "connect-ports: [70000]") }
        #expect(throws: ServeError.self) { try ServeOptions.parse(yaml: "- a\n- b") }
    }

    @Test func noAuthOnANonLoopbackListenerNeedsExplicitConsent() throws {
        var options = ServeOptions()
        options.auth = ["none"]
        options.listen = ["0.0.0.0:3128"]
        #expect(throws: ServeError.self) { try ServerConfiguration(options: options, environment: [:]) }
        options.allowOpenProxy = true
        #expect(try ServerConfiguration(options: options, environment: [:]).proxy.authSchemes.isEmpty)
        options.allowOpenProxy = nil
        options.listen = ["127.0.0.1:3128", "[::1]:3128"]
        #expect(try ServerConfiguration(options: options, environment: [:]).proxy.authSchemes.isEmpty)
    }

    @Test(arguments: ["3128", "host:3128", "127.0.0.1:", "127.0.0.1:99999", "[::1]3128", "[::1"])
    func badListenAddressesAreExplained(text: String) {
        var options = ServeOptions()
        options.listen = [text]
        #expect(throws: ServeError.self) { try ServerConfiguration(options: options, environment: [:]) }
    }

    @Test func unknownAuthSchemeAndLogLevelAreErrors() {
        var options = ServeOptions()
        options.auth = ["kerberos"]
        #expect(throws: ServeError.self) { try ServerConfiguration(options: options, environment: [:]) }
        options = ServeOptions()
        options.logLevel = "loud"
        #expect(throws: ServeError.self) { try ServerConfiguration(options: options, environment: [:]) }
    }

    @Test func postgresStoreLocationsAreParsedAndNeverEchoTheirPassword() throws {
        guard case .postgres(let url) = try StoreLocation.parse("postgres://px:p%40ss@db:5433/users") else {
            Issue.record("not a postgres location")
            return
        }
        #expect(url.password == "p@ss" && url.redacted == "postgres://px:***@db:5433/users")
        for bad in ["postgres://px:topsecret@db/users?sslmode=require", "postgress://px:topsecret@db/users"] {
            do {
                _ = try StoreLocation.parse(bad)
                Issue.record("accepted \(bad)")
            } catch let error as ServeError {
                #expect(!error.description.contains("topsecret"), "\(error)")
            }
        }
    }
}
