import Dispatch
import Foundation
import Logging
import NIOCore
import NIOPosix
import PortcullisProxy
import PortcullisStores

/// `portcullis serve`: loads users, binds the listeners, serves until SIGTERM/SIGINT, then drains.
public enum PortcullisService {
    public static func run(_ configuration: ServerConfiguration, logger: Logger) async throws {
        // Password checks (bcrypt), file reads and DNS lookups run here, never on an event loop.
        let threadPool = NIOThreadPool(numberOfThreads: max(2, System.coreCount))
        threadPool.start()
        do {
            try await Self.serve(configuration, threadPool: threadPool, logger: logger)
        } catch {
            try? await threadPool.shutdownGracefully()
            throw error
        }
        try? await threadPool.shutdownGracefully()
    }

    private static func serve(_ configuration: ServerConfiguration, threadPool: NIOThreadPool, logger: Logger)
        async throws
    {
        let termination = TerminationSignal()
        var verifier: CredentialVerifier?
        var store: HtpasswdStore?
        if !configuration.proxy.authSchemes.isEmpty {
            let path: String
            if let htpasswd = configuration.htpasswd {
                path = htpasswd
            } else {
                let dataDirectory = configuration.dataDirectory
                let ensured = try await threadPool.runIfActive {
                    try EmbeddedUsers.ensure(dataDirectory: dataDirectory)
                }
                path = ensured.path
                if let created = ensured.created {
                    Self.announce(created, listen: configuration.listenText[0])
                }
            }
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
            store = loaded
            verifier = CredentialVerifier(
                store: loaded,
                threadPool: threadPool,
                configuration: .init(ttl: configuration.credentialCacheTTL)
            )
        }

        let group = MultiThreadedEventLoopGroup(numberOfThreads: configuration.eventLoops)
        let context = ProxyContext(
            configuration: configuration.proxy,
            verifier: verifier,
            threadPool: threadPool,
            logger: logger
        )
        let server = ProxyServer(context: context, group: group)
        let bound: [SocketAddress]
        do {
            bound = try await server.start(listening: configuration.listen)
        } catch {
            try? await group.shutdownGracefully()
            throw ServeError("cannot listen on \(configuration.listenText.joined(separator: ", ")): \(error)")
        }
        logger.info(
            "listening",
            metadata: [
                "addresses": "\(bound.map(Self.describe).joined(separator: " "))",
                "auth":
                    "\(configuration.proxy.authSchemes.isEmpty ? "none" : configuration.proxy.authSchemes.map(\.rawValue).joined(separator: ","))",
                "realm": "\(configuration.proxy.realm)",
                "users": "\(store?.path ?? "-")",
            ]
        )

        let reload = store.map { store in
            Self.watch(store, every: .seconds(2), on: group.next(), threadPool: threadPool, logger: logger)
        }
        let policyReloader = configuration.policyPath.map(PolicyReloader.init(path:))
        let reloadPolicy: @Sendable (Bool) -> Void = { force in
            guard let policyReloader else { return }
            do {
                if let policy = try policyReloader.reload(force: force) {
                    context.updatePolicy(policy)
                    logger.notice(
                        "policy reloaded",
                        metadata: ["file": "\(policyReloader.path)", "rules": "\(policy.rules.count)"]
                    )
                }
            } catch {
                logger.error("policy reload failed; keeping the previous rules", metadata: ["error": "\(error)"])
            }
        }
        let policyWatch = policyReloader.map { _ in
            group.next().scheduleRepeatedAsyncTask(initialDelay: .seconds(2), delay: .seconds(2)) { _ in
                threadPool.runIfActive(eventLoop: group.next()) { reloadPolicy(false) }
            }
        }
        termination.onHangup {
            // SIGHUP: re-read the users file and the policy now (a bad file keeps the old state).
            logger.notice("SIGHUP: reloading")
            threadPool.submit { _ in
                reloadPolicy(true)
                if let store {
                    do {
                        if let file = try store.reloadIfChanged() {
                            logger.notice(
                                "users file reloaded",
                                metadata: ["file": "\(store.path)", "users": "\(file.entries.count)"]
                            )
                        }
                    } catch {
                        logger.error(
                            "users file reload failed; keeping the previous users",
                            metadata: ["error": "\(error)"]
                        )
                    }
                }
            }
        }
        let signal = await termination.wait()
        policyWatch?.cancel()
        logger.info("shutting down", metadata: ["signal": "\(signal)", "grace": "\(configuration.shutdownGrace)"])
        reload?.cancel()
        await server.shutdown(grace: configuration.shutdownGrace)
        try? await group.shutdownGracefully()
    }

    /// The one time the generated password is shown; flushed at once so that it reaches a pipe
    /// or a log collector even if the process is killed soon after.
    private static func announce(_ created: EmbeddedUsers.Created, listen: String) {
        let proxyHost =
            listen.hasPrefix("0.0.0.0") || listen.hasPrefix("*")
            ? "127.0.0.1" + listen.drop(while: { $0 != ":" }) : listen
        let text = """
            Portcullis created its users file with one user.
              user:     admin
              password: \(created.password)
              file:     \(created.path) (bcrypt; this password is not shown again)
            Try it:
            curl -x http://admin:\(created.password)@\(proxyHost) https://example.com

            """
        FileHandle.standardOutput.write(Data(text.utf8))
    }

    private static func describe(_ address: SocketAddress) -> String {
        switch address {
        case .v6: return "[\(address.ipAddress ?? "?")]:\(address.port ?? 0)"
        default: return "\(address.ipAddress ?? "?"):\(address.port ?? 0)"
        }
    }

    /// Re-reads the users file when it changes (checked off the event loop).
    private static func watch(
        _ store: HtpasswdStore,
        every interval: TimeAmount,
        on eventLoop: any EventLoop,
        threadPool: NIOThreadPool,
        logger: Logger
    ) -> RepeatedTask {
        eventLoop.scheduleRepeatedAsyncTask(initialDelay: interval, delay: interval) { _ in
            threadPool.runIfActive(eventLoop: eventLoop) {
                do {
                    if let file = try store.reloadIfChanged() {
                        logger.notice(
                            "users file reloaded",
                            metadata: ["file": "\(store.path)", "users": "\(file.entries.count)"]
                        )
                    }
                } catch {
                    logger.error(
                        "users file reload failed; keeping the previous users",
                        metadata: ["error": "\(error)"]
                    )
                }
            }
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
        // SIGHUP means "reload", never "exit" (its default action).
        signal(SIGHUP, SIG_IGN)
        let hup = DispatchSource.makeSignalSource(signal: SIGHUP, queue: self.queue)
        hup.setEventHandler { [weak self] in
            let action = self?.lock.withLock { self?.hangup }
            action?()
        }
        hup.resume()
        self.sources.append(hup)
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
