import ArgumentParser
import Testing

@testable import PortcullisServer

/// One setting given on the command line and in a file, and where it must land.
struct SettingSample: Sendable, CustomTestStringConvertible {
    var key: String
    var arguments: [String]
    var yaml: String
    var landed: @Sendable (ServeOptions) -> Bool

    var testDescription: String { self.key }

    init(_ key: String, _ arguments: [String], _ yaml: String, _ landed: @escaping @Sendable (ServeOptions) -> Bool) {
        (self.key, self.arguments, self.yaml, self.landed) = (key, arguments, yaml, landed)
    }

    /// A setting whose value is the same text in both places.
    init(_ key: String, text: String, _ landed: @escaping @Sendable (ServeOptions) -> String?) {
        self.init(key, ["--\(key)", text], "\(key): \"\(text)\"") { landed($0) == text }
    }

    static let all: [SettingSample] = [
        SettingSample(
            "listen",
            ["--listen", "127.0.0.1:1", "--listen", "[::1]:1"],
            #"listen: ["127.0.0.1:1", "[::1]:1"]"#
        ) {
            $0.listen == ["127.0.0.1:1", "[::1]:1"]
        },
        SettingSample("htpasswd", text: "/etc/users") { $0.htpasswd },
        SettingSample("htdigest", text: "/etc/digest") { $0.htdigest },
        SettingSample("store", text: "sqlite:/var/users.db") { $0.store },
        SettingSample("realm", text: "Corp proxy") { $0.realm },
        SettingSample("auth", ["--auth", "basic,digest"], "auth: [basic, digest]") {
            $0.auth?.items == ["basic", "digest"]
        },
        SettingSample("digest-algorithms", ["--digest-algorithms", "SHA-256, MD5"], "digest-algorithms: SHA-256, MD5") {
            $0.digestAlgorithms?.items == ["SHA-256", "MD5"]
        },
        SettingSample("digest-nonce-lifetime", ["--digest-nonce-lifetime", "120"], "digest-nonce-lifetime: 120") {
            $0.digestNonceLifetime == (try? Seconds(120))
        },
        SettingSample("digest-secret-file", text: "/etc/nonce.key") { $0.digestSecretFile },
        SettingSample("digest-challenges", text: "per-algorithm") { $0.digestChallenges },
        SettingSample("keytab", text: "/etc/proxy.keytab") { $0.keytab },
        SettingSample("strip-realm", ["--strip-realm"], "strip-realm: true") { $0.stripRealm == true },
        SettingSample(
            "listen-tls",
            ["--listen-tls", "127.0.0.1:2", "--listen-tls", "[::1]:2"],
            #"listen-tls: ["127.0.0.1:2", "[::1]:2"]"#
        ) {
            $0.listenTLS == ["127.0.0.1:2", "[::1]:2"]
        },
        SettingSample("tls-cert", text: "/etc/proxy.pem") { $0.tlsCert },
        SettingSample("tls-key", text: "/etc/proxy.key") { $0.tlsKey },
        SettingSample("basic-requires-tls", ["--basic-requires-tls"], "basic-requires-tls: true") {
            $0.basicRequiresTLS == true
        },
        SettingSample("tls-client-ca", text: "/etc/clients-ca.pem") { $0.tlsClientCA },
        SettingSample("http2", ["--no-http2"], "http2: false") { $0.http2 == false },
        count("http2-max-streams", 17) { $0.http2MaxStreams },
        SettingSample("http2-stream-window", ["--http2-stream-window", "70000"], "http2-stream-window: 70000") {
            $0.http2StreamWindow == (try? ByteCount(70000))
        },
        SettingSample(
            "http2-connection-window",
            ["--http2-connection-window", "80000"],
            "http2-connection-window: 80000"
        ) {
            $0.http2ConnectionWindow == (try? ByteCount(80000))
        },
        SettingSample("cert-user-from", text: "san-email") { $0.certUserFrom },
        SettingSample("cert-users-implicit", ["--cert-users-implicit"], "cert-users-implicit: true") {
            $0.certUsersImplicit == true
        },
        count("max-pending-handshakes", 16) { $0.maxPendingHandshakes },
        SettingSample(
            "allow-private-destinations",
            ["--allow-private-destinations"],
            "allow-private-destinations: true"
        ) {
            $0.allowPrivateDestinations == true
        },
        SettingSample("connect-ports", ["--connect-ports", "443,8443"], "connect-ports: [443, 8443]") {
            $0.connectPorts?.ports == [443, 8443]
        },
        SettingSample(
            "parent",
            ["--parent", "http://a@p1:3128", "--parent", "http://p2:8080"],
            #"parent: ["http://a@p1:3128", "http://p2:8080"]"#
        ) {
            $0.parent == ["http://a@p1:3128", "http://p2:8080"]
        },
        SettingSample(
            "routes",
            ["--routes", "*.corp.example=direct", "--routes", "10.0.0.0/8,intra=p2:8080"],
            #"routes: ["*.corp.example=direct", {hosts: [10.0.0.0/8, intra], via: "p2:8080"}]"#
        ) {
            $0.routes == [
                RouteRule(hosts: ["*.corp.example"], via: "direct"),
                RouteRule(hosts: ["10.0.0.0/8", "intra"], via: "p2:8080"),
            ]
        },
        SettingSample(
            "ldap",
            ["--ldap", "ldap://dir1", "--ldap", "ldaps://dir2:636"],
            #"ldap: ["ldap://dir1", "ldaps://dir2:636"]"#
        ) {
            $0.ldap == ["ldap://dir1", "ldaps://dir2:636"]
        },
        SettingSample("ldap-base", text: "dc=example,dc=org") { $0.ldapBase },
        SettingSample("ldap-preset", text: "ad") { $0.ldapPreset },
        SettingSample("ldap-bind-dn", text: "cn=reader,dc=example,dc=org") { $0.ldapBindDn },
        SettingSample("ldap-bind-password-file", text: "/run/secrets/ldap") { $0.ldapBindPasswordFile },
        SettingSample("ldap-user-filter", text: "(uid=%s)") { $0.ldapUserFilter },
        SettingSample("ldap-ca", text: "/etc/ssl/dir-ca.pem") { $0.ldapCa },
        SettingSample("ldap-starttls", ["--no-ldap-starttls"], "ldap-starttls: false") { $0.ldapStarttls == false },
        SettingSample("ldap-first", ["--ldap-first"], "ldap-first: true") { $0.ldapFirst == true },
        SettingSample("ldap-group-attribute", text: "isMemberOf") { $0.ldapGroupAttribute },
        SettingSample("ldap-group-filter", text: "(member=%d)") { $0.ldapGroupFilter },
        seconds("ldap-group-cache-ttl", 60) { $0.ldapGroupCacheTTL },
        SettingSample("parent-password-file", text: "/run/secrets/parent") { $0.parentPasswordFile },
        SettingSample("parent-password-env", text: "PARENT_PASSWORD") { $0.parentPasswordEnv },
        SettingSample("parent-keytab", text: "/etc/portcullis/parent.keytab") { $0.parentKeytab },
        SettingSample("parent-cacert", text: "/etc/portcullis/corp-ca.pem") { $0.parentCacert },
        SettingSample("parent-auth", ["--parent-auth", "digest,ntlm"], "parent-auth: [digest, ntlm]") {
            $0.parentAuth?.items == ["digest", "ntlm"]
        },
        SettingSample(
            "direct-for",
            ["--direct-for", "*.corp.example,10.0.0.0/8"],
            "direct-for: [\"*.corp.example\", 10.0.0.0/8]"
        ) {
            $0.directFor?.items == ["*.corp.example", "10.0.0.0/8"]
        },
        SettingSample("allow-open-proxy", ["--no-allow-open-proxy"], "allow-open-proxy: false") {
            $0.allowOpenProxy == false
        },
        SettingSample("log-level", text: "debug") { $0.logLevel },
        SettingSample("data-dir", text: "/var/lib/portcullis") { $0.dataDir },
        seconds("upstream-connect-timeout", 1.5) { $0.upstreamConnectTimeout },
        seconds("upstream-response-timeout", 2) { $0.upstreamResponseTimeout },
        seconds("tunnel-idle-timeout", 3) { $0.tunnelIdleTimeout },
        seconds("client-idle-timeout", 4) { $0.clientIdleTimeout },
        seconds("request-head-timeout", 5) { $0.requestHeadTimeout },
        seconds("request-body-timeout", 6) { $0.requestBodyTimeout },
        count("lockout-threshold", 7) { $0.lockoutThreshold },
        seconds("lockout-window", 8) { $0.lockoutWindow },
        SettingSample("allow-clients", ["--allow-clients", "10.0.0.0/8,::1"], #"allow-clients: [10.0.0.0/8, "::1"]"#) {
            $0.allowClients?.items == ["10.0.0.0/8", "::1"]
        },
        SettingSample("policy", text: "/etc/policy.yaml") { $0.policy },
        SettingSample("pac", text: "/etc/proxy.pac") { $0.pac },
        SettingSample("token-max-ttl", ["--token-max-ttl", "12h"], "token-max-ttl: 12h") {
            $0.tokenMaxTtl?.seconds == 43200
        },
        SettingSample("expiry-warning", ["--expiry-warning", "3d"], "expiry-warning: 3d") {
            $0.expiryWarning?.seconds == 3 * 86400
        },
        SettingSample("admin", text: "127.0.0.1:9090") { $0.admin },
        SettingSample("allow-remote-admin", ["--allow-remote-admin"], "allow-remote-admin: yes") {
            $0.allowRemoteAdmin == true
        },
        SettingSample("access-log", text: "-") { $0.accessLog },
        SettingSample("access-log-format", text: "json") { $0.accessLogFormat },
        SettingSample("max-request-body", ["--max-request-body", "0"], "max-request-body: 0") {
            $0.maxRequestBody == (try? ByteCount(0))
        },
        count("user-max-connections", 2) { $0.userMaxConnections },
        count("user-max-addresses", 3) { $0.userMaxAddresses },
        seconds("user-address-window", 9.5) { $0.userAddressWindow },
        SettingSample("user-max-rate", ["--user-max-rate", "0.5"], "user-max-rate: 0.5") {
            $0.userMaxRate == (try? RequestRate(0.5))
        },
        count("max-connections", 100) { $0.maxConnections },
        count("max-client-connections", 10) { $0.maxClientConnections },
        seconds("lockout-duration", 11) { $0.lockoutDuration },
        seconds("credential-cache-ttl", 12) { $0.credentialCacheTTL },
        seconds("shutdown-grace", 13) { $0.shutdownGrace },
    ]

    static func seconds(_ key: String, _ value: Double, _ get: @escaping @Sendable (ServeOptions) -> Seconds?) -> Self {
        Self(key, ["--\(key)", "\(value)"], "\(key): \(value)") { get($0) == (try? Seconds(value)) }
    }

    static func count(_ key: String, _ value: Int, _ get: @escaping @Sendable (ServeOptions) -> Count?) -> Self {
        Self(key, ["--\(key)", "\(value)"], "\(key): \(value)") { get($0) == (try? Count(value)) }
    }
}

@Suite struct ServeOptionsTests {
    @Test func theSamplesCoverEverySetting() throws {
        #expect(SettingSample.all.map(\.key).sorted() == (try ServeOptions.settingKeys()))
    }

    @Test(arguments: SettingSample.all)
    func everySettingArrivesFromTheCommandLine(sample: SettingSample) throws {
        let options = try ServeOptions.parse(sample.arguments)
        #expect(sample.landed(options))
        #expect(try ServeOptions.changedKeys(ServeOptions.unset(), options) == [sample.key])
    }

    @Test(arguments: SettingSample.all)
    func everySettingArrivesFromYAML(sample: SettingSample) throws {
        let options = try ServeOptions.parse(yaml: sample.yaml)
        #expect(sample.landed(options))
        #expect(try ServeOptions.changedKeys(ServeOptions.unset(), options) == [sample.key])
    }

    /// The YAML key is the option name only if the kebab-case conversion matches argument-parser's.
    @Test func everyYAMLKeyIsAnOptionTheCommandLineKnows() throws {
        for key in try ServeOptions.settingKeys() {
            do {
                _ = try ServeOptions.parse(["--\(key)"])
            } catch {
                let message = ServeOptions.message(for: error)
                #expect(message.contains("Missing value for '--\(key)"), "\(key): \(message)")
            }
        }
        #expect(ServeOptions.settingKey("credentialCacheTTL") == "credential-cache-ttl")
        #expect(ServeOptions.settingKey("myURLThing") == "my-url-thing")
    }

    @Test func flagsWinOverTheFileAndTheFileFillsTheRest() throws {
        let file = try ServeOptions.parse(
            yaml: """
                listen: "127.0.0.1:3130, [::1]:3130"
                allow-private-destinations: true
                realm: File
                upstream-response-timeout: 2.5
                """
        )
        let flags = try ServeOptions.parse(["--realm", "Flag", "--no-allow-private-destinations"])
        let merged = try flags.layered(over: file)
        #expect(merged.listen == ["127.0.0.1:3130", "[::1]:3130"])
        #expect(merged.realm == "Flag")
        #expect(merged.allowPrivateDestinations == false)
        #expect(merged.upstreamResponseTimeout == (try Seconds(2.5)))
        let listen = try ServeOptions.parse(["--listen", "127.0.0.1:1"]).layered(over: file)
        #expect(listen.listen == ["127.0.0.1:1"])
        #expect(try ServeOptions.unset().layered(over: file).realm == "File")
    }

    @Test func aReloadAppliesReloadableSettingsAndNamesTheOthers() throws {
        let startup = try ServeOptions.parse(yaml: "realm: A\nconnect-ports: [443]")
        let edited = try ServeOptions.parse(yaml: "realm: B\nconnect-ports: [443, 8443]\nrequest-head-timeout: 5")
        let first = try ServeOptions.reload(startup: startup, inForce: startup, fresh: edited)
        #expect(first == SettingsReload(applied: ["connect-ports", "request-head-timeout"], needsRestart: ["realm"]))
        // The realm change still waits for a restart; the ports are already in force.
        let again = try ServeOptions.reload(startup: startup, inForce: edited, fresh: edited)
        #expect(again == SettingsReload(applied: [], needsRestart: ["realm"]))
        let back = try ServeOptions.reload(startup: startup, inForce: edited, fresh: startup)
        #expect(back == SettingsReload(applied: ["connect-ports", "request-head-timeout"], needsRestart: []))
    }

    @Test func theReloadableSettingsAreThoseConnectionsReadForThemselves() throws {
        #expect(
            ServeOptions.reloadableKeys == [
                "allow-private-destinations", "connect-ports", "upstream-connect-timeout", "upstream-response-timeout",
                "tunnel-idle-timeout", "client-idle-timeout", "request-head-timeout", "request-body-timeout",
                "max-request-body",
            ]
        )
        #expect(ServeOptions.reloadableKeys.isSubset(of: try ServeOptions.settingKeys()))
    }

    @Test func unknownKeysAreRefusedByName() {
        #expect(throws: ServeError.self) { try ServeOptions.parse(yaml: "allow-privat-destinations: true") }
        do {
            _ = try ServeOptions.parse(yaml: "realm: x\nallow-privat-destinations: true", source: "p.yaml")
            Issue.record("accepted an unknown key")
        } catch let error as ServeError {
            #expect(error.message.hasPrefix("p.yaml: unknown setting 'allow-privat-destinations' (known: access-log, "))
        } catch {
            Issue.record("\(error)")
        }
    }

    @Test func aFileThatIsNotAMappingOfSettingsIsRefused() throws {
        #expect(throws: ServeError.self) { try ServeOptions.parse(yaml: "- a\n- b") }
        #expect(throws: ServeError.self) { try ServeOptions.parse(yaml: "connect-ports: [443\n") }
        #expect(throws: ServeError.self) { try ServeOptions.parse(yaml: "[a]: b") }
        #expect(try ServeOptions.changedKeys(ServeOptions.unset(), ServeOptions.parse(yaml: "# nothing")).isEmpty)
    }
}
