import Foundation

/// A target URL as doctor reaches it through the proxy.
struct DoctorTarget: Sendable, Equatable {
    var url: String
    var host: String
    var port: Int
    var isTLS: Bool
    var requestTarget: String
    var hostHeader: String
}

/// Where the proxy is, without the credentials of its URL.
struct ProxyEndpoint: Sendable, Equatable {
    var host: String
    var port: Int
    var isTLS: Bool
    var authority: String
}

/// What the configuration step makes of the options and the environment, before any network
/// step: the report so far, the proxy, the user and the targets through it. It holds no
/// password (only whether it is ASCII); ``resolve(_:)`` hands the password to the probe apart.
struct DoctorSetup: Sendable {
    /// The report after the configuration step (its step, the bypassed targets, the proxy).
    var report = DoctorReport()
    /// `false` when the configuration step ends the run.
    var proceeds = false
    var proxy: ProxyEndpoint?
    var user: String?
    var httpTargets: [DoctorTarget] = []
    var httpsTargets: [DoctorTarget] = []
    var scheme: DoctorOptions.SchemeChoice = .auto
    var insecure = false
    /// Whether the password has a character beyond ASCII, which some NTLM clients hash wrongly.
    var passwordIsNonASCII = false
    /// The TLS files given for the proxy and the targets (paths only: never a file's content).
    var tlsFiles = TLSFiles()

    struct TLSFiles: Sendable, Equatable {
        /// `--proxy-cacert`, `--proxy-cert`, `--proxy-key`, `--cacert`.
        var proxyCACertificate: String?
        var proxyCertificate: String?
        var proxyKey: String?
        var targetCACertificate: String?

        /// The options as the configuration step's details echo them.
        var details: [String: JSONValue] {
            var details: [String: JSONValue] = [:]
            if let file = self.proxyCACertificate { details["proxy_cacert"] = .string(file) }
            if let file = self.proxyCertificate { details["proxy_cert"] = .string(file) }
            if let file = self.proxyKey { details["proxy_key"] = .string(file) }
            if let file = self.targetCACertificate { details["cacert"] = .string(file) }
            return details
        }
    }

    /// Runs the configuration step of docs/DOCTOR.md.
    /// - Returns: the setup, and the password when the run goes on to the network.
    static func resolve(_ options: DoctorOptions) -> (setup: DoctorSetup, password: String?) {
        var setup = DoctorSetup()
        setup.scheme = options.scheme
        setup.insecure = options.insecure
        setup.tlsFiles = TLSFiles(
            proxyCACertificate: options.proxyCACertificateFile,
            proxyCertificate: options.proxyCertificateFile,
            proxyKey: options.proxyKeyFile,
            targetCACertificate: options.caCertificateFile
        )
        if options.proxyKeyFile != nil && options.proxyCertificateFile == nil {
            return setup.failed(
                "configuration",
                .configError,
                "--proxy-key was given without --proxy-cert",
                fix: "pass the client certificate with --proxy-cert FILE (PEM) beside its key"
            )
        }
        var password: String?
        let env = ProxyEnvironment(options.environment)
        var warnings: [String] = env.caseConflicts()
        var targets: [(DoctorTarget, String?)] = []
        for text in options.targets {
            guard let target = Self.parseTarget(text) else {
                return setup.failed(
                    "configuration",
                    .configError,
                    "the target \"\(text)\" is not an http:// or https:// URL with a host",
                    fix: "pass --target http://host/path or --target https://host/"
                )
            }
            targets.append((target, nil))
        }

        var proxyText: String?
        var source: String?
        if let explicit = options.proxy {
            proxyText = explicit
            source = "--proxy"
        }
        let noProxy = options.proxy == nil ? env.noProxy : nil
        if let noProxy, !noProxy.list.invalid.isEmpty {
            warnings.append(
                "\(noProxy.name) has entries no client can match: \(noProxy.list.invalid.map { "\"\($0)\"" }.joined(separator: ", ")) (write host names, .domain suffixes, IP addresses or CIDR blocks, without scheme or path)"
            )
        }
        var viaProxy: [DoctorTarget] = []
        for (target, _) in targets {
            if let noProxy, let entry = noProxy.list.match(host: target.host) {
                setup.report.targets.append(
                    DoctorReport.Target(
                        url: target.url,
                        viaProxy: false,
                        status: .skip,
                        httpStatus: nil,
                        message: "bypasses the proxy: \(noProxy.name) entry \"\(entry)\" matches \(target.host)"
                    )
                )
                continue
            }
            if options.proxy == nil {
                guard let variable = env.proxyVariable(forScheme: target.isTLS ? "https" : "http") else {
                    setup.report.targets.append(
                        DoctorReport.Target(
                            url: target.url,
                            viaProxy: false,
                            status: .skip,
                            httpStatus: nil,
                            message:
                                "no proxy is set for \(target.isTLS ? "https" : "http") URLs (\(target.isTLS ? "HTTPS_PROXY" : "HTTP_PROXY"), ALL_PROXY): a client here connects directly"
                        )
                    )
                    continue
                }
                if proxyText == nil {
                    proxyText = variable.value
                    source = variable.name
                } else if variable.value != proxyText {
                    warnings.append(
                        "\(variable.name) names a different proxy than \(source ?? "the first"); doctor tests \(target.url) through \(source ?? "that one") — run it again with --proxy to test the other"
                    )
                }
            }
            viaProxy.append(target)
        }

        guard let proxyText else {
            if noProxy != nil, !setup.report.targets.isEmpty,
                setup.report.targets.allSatisfy({ $0.message.hasPrefix("bypasses") })
            {
                setup.report.summary = "every target bypasses the proxy (\(noProxy!.name))"
                setup.report.add(
                    "configuration",
                    .warn,
                    setup.report.summary,
                    fix: "check \(noProxy!.name) if these targets should go through the proxy"
                )
                return (setup, nil)
            }
            return setup.failed(
                "configuration",
                .configError,
                "no proxy is configured: HTTP_PROXY, HTTPS_PROXY and ALL_PROXY are unset and --proxy was not given",
                fix: "set HTTPS_PROXY/HTTP_PROXY (http://USER:PASSWORD@host:port) or pass --proxy"
            )
        }
        setup.report.proxySource = source
        let parsed = ProxyURL.parse(proxyText)
        warnings += parsed.warnings
        if let url = parsed.url { setup.report.proxy = url.redacted }
        guard parsed.errors.isEmpty, let url = parsed.url else {
            return setup.failed(
                "configuration",
                .configError,
                "\(source ?? "the proxy URL"): " + parsed.errors.joined(separator: "; "),
                fix:
                    "write the proxy as http://USER:PASSWORD@host:port with special characters in USER and PASSWORD percent-encoded (@ → %40, : → %3A, % → %25, # → %23, / → %2F)"
            )
        }
        setup.proxy = ProxyEndpoint(host: url.host, port: url.port, isTLS: url.isTLS, authority: url.authority)
        if let user = options.user {
            setup.user = user
            password = options.password
            if url.user != nil { warnings.append("--user overrides the user in the proxy URL") }
        } else {
            setup.user = url.user
            password = url.password ?? (url.user != nil ? "" : nil)
            if url.user != nil && url.password == nil {
                warnings.append(
                    "the proxy URL names a user but no password; curl would prompt for it, other clients send an empty one"
                )
            }
        }
        setup.passwordIsNonASCII = password.map { !$0.unicodeScalars.allSatisfy(\.isASCII) } ?? false
        if !url.isTLS {
            let proxyTLSOptions = [
                ("--proxy-cacert", options.proxyCACertificateFile), ("--proxy-cert", options.proxyCertificateFile),
            ].compactMap { $0.1 == nil ? nil : $0.0 }
            if !proxyTLSOptions.isEmpty {
                warnings.append(
                    "\(proxyTLSOptions.joined(separator: " and ")) apply to an https:// proxy only; this one is reached in plain HTTP"
                )
            }
        }
        setup.httpTargets = viaProxy.filter { !$0.isTLS }
        setup.httpsTargets = viaProxy.filter { $0.isTLS }

        let who = setup.user.map { "credentials for user \"\($0)\"" } ?? "no credentials"
        var message =
            "proxy \(url.redacted) from \(source ?? "?"), \(who), \(viaProxy.count) of \(targets.count) targets through it"
        if viaProxy.isEmpty {
            setup.report.summary = "every target bypasses the proxy"
            setup.report.add(
                "configuration",
                .warn,
                message + "; every target bypasses the proxy",
                fix: "check NO_PROXY"
            )
            return (setup, nil)
        }
        if warnings.isEmpty {
            setup.report.add("configuration", .pass, message, details: setup.tlsFiles.details)
        } else {
            message += "; " + warnings.joined(separator: "; ")
            setup.report.add(
                "configuration",
                .warn,
                message,
                fix:
                    "write the proxy as http://USER:PASSWORD@host:port with special characters percent-encoded (@ → %40, : → %3A, % → %25), and set each variable once",
                details: setup.tlsFiles.details
            )
        }
        setup.proceeds = true
        return (setup, password)
    }

    private mutating func failed(
        _ name: String,
        _ verdict: DoctorReport.Verdict,
        _ message: String,
        fix: String?
    ) -> (setup: DoctorSetup, password: String?) {
        _ = self.report.fail(name, verdict, message, fix: fix)
        return (self, nil)
    }

    static func parseTarget(_ text: String) -> DoctorTarget? {
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased(),
            scheme == "http" || scheme == "https", let host = components.host, !host.isEmpty
        else { return nil }
        let isTLS = scheme == "https"
        let port = components.port ?? (isTLS ? 443 : 80)
        let bracketed = host.contains(":") ? "[\(host)]" : host
        let hostHeader = components.port == nil ? bracketed : "\(bracketed):\(port)"
        var path = components.percentEncodedPath
        if path.isEmpty { path = "/" }
        if let query = components.percentEncodedQuery { path += "?" + query }
        let requestTarget = isTLS ? "\(bracketed):\(port)" : "http://\(hostHeader)\(path)"
        // Shown in messages: never with the user info a target URL may carry.
        var shown = components
        if shown.user != nil || shown.password != nil {
            shown.user = nil
            shown.password = nil
        }
        return DoctorTarget(
            url: shown.string ?? "\(scheme)://\(hostHeader)\(path)",
            host: host,
            port: port,
            isTLS: isTLS,
            requestTarget: requestTarget,
            hostHeader: hostHeader
        )
    }
}
