import ArgumentParser
import Foundation
import PortcullisDoctor

/// `portcullis client-config`: the proxy settings of one tool (or all), written as that tool
/// parses them.
struct ClientConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "client-config",
        abstract:
            "Print the proxy settings for a tool: env, curl, wget, git, pip, npm, yarn, maven, gradle, java, docker, apt, or all.",
        discussion: """
            Passwords go into URLs percent-encoded (@ : % / # and spaces are safe), into systemd drop-ins with % doubled, into XML and properties escaped; Java gets the setting that lets Basic through CONNECT tunnels. The password comes from the variable named by --password-env and is printed in the settings, which are meant for a file only its owner reads.
            """
    )

    @Option(name: .long, help: ArgumentHelp("The proxy: http://host:port or https://host:port.", valueName: "url"))
    var proxy: String

    @Option(name: .long, help: ArgumentHelp("The user name.", valueName: "name"))
    var user: String?

    @Option(name: .long, help: ArgumentHelp("The environment variable holding the password.", valueName: "var"))
    var passwordEnv: String?

    @Option(name: .long, help: ArgumentHelp("Hosts that bypass the proxy, comma-separated.", valueName: "list"))
    var noProxy: String?

    @Option(name: .customLong("for"), help: ArgumentHelp("The tool, or all.", valueName: "tool"))
    var tool: String

    func validate() throws {
        guard self.tool == "all" || ClientConfig.Tool(rawValue: self.tool) != nil else {
            throw ValidationError(
                "--for: '\(self.tool)' is not one of \(ClientConfig.Tool.allCases.map(\.rawValue).joined(separator: ", ")), all"
            )
        }
        if self.passwordEnv != nil && self.user == nil { throw ValidationError("--password-env needs --user") }
    }

    func run() throws {
        var password: String?
        if let name = self.passwordEnv {
            guard let value = ProcessInfo.processInfo.environment[name] else {
                throw ValidationError("the variable \(name) named by --password-env is not set")
            }
            password = value
        }
        let noProxy = (self.noProxy ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }
        let config: ClientConfig
        do {
            config = try ClientConfig(proxy: self.proxy, user: self.user, password: password, noProxy: noProxy)
        } catch let error as ClientConfig.Failure {
            throw ValidationError(error.description)
        }
        if self.tool == "all" {
            print(config.renderAll(), terminator: "")
        } else if let tool = ClientConfig.Tool(rawValue: self.tool) {
            print(config.render(tool), terminator: "")
        }
    }
}
