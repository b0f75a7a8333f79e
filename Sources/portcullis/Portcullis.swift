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
        subcommands: [
            Serve.self, UsersCommand.self, TokensCommand.self, DoctorCommand.self, StatusCommand.self, LDAPCommand.self,
            PACCommand.self, ClientConfigCommand.self,
        ]
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

    @OptionGroup var settings: ServeOptions

    @Option(
        name: .long,
        help: ArgumentHelp("YAML file with the same settings; its keys are the long option names.", valueName: "file")
    )
    var config: String?

    func run() async throws {
        var configuration: ServerConfiguration
        let commandLine = self.settings
        let inherited: [InheritedSocket]
        do {
            // Taken once: a reload keeps serving the same sockets.
            inherited = try SocketActivation.sockets(environment: ProcessInfo.processInfo.environment, pid: getpid())
            SocketActivation.forget()
            var options = commandLine
            if let config = self.config {
                options = try commandLine.layered(over: ServeOptions.load(yamlFile: config))
            }
            configuration = try ServerConfiguration(options: options, inherited: inherited)
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
                try ServerConfiguration(
                    options: commandLine.layered(over: ServeOptions.load(yamlFile: config)),
                    inherited: inherited
                )
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
