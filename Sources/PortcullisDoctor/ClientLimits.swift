import Foundation

/// What real clients cannot do that turns into a 407 (docs/CLIENTS.md and ../shared/PEERS.md
/// have the measurements): `doctor --client KIND`, or a client doctor can see in the
/// environment (`JAVA_TOOL_OPTIONS`, `NODE_USE_ENV_PROXY`), gets a `client` step first in the
/// report naming each limit that applies to this proxy and these targets, with its fix.
public enum ClientKind: String, CaseIterable, Sendable {
    case java, node, undici
    case pythonUrllib = "python-urllib"
    case pythonRequests = "python-requests"
    case pip, go, curl
}

struct ClientLimit: Equatable {
    /// `fail`: this client will get a 407 (or worse) where doctor passed; `warn`: it may.
    var status: DoctorReport.Status
    var message: String
    var fix: String
}

enum ClientLimits {
    /// The clients to look at: the one named, else those the environment shows.
    static func clients(named: ClientKind?, environment: [String: String]) -> [ClientKind] {
        if let named { return [named] }
        var found: [ClientKind] = []
        if environment["JAVA_TOOL_OPTIONS"] != nil { found.append(.java) }
        if environment["NODE_USE_ENV_PROXY"] != nil { found.append(.node) }
        return found
    }

    /// The limits of `client` that apply, given what the proxy offered and the targets.
    static func limits(
        _ client: ClientKind,
        offered: [String],
        httpsTarget: Bool,
        httpTarget: Bool,
        password: String?,
        environment: [String: String]
    ) -> [ClientLimit] {
        let schemes = Set(offered.map { $0.lowercased() })
        let basicOnly = !schemes.isEmpty && schemes == ["basic"]
        let nonASCII = password.map { $0.unicodeScalars.contains { $0.value > 0x7F } } ?? false
        let latin1 = password.map { $0.unicodeScalars.allSatisfy { $0.value <= 0xFF } } ?? true
        var limits: [ClientLimit] = []
        switch client {
        case .java:
            let options = environment["JAVA_TOOL_OPTIONS"] ?? ""
            if httpsTarget, basicOnly, !options.contains("-Djdk.http.auth.tunneling.disabledSchemes=Basic"),
                !Self.emptiesTunnellingSchemes(options)
            {
                limits.append(
                    ClientLimit(
                        status: .fail,
                        message:
                            "Java refuses Basic for CONNECT tunnels (jdk.http.auth.tunneling.disabledSchemes=Basic by default since 8u111): every https request through this Basic-only proxy ends in a 407",
                        fix:
                            "run Java with -Djdk.http.auth.tunneling.disabledSchemes= (empty; in JAVA_TOOL_OPTIONS for every JVM), or offer Digest on the proxy"
                    )
                )
            }
            if schemes.contains("digest"), nonASCII {
                limits.append(
                    ClientLimit(
                        status: .warn,
                        message:
                            "Java's HttpURLConnection hashes a Digest password as ISO-8859-1 bytes, whatever charset the proxy names\(latin1 ? " (Portcullis keeps that hash too for a password set with --digest since schema version 3; most proxies do not)" : "; this password has characters outside ISO-8859-1, which it cannot send at all"); HttpClient has no Digest",
                        fix: latin1
                            ? "on Portcullis set the password again (users passwd NAME --digest); elsewhere use Basic over TLS, or a password of ASCII characters"
                            : "use a password of ISO-8859-1 (better: ASCII) characters, or Basic over TLS"
                    )
                )
            }
        case .node:
            if environment["NODE_USE_ENV_PROXY"] == nil {
                limits.append(
                    ClientLimit(
                        status: .warn,
                        message:
                            "Node's built-in fetch and http ignore HTTP_PROXY/HTTPS_PROXY unless NODE_USE_ENV_PROXY is set (Node 24+)",
                        fix: "export NODE_USE_ENV_PROXY=1, or give the program a proxy agent (undici's ProxyAgent)"
                    )
                )
            }
            if httpTarget {
                limits.append(Self.undiciTunnels)
            }
        case .undici:
            if httpTarget { limits.append(Self.undiciTunnels) }
        case .pythonUrllib:
            if httpsTarget {
                limits.append(
                    ClientLimit(
                        status: .warn,
                        message:
                            "urllib's auth handlers never see a 407 to CONNECT: for https targets the credentials must be in the proxy URL",
                        fix: "put the credentials in the proxy URL (http://user:password@proxy:port), percent-encoded"
                    )
                )
            }
            if schemes.contains("digest") {
                limits.append(
                    ClientLimit(
                        status: .warn,
                        message:
                            "urllib's ProxyDigestAuthHandler reads only the first Proxy-Authenticate field, knows MD5 and SHA (not SHA-256), looks the password up by the target URL and hashes it as ASCII",
                        fix: "offer Basic (over TLS) for urllib, or register the password for the target URL's host"
                    )
                )
            }
        case .pythonRequests:
            if nonASCII {
                limits.append(
                    ClientLimit(
                        status: .warn,
                        message:
                            "requests decodes credentials in the proxy URL as Latin-1: a password with non-ASCII characters is sent differently from how it was typed",
                        fix: "use an ASCII password for requests, or a token (portcullis tokens issue)"
                    )
                )
            }
        case .pip:
            limits.append(
                ClientLimit(
                    status: .warn,
                    message: "pip retries a refused credential 5 times and shows the 407 only with -v",
                    fix: "run pip -v once to see the proxy's answer; the settings: portcullis client-config --for pip"
                )
            )
        case .go:
            if !schemes.isEmpty, !schemes.contains("basic") {
                limits.append(
                    ClientLimit(
                        status: .fail,
                        message:
                            "Go's net/http sends Basic from the proxy URL before any challenge and reads none: it cannot answer \(offered.joined(separator: ", "))",
                        fix: "offer Basic on the proxy (over TLS: --listen-tls) for Go programs"
                    )
                )
            }
        case .curl:
            if !schemes.isEmpty, !schemes.contains("basic") {
                limits.append(
                    ClientLimit(
                        status: .warn,
                        message:
                            "curl sends Basic unless told otherwise; this proxy offers \(offered.joined(separator: ", "))",
                        fix: "curl --proxy-anyauth (or --proxy-digest, --proxy-ntlm, --proxy-negotiate)"
                    )
                )
            }
        }
        return limits
    }

    static let undiciTunnels = ClientLimit(
        status: .warn,
        message:
            "undici's ProxyAgent tunnels every request with CONNECT, http:// URLs too: the proxy must allow CONNECT to port 80, and after a refused CONNECT undici waits for its connect timeout (10 s)",
        fix: "allow port 80 for CONNECT on the proxy (Portcullis: --connect-ports 443,80)"
    )

    private static func emptiesTunnellingSchemes(_ options: String) -> Bool {
        options.split(separator: " ").contains { word in
            word == "-Djdk.http.auth.tunneling.disabledSchemes="
                || word == "-Djdk.http.auth.tunneling.disabledSchemes=\"\""
        }
    }
}

extension DoctorReport {
    /// Puts the client's limits first: a `client` step each, and a `fail` one makes the verdict
    /// a configuration error naming it (doctor itself got through; this client will not).
    mutating func addClientLimits(_ limits: [(ClientKind, ClientLimit)]) {
        guard !limits.isEmpty else { return }
        let steps = limits.map { client, limit in
            Step(
                name: "client",
                status: limit.status,
                message: "\(client.rawValue): \(limit.message)",
                fix: limit.fix,
                elapsedMs: nil,
                details: ["client": .string(client.rawValue)]
            )
        }
        self.steps.insert(contentsOf: steps, at: 0)
        if let failing = limits.first(where: { $0.1.status == .fail }), self.verdict == .ok {
            self.verdict = .configError
            self.summary = "\(failing.0.rawValue): \(failing.1.message)"
        }
    }
}
