import Logging
import NIOCore
import PortcullisProxy
import ServiceLifecycle
import UnixSignals

// The long-running parts of `serve`, run by one `ServiceGroup`. Their listeners are bound at
// start-up, before the group runs (the admin listener first, so health checks can poll from the
// start); each service serves until the group's graceful shutdown or cancellation, then closes
// what it owns. The group shuts services down in reverse order of its list.

/// The proxy's listeners: on graceful shutdown they stop accepting and the connections get
/// `--shutdown-grace` to finish their exchange; on cancellation (a second signal, another
/// service's failure) whatever is still open is closed at once.
struct ProxyListenersService: Service {
    let server: ProxyServer
    let grace: TimeAmount
    let accessLog: AccessLog?

    func run() async throws {
        // The event loops serve the connections; this task only waits for the end. A
        // cancellation instead of a graceful shutdown lands here too, and then the drain below
        // ends at once.
        try? await gracefulShutdown()
        await self.server.shutdown(grace: self.grace)
        // Bounded: an access log nobody reads must not hold up the exit.
        self.accessLog?.flush(timeout: .seconds(2))
    }
}

/// The admin listener (`--admin`), closed as soon as the shutdown begins.
struct AdminListenerService: Service {
    let admin: AdminServer

    func run() async throws {
        try? await gracefulShutdown()
        await self.admin.close()
    }
}

/// Every `interval` (2 s): the config file, the users store and the policy file are checked for
/// changes, and a refusal flood that stopped is summed up.
struct FileWatchService: Service {
    let interval: Duration
    /// Blocking work is the callee's to move off this task (``ReloadActions`` runs it on the
    /// thread pool).
    let check: @Sendable () async -> Void

    func run() async throws {
        // Cancelled by the graceful shutdown; a check under way is finished first.
        try? await cancelWhenGracefulShutdown {
            while true {
                try await Task.sleep(for: self.interval)
                await self.check()
            }
        }
    }
}

/// SIGHUP re-reads the config file, the policy and the users (a bad file keeps the state in
/// force) and reopens the access log (logrotate); SIGUSR1 only reopens the access log.
struct ReloadSignalService<Signals: AsyncSequence & Sendable>: Service where Signals.Element == UnixSignal {
    let signals: Signals
    let reloads: ReloadActions
    let logger: Logger

    func run() async throws {
        try? await cancelWhenGracefulShutdown {
            for try await signal in self.signals {
                switch signal {
                case .sighup:
                    self.logger.notice("SIGHUP: reloading")
                    await self.reloads.hangup()
                case .sigusr1:
                    await self.reloads.reopenAccessLog()
                default:
                    continue
                }
            }
        }
    }
}
