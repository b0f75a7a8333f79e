import ArgumentParser
import Foundation
import Logging
import NIOCore
import PortcullisProxy
import PortcullisServer

@main
struct Portcullis: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "portcullis",
        abstract: "An authenticating HTTP/1.1 forward proxy that gets the 407 handshake right.",
        version: PortcullisVersion.current,
        subcommands: [Serve.self, UsersCommand.self, DoctorCommand.self, StatusCommand.self]
    )
}

enum PortcullisVersion {
    static let current = "0.1.0"
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the forward proxy.",
        discussion: """
            With no --store, --htpasswd or --htdigest, Portcullis keeps its users in <data dir>/portcullis.db (SQLite); the first run creates it with the user 'admin' and a random password, shown once on stdout. The data dir is --data-dir, else $XDG_DATA_HOME/portcullis, else ~/.local/share/portcullis. Manage users with portcullis users.

            Settings can also come from a YAML file (--config) whose keys are the long option names (listen: ["127.0.0.1:3128"], allow-private-destinations: true, …); options on the command line win over the file.
            """
    )

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Address to listen on; repeatable. IPv6 as [::1]:PORT. (default: 127.0.0.1:3128)",
            valueName: "host:port"
        )
    )
    var listen: [String] = []

    @Option(
        name: .long,
        help: ArgumentHelp("Apache htpasswd users file (bcrypt, apr1, SHA, SHA-crypt, DES).", valueName: "file")
    )
    var htpasswd: String?

    @Option(
        name: .long,
        help: ArgumentHelp("Apache htdigest users file (MD5 Digest, and Basic), for --realm.", valueName: "file")
    )
    var htdigest: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "User database: sqlite:PATH or postgres://user:password@host:port/db (password also from PGPASSWORD). (default: <data dir>/portcullis.db, created on first run)",
            valueName: "url"
        )
    )
    var store: String?

    @Option(name: .long, help: ArgumentHelp("Realm named in the challenge. (default: Portcullis)", valueName: "text"))
    var realm: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Schemes offered, in challenge order: basic, digest; or none to turn authentication off (loopback listeners only, unless --allow-open-proxy). (default: basic)",
            valueName: "list"
        )
    )
    var auth: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Digest algorithms offered, in order: SHA-256, SHA-512-256, MD5 and their -sess variants. (default: SHA-256,MD5)",
            valueName: "list"
        )
    )
    var digestAlgorithms: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Seconds a Digest nonce stays valid; then clients get stale=true and renew it silently. (default: 600)",
            valueName: "seconds"
        )
    )
    var digestNonceLifetime: Double?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "File with the key that signs Digest nonces (>= 16 bytes), for instances that share no database. (default: kept in the user database, else random per process)",
            valueName: "file"
        )
    )
    var digestSecretFile: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "one-field: every Digest challenge in one Proxy-Authenticate field, which curl and Python's urllib answer with MD5 and RFC clients with the first (SHA-256); per-algorithm: one field each, which curl answers with the first algorithm and urllib only when it is MD5. (default: one-field)",
            valueName: "layout"
        )
    )
    var digestChallenges: String?

    @Option(
        name: .long,
        help: ArgumentHelp("YAML file with the same settings; its keys are the long option names.", valueName: "file")
    )
    var config: String?

    @Flag(
        name: .long,
        help: "Allow destinations in loopback, private and link-local ranges (checked on the resolved address)."
    )
    var allowPrivateDestinations = false

    @Option(
        name: .long,
        help: ArgumentHelp("Ports CONNECT may reach, comma-separated. (default: 443)", valueName: "list")
    )
    var connectPorts: String?

    @Flag(name: .long, help: "Allow --auth none on a non-loopback listener.")
    var allowOpenProxy = false

    @Option(
        name: .long,
        help: ArgumentHelp(
            "trace, debug, info, notice, warning, error or critical. (default: info)",
            valueName: "level"
        )
    )
    var logLevel: String?

    @Option(name: .long, help: ArgumentHelp("Where the embedded users file lives.", valueName: "dir"))
    var dataDir: String?

    @Option(
        name: .long,
        help: ArgumentHelp("Seconds to connect to an origin before 504. (default: 10)", valueName: "seconds")
    )
    var upstreamConnectTimeout: Double?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Seconds to wait for an origin's response head before 504. (default: 60)",
            valueName: "seconds"
        )
    )
    var upstreamResponseTimeout: Double?

    @Option(
        name: .long,
        help: ArgumentHelp("Seconds a CONNECT tunnel may stay silent. (default: 600)", valueName: "seconds")
    )
    var tunnelIdleTimeout: Double?

    @Option(
        name: .long,
        help: ArgumentHelp("Seconds an idle keep-alive client connection is kept. (default: 60)", valueName: "seconds")
    )
    var clientIdleTimeout: Double?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Seconds from the first byte of a request head to its end; then 408 and close. (default: 30)",
            valueName: "seconds"
        )
    )
    var requestHeadTimeout: Double?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Seconds a request body may stall (no bytes arriving); then 408 and close. (default: 30)",
            valueName: "seconds"
        )
    )
    var requestBodyTimeout: Double?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Failed logins from one address within --lockout-window that lock it out. (default: 10)",
            valueName: "count"
        )
    )
    var lockoutThreshold: Int?

    @Option(
        name: .long,
        help: ArgumentHelp("Seconds in which failed logins are counted. (default: 300)", valueName: "seconds")
    )
    var lockoutWindow: Double?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Client addresses allowed to connect: comma-separated IPs or CIDR blocks. (default: any)",
            valueName: "list"
        )
    )
    var allowClients: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "YAML file of access rules by user/group over hosts, ports and methods; re-read on change and SIGHUP.",
            valueName: "file"
        )
    )
    var policy: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Serve /metrics, /healthz and /readyz here (loopback unless --allow-remote-admin). (default: off)",
            valueName: "host:port"
        )
    )
    var admin: String?

    @Flag(name: .long, help: "Allow --admin on a non-loopback address.")
    var allowRemoteAdmin = false

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Write one line per request or tunnel here ('-' for stdout); reopened on SIGHUP/SIGUSR1.",
            valueName: "path"
        )
    )
    var accessLog: String?

    @Option(
        name: .long,
        help: ArgumentHelp("squid (Squid's native format) or json. (default: squid)", valueName: "format")
    )
    var accessLogFormat: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Largest request body accepted, in bytes; larger gets 413. (default: no limit)",
            valueName: "bytes"
        )
    )
    var maxRequestBody: Int?

    @Option(
        name: .long,
        help: ArgumentHelp("Connections one user may have open at once; more get 429.", valueName: "n")
    )
    var userMaxConnections: Int?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Distinct client addresses one user may come from within --user-address-window.",
            valueName: "n"
        )
    )
    var userMaxAddresses: Int?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Seconds an address counts towards --user-max-addresses. (default: 60)",
            valueName: "seconds"
        )
    )
    var userAddressWindow: Double?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Requests per second one user may send (bursts of twice that); more get 429.",
            valueName: "rate"
        )
    )
    var userMaxRate: Double?

    @Option(name: .long, help: ArgumentHelp("Most client connections at once. (default: 10000)", valueName: "n"))
    var maxConnections: Int?

    @Option(
        name: .long,
        help: ArgumentHelp("Most connections at once from one client address. (default: 512)", valueName: "n")
    )
    var maxClientConnections: Int?

    @Option(
        name: .long,
        help: ArgumentHelp("Seconds a locked-out address is refused (429). (default: 300)", valueName: "seconds")
    )
    var lockoutDuration: Double?

    @Option(
        name: .long,
        help: ArgumentHelp("Seconds a successful password check is remembered. (default: 300)", valueName: "seconds")
    )
    var credentialCacheTTL: Double?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Seconds in-flight requests get to finish on SIGTERM/SIGINT; a second signal closes them at once. (default: 10)",
            valueName: "seconds"
        )
    )
    var shutdownGrace: Double?

    func commandLineOptions() throws -> ServeOptions {
        var options = ServeOptions()
        if !self.listen.isEmpty { options.listen = self.listen }
        options.htpasswd = self.htpasswd
        options.htdigest = self.htdigest
        options.digestAlgorithms = self.digestAlgorithms.map {
            $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        }
        options.digestNonceLifetime = self.digestNonceLifetime
        options.digestSecretFile = self.digestSecretFile
        options.digestChallenges = self.digestChallenges
        options.store = self.store
        options.realm = self.realm
        options.auth = self.auth.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
        if self.allowPrivateDestinations { options.allowPrivateDestinations = true }
        if let ports = self.connectPorts {
            options.connectPorts = try ports.split(separator: ",").map { text in
                guard let port = Int(text.trimmingCharacters(in: .whitespaces)), (1...65535).contains(port) else {
                    throw ValidationError("--connect-ports: '\(text)' is not a port number (1-65535)")
                }
                return port
            }
        }
        if self.allowOpenProxy { options.allowOpenProxy = true }
        options.logLevel = self.logLevel
        options.dataDir = self.dataDir
        options.upstreamConnectTimeout = self.upstreamConnectTimeout
        options.upstreamResponseTimeout = self.upstreamResponseTimeout
        options.tunnelIdleTimeout = self.tunnelIdleTimeout
        options.clientIdleTimeout = self.clientIdleTimeout
        options.requestHeadTimeout = self.requestHeadTimeout
        options.requestBodyTimeout = self.requestBodyTimeout
        options.lockoutThreshold = self.lockoutThreshold
        options.lockoutWindow = self.lockoutWindow
        options.allowClients = self.allowClients.map {
            $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        }
        options.maxConnections = self.maxConnections
        options.policy = self.policy
        options.admin = self.admin
        if self.allowRemoteAdmin { options.allowRemoteAdmin = true }
        options.accessLog = self.accessLog
        options.accessLogFormat = self.accessLogFormat
        options.maxRequestBody = self.maxRequestBody
        options.userMaxConnections = self.userMaxConnections
        options.userMaxAddresses = self.userMaxAddresses
        options.userAddressWindow = self.userAddressWindow
        options.userMaxRate = self.userMaxRate
        options.maxClientConnections = self.maxClientConnections
        options.lockoutDuration = self.lockoutDuration
        options.credentialCacheTTL = self.credentialCacheTTL
        options.shutdownGrace = self.shutdownGrace
        return options
    }

    func run() async throws {
        var configuration: ServerConfiguration
        let commandLine: ServeOptions
        do {
            commandLine = try self.commandLineOptions()
            var options = commandLine
            if let config = self.config {
                options = options.layered(over: try ServeOptions.load(yamlFile: config))
            }
            configuration = try ServerConfiguration(options: options)
        } catch let error as ServeError {
            throw ValidationError(error.message)
        }
        let level = configuration.logLevel
        // Lines queue for a thread of their own: a stderr nobody reads (a full pipe, a stalled
        // log shipper) must not block the event loops that log.
        let sink = LogSink(
            fileDescriptor: STDERR_FILENO,
            dropReport: SinkLogHandler.dropReport(label: "portcullis")
        )
        LoggingSystem.bootstrap { label in
            var handler = SinkLogHandler(label: label, sink: sink)
            handler.logLevel = level
            return handler
        }
        // The last lines ("shutting down", a fatal error) are written before the process
        // exits, unless stderr is stalled: then the wait is bounded.
        defer { sink.flush(timeout: .seconds(2)) }
        let logger = Logger(label: "portcullis")
        // The config file is read again on SIGHUP and when it changes; flags still win over it.
        var reload: PortcullisService.Reloader?
        if let config = self.config {
            configuration.configPath = config
            reload = {
                try ServerConfiguration(options: commandLine.layered(over: try ServeOptions.load(yamlFile: config)))
            }
        }
        do {
            try await PortcullisService.run(configuration, logger: logger, logSink: sink, reload: reload)
        } catch let error as ServeError {
            logger.critical("\(error.message)")
            throw ExitCode(1)
        } catch let forced as ForcedShutdown {
            // Already logged by the service that heard the second signal.
            throw ExitCode(forced.exitCode)
        }
    }
}
