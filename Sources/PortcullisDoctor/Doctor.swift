import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import PortcullisAuth

/// What `portcullis doctor` was asked to check.
public struct DoctorOptions: Sendable {
    public enum SchemeChoice: String, Sendable, CaseIterable {
        case auto, basic, digest
    }

    /// `--proxy`; `nil` to take the proxy from the environment.
    public var proxy: String?
    /// `--user` with its password (from stdin or a variable); `nil` to use the proxy URL's.
    public var user: String?
    public var password: String?
    public var targets: [String] = ["http://example.com/", "https://example.com/"]
    public var scheme: SchemeChoice = .auto
    public var timeout: Double = 5
    public var caCertificateFile: String?
    public var insecure = false
    public var environment: [String: String] = [:]

    public init() {}
}

/// Runs the checks of docs/DOCTOR.md against one proxy and builds the report.
public final class Doctor {
    let options: DoctorOptions
    var report = DoctorReport()
    private let group: MultiThreadedEventLoopGroup
    private var timeout: TimeAmount { .nanoseconds(Int64(self.options.timeout * 1e9)) }

    // What the steps learn.
    private var proxy: ProxyURL?
    private var user: String?
    private var password: String?
    private var httpTargets: [URLTarget] = []
    private var httpsTargets: [URLTarget] = []
    private var connection: ProbeConnection?
    private var offered: [Challenge] = []
    private var offeredField = "Proxy-Authenticate"
    private var chosen: ChosenScheme?
    private var authRequired = true
    private var nonceCount = 0
    /// The response to the authenticated request of the authentication step, for the first target.
    private var firstAuthenticated: (target: URLTarget, response: ProbeResponse)?

    struct URLTarget {
        var url: String
        var host: String
        var port: Int
        var isTLS: Bool
        var requestTarget: String
        var hostHeader: String
    }

    enum ChosenScheme {
        case basic
        case digest(DigestResponder)

        var name: String {
            switch self {
            case .basic: return "Basic"
            case .digest: return "Digest"
            }
        }
    }

    public init(options: DoctorOptions) {
        self.options = options
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    }

    deinit {
        try? self.group.syncShutdownGracefully()
    }

    /// Runs every step in order; a failing step ends the run and the later ones are skipped.
    public func run() -> DoctorReport {
        defer { self.connection?.close() }
        let steps: [(String, () -> Bool)] = [
            ("configuration", self.checkConfiguration),
            ("reachability", self.checkReachability),
            ("challenge", self.checkChallenge),
            ("scheme", self.checkScheme),
            ("authentication", self.checkAuthentication),
            ("http", self.checkHTTPTargets),
            ("tunnel", self.checkTunnels),
        ]
        var stopped: String?
        for (name, step) in steps {
            if let reason = stopped {
                self.skip(name, reason)
                continue
            }
            if !step() {
                stopped =
                    self.report.verdict == .ok
                    ? "not needed: no target goes through the proxy"
                    : "not tried after the \(self.report.steps.last?.name ?? name) step failed"
            }
        }
        if self.report.summary.isEmpty {
            let who = self.user.map { "user \"\($0)\"" } ?? "this client"
            if !self.authRequired {
                self.report.summary =
                    "the proxy at \(self.proxy?.authority ?? "?") lets requests through without credentials"
            } else if let chosen {
                self.report.summary = "the proxy at \(self.proxy?.authority ?? "?") accepts \(who) (\(chosen.name))"
            } else {
                self.report.summary = "every target bypasses the proxy"
            }
        }
        return self.report
    }

    // MARK: - Recording

    private func add(
        _ name: String,
        _ status: DoctorReport.Status,
        _ message: String,
        fix: String? = nil,
        ms: Double? = nil,
        details: [String: JSONValue] = [:]
    ) {
        self.report.steps.append(
            DoctorReport.Step(name: name, status: status, message: message, fix: fix, elapsedMs: ms, details: details)
        )
    }

    private func skip(_ name: String, _ reason: String) {
        self.add(name, .skip, reason)
    }

    /// Records a failing step and the run's verdict; returns `false` to stop the run.
    private func fail(
        _ name: String,
        _ verdict: DoctorReport.Verdict,
        _ message: String,
        fix: String?,
        ms: Double? = nil,
        details: [String: JSONValue] = [:]
    ) -> Bool {
        self.add(name, .fail, message, fix: fix, ms: ms, details: details)
        if self.report.verdict == .ok {
            self.report.verdict = verdict
            self.report.summary = message
        }
        return false
    }

    private var tlsConfiguration: TLSConfiguration {
        var configuration = TLSConfiguration.makeClientConfiguration()
        if let file = self.options.caCertificateFile {
            configuration.trustRoots = .file(file)
        }
        if self.options.insecure {
            configuration.certificateVerification = .none
        }
        return configuration
    }

    private func tlsConfiguration(for host: String) -> TLSConfiguration {
        var configuration = self.tlsConfiguration
        if !self.options.insecure, (try? SocketAddress(ipAddress: host, port: 0)) != nil {
            // No SNI for an address; the chain is still verified.
            configuration.certificateVerification = .noHostnameVerification
        }
        return configuration
    }

    // MARK: - 1. Configuration

    private func checkConfiguration() -> Bool {
        let env = ProxyEnvironment(self.options.environment)
        var warnings: [String] = env.caseConflicts()
        var targets: [(URLTarget, String?)] = []
        for text in self.options.targets {
            guard let target = Self.parseTarget(text) else {
                return self.fail(
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
        if let explicit = self.options.proxy {
            proxyText = explicit
            source = "--proxy"
        }
        let noProxy = self.options.proxy == nil ? env.noProxy : nil
        if let noProxy, !noProxy.list.invalid.isEmpty {
            warnings.append(
                "\(noProxy.name) has entries no client can match: \(noProxy.list.invalid.map { "\"\($0)\"" }.joined(separator: ", ")) (write host names, .domain suffixes, IP addresses or CIDR blocks, without scheme or path)"
            )
        }
        var viaProxy: [URLTarget] = []
        for (target, _) in targets {
            if let noProxy, let entry = noProxy.list.match(host: target.host) {
                self.report.targets.append(
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
            if self.options.proxy == nil {
                guard let variable = env.proxyVariable(forScheme: target.isTLS ? "https" : "http") else {
                    self.report.targets.append(
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
            if noProxy != nil, !self.report.targets.isEmpty,
                self.report.targets.allSatisfy({ $0.message.hasPrefix("bypasses") })
            {
                self.report.summary = "every target bypasses the proxy (\(noProxy!.name))"
                self.add(
                    "configuration",
                    .warn,
                    self.report.summary,
                    fix: "check \(noProxy!.name) if these targets should go through the proxy"
                )
                return false
            }
            return self.fail(
                "configuration",
                .configError,
                "no proxy is configured: HTTP_PROXY, HTTPS_PROXY and ALL_PROXY are unset and --proxy was not given",
                fix: "set HTTPS_PROXY/HTTP_PROXY (http://USER:PASSWORD@host:port) or pass --proxy"
            )
        }
        self.report.proxySource = source
        let parsed = ProxyURL.parse(proxyText)
        warnings += parsed.warnings
        if let url = parsed.url { self.report.proxy = url.redacted }
        guard parsed.errors.isEmpty, let url = parsed.url else {
            return self.fail(
                "configuration",
                .configError,
                "\(source ?? "the proxy URL"): " + parsed.errors.joined(separator: "; "),
                fix:
                    "write the proxy as http://USER:PASSWORD@host:port with special characters in USER and PASSWORD percent-encoded (@ → %40, : → %3A, % → %25, # → %23, / → %2F)"
            )
        }
        self.proxy = url
        if let user = self.options.user {
            self.user = user
            self.password = self.options.password
            if url.user != nil { warnings.append("--user overrides the user in the proxy URL") }
        } else {
            self.user = url.user
            self.password = url.password ?? (url.user != nil ? "" : nil)
            if url.user != nil && url.password == nil {
                warnings.append(
                    "the proxy URL names a user but no password; curl would prompt for it, other clients send an empty one"
                )
            }
        }
        self.httpTargets = viaProxy.filter { !$0.isTLS }
        self.httpsTargets = viaProxy.filter { $0.isTLS }

        let who = self.user.map { "credentials for user \"\($0)\"" } ?? "no credentials"
        var message =
            "proxy \(url.redacted) from \(source ?? "?"), \(who), \(viaProxy.count) of \(targets.count) targets through it"
        if viaProxy.isEmpty {
            self.report.summary = "every target bypasses the proxy"
            self.add("configuration", .warn, message + "; every target bypasses the proxy", fix: "check NO_PROXY")
            return false
        }
        if warnings.isEmpty {
            self.add("configuration", .pass, message)
        } else {
            message += "; " + warnings.joined(separator: "; ")
            self.add(
                "configuration",
                .warn,
                message,
                fix:
                    "write the proxy as http://USER:PASSWORD@host:port with special characters percent-encoded (@ → %40, : → %3A, % → %25), and set each variable once"
            )
        }
        return true
    }

    static func parseTarget(_ text: String) -> URLTarget? {
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
        return URLTarget(
            url: shown.string ?? "\(scheme)://\(hostHeader)\(path)",
            host: host,
            port: port,
            isTLS: isTLS,
            requestTarget: requestTarget,
            hostHeader: hostHeader
        )
    }

    // MARK: - 2. Reachability

    private func checkReachability() -> Bool {
        guard let proxy = self.proxy else { return false }
        do {
            let connection = try self.connect()
            var message =
                "\(proxy.authority): DNS \(String(format: "%.1f", connection.timings.dnsMs)) ms, TCP connect \(String(format: "%.1f", connection.timings.connectMs)) ms"
            var details: [String: JSONValue] = [
                "address": .string(connection.timings.address),
                "dns_ms": .number(connection.timings.dnsMs),
                "connect_ms": .number(connection.timings.connectMs),
            ]
            if let tls = connection.tlsMs {
                message += ", TLS \(String(format: "%.1f", tls)) ms"
                details["tls_ms"] = .number(tls)
            }
            self.add(
                "reachability",
                .pass,
                message,
                ms: connection.timings.dnsMs + connection.timings.connectMs + (connection.tlsMs ?? 0),
                details: details
            )
            return true
        } catch {
            let fix: String
            switch error.kind {
            case .resolution:
                fix = "check the proxy host name (and this machine's DNS); a typo in HTTP_PROXY shows up here"
            case .refused:
                fix = "nothing listens on \(proxy.authority): check that the proxy runs, and the port in the proxy URL"
            case .timeout:
                fix = "check that a firewall lets this machine reach \(proxy.authority), and that the proxy is up"
            case .tls, .tlsUntrusted:
                fix =
                    "an https:// proxy URL needs a proxy that speaks TLS on that port (most proxies take http:// even for https targets); for a private CA pass --cacert FILE"
            default: fix = "check the proxy address"
            }
            return self.fail("reachability", .proxyUnreachable, error.message, fix: fix)
        }
    }

    private struct OpenedConnection {
        var connection: ProbeConnection
        var timings: ProbeConnection.Timings
        var tlsMs: Double?
    }

    /// A new connection to the proxy (TLS for an https:// proxy); it becomes the current one.
    private func connect() throws(ProbeError) -> OpenedConnection {
        guard let proxy = self.proxy else { throw ProbeError(kind: .other, message: "no proxy") }
        self.connection?.close()
        self.connection = nil
        let (connection, timings) = try ProbeConnection.open(
            host: proxy.host,
            port: proxy.port,
            group: self.group,
            timeout: self.timeout
        )
        var tlsMs: Double?
        if proxy.isTLS {
            do {
                tlsMs = try connection.startTLS(
                    serverName: proxy.host,
                    configuration: self.tlsConfiguration(for: proxy.host)
                )
            } catch {
                connection.close()
                throw error
            }
        }
        self.connection = connection
        return OpenedConnection(connection: connection, timings: timings, tlsMs: tlsMs)
    }

    /// Sends a request on the current connection if it is still usable, else on a new one.
    private func send(_ request: String, method: String) throws(ProbeError) -> ProbeResponse {
        if self.connection == nil || !(self.connection?.isActive ?? false) {
            _ = try self.connect()
        }
        let start = DispatchTime.now()
        let response = try self.connection!.exchange(request, method: method)
        self.lastExchangeMs = ProbeConnection.ms(since: start)
        if !response.keepAlive && !(method == "CONNECT" && response.status / 100 == 2) {
            self.connection?.close()
            self.connection = nil
        }
        return response
    }

    private var lastExchangeMs: Double = 0

    private func request(for target: URLTarget, authorization: String?) -> (text: String, method: String) {
        var lines: [String] = []
        let method = target.isTLS ? "CONNECT" : "GET"
        lines.append("\(method) \(target.requestTarget) HTTP/1.1")
        lines.append("Host: \(target.hostHeader)")
        lines.append("User-Agent: portcullis-doctor/0.1")
        if !target.isTLS { lines.append("Accept: */*") }
        if let authorization { lines.append("Proxy-Authorization: \(authorization)") }
        return (lines.joined(separator: "\r\n") + "\r\n\r\n", method)
    }

    private var firstTarget: URLTarget? { self.httpTargets.first ?? self.httpsTargets.first }

    // MARK: - 3. Challenge

    private func checkChallenge() -> Bool {
        guard let target = self.firstTarget else { return false }
        let (text, method) = self.request(for: target, authorization: nil)
        let response: ProbeResponse
        do {
            response = try self.send(text, method: method)
        } catch {
            return self.fail(
                "challenge",
                .proxyUnreachable,
                "\(method) \(target.requestTarget) without credentials: \(error.message)",
                fix:
                    "the proxy accepted the connection but did not answer; check that \(self.proxy?.authority ?? "it") is an HTTP proxy"
            )
        }
        let ms = self.lastExchangeMs
        switch response.status {
        case 407, 401:
            let field = response.status == 407 ? "Proxy-Authenticate" : "WWW-Authenticate"
            self.offeredField = field
            let values = response.values(field)
            var details: [String: JSONValue] = ["status": .int(response.status)]
            do {
                self.offered = try ChallengeParser.parse(fieldValues: values)
            } catch {
                self.offered = []
                details["parse_error"] = .string("\(error)")
            }
            self.report.challenges = self.offered.map { Self.info($0, field: field) }
            let listed = self.offered.map(Self.describe).joined(separator: "; ")
            if response.status == 401 {
                details["nonconformant_401"] = .bool(true)
                self.add(
                    "challenge",
                    .warn,
                    "the proxy answered 401 with WWW-Authenticate where RFC 9110 requires 407 with Proxy-Authenticate (tinyproxy does this): \(listed.isEmpty ? "no challenge" : listed)",
                    fix:
                        "clients treat a 401 as the origin's challenge and may never send proxy credentials; use a proxy that answers 407, or give credentials in the proxy URL so they are sent up front",
                    ms: ms,
                    details: details
                )
                return true
            }
            if values.isEmpty || self.offered.isEmpty {
                self.add(
                    "challenge",
                    .warn,
                    "407 without a usable Proxy-Authenticate challenge\(details["parse_error"].map { _ in " (unparsable)" } ?? "") — RFC 9110 §11.7.1 requires one",
                    fix: "no client can know how to answer; report it to the proxy's admins",
                    ms: ms,
                    details: details
                )
                return true
            }
            self.add("challenge", .pass, "407: \(listed)", ms: ms, details: details)
            return true
        case 403:
            return self.fail(
                "challenge",
                .denied,
                "the proxy forbids \(method) \(target.requestTarget) (403) before asking for credentials: not a password problem\(Self.reasonSuffix(response))",
                fix: "ask the proxy's admins which clients, destinations and ports are allowed",
                ms: ms,
                details: ["status": .int(403)]
            )
        default:
            self.authRequired = false
            self.firstAuthenticated = (target, response)
            self.report.authentication = DoctorReport.Authentication(
                outcome: "not-required",
                scheme: nil,
                status: response.status,
                proxyReason: nil
            )
            self.add(
                "challenge",
                .pass,
                "the proxy did not ask for credentials (\(response.status) to \(method) \(target.requestTarget))",
                ms: ms,
                details: ["status": .int(response.status)]
            )
            return true
        }
    }

    static func info(_ challenge: Challenge, field: String) -> DoctorReport.ChallengeInfo {
        var params: [String: String] = [:]
        for p in challenge.parameters where params[p.name.lowercased()] == nil { params[p.name.lowercased()] = p.value }
        return DoctorReport.ChallengeInfo(
            scheme: challenge.scheme,
            realm: challenge.parameter("realm"),
            params: params,
            field: field
        )
    }

    static func describe(_ challenge: Challenge) -> String {
        var s = challenge.scheme
        if let realm = challenge.parameter("realm") { s += " realm=\"\(realm)\"" }
        if challenge.schemeIs("Digest") {
            s += " algorithm=\(challenge.parameter("algorithm") ?? "MD5")"
            if let qop = challenge.parameter("qop") { s += " qop=\(qop)" }
            if challenge.parameter("stale")?.lowercased() == "true" { s += " stale" }
            if challenge.parameter("userhash")?.lowercased() == "true" { s += " userhash" }
        }
        return s
    }

    // MARK: - 4. Scheme

    private func checkScheme() -> Bool {
        guard self.authRequired else {
            self.skip("scheme", "the proxy does not ask for credentials")
            return true
        }
        let wantsDigest = self.options.scheme != .basic
        let wantsBasic = self.options.scheme != .digest
        let digests = self.offered.compactMap(DigestChallenge.init)
        // Strongest first: SHA-512-256, SHA-256, then MD5.
        func rank(_ c: DigestChallenge) -> Int {
            switch c.algorithm?.hash {
            case .sha512_256: return 0
            case .sha256: return 1
            default: return 2
            }
        }
        let usableDigest = digests.filter { $0.algorithm?.isSupported ?? false }
            .sorted { rank($0) < rank($1) }
            .first { DigestResponder(challenge: $0, user: "u", password: "p") != nil }
        let basicOffered = self.offered.contains { $0.schemeIs("Basic") }
        let offeredNames = Self.uniqueSchemes(self.offered)
        if wantsDigest, let digest = usableDigest {
            self.chosen = .digest(
                DigestResponder(challenge: digest, user: self.user ?? "", password: self.password ?? "")!
            )
            self.add(
                "scheme",
                .pass,
                "answering with Digest (\(digest.algorithm!.description)\(digest.userhash ? ", userhash" : ""))\(basicOffered ? "; Basic is offered too" : "")",
                details: ["offered": .array(offeredNames.map { .string($0) }), "chosen": .string("Digest")]
            )
            return true
        }
        if wantsBasic, basicOffered {
            self.chosen = .basic
            var note = ""
            if !digests.isEmpty, self.options.scheme == .basic { note = "; Digest is offered too (--scheme basic)" }
            self.add(
                "scheme",
                .pass,
                "answering with Basic\(note)",
                details: ["offered": .array(offeredNames.map { .string($0) }), "chosen": .string("Basic")]
            )
            return true
        }
        let clientSchemes: String
        switch self.options.scheme {
        case .auto: clientSchemes = "Basic or Digest"
        case .basic: clientSchemes = "Basic"
        case .digest: clientSchemes = "Digest"
        }
        let offeredText = offeredNames.isEmpty ? "no scheme at all" : offeredNames.joined(separator: ", ")
        var message = "the proxy offers only \(offeredText); \(clientSchemes) credentials will never work here"
        if !digests.isEmpty, usableDigest == nil, wantsDigest {
            message +=
                " (Digest with \(digests.map { $0.algorithmToken ?? "MD5" }.joined(separator: ", ")), which doctor cannot compute here)"
        }
        self.report.authentication = DoctorReport.Authentication(
            outcome: "scheme-mismatch",
            scheme: nil,
            status: nil,
            proxyReason: nil
        )
        return self.fail(
            "scheme",
            .authFailed,
            message,
            fix: Self.schemeAdvice(offered: offeredNames),
            details: ["offered": .array(offeredNames.map { .string($0) })]
        )
    }

    static func uniqueSchemes(_ challenges: [Challenge]) -> [String] {
        var seen: [String] = []
        for c in challenges where !seen.contains(where: { $0.lowercased() == c.scheme.lowercased() }) {
            seen.append(c.scheme)
        }
        return seen
    }

    static func schemeAdvice(offered: [String]) -> String {
        let lower = Set(offered.map { $0.lowercased() })
        var advice: [String] = []
        if lower.contains("negotiate") || lower.contains("ntlm") {
            advice.append(
                "the proxy wants Negotiate/NTLM (Windows/Kerberos): curl --proxy-negotiate -U : (after kinit) or --proxy-ntlm -U 'DOMAIN\\user'; Java: NTLM/Negotiate work with java.net.Authenticator, and Basic over CONNECT stays off unless jdk.http.auth.tunneling.disabledSchemes=\"\" — which only helps if the proxy offers Basic; Python requests sends only Basic (use requests-kerberos or requests-ntlm, or a local relay such as px or cntlm)"
            )
        }
        if lower.contains("digest") {
            advice.append(
                "the proxy wants Digest: curl --proxy-digest -U user; Python requests sends only Basic to proxies; if your client cannot do Digest ask the proxy's admins to enable Basic (over TLS)"
            )
        }
        if advice.isEmpty {
            advice.append(
                "use a client that supports the offered scheme, or ask the proxy's admins to enable Basic or Digest"
            )
        }
        return advice.joined(separator: "; ")
    }

    // MARK: - 5. Authentication

    private func authorization(method: String, uri: String) -> String? {
        guard let chosen, let user = self.user else { return nil }
        switch chosen {
        case .basic:
            let token = Data("\(user):\(self.password ?? "")".utf8).base64EncodedString()
            return "Basic \(token)"
        case .digest(let responder):
            self.nonceCount += 1
            var bytes = [UInt8](repeating: 0, count: 16)
            for i in bytes.indices { bytes[i] = UInt8.random(in: 0...255) }
            let cnonce = bytes.map { String(format: "%02x", $0) }.joined()
            return responder.authorization(method: method, uri: uri, nonceCount: self.nonceCount, cnonce: cnonce)
        }
    }

    private func checkAuthentication() -> Bool {
        guard self.authRequired else {
            self.skip("authentication", "the proxy does not ask for credentials")
            return true
        }
        guard let target = self.firstTarget, let chosen else { return false }
        guard let user = self.user else {
            self.report.authentication = DoctorReport.Authentication(
                outcome: "no-credentials",
                scheme: nil,
                status: nil,
                proxyReason: nil
            )
            return self.fail(
                "authentication",
                .authFailed,
                "the proxy requires authentication (\(chosen.name)) and no credentials were given",
                fix:
                    "put credentials in the proxy URL (http://USER:PASSWORD@host:port, percent-encoded) or pass --user NAME with --password-stdin"
            )
        }
        let firstRealm = self.offered.first { $0.schemeIs(chosen.name) }?.parameter("realm")
        var staleRetried = false
        var totalMs = 0.0
        while true {
            let method = target.isTLS ? "CONNECT" : "GET"
            let (text, _) = self.request(
                for: target,
                authorization: self.authorization(method: method, uri: target.requestTarget)
            )
            let response: ProbeResponse
            do {
                response = try self.send(text, method: method)
            } catch {
                return self.fail(
                    "authentication",
                    .proxyUnreachable,
                    "\(method) \(target.requestTarget) with credentials: \(error.message)",
                    fix: "the proxy stopped answering once credentials were sent; check its logs"
                )
            }
            totalMs += self.lastExchangeMs
            let reason = Self.proxyReason(response)
            var details: [String: JSONValue] = ["status": .int(response.status)]
            if let reason { details["proxy_reason"] = .string(reason) }
            let proxys401 = response.status == 401 && self.isProxysOwn401(response)
            let isChallenge = response.status == 407 || proxys401
            if proxys401 { details["nonconformant_401"] = .bool(true) }
            if isChallenge {
                let field = response.status == 407 ? "Proxy-Authenticate" : "WWW-Authenticate"
                let again = (try? ChallengeParser.parse(fieldValues: response.values(field))) ?? []
                let sameScheme = again.filter { $0.schemeIs(chosen.name) }
                if case .digest(let old) = chosen,
                    let fresh = sameScheme.compactMap(DigestChallenge.init).first(where: { $0.stale })
                {
                    if !staleRetried,
                        let responder = DigestResponder(challenge: fresh, user: user, password: self.password ?? "")
                    {
                        // RFC 7616 §3.3: stale=true means the answer was right but the nonce old.
                        staleRetried = true
                        self.chosen = .digest(responder)
                        self.nonceCount = 0
                        _ = old
                        continue
                    }
                    return self.authFailure(
                        "challenge-loop",
                        "the proxy keeps answering stale=true with a fresh nonce: a challenge loop (its nonces expire at once, or its clock is off)",
                        fix:
                            "report it to the proxy's admins with the Proxy-Authenticate values; no client setting fixes this",
                        response: response,
                        reason: reason,
                        ms: totalMs,
                        details: details
                    )
                }
                if let newRealm = sameScheme.first?.parameter("realm"), let firstRealm, newRealm != firstRealm {
                    details["realm_before"] = .string(firstRealm)
                    details["realm_after"] = .string(newRealm)
                    return self.authFailure(
                        "realm-changed",
                        "the realm changed from \"\(firstRealm)\" to \"\(newRealm)\" between the challenge and the answer (a load balancer in front of differently configured proxies?)",
                        fix:
                            "credentials are per realm: make every proxy behind this address use one realm, or ask which one applies",
                        response: response,
                        reason: reason,
                        ms: totalMs,
                        details: details
                    )
                }
                switch reason {
                case "malformed-credentials":
                    return self.authFailure(
                        "malformed",
                        "the proxy says the credentials are malformed (\(chosen.name))",
                        fix:
                            "the Proxy-Authorization header was damaged on the way or the client encodes it wrongly; check for non-ASCII characters in the user name or password",
                        response: response,
                        reason: reason,
                        ms: totalMs,
                        details: details
                    )
                case "missing-credentials":
                    return self.authFailure(
                        "challenge-loop",
                        "the proxy keeps asking although credentials were sent: it never saw them (something between here and the proxy drops Proxy-Authorization?)",
                        fix: "check for another proxy or a load balancer in between that strips Proxy-Authorization",
                        response: response,
                        reason: reason,
                        ms: totalMs,
                        details: details
                    )
                default:
                    var message = "the proxy rejected the credentials of user \"\(user)\" (\(chosen.name))"
                    if let reason { message += "; proxy says: \(reason)" }
                    if response.status == 401 {
                        message +=
                            "; it answered 401 with WWW-Authenticate where RFC 9110 requires 407 with Proxy-Authenticate"
                    }
                    return self.authFailure(
                        "rejected",
                        message,
                        fix: "check the user name and password; if they were rotated or have expired, ask for new ones",
                        response: response,
                        reason: reason,
                        ms: totalMs,
                        details: details
                    )
                }
            }
            self.report.authentication = DoctorReport.Authentication(
                outcome: response.status == 403 ? "denied" : "accepted",
                scheme: chosen.name,
                status: response.status,
                proxyReason: reason
            )
            if response.status == 403 && target.isTLS {
                // A CONNECT refused after the gate: the tunnel step says why.
                self.firstAuthenticated = (target, response)
                self.add(
                    "authentication",
                    .pass,
                    "credentials accepted: user \"\(user)\" with \(self.chosenDescription); the proxy then refused the CONNECT (see tunnel)",
                    ms: totalMs,
                    details: details
                )
                return true
            }
            if response.status == 403 {
                return self.fail(
                    "authentication",
                    .denied,
                    "credentials accepted, but the proxy forbids \(method) \(target.requestTarget) (403): not a password problem\(Self.reasonSuffix(response))",
                    fix: "ask the proxy's admins which destinations and ports are allowed for user \"\(user)\"",
                    ms: totalMs,
                    details: details
                )
            }
            self.firstAuthenticated = (target, response)
            self.add(
                "authentication",
                .pass,
                "accepted: user \"\(user)\" with \(self.chosenDescription)\(staleRetried ? " (after one stale nonce)" : "")",
                ms: totalMs,
                details: details
            )
            return true
        }
    }

    /// Whether a 401 after credentials is the proxy refusing them in the wrong words (tinyproxy
    /// 1.11 answers 407 without credentials but 401 + WWW-Authenticate to wrong ones) rather
    /// than the origin's own 401: the proxy used 401 from the start, or the 401 repeats the
    /// proxy's realm, or nothing relayed it (no `Via`).
    private func isProxysOwn401(_ response: ProbeResponse) -> Bool {
        if self.offeredField == "WWW-Authenticate" { return true }
        let proxyRealms = Set(self.offered.compactMap { $0.parameter("realm") })
        let challenges = (try? ChallengeParser.parse(fieldValues: response.values("WWW-Authenticate"))) ?? []
        if challenges.contains(where: { $0.parameter("realm").map(proxyRealms.contains) ?? false }) { return true }
        return response.values("Via").isEmpty
    }

    private var chosenDescription: String {
        switch self.chosen {
        case .basic: return "Basic"
        case .digest(let r): return "Digest \(r.algorithm.description)"
        case nil: return "no credentials"
        }
    }

    private func authFailure(
        _ outcome: String,
        _ message: String,
        fix: String,
        response: ProbeResponse,
        reason: String?,
        ms: Double,
        details: [String: JSONValue]
    ) -> Bool {
        self.report.authentication = DoctorReport.Authentication(
            outcome: outcome,
            scheme: self.chosen?.name,
            status: response.status,
            proxyReason: reason
        )
        return self.fail("authentication", .authFailed, message, fix: fix, ms: ms, details: details)
    }

    /// The proxy's own reason for a refusal: RFC 9209 `Proxy-Status` details (Portcullis puts
    /// its reason token there), else Squid's `X-Squid-Error`.
    static func proxyReason(_ response: ProbeResponse) -> String? {
        for value in response.values("Proxy-Status") {
            if let range = value.range(of: "details=\"") {
                let rest = value[range.upperBound...]
                if let end = rest.firstIndex(of: "\"") { return String(rest[..<end]) }
            }
            if let range = value.range(of: "error=") {
                let rest = value[range.upperBound...]
                return String(rest.prefix { $0 != ";" && $0 != "," && $0 != " " })
            }
        }
        if let squid = response.values("X-Squid-Error").first {
            return squid.split(separator: " ").first.map(String.init)
        }
        return nil
    }

    static func reasonSuffix(_ response: ProbeResponse) -> String {
        guard let reason = self.proxyReason(response) else { return "" }
        return "; proxy says: \(reason)"
    }

    // MARK: - 6. Plain HTTP targets

    private func checkHTTPTargets() -> Bool {
        guard !self.httpTargets.isEmpty else {
            self.skip("http", "no http:// target")
            return true
        }
        var failures: [String] = []
        var lines: [String] = []
        var verdict: DoctorReport.Verdict = .targetFailed
        var totalMs = 0.0
        for target in self.httpTargets {
            var response: ProbeResponse
            if let first = self.firstAuthenticated, first.target.url == target.url {
                response = first.response
            } else {
                let (text, method) = self.request(
                    for: target,
                    authorization: self.authRequired
                        ? self.authorization(method: "GET", uri: target.requestTarget) : nil
                )
                do {
                    response = try self.send(text, method: method)
                    totalMs += self.lastExchangeMs
                } catch {
                    failures.append("\(target.url): \(error.message)")
                    self.recordTarget(target, .fail, nil, error.message)
                    continue
                }
            }
            let (status, message, targetVerdict) = Self.classifyTarget(response, target: target)
            self.recordTarget(target, status, response.status, message)
            if status == .fail {
                failures.append("\(target.url): \(message)")
                if targetVerdict == .denied { verdict = .denied }
            } else {
                lines.append("\(target.url): \(message)")
            }
        }
        if !failures.isEmpty {
            return self.fail(
                "http",
                verdict,
                failures.joined(separator: "; "),
                fix: verdict == .denied
                    ? "credentials are fine; ask the proxy's admins to allow this destination"
                    : "the proxy could not fetch the target: check the URL, and that the proxy can reach it (its DNS, its firewall)",
                ms: totalMs
            )
        }
        self.add("http", .pass, lines.joined(separator: "; "), ms: totalMs > 0 ? totalMs : nil)
        return true
    }

    private func recordTarget(_ target: URLTarget, _ status: DoctorReport.Status, _ httpStatus: Int?, _ message: String)
    {
        self.report.targets.append(
            DoctorReport.Target(
                url: target.url,
                viaProxy: true,
                status: status,
                httpStatus: httpStatus,
                message: message
            )
        )
    }

    static func classifyTarget(
        _ response: ProbeResponse,
        target: URLTarget
    ) -> (DoctorReport.Status, String, DoctorReport.Verdict?) {
        switch response.status {
        case 403:
            return (.fail, "the proxy forbids it (403): not a password problem\(self.reasonSuffix(response))", .denied)
        case 502, 503, 504:
            return (
                .fail,
                "the proxy could not get it (\(response.status) \(response.reason))\(self.reasonSuffix(response))",
                .targetFailed
            )
        default:
            return (.pass, "\(response.status) \(response.reason) through the proxy", nil)
        }
    }

    // MARK: - 7. Tunnels

    private func checkTunnels() -> Bool {
        guard !self.httpsTargets.isEmpty else {
            self.skip("tunnel", "no https:// target")
            return true
        }
        var failures: [(String, DoctorReport.Verdict, String)] = []
        var warnings: [String] = []
        var lines: [String] = []
        var totalMs = 0.0
        for target in self.httpsTargets {
            let start = DispatchTime.now()
            var response: ProbeResponse
            if let first = self.firstAuthenticated, first.target.url == target.url,
                first.response.status / 100 != 2 || (self.connection?.isActive ?? false)
            {
                response = first.response
            } else {
                do {
                    _ = try self.connect()
                    let auth =
                        self.authRequired ? self.authorization(method: "CONNECT", uri: target.requestTarget) : nil
                    let (text, method) = self.request(for: target, authorization: auth)
                    response = try self.send(text, method: method)
                } catch {
                    failures.append(("\(target.url): \(error.message)", .targetFailed, "check that the proxy is up"))
                    self.recordTarget(target, .fail, nil, error.message)
                    continue
                }
            }
            switch response.status {
            case 200..<300:
                do {
                    let tlsMs = try self.connection!.startTLS(
                        serverName: target.host,
                        configuration: self.tlsConfiguration(for: target.host)
                    )
                    let message =
                        "CONNECT \(target.requestTarget): \(response.status), TLS handshake \(String(format: "%.1f", tlsMs)) ms"
                    lines.append(message)
                    self.recordTarget(target, self.options.insecure ? .warn : .pass, response.status, message)
                    if self.options.insecure {
                        warnings.append("--insecure: \(target.host)'s certificate was not verified")
                    }
                } catch {
                    if error.kind == .tlsUntrusted {
                        let message = "CONNECT \(target.requestTarget): \(response.status), but \(error.message)"
                        warnings.append(message)
                        self.recordTarget(target, .warn, response.status, message)
                    } else {
                        failures.append(
                            (
                                "CONNECT \(target.requestTarget): \(response.status), then \(error.message)",
                                .targetFailed,
                                "the tunnel opened but TLS through it failed: the target may not speak TLS on that port"
                            )
                        )
                        self.recordTarget(target, .fail, response.status, error.message)
                    }
                }
                self.connection?.close()
                self.connection = nil
            case 403:
                let message =
                    "the proxy refused CONNECT to port \(target.port) of \(target.host) (403): not a password problem\(Self.reasonSuffix(response))"
                failures.append(
                    (
                        message, .denied,
                        "the proxy allows CONNECT only to some ports (often just 443); use a target on an allowed port or ask its admins"
                    )
                )
                self.recordTarget(target, .fail, 403, message)
            case 407, 401:
                let message =
                    "the proxy asks for credentials again on CONNECT (\(response.status)) although it accepted them for plain HTTP\(Self.reasonSuffix(response))"
                failures.append(
                    (message, .authFailed, "some proxies use other rules for CONNECT; ask the proxy's admins")
                )
                self.recordTarget(target, .fail, response.status, message)
            default:
                let message =
                    "the proxy could not open a tunnel to \(target.requestTarget) (\(response.status) \(response.reason))\(Self.reasonSuffix(response))"
                failures.append(
                    (message, .targetFailed, "check that the target host and port are reachable from the proxy")
                )
                self.recordTarget(target, .fail, response.status, message)
            }
            totalMs += ProbeConnection.ms(since: start)
        }
        if let first = failures.first {
            return self.fail("tunnel", first.1, failures.map(\.0).joined(separator: "; "), fix: first.2, ms: totalMs)
        }
        if !warnings.isEmpty {
            self.add(
                "tunnel",
                .warn,
                (lines + warnings).joined(separator: "; "),
                fix:
                    "pass --cacert FILE for a private CA; if the proxy intercepts TLS, its CA must be in this machine's trust store",
                ms: totalMs
            )
            return true
        }
        self.add("tunnel", .pass, lines.joined(separator: "; "), ms: totalMs)
        return true
    }
}
