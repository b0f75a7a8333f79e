import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PortcullisAuth
import PortcullisKerberos
import PortcullisLDAP
import PortcullisPostgres
import PortcullisProxy
import PortcullisStores
import Prometheus
import ServiceLifecycle
import UnixSignals

/// `portcullis serve`: loads users, binds the listeners, then runs one `ServiceGroup` (the proxy
/// listeners, the admin listener, the file watch, the reload signals and the termination signals)
/// until SIGTERM/SIGINT, when the proxy drains; a second signal closes what is left at once.
public enum PortcullisService {
    /// Reads the configuration again (the config file layered under the command line).
    public typealias Reloader = @Sendable () throws -> ServerConfiguration

    /// `logSink`: where `logger`'s lines queue, if a ``LogSink``; its dropped lines are counted in
    /// the metrics. Throws ``ServeError`` when start-up fails, ``ForcedShutdown`` when a second
    /// signal cut the drain short.
    public static func run(
        _ configuration: ServerConfiguration,
        logger: Logger,
        logSink: LogSink? = nil,
        reload: Reloader? = nil
    ) async throws {
        // Trapped before anything else: a SIGTERM during start-up drains once the listeners are
        // up instead of killing the process, and a SIGHUP (whose default action is to exit)
        // reloads once it can.
        let termination = await UnixSignalsSequence(trapping: .sigterm, .sigint)
        let reloadSignals = await UnixSignalsSequence(trapping: .sighup, .sigusr1)
        // Password checks (bcrypt), file reads and DNS lookups run here, never on an event loop
        // or Swift's cooperative pool.
        let threadPool = NIOThreadPool(numberOfThreads: Self.poolThreads)
        threadPool.start()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: configuration.eventLoops)
        let outcome: Result<Void, any Error>
        do {
            try await Self.serve(
                configuration,
                signals: (termination, reloadSignals),
                group: group,
                threadPool: threadPool,
                logger: logger,
                logSink: logSink,
                reload: reload
            )
            outcome = .success(())
        } catch {
            outcome = .failure(error)
        }
        // The one way out, after a failed start-up as after a shutdown: closing the event loops
        // closes every channel still open (connections past the grace period included).
        try? await group.shutdownGracefully()
        try? await threadPool.shutdownGracefully()
        try outcome.get()
    }

    /// The blocking-work pool's size; the Negotiate acceptor holds one credential per thread.
    static let poolThreads = max(2, System.coreCount)

    private static func serve(
        _ configuration: ServerConfiguration,
        signals: (termination: UnixSignalsSequence, reload: UnixSignalsSequence),
        group: MultiThreadedEventLoopGroup,
        threadPool: NIOThreadPool,
        logger: Logger,
        logSink: LogSink?,
        reload: Reloader?
    ) async throws {
        let descriptorLimit = DescriptorLimit.raiseSoftToHard()
        var configuration = configuration
        if let descriptorLimit {
            // Connections are refused (503) before the descriptors run out: out of descriptors,
            // libdispatch's worker monitor fails to open /proc/…/stat, takes the worker for dead
            // and ends the process (bench/reliability/descriptors.py).
            let cap = DescriptorLimit.connectionCap(descriptors: descriptorLimit)
            if configuration.proxy.admission.maximumConnections > cap {
                if configuration.options.maxConnections != nil {
                    // The operator's number stands; accepting pauses when descriptors run out.
                    logger.warning(
                        "--max-connections \(configuration.proxy.admission.maximumConnections) is more than \(descriptorLimit) descriptors hold with room to spare (\(cap)): running out of descriptors can end the process",
                        metadata: [
                            "hint": "raise the hard limit (ulimit -Hn, LimitNOFILE=), or lower --max-connections"
                        ]
                    )
                } else {
                    configuration.proxy.admission.maximumConnections = cap
                }
            }
        }
        if let descriptorLimit, descriptorLimit < 4096 {
            logger.warning(
                "few descriptors allowed: at most \(configuration.proxy.admission.maximumConnections) connections at once",
                metadata: [
                    "max_open_files": "\(descriptorLimit)", "hint": "raise the hard limit (ulimit -Hn, LimitNOFILE=)",
                ]
            )
        }
        var verifier: CredentialVerifier?
        var store: UsersSource?
        var directory: LDAPDirectory?
        var digest: DigestAuthority?
        /// The user database tokens are issued in (not a user file).
        var administered: (any UserAdministration)?
        if !configuration.proxy.authSchemes.isEmpty {
            var source = try await Self.openStore(configuration, threadPool: threadPool, logger: logger)
            administered = source.store as? any UserAdministration
            if let ldap = configuration.ldap {
                // The local users first, then the directory.
                let ldapDirectory = LDAPDirectory(settings: ldap, threadPool: threadPool, logger: logger)
                directory = ldapDirectory
                source.store = ChainedStore(local: source.store, directory: ldapDirectory, directoryFirst: ldap.first)
                // /readyz also needs the directory; its going and coming back are logged once each.
                let localReadable = source.readable
                let directoryUp = NIOLockedValueBox(true)
                let urls = ldap.urls.joined(separator: " ")
                source.readable = {
                    let local = await localReadable()
                    let up = await ldapDirectory.reachable()
                    let changed = directoryUp.withLockedValue { previous -> Bool in
                        defer { previous = up }
                        return previous != up
                    }
                    if changed, up {
                        logger.notice("directory reachable again", metadata: ["ldap": "\(urls)"])
                    } else if changed {
                        logger.error(
                            "directory unreachable: its users get 503 until it is back",
                            metadata: ["ldap": "\(urls)"]
                        )
                    }
                    return local && up
                }
                source.description += ", then LDAP \(ldap.urls.joined(separator: " "))"
            }
            store = source
            if let settings = configuration.digest {
                let key = try await Self.nonceKey(
                    configuration,
                    store: source.store,
                    threadPool: threadPool,
                    logger: logger
                )
                digest = DigestAuthority(settings: settings, key: key)
                await Self.warnIfNobodyCanUseDigest(source.store, logger: logger)
            }
            verifier = CredentialVerifier(
                store: source.store,
                configuration: .init(ttl: configuration.credentialCacheTTL)
            )
        }

        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        let bucketsMicroseconds: [Int64] = [
            100, 250, 500, 1000, 2000, 5000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 5_000_000,
            30_000_000,
        ]
        factory.defaultDurationHistogramBuckets = bucketsMicroseconds.map { Duration.microseconds($0) }
        let metrics = ProxyMetrics(factory: factory)
        logSink?.countDrops(in: metrics.droppedServerLogLines)
        var accessLog: AccessLog?
        if let path = configuration.accessLogPath {
            do {
                accessLog = try AccessLog(path: path, format: configuration.accessLogFormat)
                accessLog?.countDrops(in: metrics.droppedAccessLogLines)
            } catch {
                throw ServeError("\(error)")
            }
        }
        var negotiate: NegotiateAcceptor?
        if let keytab = configuration.keytab {
            // Reads the keytab: on the thread pool, like every file read.
            let dataDirectory = configuration.dataDirectory
            do {
                negotiate = try await threadPool.runIfActive { () throws -> NegotiateAcceptor in
                    // MIT's replay cache is otherwise /var/tmp/krb5_<uid>.rcache2, shared with every
                    // acceptor running as this user: one of our own, unless the operator chose one.
                    if getenv("KRB5RCACHEDIR") == nil {
                        let directory = dataDirectory + "/krb5-rcache"
                        try FileManager.default.createDirectory(
                            atPath: directory,
                            withIntermediateDirectories: true,
                            attributes: [.posixPermissions: 0o700]
                        )
                        setenv("KRB5RCACHEDIR", directory, 1)
                    }
                    return try NegotiateAcceptor(keytab: keytab, credentials: Self.poolThreads) { change in
                        switch change {
                        case .success(let principals):
                            logger.notice(
                                "keytab changed: Negotiate accepts its keys for new handshakes",
                                metadata: ["keytab": "\(keytab)", "principals": "\(principals.joined(separator: ","))"]
                            )
                        case .failure(let error):
                            logger.error(
                                "keytab changed but cannot be used: the previous keys stay in use",
                                metadata: ["reason": "\(error)"]
                            )
                        }
                    }
                }
            } catch {
                throw ServeError("\(error)")
            }
            logger.info(
                "Negotiate (Kerberos) offered",
                metadata: [
                    "keytab": "\(keytab)", "principals": "\(negotiate?.servicePrincipals.joined(separator: ",") ?? "")",
                ]
            )
        }
        var tls: ProxyTLS?
        if let files = configuration.tls {
            // File reads and key checks: on the thread pool.
            do {
                tls = try await threadPool.runIfActive { () throws -> ProxyTLS in try ProxyTLS(files: files) }
            } catch {
                throw ServeError("\(error)")
            }
            logger.info("TLS certificate loaded", metadata: ["certificate": "\(tls?.current.summary ?? "")"])
        }
        let context = ProxyContext(
            configuration: configuration.proxy,
            verifier: verifier,
            digest: digest,
            threadPool: threadPool,
            logger: logger,
            metrics: metrics,
            accessLog: accessLog,
            negotiate: negotiate,
            tls: tls,
            directoryGroups: directory
        )
        if let path = configuration.pacPath {
            // A child process evaluates it: on the thread pool.
            let document = try await threadPool.runIfActive { try PACReloader.load(path: path) }
            context.updateServedDocument(document)
            logger.info(
                "PAC file served at /proxy.pac and /wpad.dat",
                metadata: ["file": "\(path)", "etag": "\(document.etag)"]
            )
        }
        // The admin listener comes up first, so health checks can poll from the start; /readyz
        // says ready once the proxy's listeners are bound.
        let listening = NIOLockedValueBox(false)
        // Whether the users store could be read at the last 1-second check: /readyz is answered
        // on an event loop, which must not touch a file or a database itself.
        let usersReadable = NIOLockedValueBox(true)
        var admin: AdminServer?
        if let address = configuration.admin {
            let usersSource = store
            var tokens: TokenEndpoint?
            if let administered, let checking = store?.store {
                tokens = TokenEndpoint(
                    credentials: checking,
                    store: administered,
                    policy: { context.policy },
                    maximumTTL: configuration.options.tokenMaxTtl?.seconds ?? 86400,
                    logger: logger
                )
            }
            do {
                let (server, local) = try await AdminServer.start(
                    at: address,
                    socket: configuration.adminSocket,
                    group: group,
                    registry: registry,
                    tokens: tokens
                ) {
                    // Ready: the listeners are bound and the users store could be read.
                    guard listening.withLockedValue({ $0 }) else { return (false, "listeners not bound yet") }
                    if let usersSource, !usersReadable.withLockedValue({ $0 }) {
                        return (false, "the users store \(usersSource.description) cannot be read")
                    }
                    return (true, "")
                }
                admin = server
                logger.info("admin listening", metadata: ["address": "\(local.map(Self.describe) ?? "?")"])
            } catch {
                throw ServeError("cannot listen on --admin \(address): \(error)")
            }
        }

        let server = ProxyServer(context: context, group: group)
        let bound: [Listener]
        do {
            bound = try await server.start(
                configuration.listen.map { Listener(address: $0, kind: .tcp) }
                    + configuration.listenTLS.map { Listener(address: $0, kind: .tls) }
                    + configuration.inherited.compactMap { socket in
                        switch socket.role {
                        case .proxy: Listener(address: socket.address, kind: .tcp, socket: socket.descriptor)
                        case .tls: Listener(address: socket.address, kind: .tls, socket: socket.descriptor)
                        case .admin: nil
                        }
                    }
            )
        } catch {
            // The admin listener closes with the event loops.
            let every =
                configuration.listenText + configuration.listenTLSText
                + configuration.inherited.filter { $0.role != .admin }.map(\.description)
            throw ServeError("cannot listen on \(every.joined(separator: ", ")): \(error)")
        }
        listening.withLockedValue { $0 = true }
        func addresses(_ kind: ListenerKind) -> String {
            bound.filter { $0.kind == kind }.map { Self.describe($0.address) }.joined(separator: " ")
        }
        logger.info(
            "listening",
            metadata: [
                "addresses": "\(addresses(.tcp))",
                "tls_addresses": "\(addresses(.tls))",
                "auth":
                    "\(configuration.proxy.authSchemes.isEmpty ? "none" : configuration.proxy.authSchemes.map(\.rawValue).joined(separator: ","))",
                "realm": "\(configuration.proxy.realm)",
                "users": "\(store?.description ?? "-")",
                "max_open_files": "\(descriptorLimit.map(String.init) ?? "?")",
            ]
        )

        let reloads = ReloadActions(
            configuration,
            threadPool: threadPool,
            context: context,
            metrics: metrics,
            logger: logger,
            users: store,
            usersReadable: usersReadable,
            accessLog: accessLog,
            expiry: administered.map {
                ExpiryWatch(
                    store: $0,
                    warning: configuration.options.expiryWarning?.seconds ?? 7 * 86400,
                    metrics: metrics,
                    logger: logger
                )
            },
            reload: reload
        )
        // The termination service starts the group's graceful shutdown; it needs the group, which
        // needs it.
        let running = NIOLockedValueBox<ServiceGroup?>(nil)
        // The group shuts its services down in reverse order: the admin listener closes and the
        // file watch stops, then the proxy drains (SIGHUP still reloads meanwhile); the
        // termination service ends last, so a second signal is heard throughout the drain.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(
                service: TerminationSignalService(
                    signals: signals.termination,
                    grace: configuration.shutdownGrace,
                    logger: logger
                ) { await running.withLockedValue { $0 }?.triggerGracefulShutdown() },
                serviceName: "termination-signals"
            ),
            .init(
                service: ReloadSignalService(signals: signals.reload, reloads: reloads, logger: logger),
                serviceName: "reload-signals"
            ),
            .init(
                service: ProxyListenersService(
                    server: server,
                    grace: configuration.shutdownGrace,
                    accessLog: accessLog
                ),
                serviceName: "proxy-listeners"
            ),
            .init(
                service: FileWatchService(interval: .seconds(1)) { await reloads.periodic() },
                serviceName: "file-watch"
            ),
        ]
        if let admin {
            services.append(.init(service: AdminListenerService(admin: admin), serviceName: "admin-listener"))
        }
        // No `gracefulShutdownSignals`: the termination service owns SIGTERM and SIGINT. A second
        // listener for them in the group would race it (the group can cancel the service before
        // it has seen the signal, and "shutting down" was lost), trap them only once the group
        // runs, and stop listening after the first.
        let serviceGroup = ServiceGroup(configuration: .init(services: services, logger: logger))
        running.withLockedValue { $0 = serviceGroup }
        do {
            try await serviceGroup.run()
        } catch let error as ForcedShutdown {
            throw error
        } catch let error as ServeError {
            throw error
        } catch {
            // A service that fails ends the group, and the run with it: one line, exit code 1.
            throw ServeError("stopped: \(error)")
        }
    }

    /// The one time the generated password is shown; flushed at once so that it reaches a pipe
    /// or a log collector even if the process is killed soon after.
    /// `listen`: the proxy's URL without user info (`http://127.0.0.1:3128`).
    private static func announce(_ created: EmbeddedUsers.Created, listen: String, digestOnly: Bool) {
        let scheme = listen.hasPrefix("https://") ? "https://" : "http://"
        let address = listen.dropFirst(scheme.count)
        let proxyHost =
            address.hasPrefix("0.0.0.0") || address.hasPrefix("*")
            ? "127.0.0.1" + address.drop(while: { $0 != ":" }) : address
        let text: String
        if let password = created.password {
            text = """
                Portcullis created its user database with one user.
                  user:     admin
                  password: \(password)
                  database: \(created.path) (bcrypt; this password is not shown again)
                Try it:
                \(digestOnly ? "curl --proxy-digest -x \(scheme)admin:\(password)@\(proxyHost) https://example.com" : "curl -x \(scheme)admin:\(password)@\(proxyHost) https://example.com")
                Manage users with: portcullis users --help

                """
        } else {
            text = """
                Portcullis created its user database \(created.path)
                with the \(created.imported) users of the users.htpasswd found next to it.

                """
        }
        FileHandle.standardOutput.write(Data(text.utf8))
    }

    /// Digest offered but no user holds Digest secrets: every Digest login would fail, and the
    /// operator should hear it at start, not from users.
    private static func warnIfNobodyCanUseDigest(_ store: any CredentialStore, logger: Logger) async {
        if store is HtpasswdStore {
            logger.warning(
                "Digest is offered but an htpasswd file holds no Digest secrets: Digest logins will fail (use --htdigest, or the user database with users passwd NAME --digest)"
            )
            return
        }
        guard let administered = store as? any UserAdministration else { return }
        let enrolled = (try? await administered.list())?.filter(\.digest).count
        if enrolled == 0 {
            logger.warning(
                "Digest is offered but no user has Digest secrets yet: add them with portcullis users passwd NAME --digest"
            )
        }
    }

    /// The Digest nonce key: `--digest-secret-file`, else the store's shared key (SQLite and
    /// PostgreSQL keep one, so instances sharing a store accept each other's nonces), else a
    /// random key for this process.
    private static func nonceKey(
        _ configuration: ServerConfiguration,
        store: any CredentialStore,
        threadPool: NIOThreadPool,
        logger: Logger
    ) async throws -> [UInt8] {
        if let path = configuration.digestSecretFile {
            let data: Data
            do {
                data = try await threadPool.runIfActive { try Data(contentsOf: URL(fileURLWithPath: path)) }
            } catch {
                throw ServeError("cannot read --digest-secret-file \(path): \((error as NSError).localizedDescription)")
            }
            guard data.count >= 16 else {
                throw ServeError(
                    "--digest-secret-file \(path) must hold at least 16 bytes (for example: head -c 32 /dev/urandom > FILE)"
                )
            }
            return Array(data)
        }
        if let shared = await store.nonceKey() { return shared }
        if store is any UserAdministration {
            // A database shares its key with every proxy on it; this one could not read or write it.
            logger.warning(
                "the user database's Digest nonce key could not be read or created: this instance uses a key of its own, so its nonces work only here (behind a balancer, Digest clients moved to another instance get a stale 407); check the database role's rights on the secrets table, or give every instance the same --digest-secret-file"
            )
        }
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    /// The users store of this run: `--htpasswd`, `--store sqlite:PATH`, `--store postgres://…`, or the
    /// embedded database.
    private static func openStore(
        _ configuration: ServerConfiguration,
        threadPool: NIOThreadPool,
        logger: Logger
    ) async throws -> UsersSource {
        let realm = configuration.proxy.realm
        switch configuration.store {
        case .htpasswd(let path):
            let loaded = try await threadPool.runIfActive { try HtpasswdStore(path: path, threadPool: threadPool) }
            for problem in loaded.problems {
                logger.warning("users file entry skipped", metadata: ["file": "\(path)", "problem": "\(problem)"])
            }
            if loaded.userCount == 0 {
                logger.warning(
                    "the users file has no usable users: every request will get 407",
                    metadata: ["file": "\(path)"]
                )
            }
            return UsersSource(store: loaded, description: path) {
                try await threadPool.runIfActive {
                    try loaded.reloadIfChanged().map { "users file reloaded (\($0.entries.count) users)" }
                }
            } readable: {
                (try? await threadPool.runIfActive { FileManager.default.isReadableFile(atPath: path) }) ?? false
            }
        case .htdigest(let path):
            let loaded = try await threadPool.runIfActive { try HtdigestStore(path: path, realm: realm) }
            let file = loaded.file
            for problem in file.problems {
                logger.warning("users file entry skipped", metadata: ["file": "\(path)", "problem": "\(problem)"])
            }
            if file.entries.isEmpty {
                logger.warning(
                    "the htdigest file has no users in realm \(realm): every request will get 407",
                    metadata: ["file": "\(path)", "users_of_other_realms": "\(file.otherRealms)"]
                )
            }
            return UsersSource(store: loaded, description: path) {
                try await threadPool.runIfActive {
                    try loaded.reloadIfChanged().map { "users file reloaded (\($0.entries.count) users)" }
                }
            } readable: {
                (try? await threadPool.runIfActive { FileManager.default.isReadableFile(atPath: path) }) ?? false
            }
        case .sqlite(let path), .embedded(let path):
            if case .embedded = configuration.store {
                let dataDirectory = configuration.dataDirectory
                let digest = configuration.digest != nil
                let ensured = try await EmbeddedUsers.ensure(
                    dataDirectory: dataDirectory,
                    realm: realm,
                    digest: digest,
                    threadPool: threadPool
                )
                if let created = ensured.created {
                    Self.announce(
                        created,
                        // A plain listener if there is one, else the TLS one (curl needs the CA then).
                        listen: configuration.listenText.first.map { "http://\($0)" }
                            ?? configuration.inherited.first { $0.role == .proxy }.map { "http://\($0.hostAndPort)" }
                            ?? configuration.listenTLSText.first.map { "https://\($0)" }
                            ?? configuration.inherited.first { $0.role == .tls }.map { "https://\($0.hostAndPort)" }
                            ?? "http://\(ServerConfiguration.defaultListen)",
                        digestOnly: !configuration.proxy.authSchemes.contains(.basic)
                    )
                }
            }
            let opened: SQLiteStore
            do {
                opened = try await SQLiteStore(path: path, realm: realm, threadPool: threadPool)
            } catch let error as StoreError {
                throw ServeError(error.message)
            }
            if (try? await opened.userCount) == 0 {
                logger.warning(
                    "the user database has no users in realm \(realm): every request will get 407 (add one with portcullis users add)",
                    metadata: ["database": "\(path)"]
                )
            }
            return UsersSource(store: opened, description: path) {
                try await opened.refresh() ? "user database changed" : nil
            } readable: {
                (try? await opened.refresh()) != nil
            }
        case .postgres(let url):
            let opened: PostgresStore
            do {
                opened = try await PostgresStore(url: url, realm: realm, logger: logger, threadPool: threadPool)
            } catch let error as StoreError {
                throw ServeError(error.message)
            }
            if (try? await opened.userCount) == 0 {
                logger.warning(
                    "the user database has no users in realm \(realm): every request will get 407 (add one with portcullis users add --store …)",
                    metadata: ["database": "\(opened.location)"]
                )
            }
            return UsersSource(store: opened, description: opened.location) {
                // The store itself logs losing and regaining the database, once each: a poll
                // that fails while it is down is not news worth a line every second.
                guard let changed = try? await opened.refresh() else { return nil }
                return changed ? "user database changed" : nil
            } readable: {
                // The outcome of the poll the reload just made: no second query.
                opened.isReachable
            }
        }
    }

    private static func describe(_ address: SocketAddress) -> String {
        switch address {
        case .v6: return "[\(address.ipAddress ?? "?")]:\(address.port ?? 0)"
        default: return "\(address.ipAddress ?? "?"):\(address.port ?? 0)"
        }
    }
}

/// The users store of a run and how to notice changes to it.
struct UsersSource: Sendable {
    var store: any CredentialStore
    var description: String
    /// Picks up changes; says what changed, or `nil`. A file is read on the thread pool, a
    /// database awaited.
    var reload: @Sendable () async throws -> String?
    /// Whether the store can be read now: asked by the 1-second watch, whose answer /readyz
    /// reports.
    var readable: @Sendable () async -> Bool
}
