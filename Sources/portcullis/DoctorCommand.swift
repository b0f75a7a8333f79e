import ArgumentParser
import Foundation
import PortcullisDoctor

struct DoctorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check, step by step, why a proxy answers 407 and what to change (works with any HTTP proxy).",
        discussion: """
            Without --proxy, doctor uses what a client on this machine would: HTTPS_PROXY / HTTP_PROXY / ALL_PROXY (lower-case names first) and NO_PROXY. Credentials come from --user with --password-stdin or --password-env, else from the proxy URL; Negotiate uses this user's Kerberos ticket (kinit). Passwords are never printed.

            Exit codes: 0 ok, 1 proxy unreachable or configuration error, 2 authentication problem, 3 denied by policy, 4 target or tunnel failure. --json prints the report in the schema of docs/DOCTOR.md.
            """
    )

    @Option(name: .long, help: ArgumentHelp("Proxy URL (default: from the environment).", valueName: "url"))
    var proxy: String?

    @Option(
        name: .long,
        help: ArgumentHelp("User name (overrides the proxy URL's; DOMAIN\\NAME for NTLM).", valueName: "name")
    )
    var user: String?

    @Flag(name: .long, help: "Read the password from the first line of standard input.")
    var passwordStdin = false

    @Option(name: .long, help: ArgumentHelp("Read the password from this environment variable.", valueName: "var"))
    var passwordEnv: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "URL to reach through the proxy; repeatable (default: http://example.com/ and https://example.com/).",
            valueName: "url"
        )
    )
    var target: [String] = []

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Scheme to answer with: auto (the strongest offered: Negotiate with a ticket, NTLM, Digest, Basic), basic, digest, negotiate or ntlm.",
            valueName: "scheme"
        )
    )
    var scheme: String = "auto"

    @Flag(name: .long, help: "Print the report as JSON.")
    var json = false

    @Option(name: .long, help: ArgumentHelp("Seconds allowed for each network step.", valueName: "seconds"))
    var timeout: Double = 5

    @Flag(name: .long, help: "Print nothing on success and only the verdict line on failure.")
    var startupCheck = false

    @Option(
        name: .long,
        help: ArgumentHelp(
            "CA certificates (PEM) to trust for the targets' TLS (through the tunnel).",
            valueName: "file"
        )
    )
    var cacert: String?

    @Option(
        name: .long,
        help: ArgumentHelp("CA certificates (PEM) to trust for an https:// proxy's own certificate.", valueName: "file")
    )
    var proxyCacert: String?

    @Option(
        name: .long,
        help: ArgumentHelp("Client certificate (PEM) for an https:// proxy that asks for one.", valueName: "file")
    )
    var proxyCert: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Private key (unencrypted PEM) of --proxy-cert (default: the --proxy-cert file).",
            valueName: "file"
        )
    )
    var proxyKey: String?

    @Flag(name: .long, help: "Do not verify TLS certificates (reported as a warning).")
    var insecure = false

    @Option(
        name: .long,
        help: ArgumentHelp(
            "A PAC file (path or http(s):// URL) that chooses the proxy for each target, as browsers do: its choice is reported first, then the chosen proxy is tested.",
            valueName: "file|url"
        )
    )
    var pac: String?

    @Option(name: .long, help: ArgumentHelp("CA certificates (PEM) for an https:// PAC URL.", valueName: "file"))
    var pacCacert: String?

    @Flag(
        name: .long,
        help:
            "Read the proxy settings of every tool here (environment, ~/.curlrc, ~/.wgetrc, git, pip, npm, Maven, Gradle, JAVA_TOOL_OPTIONS, Docker, apt) and check their credentials against their proxy."
    )
    var clients = false

    @Option(name: .long, help: ArgumentHelp("The home directory --clients reads. (default: $HOME)", valueName: "dir"))
    var home: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The client that will use the proxy: java, node, undici, python-urllib, python-requests, pip, go, curl. Its known limits that end in a 407 come first in the report. (default: those the environment shows, JAVA_TOOL_OPTIONS, NODE_USE_ENV_PROXY)",
            valueName: "kind"
        )
    )
    var client: String?

    func validate() throws {
        if self.passwordStdin && self.passwordEnv != nil {
            throw ValidationError("use either --password-stdin or --password-env, not both")
        }
        if (self.passwordStdin || self.passwordEnv != nil) && self.user == nil {
            throw ValidationError("--password-stdin and --password-env need --user")
        }
        guard DoctorOptions.SchemeChoice(rawValue: self.scheme.lowercased()) != nil else {
            throw ValidationError("--scheme must be auto, basic, digest, negotiate or ntlm")
        }
        guard self.timeout > 0, self.timeout <= 300 else {
            throw ValidationError("--timeout must be between 0 and 300 seconds")
        }
    }

    func run() throws {
        if self.clients {
            let environment = ProcessInfo.processInfo.environment
            let home = self.home ?? environment["HOME"] ?? NSHomeDirectory()
            let check = ClientsCheck.run(
                home: home,
                environment: environment,
                target: self.target.first { $0.lowercased().hasPrefix("http://") } ?? self.target.first
                    ?? "http://example.com/",
                timeout: self.timeout
            )
            print(self.json ? check.json() : check.text())
            if check.exitCode != 0 { throw ExitCode(check.exitCode) }
            return
        }
        var options = DoctorOptions()
        options.proxy = self.proxy
        options.user = self.user
        if self.user != nil {
            if self.passwordStdin {
                options.password = readLine(strippingNewline: true) ?? ""
            } else if let name = self.passwordEnv {
                guard let value = ProcessInfo.processInfo.environment[name] else {
                    throw ValidationError("the variable \(name) named by --password-env is not set")
                }
                options.password = value
            } else {
                throw ValidationError("--user needs --password-stdin or --password-env")
            }
        }
        if !self.target.isEmpty { options.targets = self.target }
        options.scheme = DoctorOptions.SchemeChoice(rawValue: self.scheme.lowercased()) ?? .auto
        options.timeout = self.timeout
        options.caCertificateFile = self.cacert
        options.proxyCACertificateFile = self.proxyCacert
        options.proxyCertificateFile = self.proxyCert
        options.proxyKeyFile = self.proxyKey
        options.insecure = self.insecure
        options.environment = ProcessInfo.processInfo.environment
        if let pac = self.pac { options.pac = DoctorPAC(location: pac, caFile: self.pacCacert) }
        if let client = self.client {
            guard let kind = ClientKind(rawValue: client.lowercased()) else {
                throw ValidationError(
                    "--client: '\(client)' is not one of \(ClientKind.allCases.map(\.rawValue).joined(separator: ", "))"
                )
            }
            options.client = kind
        }

        let report = Doctor(options: options).run()
        if self.json {
            print(report.json())
        } else if self.startupCheck {
            if report.verdict != .ok { print(report.verdictLine) }
            // Silent on success, except for a credential about to end: the warning that comes
            // days before the 407.
            if report.verdict == .ok,
                let step = report.steps.first(where: { $0.details["credential_expires_in"] != nil })
            {
                print("portcullis doctor: WARN (exit 0) — \(step.message)")
            }
        } else {
            print(report.text())
        }
        if report.exitCode != 0 { throw ExitCode(report.exitCode) }
    }
}
