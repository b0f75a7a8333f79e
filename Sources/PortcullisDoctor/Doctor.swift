import NIOPosix

/// What `portcullis doctor` was asked to check.
public struct DoctorOptions: Sendable {
    /// `--scheme`: the scheme a client answers with. `auto` takes the strongest the proxy offers
    /// that this client holds credentials for: Negotiate (a Kerberos ticket), NTLM, Digest, Basic.
    public enum SchemeChoice: String, Sendable, CaseIterable {
        case auto, basic, digest, negotiate, ntlm
    }

    /// `--proxy`; `nil` to take the proxy from the environment.
    public var proxy: String?
    /// `--user` with its password (from stdin or a variable); `nil` to use the proxy URL's. For
    /// NTLM, `DOMAIN\user` names the domain.
    public var user: String?
    public var password: String?
    public var targets: [String] = ["http://example.com/", "https://example.com/"]
    public var scheme: SchemeChoice = .auto
    public var timeout: Double = 5
    /// `--cacert`: CA certificates (PEM) for the targets' TLS, through the tunnel.
    public var caCertificateFile: String?
    /// `--proxy-cacert`: CA certificates (PEM) for an https:// proxy's own certificate.
    public var proxyCACertificateFile: String?
    /// `--proxy-cert` and `--proxy-key`: a client certificate (PEM) for an https:// proxy that
    /// asks for one. The key file is read by the probe only and never shown.
    public var proxyCertificateFile: String?
    public var proxyKeyFile: String?
    public var insecure = false
    public var environment: [String: String] = [:]
    /// `--pac`: the PAC file chooses the proxy for each target.
    public var pac: DoctorPAC?
    /// `--client`: the client whose known limits are checked (else those the environment shows).
    public var client: ClientKind?

    public init() {}
}

/// Runs the checks of docs/DOCTOR.md against one proxy and builds the report.
///
/// The configuration step is ``DoctorSetup/resolve(_:)``; then a loop asks ``Diagnosis`` for
/// the next action, has ``ProxyProbe`` perform it and records the outcome in a
/// ``ProbeTranscript``, until the diagnosis of the transcript is complete.
public final class Doctor {
    let options: DoctorOptions
    /// What the probe did and saw in the last ``run()``.
    private(set) var transcript = ProbeTranscript()

    public init(options: DoctorOptions) {
        self.options = options
    }

    public func run() -> DoctorReport {
        var report = self.options.pac.map { self.run(with: $0) } ?? self.runSteps()
        let clients = ClientLimits.clients(named: self.options.client, environment: self.options.environment)
        guard !clients.isEmpty else { return report }
        let password = self.options.password ?? DoctorSetup.resolve(self.options).password
        let offered = report.challenges.map(\.scheme)
        let limits = clients.flatMap { client in
            ClientLimits.limits(
                client,
                offered: offered,
                httpsTarget: self.options.targets.contains { $0.lowercased().hasPrefix("https:") },
                httpTarget: self.options.targets.contains { $0.lowercased().hasPrefix("http:") },
                password: password,
                environment: self.options.environment
            ).map { (client, $0) }
        }
        report.addClientLimits(limits)
        return report
    }

    private func runSteps() -> DoctorReport {
        let (setup, password) = DoctorSetup.resolve(self.options)
        self.transcript = ProbeTranscript()
        guard setup.proceeds, let proxy = setup.proxy else {
            return Diagnosis.report(setup, self.transcript) ?? setup.report
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let probe = ProxyProbe(proxy: proxy, password: password, options: self.options, group: group)
        defer { probe.close() }
        while true {
            switch Diagnosis.next(setup, self.transcript) {
            case .done(let report):
                return report
            case .needs(let action):
                self.transcript.records.append(probe.perform(action))
            case .diverged(let index, let expected):
                // Diagnosis asked for every record itself: it cannot disagree with them.
                preconditionFailure("doctor's transcript diverged at record \(index), expected \(expected)")
            }
        }
    }
}
