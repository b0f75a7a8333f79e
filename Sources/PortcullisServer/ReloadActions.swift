import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PortcullisProxy
import PortcullisStores

/// What `serve` re-reads while it runs, and when: every second what changed (the config file,
/// the users store, the policy file, the TLS pair, the PAC file; a file once it has settled, two
/// looks alike), so a change is in force within 2 s; on SIGHUP all of it (and the access log reopened), on SIGUSR1
/// the access log only. A file that is bad keeps the state in force. The blocking reads run on
/// the thread pool, never on an event loop or a service's task; a user database is awaited.
struct ReloadActions: Sendable {
    private let threadPool: NIOThreadPool
    private let context: ProxyContext
    private let metrics: ProxyMetrics
    private let logger: Logger
    private let users: UsersSource?
    private let usersReadable: NIOLockedValueBox<Bool>
    private let policy: PolicyReloader?
    private let tls: TLSReloader?
    private let pac: PACReloader?
    private let expiry: ExpiryWatch?
    private let accessLog: AccessLog?
    private let config: @Sendable (_ forced: Bool) -> Void

    /// `usersReadable` receives, after each look at the users store, whether it could be read
    /// (for /readyz, which must not touch a file or a database on an event loop).
    init(
        _ configuration: ServerConfiguration,
        threadPool: NIOThreadPool,
        context: ProxyContext,
        metrics: ProxyMetrics,
        logger: Logger,
        users: UsersSource?,
        usersReadable: NIOLockedValueBox<Bool>,
        accessLog: AccessLog?,
        expiry: ExpiryWatch? = nil,
        reload: PortcullisService.Reloader?
    ) {
        self.expiry = expiry
        self.threadPool = threadPool
        self.context = context
        self.metrics = metrics
        self.logger = logger
        self.users = users
        self.usersReadable = usersReadable
        self.policy = configuration.policyPath.map {
            PolicyReloader(path: $0, directoryGroups: configuration.ldap != nil)
        }
        self.tls = context.tls.map(TLSReloader.init(tls:))
        self.pac = configuration.pacPath.map(PACReloader.init(path:))
        self.accessLog = accessLog
        self.config = Self.configReloader(configuration, context: context, metrics: metrics, logger: logger, reload)
    }

    /// The 1-second check: only what changed is read again.
    func periodic() async {
        await self.onThreadPool {
            // A refusal flood that stopped is summed up now, not at the next refusal.
            self.context.refusalLog.logEndedIntervals(now: .now())
            self.config(false)
        }
        await self.reloadUsers()
        await self.expiry?.check()
        await self.onThreadPool {
            self.reloadPolicy(force: false)
            self.reloadTLS(force: false)
            self.reloadPAC(force: false)
        }
    }

    /// SIGHUP: everything read again, changed or not, and the access log reopened (logrotate).
    func hangup() async {
        await self.onThreadPool {
            self.config(true)
            self.reloadPolicy(force: true)
            self.reloadTLS(force: true)
            self.reloadPAC(force: true)
        }
        await self.reloadUsers()
        await self.onThreadPool { self.reopenAccessLogNow() }
    }

    /// SIGUSR1.
    func reopenAccessLog() async {
        await self.onThreadPool { self.reopenAccessLogNow() }
    }

    private func onThreadPool(_ work: @escaping @Sendable () -> Void) async {
        // Fails only once the pool is stopped, which is after every service has ended.
        try? await self.threadPool.runIfActive(work)
    }

    private func reloadUsers() async {
        guard let store = self.users else { return }
        do {
            if let what = try await store.reload() {
                self.metrics.reload("users", ok: true)
                self.logger.notice("\(what)", metadata: ["store": "\(store.description)"])
            }
        } catch {
            self.metrics.reload("users", ok: false)
            self.logger.error("users reload failed; keeping the previous users", metadata: ["error": "\(error)"])
        }
        let readable = await store.readable()
        self.usersReadable.withLockedValue { $0 = readable }
    }

    private func reloadPolicy(force: Bool) {
        guard let reloader = self.policy else { return }
        do {
            if let policy = try reloader.reload(force: force) {
                self.context.updatePolicy(policy)
                self.metrics.reload("policy", ok: true)
                self.logger.notice(
                    "policy reloaded",
                    metadata: ["file": "\(reloader.path)", "rules": "\(policy.rules.count)"]
                )
            }
        } catch {
            self.metrics.reload("policy", ok: false)
            self.logger.error("policy reload failed; keeping the previous rules", metadata: ["error": "\(error)"])
        }
    }

    private func reloadTLS(force: Bool) {
        guard let reloader = self.tls else { return }
        do {
            if let summary = try reloader.reload(force: force) {
                self.metrics.reload("tls", ok: true)
                self.logger.notice(
                    "TLS certificate reloaded: new connections use it",
                    metadata: ["certificate": "\(summary)"]
                )
            }
        } catch {
            self.metrics.reload("tls", ok: false)
            self.logger.error(
                "TLS certificate reload failed; new connections keep the previous one",
                metadata: ["error": "\(error)"]
            )
        }
    }

    private func reloadPAC(force: Bool) {
        guard let reloader = self.pac else { return }
        do {
            if let document = try reloader.reload(force: force) {
                self.context.updateServedDocument(document)
                self.metrics.reload("pac", ok: true)
                self.logger.notice(
                    "PAC file reloaded: served from now on",
                    metadata: ["file": "\(reloader.path)", "etag": "\(document.etag)"]
                )
            }
        } catch {
            self.metrics.reload("pac", ok: false)
            self.logger.error(
                "PAC file refused; serving the previous one",
                metadata: ["file": "\(reloader.path)", "error": "\(error)"]
            )
        }
    }

    private func reopenAccessLogNow() {
        guard let accessLog = self.accessLog else { return }
        do {
            try accessLog.reopen()
            self.metrics.reload("access_log", ok: true)
        } catch {
            self.metrics.reload("access_log", ok: false)
            self.logger.error(
                "access log reopen failed; still writing to the old file",
                metadata: ["error": "\(error)"]
            )
        }
    }

    /// Re-reads the config file (when `forced`, or when the file changed). A file that does not
    /// parse or validate is reported and the settings in force stay; a good one puts the live
    /// settings (``ServeOptions/reloadableKeys``) in force for new connections and names the changed
    /// settings that need a restart. Blocking: runs on the thread pool.
    private static func configReloader(
        _ startup: ServerConfiguration,
        context: ProxyContext,
        metrics: ProxyMetrics,
        logger: Logger,
        _ reload: PortcullisService.Reloader?
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
            let change: SettingsReload
            do {
                fresh = try reload()
                let inForce = state.withLockedValue { $0.applied }
                change = try ServeOptions.reload(startup: startup.options, inForce: inForce, fresh: fresh.options)
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
            state.withLockedValue { $0.applied = fresh.options }
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
            metadata["applied"] = "\(change.applied.isEmpty ? "-" : change.applied.joined(separator: ","))"
            if !change.needsRestart.isEmpty {
                metadata["needs_restart"] = "\(change.needsRestart.joined(separator: ","))"
            }
            logger.log(
                level: change.needsRestart.isEmpty ? .notice : .warning,
                "config file reloaded",
                metadata: metadata
            )
        }
    }
}
