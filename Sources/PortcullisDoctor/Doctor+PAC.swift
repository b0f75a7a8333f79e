import Foundation
import PortcullisPAC

/// `doctor --pac FILE|URL`: a PAC file decides which proxy each target goes to, as it does for
/// browsers. Its choice comes first in the report — a target it sends DIRECT bypasses the
/// authenticating proxy, one it sends to another proxy than `--proxy` or the environment is
/// flagged, a PAC that fails is a configuration error — then the usual steps run against the
/// proxy the PAC chose, once per proxy chosen.
public struct DoctorPAC: Sendable {
    /// The PAC file: a path or an `http(s)://` URL.
    public var location: String
    /// CA certificates for an `https://` PAC URL.
    public var caFile: String?
    /// The evaluator (tests fix its environment; the default is this machine: real DNS, clock).
    public var evaluator: PACEvaluator

    public init(location: String, caFile: String? = nil, evaluator: PACEvaluator = PACEvaluator()) {
        self.location = location
        self.caFile = caFile
        self.evaluator = evaluator
    }

    /// One entry of a PAC result (`PROXY host:port`, `DIRECT`, …).
    public enum Route: Equatable, Sendable, CustomStringConvertible {
        case direct
        /// `PROXY`/`HTTP` (plain) or `HTTPS` (TLS to the proxy).
        case proxy(ProxyURL)
        /// SOCKS or an entry browsers would skip.
        case other(String)

        public var description: String {
            switch self {
            case .direct: return "DIRECT"
            case .proxy(let url): return "\(url.isTLS ? "HTTPS" : "PROXY") \(url.authority)"
            case .other(let text): return text
            }
        }

        /// The entries of a result, in order; an empty result is DIRECT (as in Chromium).
        public static func parse(_ result: String) -> [Route] {
            var routes: [Route] = []
            for entry in result.split(separator: ";") {
                let words = entry.split(whereSeparator: { $0 == " " || $0 == "\t" })
                guard let keyword = words.first?.uppercased() else { continue }
                if keyword == "DIRECT" {
                    routes.append(.direct)
                    continue
                }
                guard words.count == 2, ["PROXY", "HTTP", "HTTPS"].contains(keyword) else {
                    routes.append(.other(words.joined(separator: " ")))
                    continue
                }
                let isTLS = keyword == "HTTPS"
                let parsed = ProxyURL.parse("\(isTLS ? "https" : "http")://\(words[1])")
                if let url = parsed.url, parsed.errors.isEmpty {
                    routes.append(.proxy(url))
                } else {
                    routes.append(.other(words.joined(separator: " ")))
                }
            }
            return routes.isEmpty ? [.direct] : routes
        }
    }
}

extension Doctor {
    func run(with pac: DoctorPAC) -> DoctorReport {
        var report = DoctorReport()
        let source: PACSource.Loaded
        do {
            source = try PACSource.load(pac.location, caFile: pac.caFile, timeout: self.options.timeout)
        } catch {
            _ = report.fail(
                "pac",
                .configError,
                "the PAC file cannot be used: \(error)",
                fix: "check the path or URL given with --pac (browsers would fall back to DIRECT or fail)"
            )
            return report
        }
        var targets: [(url: String, target: PACTarget)] = []
        for text in self.options.targets {
            guard let target = PACTarget(url: text) else {
                // The usual configuration step names a bad target.
                return Doctor(options: self.optionsWithoutPAC()).run()
            }
            targets.append((text, target))
        }
        let run = pac.evaluator.evaluate(source: source.text, filename: source.name, targets: targets.map(\.target))
        let shownPAC = PACSource.redacted(pac.location)
        if let error = run.loadError {
            _ = report.fail(
                "pac",
                .configError,
                "the PAC file \(shownPAC) fails: \(error)",
                fix:
                    "portcullis pac test --pac \(shownPAC) URL shows the same error; browsers given this file fall back to DIRECT or fail"
            )
            return report
        }
        let environment = ProxyEnvironment(self.options.environment)
        // Targets by the proxy the PAC chose, in the order first chosen.
        var groups: [(proxy: ProxyURL, targets: [String])] = []
        var direct: [String] = []
        for ((url, target), outcome) in zip(targets, run.outcomes) {
            let result: String
            switch outcome {
            case .failure(let error):
                _ = report.fail(
                    "pac",
                    .configError,
                    "the PAC file fails for \(url): \(error)",
                    fix: "portcullis pac explain --pac \(shownPAC) \(url) shows every step up to the failure"
                )
                continue
            case .success(let evaluation):
                result = evaluation.result
            }
            let routes = DoctorPAC.Route.parse(result)
            let configured = self.configuredProxy(for: target, environment: environment)
            switch routes[0] {
            case .direct:
                direct.append(url)
                report.add(
                    "pac",
                    .warn,
                    "\(url) → \(result.isEmpty ? "\"\"" : result): DIRECT, it bypasses the authenticating proxy",
                    fix:
                        "if it must go through the proxy, change the PAC file (portcullis pac explain --pac \(shownPAC) \(url) shows why it goes DIRECT)"
                )
            case .other(let entry):
                report.add(
                    "pac",
                    .warn,
                    "\(url) → \(result): \(entry) is not an HTTP proxy; doctor does not test it",
                    fix: nil
                )
            case .proxy(var chosen):
                if let configured, configured.host.lowercased() == chosen.host.lowercased(),
                    configured.port == chosen.port
                {
                    // The same proxy: its URL's credentials go with it.
                    chosen.user = configured.user
                    chosen.password = configured.password
                    report.add("pac", .pass, "\(url) → \(result): the proxy tested below")
                } else if let configured {
                    report.add(
                        "pac",
                        .warn,
                        "\(url) → \(result): another proxy than \(configured.redacted) (\(self.options.proxy != nil ? "--proxy" : "the environment")); clients that use the PAC go to \(chosen.authority), tested below",
                        fix: "make the PAC file and the proxy settings name the same proxy"
                    )
                } else {
                    report.add("pac", .pass, "\(url) → \(result): the proxy tested below")
                }
                if let index = groups.firstIndex(where: { $0.proxy == chosen }) {
                    groups[index].targets.append(url)
                } else {
                    groups.append((chosen, [url]))
                }
            }
        }
        for url in direct {
            report.targets.append(
                DoctorReport.Target(
                    url: url,
                    viaProxy: false,
                    status: .skip,
                    message: "DIRECT per the PAC file: not tested through a proxy"
                )
            )
        }
        if report.verdict != .ok { return report }
        if groups.isEmpty {
            report.summary = "the PAC file sends no target to an HTTP proxy"
            return report
        }
        for group in groups {
            var options = self.optionsWithoutPAC()
            options.proxy = group.proxy.urlWithCredentials
            options.targets = group.targets
            // The PAC decided what goes through the proxy: NO_PROXY has no say.
            options.environment = options.environment.filter { $0.key.lowercased() != "no_proxy" }
            options.client = nil
            options.environment = options.environment.filter {
                $0.key != "JAVA_TOOL_OPTIONS" && $0.key != "NODE_USE_ENV_PROXY"
            }
            let sub = Doctor(options: options).run()
            if report.proxy == nil {
                report.proxy = sub.proxy
                report.proxySource = "the PAC file \(shownPAC)"
            }
            report.steps += sub.steps
            report.challenges += sub.challenges
            report.authentication = report.authentication ?? sub.authentication
            report.targets += sub.targets
            if report.verdict == .ok, sub.verdict != .ok {
                report.verdict = sub.verdict
                report.summary = groups.count > 1 ? "\(group.proxy.authority): \(sub.summary)" : sub.summary
            } else if report.verdict == .ok {
                report.summary = sub.summary
            }
        }
        return report
    }

    private func optionsWithoutPAC() -> DoctorOptions {
        var options = self.options
        options.pac = nil
        return options
    }

    /// The proxy this client would use for `target` without the PAC: `--proxy`, or the
    /// environment's variable for the target's scheme.
    private func configuredProxy(for target: PACTarget, environment: ProxyEnvironment) -> ProxyURL? {
        if let proxy = self.options.proxy { return ProxyURL.parse(proxy).url }
        let scheme = target.url.lowercased().hasPrefix("https:") ? "https" : "http"
        guard let variable = environment.proxyVariable(forScheme: scheme) else { return nil }
        return ProxyURL.parse(variable.value).url
    }
}

extension ProxyURL {
    /// The URL with its credentials, for a doctor run of its own (never shown: reports use
    /// ``redacted``).
    var urlWithCredentials: String {
        var s = self.isTLS ? "https://" : "http://"
        if let user = self.user {
            s += Self.percentEncodeUserinfo(user)
            if let password = self.password { s += ":" + Self.percentEncodeUserinfo(password) }
            s += "@"
        }
        return s + self.authority
    }
}
