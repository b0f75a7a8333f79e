import Dispatch
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PortcullisAuth
import PortcullisPostgres
import PortcullisProxy
import PortcullisStores
import Prometheus

/// `portcullis serve`: loads users, binds the listeners, serves until SIGTERM/SIGINT, then drains.
public enum PortcullisService {
    /// Reads the configuration again (the config file layered under the command line).
    public typealias Reloader = @Sendable () throws -> ServerConfiguration

    /// `logSink`: where `logger`'s lines queue, if a ``LogSink``; its dropped lines are counted in
    /// the metrics.
    public static func run(
        _ configuration: ServerConfiguration,
        logger: Logger,
        logSink: LogSink? = nil,
        reload: Reloader? = nil
    ) async throws {
        // Password checks (bcrypt), file reads and DNS lookups run here, never on an event loop.
        let threadPool = NIOThreadPool(numberOfThreads: max(2, System.coreCount))
        threadPool.start()
        do {
            try await Self.serve(
                configuration,
                threadPool: threadPool,
                logger: logger,
                logSink: logSink,
                reload: reload
            )
        } catch {
            try? await threadPool.shutdownGracefully()
            throw error
        }
        try? await threadPool.shutdownGracefully()
    }

    private static func serve(
        _ configuration: ServerConfiguration,
        threadPool: NIOThreadPool,
        logger: Logger,
        logSink: LogSink?,
        reload: Reloader?
    ) async throws {
        let termination = TerminationSignal()
        let descriptorLimit = DescriptorLimit.raiseSoftToHard()
        if let descriptorLimit, descriptorLimit < 4096 {
            logger.warning(
                "few descriptors allowed: at most about \(descriptorLimit / 2) connections at once",
                metadata: [
                    "max_open_files": "\(descriptorLimit)", "hint": "raise the hard limit (ulimit -Hn, LimitNOFILE=)",
                ]
            )
        }
        var verifier: CredentialVerifier?
        var store: UsersSource?
        var digest: DigestAuthority?
        if !configuration.proxy.authSchemes.isEmpty {
            let source = try await Self.openStore(configuration, threadPool: threadPool, logger: logger)
            store = source
            if let settings = configuration.digest {
                let key = try await Self.nonceKey(configuration, store: source.store, threadPool: threadPool)
                digest = DigestAuthority(settings: settings, key: key)
                try await Self.warnIfNobodyCanUseDigest(source.store, threadPool: threadPool, logger: logger)
            }
            verifier = CredentialVerifier(
                store: source.store,
                threadPool: threadPool,
                configuration: .init(ttl: configuration.credentialCacheTTL)
            )
        }

        let group = MultiThreadedEventLoopGroup(numberOfThreads: configuration.eventLoops)
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
                try? await group.shutdownGracefully()
                throw ServeError("\(error)")
            }
        }
        let context = ProxyContext(
            configuration: configuration.proxy,
            verifier: verifier,
            digest: digest,
            threadPool: threadPool,
            logger: logger,
            metrics: metrics,
            accessLog: accessLog
        )
        // The admin listener comes up first, so health checks can poll from the start; /readyz
        // says ready once the proxy's listeners are bound.
        let listening = NIOLockedValueBox(false)
        // Whether the users store could be read at the last 2-second check: /readyz is answered
        // on an event loop, which must not touch a file or a database itself.
        let usersReadable = NIOLockedValueBox(true)
        var admin: AdminServer?
        if let address = configuration.admin {
            let usersSource = store
            do {
                let (server, local) = try await AdminServer.start(at: address, group: group, registry: registry) {
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
                try? await group.shutdownGracefully()
                throw ServeError("cannot listen on --admin \(address): \(error)")
            }
        }

        let server = ProxyServer(context: context, group: group)
        let bound: [SocketAddress]
        do {
            bound = try await server.start(listening: configuration.listen)
        } catch {
            await admin?.close()
            try? await group.shutdownGracefully()
            throw ServeError("cannot listen on \(configuration.listenText.joined(separator: ", ")): \(error)")
        }
        listening.withLockedValue { $0 = true }
        logger.info(
            "listening",
            metadata: [
                "addresses": "\(bound.map(Self.describe).joined(separator: " "))",
                "auth":
                    "\(configuration.proxy.authSchemes.isEmpty ? "none" : configuration.proxy.authSchemes.map(\.rawValue).joined(separator: ","))",
                "realm": "\(configuration.proxy.realm)",
                "users": "\(store?.description ?? "-")",
                "max_open_files": "\(descriptorLimit.map(String.init) ?? "?")",
            ]
        )

        let usersStore = store
        let reloadUsers: @Sendable () -> Void = {
            guard let store = usersStore else { return }
            defer {
                let readable = store.readable()
                usersReadable.withLockedValue { $0 = readable }
            }
            do {
                if let what = try store.reload() {
                    metrics.reload("users", ok: true)
                    logger.notice("\(what)", metadata: ["store": "\(store.description)"])
                }
            } catch {
                metrics.reload("users", ok: false)
                logger.error("users reload failed; keeping the previous users", metadata: ["error": "\(error)"])
            }
        }
        let policyReloader = configuration.policyPath.map(PolicyReloader.init(path:))
        let reloadPolicy: @Sendable (Bool) -> Void = { force in
            guard let policyReloader else { return }
            do {
                if let policy = try policyReloader.reload(force: force) {
                    context.updatePolicy(policy)
                    metrics.reload("policy", ok: true)
                    logger.notice(
                        "policy reloaded",
                        metadata: ["file": "\(policyReloader.path)", "rules": "\(policy.rules.count)"]
                    )
                }
            } catch {
                metrics.reload("policy", ok: false)
                logger.error("policy reload failed; keeping the previous rules", metadata: ["error": "\(error)"])
            }
        }
        let openedLog = accessLog
        let reopenAccessLog: @Sendable () -> Void = {
            guard let accessLog = openedLog else { return }
            do {
                try accessLog.reopen()
                metrics.reload("access_log", ok: true)
            } catch {
                metrics.reload("access_log", ok: false)
                logger.error("access log reopen failed; still writing to the old file", metadata: ["error": "\(error)"])
            }
        }
        let reloadConfig = Self.configReloader(
            configuration,
            context: context,
            metrics: metrics,
            logger: logger,
            reload
        )
        // Files are checked every 2 s, off the event loops.
        let watch = group.next().scheduleRepeatedAsyncTask(initialDelay: .seconds(2), delay: .seconds(2)) { _ in
            threadPool.runIfActive(eventLoop: group.next()) {
                // A refusal flood that stopped is summed up now, not at the next refusal.
                context.refusalLog.logEndedIntervals(now: .now())
                reloadConfig(false)
                reloadUsers()
                reloadPolicy(false)
            }
        }
        termination.onHangup {
            // SIGHUP: re-read the users file and the policy now (a bad file keeps the old state)
            // and reopen the access log (logrotate).
            logger.notice("SIGHUP: reloading")
            threadPool.submit { _ in
                reloadConfig(true)
                reloadPolicy(true)
                reloadUsers()
                reopenAccessLog()
            }
        }
        termination.onUser1 {
            threadPool.submit { _ in reopenAccessLog() }
        }
        let signal = await termination.wait()
        watch.cancel()
        logger.info("shutting down", metadata: ["signal": "\(signal)", "grace": "\(configuration.shutdownGrace)"])
        await admin?.close()
        await server.shutdown(grace: configuration.shutdownGrace)
        // Bounded: an access log nobody reads must not hold up the exit.
        accessLog?.flush(timeout: .seconds(2))
        try? await group.shutdownGracefully()
    }

    /// Re-reads the config file (when `forced`, or when the file changed). A file that does not
    /// parse or validate is reported and the settings in force stay; a good one puts the live
    /// settings (``ServeOptions/liveKeys``) in force for new connections and names the changed
    /// settings that need a restart. Blocking: runs on the thread pool.
    private static func configReloader(
        _ startup: ServerConfiguration,
        context: ProxyContext,
        metrics: ProxyMetrics,
        logger: Logger,
        _ reload: Reloader?
    ) -> @Sendable (Bool) -> Void {
        guard let reload, let path = startup.configPath else { return { _ in } }
        let state = NIOLockedValueBox((identity: FileIdentity(path: path), applied: startup.options))
        return { forced in
            let identity = FileIdentity(path: path)
            let changed = state.withLockedValue { s -> Bool in
                guard forced || s.identity != identity else { return false }
                s.identity = identity
                return true
            }
            guard changed else { return }
            let fresh: ServerConfiguration
            do {
                fresh = try reload()
            } catch {
                metrics.reload("config", ok: false)
                let message = (error as? ServeError)?.message ?? "\(error)"
                logger.error(
                    "config file not reloaded; the settings in force stay",
                    metadata: ["file": "\(path)", "error": "\(message)"]
                )
                return
            }
            metrics.reload("config", ok: true)
            let previous = state.withLockedValue { s in
                defer { s.applied = fresh.options }
                return s.applied
            }
            let live = ServeOptions.changedKeys(previous, fresh.options).filter(ServeOptions.liveKeys.contains)
            let restart = ServeOptions.changedKeys(startup.options, fresh.options).filter {
                !ServeOptions.liveKeys.contains($0)
            }
            context.updateConfiguration { c in
                c.destinationPolicy = fresh.proxy.destinationPolicy
                c.connectPorts = fresh.proxy.connectPorts
                c.upstreamConnectTimeout = fresh.proxy.upstreamConnectTimeout
                c.upstreamResponseTimeout = fresh.proxy.upstreamResponseTimeout
                c.tunnelIdleTimeout = fresh.proxy.tunnelIdleTimeout
                c.clientIdleTimeout = fresh.proxy.clientIdleTimeout
                c.requestHeadTimeout = fresh.proxy.requestHeadTimeout
                c.requestBodyTimeout = fresh.proxy.requestBodyTimeout
                c.maximumRequestBody = fresh.proxy.maximumRequestBody
            }
            var metadata: Logger.Metadata = ["file": "\(path)"]
            metadata["applied"] = "\(live.isEmpty ? "-" : live.joined(separator: ","))"
            if !restart.isEmpty { metadata["needs_restart"] = "\(restart.joined(separator: ","))" }
            logger.log(level: restart.isEmpty ? .notice : .warning, "config file reloaded", metadata: metadata)
        }
    }

    /// The one time the generated password is shown; flushed at once so that it reaches a pipe
    /// or a log collector even if the process is killed soon after.
    private static func announce(_ created: EmbeddedUsers.Created, listen: String, digestOnly: Bool) {
        let proxyHost =
            listen.hasPrefix("0.0.0.0") || listen.hasPrefix("*")
            ? "127.0.0.1" + listen.drop(while: { $0 != ":" }) : listen
        let text: String
        if let password = created.password {
            text = """
                Portcullis created its user database with one user.
                  user:     admin
                  password: \(password)
                  database: \(created.path) (bcrypt; this password is not shown again)
                Try it:
                \(digestOnly ? "curl --proxy-digest -x http://admin:\(password)@\(proxyHost) https://example.com" : "curl -x http://admin:\(password)@\(proxyHost) https://example.com")
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
    private static func warnIfNobodyCanUseDigest(
        _ store: any CredentialStore,
        threadPool: NIOThreadPool,
        logger: Logger
    ) async throws {
        if store is HtpasswdStore {
            logger.warning(
                "Digest is offered but an htpasswd file holds no Digest secrets: Digest logins will fail (use --htdigest, or the user database with users passwd NAME --digest)"
            )
            return
        }
        guard let administered = store as? any UserAdministration else { return }
        let enrolled = try await threadPool.runIfActive { (try? administered.list())?.filter(\.digest).count }
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
        threadPool: NIOThreadPool
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
        if let shared = try await threadPool.runIfActive({ store.nonceKey() }) { return shared }
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
            let loaded = try await threadPool.runIfActive { try HtpasswdStore(path: path) }
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
                try loaded.reloadIfChanged().map { "users file reloaded (\($0.entries.count) users)" }
            } readable: {
                FileManager.default.isReadableFile(atPath: path)
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
                try loaded.reloadIfChanged().map { "users file reloaded (\($0.entries.count) users)" }
            } readable: {
                FileManager.default.isReadableFile(atPath: path)
            }
        case .sqlite(let path), .embedded(let path):
            if case .embedded = configuration.store {
                let dataDirectory = configuration.dataDirectory
                let digest = configuration.digest != nil
                let ensured = try await threadPool.runIfActive {
                    try EmbeddedUsers.ensure(dataDirectory: dataDirectory, realm: realm, digest: digest)
                }
                if let created = ensured.created {
                    Self.announce(
                        created,
                        listen: configuration.listenText[0],
                        digestOnly: !configuration.proxy.authSchemes.contains(.basic)
                    )
                }
            }
            let opened: SQLiteStore
            do {
                opened = try await threadPool.runIfActive { try SQLiteStore(path: path, realm: realm) }
            } catch let error as StoreError {
                throw ServeError(error.message)
            }
            if opened.userCount == 0 {
                logger.warning(
                    "the user database has no users in realm \(realm): every request will get 407 (add one with portcullis users add)",
                    metadata: ["database": "\(path)"]
                )
            }
            return UsersSource(store: opened, description: path) {
                try opened.refresh() ? "user database changed" : nil
            } readable: {
                (try? opened.refresh()) != nil
            }
        case .postgres(let url):
            let opened: PostgresStore
            do {
                opened = try await threadPool.runIfActive {
                    try PostgresStore(url: url, realm: realm, logger: logger)
                }
            } catch let error as StoreError {
                throw ServeError(error.message)
            }
            if opened.userCount == 0 {
                logger.warning(
                    "the user database has no users in realm \(realm): every request will get 407 (add one with portcullis users add --store …)",
                    metadata: ["database": "\(opened.location)"]
                )
            }
            return UsersSource(store: opened, description: opened.location) {
                // The store itself logs losing and regaining the database, once each: a poll
                // that fails while it is down is not news worth a line every 2 seconds.
                guard let changed = try? opened.refresh() else { return nil }
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

/// SIGTERM/SIGINT, caught from the start of `serve`: installed before the listeners bind, so a
/// signal sent as soon as the port accepts connections drains instead of killing the process.
final class TerminationSignal: @unchecked Sendable {
    private var continuation: CheckedContinuation<String, Never>?
    private var fired: String?
    private var sources: [any DispatchSourceSignal] = []
    private var hangup: (@Sendable () -> Void)?
    private var user1: (@Sendable () -> Void)?
    private let lock = NSLock()
    private let queue = DispatchQueue(label: "portcullis.signals")

    init() {
        for (number, name) in [(SIGTERM, "SIGTERM"), (SIGINT, "SIGINT")] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: self.queue)
            source.setEventHandler { [weak self] in self?.fire(name) }
            source.resume()
            self.sources.append(source)
        }
        // SIGHUP means "reload" and SIGUSR1 "reopen the logs", never "exit" (their default action).
        signal(SIGHUP, SIG_IGN)
        let hup = DispatchSource.makeSignalSource(signal: SIGHUP, queue: self.queue)
        hup.setEventHandler { [weak self] in
            let action = self?.lock.withLock { self?.hangup }
            action?()
        }
        hup.resume()
        self.sources.append(hup)
        signal(SIGUSR1, SIG_IGN)
        let usr1 = DispatchSource.makeSignalSource(signal: SIGUSR1, queue: self.queue)
        usr1.setEventHandler { [weak self] in
            let action = self?.lock.withLock { self?.user1 }
            action?()
        }
        usr1.resume()
        self.sources.append(usr1)
    }

    /// What SIGUSR1 does from now on (before this, it is ignored).
    func onUser1(_ action: @escaping @Sendable () -> Void) {
        self.lock.withLock { self.user1 = action }
    }

    /// What SIGHUP does from now on (before this, it is ignored).
    func onHangup(_ action: @escaping @Sendable () -> Void) {
        self.lock.withLock { self.hangup = action }
    }

    /// The first signal's name, as soon as one has arrived.
    func wait() async -> String {
        await withCheckedContinuation { (continuation: CheckedContinuation<String, Never>) in
            let already = self.lock.withLock { () -> String? in
                if let fired = self.fired { return fired }
                self.continuation = continuation
                return nil
            }
            if let already { continuation.resume(returning: already) }
        }
    }

    private func fire(_ name: String) {
        let continuation = self.lock.withLock { () -> CheckedContinuation<String, Never>? in
            if self.fired == nil { self.fired = name }
            defer { self.continuation = nil }
            return self.continuation
        }
        continuation?.resume(returning: name)
    }
}

/// The users store of a run and how to notice changes to it.
struct UsersSource: Sendable {
    var store: any CredentialStore
    var description: String
    /// Picks up changes; says what changed, or `nil`. Blocking.
    var reload: @Sendable () throws -> String?
    /// Whether the store can be read now. Blocking: asked by the 2-second watch on the thread
    /// pool, whose answer /readyz reports.
    var readable: @Sendable () -> Bool
}
