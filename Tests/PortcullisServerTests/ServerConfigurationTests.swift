import NIOCore
import PortcullisProxy
import Testing

@testable import PortcullisServer

@Suite struct ServerConfigurationTests {
    @Test func defaults() throws {
        let c = try ServerConfiguration(options: ServeOptions.unset(), environment: ["HOME": "/home/u"])
        #expect(c.listenText == ["127.0.0.1:3128"])
        #expect(c.proxy.realm == "Portcullis")
        #expect(c.proxy.authSchemes == [.basic])
        #expect(c.proxy.connectPorts == [443])
        #expect(!c.proxy.destinationPolicy.allowPrivateDestinations)
        #expect(c.dataDirectory == "/home/u/.local/share/portcullis")
    }

    @Test func xdgDataHomeWins() throws {
        let c = try ServerConfiguration(
            options: ServeOptions.unset(),
            environment: ["HOME": "/h", "XDG_DATA_HOME": "/x"]
        )
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
        let merged = try ServeOptions.parse(["--realm", "Flag"]).layered(over: file)
        let c = try ServerConfiguration(options: merged, environment: [:])
        #expect(c.listenText == ["127.0.0.1:3130", "[::1]:3130"])
        #expect(c.proxy.realm == "Flag")
        #expect(c.proxy.destinationPolicy.allowPrivateDestinations)
        #expect(c.proxy.connectPorts == [443, 8443])
        #expect(c.proxy.upstreamResponseTimeout == .milliseconds(2500))
    }

    @Test func checkedValuesReachTheRunningConfiguration() throws {
        let options = try ServeOptions.parse([
            "--lockout-threshold", "3", "--max-request-body", "0", "--user-max-rate", "2.5",
            "--credential-cache-ttl", "0.25", "--allow-clients", "10.0.0.0/8, ::1", "--max-client-connections", "4",
        ])
        let c = try ServerConfiguration(options: options, environment: [:])
        #expect(c.proxy.authThrottle.threshold == 3)
        #expect(c.proxy.maximumRequestBody == 0)
        #expect(c.proxy.userLimits.requestsPerSecond == 2.5)
        #expect(c.credentialCacheTTL == .milliseconds(250))
        #expect(c.proxy.admission.allowedClients?.count == 2)
        #expect(c.proxy.admission.maximumConnectionsPerClient == 4)
        #expect(c.shutdownGrace == .seconds(10))
    }

    @Test func noAuthOnANonLoopbackListenerNeedsExplicitConsent() throws {
        let open = ["--auth", "none", "--listen", "0.0.0.0:3128"]
        #expect(throws: ServeError.self) {
            try ServerConfiguration(options: ServeOptions.parse(open), environment: [:])
        }
        let consented = try ServerConfiguration(
            options: ServeOptions.parse(open + ["--allow-open-proxy"]),
            environment: [:]
        )
        #expect(consented.proxy.authSchemes.isEmpty)
        let loopback = ["--auth", "none", "--listen", "127.0.0.1:3128", "--listen", "[::1]:3128"]
        #expect(
            try ServerConfiguration(options: ServeOptions.parse(loopback), environment: [:]).proxy.authSchemes.isEmpty
        )
    }

    @Test(arguments: ["3128", "host:3128", "127.0.0.1:", "127.0.0.1:99999", "[::1]3128", "[::1"])
    func badListenAddressesAreExplained(text: String) {
        #expect(throws: ServeError.self) {
            try ServerConfiguration(options: ServeOptions.parse(["--listen", text]), environment: [:])
        }
    }

    @Test func unknownAuthSchemeAndLogLevelAreErrors() {
        for arguments in [["--auth", "kerberos"], ["--log-level", "loud"]] {
            #expect(throws: ServeError.self) {
                try ServerConfiguration(options: ServeOptions.parse(arguments), environment: [:])
            }
        }
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

@Suite struct TLSListenerConfigurationTests {
    @Test func aTLSListenerAloneBindsNoPlainOne() throws {
        let options = try ServeOptions.parse(["--listen-tls", "127.0.0.1:3129", "--tls-cert", "c.pem", "--tls-key", "k.pem"])
        let c = try ServerConfiguration(options: options, environment: [:])
        #expect(c.listenText.isEmpty)
        #expect(c.listenTLSText == ["127.0.0.1:3129"])
        #expect(c.tls == TLSFiles(certificate: "c.pem", key: "k.pem"))
    }

    @Test(arguments: [
        (["--listen-tls", "127.0.0.1:1"], "--listen-tls needs the proxy's certificate and key"),
        (["--listen-tls", "127.0.0.1:1", "--tls-cert", "c"], "--tls-cert needs --tls-key"),
        (["--listen-tls", "127.0.0.1:1", "--tls-key", "k"], "--tls-key needs --tls-cert"),
        (["--tls-cert", "c", "--tls-key", "k"], "are for --listen-tls"),
        (["--listen-tls", "localhost:x", "--tls-cert", "c", "--tls-key", "k"], "--listen-tls 'localhost:x' is not HOST:PORT"),
        (["--basic-requires-tls"], "needs a TLS listener"),
        (
            ["--basic-requires-tls", "--auth", "digest", "--listen-tls", "127.0.0.1:1", "--tls-cert", "c", "--tls-key", "k"],
            "is about Basic"
        ),
        (
            ["--basic-requires-tls", "--listen", "127.0.0.1:2", "--listen-tls", "127.0.0.1:1", "--tls-cert", "c", "--tls-key", "k"],
            "leaves the plain listeners (--listen 127.0.0.1:2) no scheme to offer"
        ),
        (
            ["--auth", "none", "--listen-tls", "0.0.0.0:1", "--tls-cert", "c", "--tls-key", "k"],
            "refusing to run without authentication on 0.0.0.0:1"
        ),
    ])
    func mistakesAreNamed(arguments: [String], message: String) throws {
        let options = try ServeOptions.parse(arguments)
        #expect {
            try ServerConfiguration(options: options, environment: [:])
        } throws: { error in
            "\(error)".contains(message)
        }
    }

    @Test func basicRequiresTLSWithAnotherSchemeKeepsThePlainListener() throws {
        let options = try ServeOptions.parse([
            "--basic-requires-tls", "--auth", "digest,basic", "--listen", "127.0.0.1:2",
            "--listen-tls", "127.0.0.1:1", "--tls-cert", "c", "--tls-key", "k",
        ])
        let c = try ServerConfiguration(options: options, environment: [:])
        #expect(c.proxy.basicRequiresTLS)
        #expect(c.listenText == ["127.0.0.1:2"])
    }
}
