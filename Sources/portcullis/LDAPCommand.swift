import ArgumentParser
import Foundation
import PortcullisLDAP
import PortcullisServer
import PortcullisStores

struct LDAPCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ldap",
        abstract: "Check the directory settings of serve.",
        subcommands: [Test.self]
    )

    struct Test: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run the search and bind the proxy would for one user, and print each step.",
            discussion:
                "The password is read from standard input (one line) and never printed. Takes the --ldap… options of serve, on the command line or from --config. Exit 0: the password is right; 1: it is not (or no such user); 2: the directory could not be used."
        )

        @OptionGroup var settings: ServeOptions

        @Option(name: .long, help: ArgumentHelp("YAML file with serve's settings.", valueName: "file"))
        var config: String?

        @Option(name: .long, help: ArgumentHelp("The user name to look up.", valueName: "name"))
        var user: String

        func run() throws {
            var options = self.settings
            do {
                if let config = self.config { options = try options.layered(over: ServeOptions.load(yamlFile: config)) }
                guard let settings = try ServerConfiguration.ldapSettings(options) else {
                    throw ValidationError("no --ldap: there is no directory to test")
                }
                guard let line = readLine(strippingNewline: true) else {
                    throw ValidationError("no password on standard input")
                }
                let directory = LDAPDirectory(settings: settings, threadPool: .singleton)
                let trace = directory.trace(user: self.user, password: line)
                print("server:  \(trace.url ?? settings.urls.joined(separator: " "))")
                print("search:  \(settings.base) \(trace.filter)")
                print("entry:   \(trace.dn ?? "-")")
                switch trace.outcome {
                case .accepted(let user, _, _):
                    print("bind:    ok, as \(user)")
                    if let detail = trace.detail { print("         \(detail)") }
                case .rejected(let reason):
                    print(
                        "bind:    \(reason == .unavailable ? "directory unavailable" : "refused") (\(trace.detail ?? reason.rawValue))"
                    )
                    throw ExitCode(reason == .unavailable ? 2 : 1)
                }
            } catch let error as ServeError {
                throw ValidationError(error.message)
            }
        }
    }
}
