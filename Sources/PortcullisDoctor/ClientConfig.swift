import Foundation

/// `portcullis client-config`: the proxy settings each tool reads, written the way that tool
/// parses them — the mistakes people make by hand are an unencoded `@` or `%` in a URL's
/// password, a `%` that systemd reads as a specifier, Java's Basic disabled for tunnels, and
/// Docker's three places.
public struct ClientConfig: Sendable {
    public enum Tool: String, CaseIterable, Sendable {
        case env, curl, wget, git, pip, npm, yarn, maven, gradle, java, docker, apt

        /// Where the settings go.
        public var destination: String {
            switch self {
            case .env: return "the shell (or a CI job's environment)"
            case .curl: return "~/.curlrc"
            case .wget: return "~/.wgetrc"
            case .git: return "~/.gitconfig"
            case .pip: return "~/.config/pip/pip.conf (or /etc/pip.conf)"
            case .npm: return "~/.npmrc"
            case .yarn: return "~/.yarnrc (Yarn 1) or .yarnrc.yml (Yarn 2+)"
            case .maven: return "~/.m2/settings.xml"
            case .gradle: return "~/.gradle/gradle.properties"
            case .java: return "JAVA_TOOL_OPTIONS (or the java command line)"
            case .docker: return "the daemon's systemd drop-in, and ~/.docker/config.json for builds and containers"
            case .apt: return "/etc/apt/apt.conf.d/95proxy"
            }
        }
    }

    public var host: String
    public var port: Int
    /// `https://` to the proxy (TLS), else `http://`.
    public var tls: Bool
    public var user: String?
    public var password: String?
    public var noProxy: [String]

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// From `--proxy URL` (its credentials ignored: they come from `--user`/`--password-env`).
    public init(proxy: String, user: String?, password: String?, noProxy: [String]) throws {
        let parsed = ProxyURL.parse(proxy)
        guard let url = parsed.url, parsed.errors.isEmpty else {
            throw Failure(description: parsed.errors.first ?? "--proxy takes http://host:port or https://host:port")
        }
        guard url.user == nil else {
            throw Failure(description: "put the user in --user and the password in --password-env, not in --proxy")
        }
        self.host = url.host
        self.port = url.port
        self.tls = url.isTLS
        self.user = user
        self.password = password
        self.noProxy = noProxy
    }

    // MARK: - Pieces

    var scheme: String { self.tls ? "https" : "http" }
    var hostPort: String { self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)" }

    /// RFC 3986 userinfo: everything but the unreserved characters percent-encoded, so `@ : % /
    /// #` and spaces survive every URL parser.
    static func encode(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
                UInt8(ascii: "~"):
                out.unicodeScalars.append(UnicodeScalar(byte))
            default:
                out += String(format: "%%%02X", byte)
            }
        }
        return out
    }

    /// The proxy URL, with the credentials percent-encoded when there are some.
    var url: String {
        var userinfo = ""
        if let user = self.user {
            userinfo = Self.encode(user)
            if let password = self.password { userinfo += ":" + Self.encode(password) }
            userinfo += "@"
        }
        return "\(self.scheme)://\(userinfo)\(self.hostPort)"
    }

    var urlWithoutCredentials: String { "\(self.scheme)://\(self.hostPort)" }

    /// POSIX shell single quotes.
    static func shellQuoted(_ text: String) -> String { "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'" }

    /// A double-quoted string with `\` and `"` escaped (curlrc, gitconfig, JSON-ish).
    static func doubleQuoted(_ text: String) -> String {
        "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }

    static func xml(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
            .replacingOccurrences(of: "'", with: "&apos;")
    }

    /// A Java properties value: `\`, and `:`, `=`, `#`, `!` and a leading space escaped.
    static func property(_ text: String) -> String {
        var out = ""
        for (index, character) in text.enumerated() {
            switch character {
            case "\\", ":", "=", "#", "!": out += "\\\(character)"
            case " " where index == 0: out += "\\ "
            default: out.append(character)
            }
        }
        return out
    }

    /// Java's `nonProxyHosts`: `|`-separated, `*.suffix` wildcards (a leading `.` becomes `*.`).
    var javaNonProxyHosts: String {
        self.noProxy.map { $0.hasPrefix(".") ? "*" + $0 : $0 }.joined(separator: "|")
    }

    // MARK: - Per tool

    public func render(_ tool: Tool) -> String {
        let noProxy = self.noProxy.joined(separator: ",")
        var lines: [String] = []
        switch tool {
        case .env:
            for name in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"] {
                lines.append("export \(name)=\(Self.shellQuoted(self.url))")
            }
            if !noProxy.isEmpty {
                lines.append("export no_proxy=\(Self.shellQuoted(noProxy))")
                lines.append("export NO_PROXY=\(Self.shellQuoted(noProxy))")
            }
        case .curl:
            lines.append("proxy = \(Self.doubleQuoted(self.urlWithoutCredentials))")
            if let user = self.user {
                lines.append("proxy-user = \(Self.doubleQuoted("\(user):\(self.password ?? "")"))")
            }
            if !noProxy.isEmpty { lines.append("noproxy = \(Self.doubleQuoted(noProxy))") }
        case .wget:
            lines.append("use_proxy = on")
            lines.append("http_proxy = \(self.urlWithoutCredentials)/")
            lines.append("https_proxy = \(self.urlWithoutCredentials)/")
            if let user = self.user {
                lines.append("proxy_user = \(user)")
                lines.append("proxy_password = \(self.password ?? "")")
            }
            if !noProxy.isEmpty { lines.append("no_proxy = \(noProxy)") }
        case .git:
            lines.append("[http]")
            lines.append("\tproxy = \(Self.doubleQuoted(self.url))")
            lines.append("\tproxyAuthMethod = basic")
            if !noProxy.isEmpty {
                lines.append("# git has no no-proxy setting: it follows no_proxy (\(noProxy)) from the environment")
            }
        case .pip:
            lines.append("[global]")
            lines.append("proxy = \(self.url)")
        case .npm:
            lines.append("proxy=\(self.url)/")
            lines.append("https-proxy=\(self.url)/")
            if !noProxy.isEmpty { lines.append("noproxy=\(noProxy)") }
        case .yarn:
            lines.append("# Yarn 1 (~/.yarnrc)")
            lines.append("proxy \(Self.doubleQuoted(self.url + "/"))")
            lines.append("https-proxy \(Self.doubleQuoted(self.url + "/"))")
            lines.append("# Yarn 2+ (.yarnrc.yml)")
            lines.append("httpProxy: \(Self.doubleQuoted(self.url))")
            lines.append("httpsProxy: \(Self.doubleQuoted(self.url))")
        case .maven:
            lines.append("<settings>")
            lines.append("  <proxies>")
            for proto in ["http", "https"] {
                lines.append("    <proxy>")
                lines.append("      <id>portcullis-\(proto)</id>")
                lines.append("      <active>true</active>")
                lines.append("      <protocol>\(proto)</protocol>")
                lines.append("      <host>\(Self.xml(self.host))</host>")
                lines.append("      <port>\(self.port)</port>")
                if let user = self.user {
                    lines.append("      <username>\(Self.xml(user))</username>")
                    lines.append("      <password>\(Self.xml(self.password ?? ""))</password>")
                }
                if !self.noProxy.isEmpty {
                    lines.append("      <nonProxyHosts>\(Self.xml(self.javaNonProxyHosts))</nonProxyHosts>")
                }
                lines.append("    </proxy>")
            }
            lines.append("  </proxies>")
            lines.append("</settings>")
        case .gradle:
            for proto in ["http", "https"] {
                lines.append("systemProp.\(proto).proxyHost=\(Self.property(self.host))")
                lines.append("systemProp.\(proto).proxyPort=\(self.port)")
                if let user = self.user {
                    lines.append("systemProp.\(proto).proxyUser=\(Self.property(user))")
                    lines.append("systemProp.\(proto).proxyPassword=\(Self.property(self.password ?? ""))")
                }
            }
            if !self.noProxy.isEmpty {
                lines.append("systemProp.http.nonProxyHosts=\(Self.property(self.javaNonProxyHosts))")
            }
            lines.append("# Java refuses Basic for CONNECT tunnels (https) unless this is empty:")
            lines.append("systemProp.jdk.http.auth.tunneling.disabledSchemes=")
        case .java:
            var options = [
                "-Dhttp.proxyHost=\(self.host)", "-Dhttp.proxyPort=\(self.port)",
                "-Dhttps.proxyHost=\(self.host)", "-Dhttps.proxyPort=\(self.port)",
            ]
            if !self.noProxy.isEmpty { options.append("-Dhttp.nonProxyHosts=\(self.javaNonProxyHosts)") }
            options.append("-Djdk.http.auth.tunneling.disabledSchemes=")
            options.append("-Djdk.http.auth.proxying.disabledSchemes=")
            lines.append("export JAVA_TOOL_OPTIONS=\(Self.shellQuoted(options.joined(separator: " ")))")
            lines.append(
                "# Java 8u111 and later refuse Basic for CONNECT tunnels (https) unless jdk.http.auth.tunneling.disabledSchemes is empty, as here."
            )
            if self.user != nil {
                lines.append(
                    "# The JDK's HTTP clients take no proxy password from properties: the program sets a java.net.Authenticator (Maven and Gradle read theirs from their own settings)."
                )
            }
        case .docker:
            lines.append("# /etc/systemd/system/docker.service.d/http-proxy.conf (the daemon: image pulls), then")
            lines.append("# systemctl daemon-reload && systemctl restart docker")
            lines.append("[Service]")
            // systemd reads % as a specifier: a percent-encoded password needs %%.
            let systemd = self.url.replacingOccurrences(of: "%", with: "%%")
            lines.append("Environment=\(Self.doubleQuoted("HTTP_PROXY=\(systemd)"))")
            lines.append("Environment=\(Self.doubleQuoted("HTTPS_PROXY=\(systemd)"))")
            if !noProxy.isEmpty { lines.append("Environment=\(Self.doubleQuoted("NO_PROXY=\(noProxy)"))") }
            lines.append("")
            lines.append("# ~/.docker/config.json (builds and containers)")
            var proxies: [String: String] = ["httpProxy": self.url, "httpsProxy": self.url]
            if !noProxy.isEmpty { proxies["noProxy"] = noProxy }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            let json = (try? encoder.encode(["proxies": ["default": proxies]])).map {
                String(decoding: $0, as: UTF8.self)
            }
            lines.append(json ?? "{}")
        case .apt:
            lines.append("Acquire::http::Proxy \(Self.doubleQuoted(self.url + "/"));")
            lines.append("Acquire::https::Proxy \(Self.doubleQuoted(self.url + "/"));")
            for host in self.noProxy where !host.contains("/") && !host.hasPrefix(".") {
                lines.append("Acquire::http::Proxy::\(host) \"DIRECT\";")
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Every tool, each under a heading naming where it goes.
    public func renderAll() -> String {
        Tool.allCases.map { "# ---- \($0.rawValue): \($0.destination) ----\n" + self.render($0) }.joined(
            separator: "\n"
        )
    }
}
