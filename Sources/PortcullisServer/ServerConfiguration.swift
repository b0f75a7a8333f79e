import Foundation
import Logging
import NIOCore
import PortcullisAuth
import PortcullisLDAP
import PortcullisPostgres
import PortcullisProxy
import PortcullisStores

/// Validated settings of a running server, with every default applied.
public struct ServerConfiguration: Sendable {
    public var listen: [SocketAddress]
    public var listenText: [String]
    /// `--listen-tls`: listeners whose clients speak TLS to the proxy.
    public var listenTLS: [SocketAddress]
    public var listenTLSText: [String]
    /// Listening sockets handed over at start (``SocketActivation``): proxy, TLS and admin
    /// listeners like those above, already bound.
    public var inherited: [InheritedSocket] = []
    /// `--tls-cert` and `--tls-key`, when there are TLS listeners.
    public var tls: TLSFiles?
    public var htpasswd: String?
    /// Where users come from.
    public var store: StoreLocation = .embedded("")
    /// `--policy`: re-read on change and SIGHUP.
    public var policyPath: String?
    /// `--pac`: served, re-read on change and SIGHUP.
    public var pacPath: String?
    /// `--admin`: where /metrics, /healthz and /readyz are served.
    public var admin: SocketAddress?
    /// An inherited socket named `admin` serves them instead of `--admin`.
    public var adminSocket: CInt?
    public var accessLogPath: String?
    public var accessLogFormat: AccessLog.Format = .squid
    public var dataDirectory: String
    public var proxy: ProxyConfiguration
    /// The settings this configuration was made from (to tell what a reload changed).
    public var options: ServeOptions
    /// `--config`: re-read on SIGHUP and when it changes.
    public var configPath: String?
    /// Digest settings when Digest is offered.
    public var digest: DigestAuthority.Settings?
    /// `--digest-secret-file`: the nonce key shared by instances that do not share a database.
    public var digestSecretFile: String?
    /// `--keytab` (else `KRB5_KTNAME`) when Negotiate is offered.
    public var keytab: String?
    /// `--ldap` and its companions: the directory tried after the local users.
    public var ldap: LDAPDirectory.Settings?
    public var logLevel: Logger.Level
    public var credentialCacheTTL: TimeAmount
    public var shutdownGrace: TimeAmount
    /// Event-loop threads serving connections.
    public var eventLoops: Int

    public static let defaultListen = "127.0.0.1:3128"

    /// Applies defaults and checks everything a user can get wrong, with a message for each.
    /// `inherited`: the sockets handed over at start (``SocketActivation/sockets(environment:pid:)``),
    /// the same on every reload.
    public init(
        options: ServeOptions,
        environment: [String: String] = ProcessInfo.processInfo.environment,
        inherited: [InheritedSocket] = []
    ) throws {
        self.options = options
        self.inherited = inherited
        let inheritedListeners = inherited.contains { $0.role != .admin }
        self.listenText =
            options.listen.isEmpty && options.listenTLS.isEmpty && !inheritedListeners
            ? [Self.defaultListen] : options.listen
        self.listen = try self.listenText.map(Self.parseListen)
        self.listenTLSText = options.listenTLS
        self.listenTLS = try options.listenTLS.map { try Self.parseListen($0, option: "--listen-tls") }
        let inheritedPlain = inherited.filter { $0.role == .proxy }.map { ($0.description, $0.address) }
        let inheritedTLS = inherited.filter { $0.role == .tls }.map { ($0.description, $0.address) }
        let hasTLSListener = !self.listenTLS.isEmpty || !inheritedTLS.isEmpty
        let plainListeners = self.listenText + inheritedPlain.map(\.0)
        switch (options.tlsCert, options.tlsKey) {
        case (let certificate?, let key?):
            guard hasTLSListener else {
                throw ServeError(
                    "--tls-cert and --tls-key are for --listen-tls: add a TLS listener (--listen-tls HOST:PORT)"
                )
            }
            self.tls = TLSFiles(certificate: certificate, key: key, clientCA: options.tlsClientCA)
        case (nil, nil):
            guard !hasTLSListener else {
                throw ServeError(
                    "--listen-tls needs the proxy's certificate and key: --tls-cert FILE --tls-key FILE (PEM)"
                )
            }
        case (_?, nil):
            throw ServeError("--tls-cert needs --tls-key (the certificate's private key, PEM)")
        case (nil, _?):
            throw ServeError("--tls-key needs --tls-cert (the certificate that goes with it, PEM)")
        }

        var proxy = ProxyConfiguration()
        let realm = options.realm ?? "Portcullis"
        guard !realm.isEmpty, realm.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7F }) else {
            throw ServeError("--realm must be non-empty printable text")
        }
        proxy.realm = realm

        let authNames = (options.auth?.items ?? [AuthScheme.basic.rawValue]).map { $0.lowercased() }
        if authNames == ["none"] {
            proxy.authSchemes = []
        } else {
            proxy.authSchemes = try authNames.map { name in
                guard let scheme = AuthScheme(rawValue: name) else {
                    throw ServeError(
                        "--auth: unknown scheme '\(name)' (available: negotiate, ntlm, digest, basic, bearer, certificate, or none to turn authentication off)"
                    )
                }
                return scheme
            }
            guard !proxy.authSchemes.isEmpty else { throw ServeError("--auth needs at least one scheme, or none") }
        }
        if proxy.authSchemes.isEmpty, !(options.allowOpenProxy ?? false) {
            let every =
                Array(zip(self.listenText, self.listen)) + Array(zip(self.listenTLSText, self.listenTLS))
                + inheritedPlain + inheritedTLS
            if let open = every.first(where: { !Self.isLoopback($0.1) }) {
                throw ServeError(
                    "refusing to run without authentication on \(open.0), which is not a loopback address: anyone who can reach it could use this proxy. Use --auth basic, listen on 127.0.0.1/[::1], or pass --allow-open-proxy if that is really what you want."
                )
            }
        }
        guard Set(proxy.authSchemes).count == proxy.authSchemes.count else {
            throw ServeError("--auth: a scheme is listed twice")
        }
        if proxy.authSchemes.contains(.digest) {
            var settings = DigestAuthority.Settings(realm: realm)
            if let names = options.digestAlgorithms?.items {
                settings.algorithms = try names.map { name in
                    guard let algorithm = DigestAlgorithm(token: name) else {
                        throw ServeError(
                            "--digest-algorithms: unknown algorithm '\(name)' (available: SHA-256, SHA-512-256, MD5 and their -sess variants)"
                        )
                    }
                    return algorithm
                }
                guard !settings.algorithms.isEmpty else { throw ServeError("--digest-algorithms needs at least one") }
                guard Set(settings.algorithms).count == settings.algorithms.count else {
                    throw ServeError("--digest-algorithms: an algorithm is listed twice")
                }
            }
            if let lifetime = options.digestNonceLifetime?.value {
                guard lifetime >= 1, lifetime <= 7 * 24 * 3600 else {
                    throw ServeError("--digest-nonce-lifetime must be 1 second to 7 days")
                }
                settings.nonceLifetime = Int(lifetime)
            }
            switch options.digestChallenges ?? "one-field" {
            case "one-field": settings.oneField = true
            case "per-algorithm": settings.oneField = false
            case let other:
                throw ServeError("--digest-challenges: '\(other.prefix(40))' is not one-field or per-algorithm")
            }
            self.digest = settings
            self.digestSecretFile = options.digestSecretFile
        } else if options.digestAlgorithms != nil || options.digestNonceLifetime != nil
            || options.digestChallenges != nil
        {
            throw ServeError("the --digest-… settings need --auth digest (or basic,digest)")
        }
        if proxy.authSchemes.contains(.negotiate) {
            let fromEnvironment = environment["KRB5_KTNAME"].map {
                $0.hasPrefix("FILE:") ? String($0.dropFirst(5)) : $0
            }
            guard let keytab = options.keytab ?? fromEnvironment, !keytab.isEmpty else {
                throw ServeError(
                    "--auth negotiate needs the proxy's keytab: --keytab FILE (or KRB5_KTNAME), holding an HTTP/<host name> key"
                )
            }
            self.keytab = keytab
        } else if options.keytab != nil {
            throw ServeError("--keytab is for --auth negotiate")
        }
        if proxy.authSchemes.contains(.ntlm) {
            proxy.ntlm = Self.ntlmSettings(realm: realm)
        }
        proxy.stripRealm = options.stripRealm ?? false
        self.tls = try Self.clientCertificates(options, tls: self.tls, plainListeners: plainListeners, &proxy)
        try Self.applyHTTP2(options, tls: &self.tls, &proxy)
        if options.basicRequiresTLS == true {
            guard proxy.authSchemes.contains(.basic) else {
                throw ServeError("--basic-requires-tls is about Basic, which --auth does not offer")
            }
            guard hasTLSListener else {
                throw ServeError(
                    "--basic-requires-tls needs a TLS listener (--listen-tls), or Basic is offered nowhere"
                )
            }
            guard proxy.authSchemes.contains(where: { $0 != .basic && $0 != .certificate }) || plainListeners.isEmpty
            else {
                throw ServeError(
                    "--basic-requires-tls leaves the plain listeners (--listen \(plainListeners.joined(separator: ", "))) no scheme to offer: drop --listen, or add digest, ntlm or negotiate to --auth"
                )
            }
            proxy.basicRequiresTLS = true
        }
        if let pending = options.maxPendingHandshakes { proxy.maximumPendingHandshakes = pending.value }
        proxy.destinationPolicy = DestinationPolicy(allowPrivateDestinations: options.allowPrivateDestinations ?? false)
        proxy.connectPorts = Set(options.connectPorts?.ports ?? [443])
        proxy.parentRouting = try Self.parentRouting(options)
        self.ldap = try Self.ldapSettings(options)

        func amount(_ seconds: Seconds?, _ fallback: TimeAmount) -> TimeAmount {
            seconds.map { .nanoseconds(Int64($0.value * 1e9)) } ?? fallback
        }
        proxy.upstreamConnectTimeout = amount(options.upstreamConnectTimeout, .seconds(10))
        proxy.upstreamResponseTimeout = amount(options.upstreamResponseTimeout, .seconds(60))
        proxy.tunnelIdleTimeout = amount(options.tunnelIdleTimeout, .minutes(10))
        proxy.clientIdleTimeout = amount(options.clientIdleTimeout, .seconds(60))
        proxy.requestHeadTimeout = amount(options.requestHeadTimeout, .seconds(30))
        proxy.requestBodyTimeout = amount(options.requestBodyTimeout, .seconds(30))
        if let threshold = options.lockoutThreshold {
            proxy.authThrottle.threshold = threshold.value
        }
        if let text = options.admin {
            let address = try Self.parseListen(text)
            if !Self.isLoopback(address), !(options.allowRemoteAdmin ?? false) {
                throw ServeError(
                    "--admin \(text) is not a loopback address; metrics tell a lot about who uses this proxy. Listen on 127.0.0.1/[::1], or pass --allow-remote-admin."
                )
            }
            self.admin = address
        }
        if let socket = inherited.first(where: { $0.role == .admin }) {
            guard options.admin == nil else {
                throw ServeError("\(socket.description) is the admin listener: drop --admin, or the inherited socket")
            }
            if !Self.isLoopback(socket.address), !(options.allowRemoteAdmin ?? false) {
                throw ServeError(
                    "\(socket.description) (admin) is not on a loopback address; metrics tell a lot about who uses this proxy. Bind it to 127.0.0.1/[::1], or pass --allow-remote-admin."
                )
            }
            self.admin = socket.address
            self.adminSocket = socket.descriptor
        }
        self.accessLogPath = options.accessLog
        if let name = options.accessLogFormat {
            guard let format = AccessLog.Format(rawValue: name.lowercased()) else {
                throw ServeError("--access-log-format: '\(name)' is not squid or json")
            }
            self.accessLogFormat = format
        }
        if let path = options.policy {
            proxy.policy = try PolicyFile.load(path: path, directoryGroups: !options.ldap.isEmpty)
            self.policyPath = path
        }
        self.pacPath = options.pac
        if let warning = options.expiryWarning {
            proxy.expiryWarning = .nanoseconds(Int64(warning.seconds * 1e9))
        }
        if let clients = options.allowClients?.items {
            proxy.admission.allowedClients = try clients.map { text in
                guard let network = IPNetwork(text) else {
                    throw ServeError(
                        "--allow-clients: '\(text)' is not an IP address or CIDR block (10.0.0.0/8, fd00::/8)"
                    )
                }
                return network
            }
        }
        proxy.maximumRequestBody = options.maxRequestBody?.value
        proxy.userLimits.maximumConnections = options.userMaxConnections?.value
        proxy.userLimits.maximumAddresses = options.userMaxAddresses?.value
        proxy.userLimits.addressWindow = amount(options.userAddressWindow, .minutes(1))
        if let rate = options.userMaxRate {
            proxy.userLimits.requestsPerSecond = rate.value
        }
        if let n = options.maxConnections {
            proxy.admission.maximumConnections = n.value
        }
        if let n = options.maxClientConnections {
            proxy.admission.maximumConnectionsPerClient = n.value
        }
        proxy.authThrottle.window = amount(options.lockoutWindow, .minutes(5))
        proxy.authThrottle.lockout = amount(options.lockoutDuration, .minutes(5))
        self.credentialCacheTTL = amount(options.credentialCacheTTL, .minutes(5))
        self.shutdownGrace = amount(options.shutdownGrace, .seconds(10))
        self.proxy = proxy

        let levelName = (options.logLevel ?? "info").lowercased()
        guard let level = Logger.Level(rawValue: levelName) else {
            throw ServeError(
                "--log-level: unknown level '\(levelName)' (trace, debug, info, notice, warning, error, critical)"
            )
        }
        self.logLevel = level
        self.htpasswd = options.htpasswd
        self.eventLoops = Int(environment["PORTCULLIS_EVENT_LOOPS"] ?? "") ?? System.coreCount
        self.dataDirectory = options.dataDir ?? Self.defaultDataDirectory(environment: environment)
        self.store = try Self.storeLocation(options, dataDirectory: self.dataDirectory)
        if self.proxy.authSchemes.contains(.bearer) {
            switch self.store {
            case .htpasswd, .htdigest:
                throw ServeError(
                    "--auth bearer takes tokens of a user database (the embedded one, sqlite: or postgres://), not of a user file"
                )
            case .embedded, .sqlite, .postgres:
                break
            }
        }
    }

    /// `$XDG_DATA_HOME/portcullis`, else `~/.local/share/portcullis`.
    public static func defaultDataDirectory(environment: [String: String]) -> String {
        if let xdg = environment["XDG_DATA_HOME"], xdg.hasPrefix("/") {
            return xdg + "/portcullis"
        }
        let home = environment["HOME"] ?? NSHomeDirectory()
        return home + "/.local/share/portcullis"
    }

    /// The names NTLM's CHALLENGE gives: this host (NetBIOS: its first label, upper-case, at most
    /// 15 characters) and, as the domain, the realm in the same form. Clients show them at
    /// most; they take part in no check.
    static func ntlmSettings(realm: String) -> NTLMAcceptor.Settings {
        func netbios(_ text: String, fallback: String) -> String {
            let name = String(
                text.uppercased().unicodeScalars.filter {
                    $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "-")
                }.prefix(15)
            )
            return name.isEmpty ? fallback : name
        }
        let host = ProcessInfo.processInfo.hostName
        let short = host.split(separator: ".").first.map(String.init) ?? host
        return NTLMAcceptor.Settings(
            netbiosDomainName: netbios(realm, fallback: "PORTCULLIS"),
            netbiosComputerName: netbios(short, fallback: "PROXY"),
            dnsDomainName: host.contains(".") ? String(host.drop { $0 != "." }.dropFirst()) : "",
            dnsComputerName: host
        )
    }

    /// `--tls-client-ca`, `--auth certificate`, `--cert-user-from`, `--cert-users-implicit`.
    private static func clientCertificates(
        _ options: ServeOptions,
        tls: TLSFiles?,
        plainListeners: [String],
        _ proxy: inout ProxyConfiguration
    ) throws -> TLSFiles? {
        let offered = proxy.authSchemes.contains(.certificate)
        if offered {
            guard options.tlsClientCA != nil, tls != nil else {
                throw ServeError(
                    "--auth certificate needs a TLS listener that asks for client certificates: --listen-tls, --tls-cert, --tls-key and --tls-client-ca FILE (the CA that issues them)"
                )
            }
            if proxy.authSchemes == [.certificate], !plainListeners.isEmpty {
                throw ServeError(
                    "--auth certificate alone leaves the plain listeners (--listen \(plainListeners.joined(separator: ", "))) no scheme to offer: a certificate is only seen over TLS; drop --listen or add another scheme"
                )
            }
        } else {
            if options.certUserFrom != nil || options.certUsersImplicit != nil {
                throw ServeError("--cert-user-from and --cert-users-implicit are for --auth certificate")
            }
        }
        var tls = tls
        if let clientCA = options.tlsClientCA {
            guard var files = tls else {
                throw ServeError("--tls-client-ca is for TLS listeners: add --listen-tls with --tls-cert and --tls-key")
            }
            // Required by the handshake unless another scheme can let a client in without one.
            files.requireClientCertificate = !proxy.authSchemes.contains { $0 != .certificate }
            files.clientCA = clientCA
            tls = files
        }
        if let field = options.certUserFrom {
            guard let source = CertificateUserSource(rawValue: field.lowercased()) else {
                throw ServeError("--cert-user-from: '\(field.prefix(40))' is not cn, san-email or san-uri")
            }
            proxy.certificateUserFrom = source
        }
        proxy.certificateUsersImplicit = options.certUsersImplicit ?? false
        return tls
    }

    /// `--http2`, `--http2-max-streams`, `--http2-stream-window`, `--http2-connection-window`.
    private static func applyHTTP2(_ options: ServeOptions, tls: inout TLSFiles?, _ proxy: inout ProxyConfiguration)
        throws
    {
        proxy.http2Enabled = options.http2 ?? true
        tls?.http2 = proxy.http2Enabled
        if let streams = options.http2MaxStreams?.value {
            guard streams >= 1 else { throw ServeError("--http2-max-streams must be at least 1") }
            proxy.http2.maximumConcurrentStreams = streams
        }
        // RFC 9113 §6.5.2: a window is at most 2^31 - 1; below the default of 65535 one
        // stream could not even take a default frame.
        for (value, name, apply) in [
            (
                options.http2StreamWindow, "--http2-stream-window",
                { (p: inout ProxyConfiguration, v: Int) in p.http2.streamWindow = v }
            ),
            (
                options.http2ConnectionWindow, "--http2-connection-window",
                { (p: inout ProxyConfiguration, v: Int) in p.http2.connectionWindow = v }
            ),
        ] {
            guard let bytes = value?.value else { continue }
            guard bytes >= 65535, bytes <= Int(Int32.max) else {
                throw ServeError("\(name) must be 65535 to 2147483647 bytes")
            }
            apply(&proxy, bytes)
        }
    }

    /// The first line of a file holding a password (a trailing CR dropped).
    static func secret(fromFile file: String, option: String) throws -> String {
        do {
            let text = try String(contentsOfFile: file, encoding: .utf8)
            return String(text.split(separator: "\n", omittingEmptySubsequences: false).first ?? "")
                .trimmingCharacters(in: CharacterSet(charactersIn: "\r"))
        } catch {
            throw ServeError("\(option) \(file) cannot be read: \(error.localizedDescription)")
        }
    }

    /// A search filter template: in parentheses, with its placeholder.
    static func checkFilter(_ filter: String, option: String, placeholder: String, standsFor: String) throws {
        guard filter.contains(placeholder), filter.hasPrefix("("), filter.hasSuffix(")") else {
            throw ServeError("\(option) must be a filter in parentheses with \(placeholder) for \(standsFor)")
        }
    }

    /// `--ldap` and its companions.
    public static func ldapSettings(_ options: ServeOptions) throws -> LDAPDirectory.Settings? {
        guard !options.ldap.isEmpty else {
            let given: [String?] = [
                options.ldapBase, options.ldapBindDn, options.ldapBindPasswordFile, options.ldapUserFilter,
                options.ldapCa, options.ldapGroupAttribute, options.ldapPreset, options.ldapGroupFilter,
            ]
            if given.contains(where: { $0 != nil }) || options.ldapStarttls != nil || options.ldapGroupCacheTTL != nil
                || options.ldapFirst != nil
            {
                throw ServeError("the --ldap-… settings are for --ldap, which is not set")
            }
            return nil
        }
        for url in options.ldap {
            let lower = url.lowercased()
            guard lower.hasPrefix("ldap://") || lower.hasPrefix("ldaps://") else {
                throw ServeError("--ldap \(url): an ldap:// or ldaps:// URL")
            }
        }
        guard let base = options.ldapBase, !base.isEmpty else {
            throw ServeError("--ldap needs --ldap-base: the DN users are searched under (dc=example,dc=org)")
        }
        var settings = LDAPDirectory.Settings(urls: options.ldap, base: base)
        switch options.ldapPreset?.lowercased() {
        case nil, "openldap": break
        case "ad": settings.applyActiveDirectoryPreset()
        case let other?: throw ServeError("--ldap-preset: '\(other)' is not openldap or ad")
        }
        if let dn = options.ldapBindDn {
            guard let file = options.ldapBindPasswordFile else {
                throw ServeError("--ldap-bind-dn needs --ldap-bind-password-file: the service account's password")
            }
            settings.bindPassword = try Self.secret(fromFile: file, option: "--ldap-bind-password-file")
            settings.bindDN = dn
        } else if options.ldapBindPasswordFile != nil {
            throw ServeError("--ldap-bind-password-file is for --ldap-bind-dn, which is not set")
        }
        if let filter = options.ldapUserFilter {
            try Self.checkFilter(filter, option: "--ldap-user-filter", placeholder: "%s", standsFor: "the user name")
            settings.userFilter = filter
        }
        if let ca = options.ldapCa {
            guard FileManager.default.isReadableFile(atPath: ca) else {
                throw ServeError("--ldap-ca \(ca) cannot be read")
            }
            settings.caFile = ca
        }
        settings.startTLS = options.ldapStarttls ?? true
        settings.first = options.ldapFirst ?? false
        if let attribute = options.ldapGroupAttribute { settings.groupAttribute = attribute }
        if let filter = options.ldapGroupFilter {
            try Self.checkFilter(filter, option: "--ldap-group-filter", placeholder: "%d", standsFor: "the user's DN")
            settings.groupFilter = filter
        }
        if let ttl = options.ldapGroupCacheTTL { settings.groupCacheTTL = ttl.value }
        return settings
    }

    /// `--parent`, its password from a file or the environment, `--parent-auth`, `--direct-for`.
    static func parentRouting(_ options: ServeOptions) throws -> ParentRouting {
        var routing = ParentRouting()
        let sharedPassword: String?
        switch (options.parentPasswordFile, options.parentPasswordEnv) {
        case (let file?, nil):
            sharedPassword = try Self.secret(fromFile: file, option: "--parent-password-file")
        case (nil, let name?):
            guard let value = ProcessInfo.processInfo.environment[name] else {
                throw ServeError("--parent-password-env \(name): the variable is not set")
            }
            sharedPassword = value
        case (nil, nil):
            sharedPassword = nil
        case (.some, .some):
            throw ServeError(
                "--parent-password-file and --parent-password-env both give the parents' password: pass one"
            )
        }
        for text in options.parent {
            var parent: ParentProxy
            do {
                parent = try ParentProxy(url: text)
            } catch {
                throw ServeError("--parent: \(error)")
            }
            if let sharedPassword {
                guard parent.user != nil else {
                    throw ServeError(
                        "--parent \(parent.name) names no user for the password of --parent-password-file/-env: write http://USER@\(parent.name)"
                    )
                }
                guard parent.password == nil else {
                    throw ServeError(
                        "--parent \(parent.name) has a password in its URL and one from --parent-password-file/-env: give it once"
                    )
                }
                parent.password = sharedPassword
            }
            routing.parents.append(parent)
        }
        if routing.parents.isEmpty {
            if options.parentAuth != nil || options.directFor != nil || sharedPassword != nil
                || options.parentKeytab != nil || options.parentCacert != nil || !options.routes.isEmpty
            {
                throw ServeError(
                    "--parent-auth, --direct-for, --routes, --parent-keytab, --parent-cacert and --parent-password-file/-env are for --parent, which is not set"
                )
            }
            return routing
        }
        if let list = options.parentAuth?.items, list != ["any"] {
            var schemes = Set<ParentAuthScheme>()
            for item in list {
                guard let scheme = ParentAuthScheme(rawValue: item.lowercased()) else {
                    throw ServeError("--parent-auth: '\(item)' is not any, basic, digest, ntlm or negotiate")
                }
                schemes.insert(scheme)
            }
            routing.schemes = schemes
        }
        if let cacert = options.parentCacert {
            do {
                _ = try ParentTLS.context(trustRoots: cacert)
            } catch {
                throw ServeError("--parent-cacert \(cacert) does not load as PEM CA certificates: \(error)")
            }
            routing.trustRoots = cacert
        }
        if let keytab = options.parentKeytab {
            guard FileManager.default.isReadableFile(atPath: keytab) else {
                throw ServeError("--parent-keytab \(keytab) cannot be read")
            }
            routing.clientKeytab = keytab
        }
        for rule in options.routes {
            var hosts: [AccessPolicy.HostPattern] = []
            for item in rule.hosts {
                guard let pattern = AccessPolicy.HostPattern(item) else {
                    throw ServeError("--routes: '\(item)' is not a host name, *.suffix, IP address or CIDR block")
                }
                hosts.append(pattern)
            }
            let parent: Int?
            if rule.via.lowercased() == "direct" {
                parent = nil
            } else {
                let named = routing.parents.indices.filter { index in
                    let p = routing.parents[index]
                    return p.name == rule.via.lowercased() || p.host == rule.via.lowercased()
                }
                guard named.count == 1 else {
                    let known = routing.parents.map(\.name).joined(separator: ", ")
                    throw ServeError(
                        named.isEmpty
                            ? "--routes: '\(rule.via)' is neither direct nor a --parent (\(known))"
                            : "--routes: '\(rule.via)' names more than one --parent; write host:port"
                    )
                }
                parent = named[0]
            }
            routing.routes.append(ParentRouting.Route(hosts: hosts, parent: parent))
        }
        for item in options.directFor?.items ?? [] {
            guard let pattern = AccessPolicy.HostPattern(item) else {
                throw ServeError("--direct-for: '\(item)' is not a host name, *.suffix, IP address or CIDR block")
            }
            routing.directFor.append(pattern)
        }
        return routing
    }

    static func parseListen(_ text: String) throws -> SocketAddress {
        try Self.parseListen(text, option: "--listen")
    }

    static func parseListen(_ text: String, option: String) throws -> SocketAddress {
        let problem = ServeError("\(option) '\(text)' is not HOST:PORT (for example 127.0.0.1:3128 or [::1]:3128)")
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                throw problem
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw problem }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard let port = Int(portText), (0...65535).contains(port) else { throw problem }
        let ip = host == "localhost" ? "127.0.0.1" : (host == "*" || host.isEmpty ? "0.0.0.0" : String(host))
        do {
            return try SocketAddress(ipAddress: ip, port: port)
        } catch {
            throw ServeError("\(option) '\(text)': '\(host)' is not an IP address (use 127.0.0.1, [::1], 0.0.0.0 …)")
        }
    }

    static func isLoopback(_ address: SocketAddress) -> Bool {
        switch address {
        case .v4(let v4):
            return UInt32(bigEndian: v4.address.sin_addr.s_addr) >> 24 == 127
        case .v6(let v6):
            var addr = v6.address.sin6_addr
            let bytes = withUnsafeBytes(of: &addr) { Array($0) }
            return bytes[0..<15].allSatisfy { $0 == 0 } && bytes[15] == 1
        default:
            return false
        }
    }
}

/// Where `serve` and `users` find users.
public enum StoreLocation: Sendable, Equatable {
    case htpasswd(String)
    /// An Apache htdigest file (MD5 HA1 per user and realm): read-only, reloaded on change.
    case htdigest(String)
    case sqlite(String)
    /// A PostgreSQL database shared by several proxies.
    case postgres(PostgresURL)
    /// `<data dir>/portcullis.db`, created on first use.
    case embedded(String)

    /// `sqlite:PATH` (also `sqlite://PATH`) or `postgres://user:password@host:port/database`
    /// (also `postgresql://`). No message ever quotes a postgres URL's password.
    public static func parse(_ text: String) throws -> StoreLocation {
        if text.hasPrefix("sqlite:") {
            var path = String(text.dropFirst("sqlite:".count))
            if path.hasPrefix("//") { path.removeFirst(2) }
            guard !path.isEmpty else {
                throw ServeError("--store sqlite: needs a path (sqlite:/var/lib/portcullis/users.db)")
            }
            return .sqlite(path)
        }
        if PostgresURL.isPostgres(text) {
            do {
                return .postgres(try PostgresURL(parsing: text))
            } catch let error as StoreError {
                throw ServeError(error.message)
            }
        }
        // Not echoed in full: a mistyped URL may hold a password.
        throw ServeError("--store: '\(text.prefix(8))…' is neither sqlite:PATH nor postgres://user:password@host/db")
    }
}

extension ServerConfiguration {
    static func storeLocation(_ options: ServeOptions, dataDirectory: String) throws -> StoreLocation {
        if let text = options.store {
            guard options.htpasswd == nil, options.htdigest == nil else {
                throw ServeError("use one of --store, --htpasswd or --htdigest")
            }
            return try StoreLocation.parse(text)
        }
        if let htpasswd = options.htpasswd {
            guard options.htdigest == nil else { throw ServeError("use either --htpasswd or --htdigest, not both") }
            return .htpasswd(htpasswd)
        }
        if let htdigest = options.htdigest { return .htdigest(htdigest) }
        return .embedded(dataDirectory + "/" + EmbeddedUsers.databaseName)
    }
}
