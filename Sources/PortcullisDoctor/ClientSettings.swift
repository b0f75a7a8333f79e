import Foundation

/// `doctor --clients`: the proxy settings each tool would use on this machine, read from the
/// places the tool reads them (its own file first, the environment after, as each does), so the
/// one a 407 comes from can be found: a stale password in `~/.npmrc`, an unencoded `@` in
/// `HTTPS_PROXY`, git pointed at another proxy.
public struct ClientSettings: Sendable {
    /// What one tool would use.
    public struct Entry: Sendable {
        public var tool: String
        /// Where the setting was found (`~/.npmrc`, `HTTPS_PROXY`, …); nil: nothing configured.
        public var source: String?
        public var proxy: ProxyURL?
        /// Mistakes in how it is written (encoding, scheme, port), in words to act on.
        public var problems: [String] = []
        /// Things that are not wrong but matter (Java's Basic over CONNECT).
        public var notes: [String] = []
    }

    public var entries: [Entry] = []

    /// Reads every tool's settings under `home` (and `/etc/apt` for apt) with `environment`.
    public static func read(home: String, environment: [String: String], aptDirectory: String = "/etc/apt")
        -> ClientSettings
    {
        let env = ProxyEnvironment(environment)
        var settings = ClientSettings()
        func file(_ path: String) -> String? {
            guard let data = FileManager.default.contents(atPath: home + "/" + path), data.count < 1 << 20 else {
                return nil
            }
            return String(decoding: data, as: UTF8.self)
        }
        func fromEnvironment(_ tool: String) -> Entry {
            guard let variable = env.proxyVariable(forScheme: "https") else { return Entry(tool: tool) }
            return Self.entry(tool, source: variable.name, url: variable.value)
        }

        settings.entries.append(fromEnvironment("env"))

        // curl: ~/.curlrc (`proxy`, `proxy-user`), else the environment.
        if let text = file(".curlrc"),
            let proxy = Self.keyValues(text, separators: "= :").first(where: {
                ["proxy", "x", "-x", "--proxy"].contains($0.key)
            })
        {
            var entry = Self.entry("curl", source: "~/.curlrc", url: proxy.value)
            if let user = Self.keyValues(text, separators: "= :").first(where: {
                ["proxy-user", "--proxy-user", "U", "-U"].contains($0.key)
            })?.value,
                entry.proxy != nil
            {
                let parts = user.split(separator: ":", maxSplits: 1)
                entry.proxy?.user = parts.first.map(String.init)
                entry.proxy?.password = parts.count > 1 ? String(parts[1]) : nil
            }
            settings.entries.append(entry)
        } else {
            settings.entries.append(fromEnvironment("curl"))
        }

        // wget: ~/.wgetrc (`https_proxy`, `proxy_user`, `proxy_password`), else the environment.
        if let text = file(".wgetrc") {
            let values = Dictionary(
                Self.keyValues(text, separators: "=").map { ($0.key.lowercased(), $0.value) },
                uniquingKeysWith: { $1 }
            )
            if values["use_proxy"]?.lowercased() == "off" {
                settings.entries.append(Entry(tool: "wget", source: "~/.wgetrc (use_proxy = off)"))
            } else if let url = values["https_proxy"] ?? values["http_proxy"] {
                var entry = Self.entry("wget", source: "~/.wgetrc", url: url)
                if let user = values["proxy_user"] {
                    entry.proxy?.user = user
                    entry.proxy?.password = values["proxy_password"]
                }
                settings.entries.append(entry)
            } else {
                settings.entries.append(fromEnvironment("wget"))
            }
        } else {
            settings.entries.append(fromEnvironment("wget"))
        }

        // git: http.proxy in ~/.gitconfig, else the environment.
        if let text = file(".gitconfig"), let url = Self.iniValue(text, section: "http", key: "proxy") {
            settings.entries.append(Self.entry("git", source: "~/.gitconfig http.proxy", url: url))
        } else {
            settings.entries.append(fromEnvironment("git"))
        }

        // pip: PIP_PROXY, then its config files, then the environment.
        if let url = environment["PIP_PROXY"], !url.isEmpty {
            settings.entries.append(Self.entry("pip", source: "PIP_PROXY", url: url))
        } else if let (path, url) = [".config/pip/pip.conf", ".pip/pip.conf"].lazy.compactMap({ path in
            file(path).flatMap { Self.iniValue($0, section: "global", key: "proxy") }.map { (path, $0) }
        }).first {
            settings.entries.append(Self.entry("pip", source: "~/\(path)", url: url))
        } else {
            settings.entries.append(fromEnvironment("pip"))
        }

        // npm: npm_config_https_proxy / _proxy, ~/.npmrc `https-proxy` / `proxy`, the environment.
        if let url = environment["npm_config_https_proxy"] ?? environment["npm_config_proxy"], !url.isEmpty {
            settings.entries.append(Self.entry("npm", source: "npm_config_https_proxy", url: url))
        } else if let text = file(".npmrc"),
            let value = Self.keyValues(text, separators: "=").first(where: {
                $0.key == "https-proxy" || $0.key == "proxy"
            })
        {
            settings.entries.append(Self.entry("npm", source: "~/.npmrc \(value.key)", url: value.value))
        } else {
            settings.entries.append(fromEnvironment("npm"))
        }

        // Maven: the first active proxy of ~/.m2/settings.xml (Maven ignores the environment).
        if let text = file(".m2/settings.xml"), let proxy = Self.mavenProxy(text) {
            settings.entries.append(proxy)
        } else {
            var entry = Entry(tool: "maven")
            if env.proxyVariable(forScheme: "https") != nil {
                entry.notes.append("Maven ignores HTTPS_PROXY: it reads only ~/.m2/settings.xml")
            }
            settings.entries.append(entry)
        }

        // Gradle: systemProp.https.proxyHost in ~/.gradle/gradle.properties.
        if let text = file(".gradle/gradle.properties") {
            let values = Dictionary(
                Self.keyValues(text, separators: "=:").map { ($0.key, $0.value) },
                uniquingKeysWith: { $1 }
            )
            if let host = values["systemProp.https.proxyHost"] ?? values["systemProp.http.proxyHost"] {
                let port = values["systemProp.https.proxyPort"] ?? values["systemProp.http.proxyPort"] ?? "80"
                var entry = Self.entry("gradle", source: "~/.gradle/gradle.properties", url: "http://\(host):\(port)")
                entry.proxy?.user = values["systemProp.https.proxyUser"] ?? values["systemProp.http.proxyUser"]
                entry.proxy?.password =
                    values["systemProp.https.proxyPassword"] ?? values["systemProp.http.proxyPassword"]
                if values["systemProp.jdk.http.auth.tunneling.disabledSchemes"] == nil, entry.proxy?.user != nil {
                    entry.notes.append(
                        "Java refuses Basic for CONNECT tunnels unless systemProp.jdk.http.auth.tunneling.disabledSchemes= is set (empty)"
                    )
                }
                settings.entries.append(entry)
            } else {
                settings.entries.append(Entry(tool: "gradle"))
            }
        } else {
            settings.entries.append(Entry(tool: "gradle"))
        }

        // Java: JAVA_TOOL_OPTIONS' -Dhttps.proxyHost.
        if let options = environment["JAVA_TOOL_OPTIONS"],
            let host = Self.javaProperty(options, "https.proxyHost") ?? Self.javaProperty(options, "http.proxyHost")
        {
            let port =
                Self.javaProperty(options, "https.proxyPort") ?? Self.javaProperty(options, "http.proxyPort") ?? "80"
            var entry = Self.entry("java", source: "JAVA_TOOL_OPTIONS", url: "http://\(host):\(port)")
            if Self.javaProperty(options, "jdk.http.auth.tunneling.disabledSchemes") == nil {
                entry.notes.append(
                    "Java refuses Basic for CONNECT tunnels (https) by default: add -Djdk.http.auth.tunneling.disabledSchemes="
                )
            }
            settings.entries.append(entry)
        } else {
            settings.entries.append(Entry(tool: "java"))
        }

        // Docker: ~/.docker/config.json proxies.default (builds and containers).
        if let data = FileManager.default.contents(atPath: home + "/.docker/config.json"),
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let proxies = (object["proxies"] as? [String: Any])?["default"] as? [String: Any],
            let url = (proxies["httpsProxy"] ?? proxies["httpProxy"]) as? String
        {
            settings.entries.append(Self.entry("docker", source: "~/.docker/config.json", url: url))
        } else {
            settings.entries.append(Entry(tool: "docker"))
        }

        // apt: Acquire::https::Proxy / Acquire::http::Proxy in apt.conf and apt.conf.d.
        var aptURL: (source: String, url: String)?
        let aptFiles =
            [aptDirectory + "/apt.conf"]
            + ((try? FileManager.default.contentsOfDirectory(atPath: aptDirectory + "/apt.conf.d"))?.sorted().map {
                aptDirectory + "/apt.conf.d/" + $0
            } ?? [])
        for path in aptFiles {
            guard let data = FileManager.default.contents(atPath: path), data.count < 1 << 20 else { continue }
            let text = String(decoding: data, as: UTF8.self)
            for key in ["Acquire::https::Proxy", "Acquire::http::Proxy"] {
                guard let range = text.range(of: key + " \"") else { continue }
                let rest = text[range.upperBound...]
                if let end = rest.firstIndex(of: "\"") { aptURL = (path, String(rest[..<end])) }
                break
            }
        }
        if let aptURL {
            settings.entries.append(Self.entry("apt", source: aptURL.source, url: aptURL.url))
        } else {
            settings.entries.append(Entry(tool: "apt"))
        }
        settings.noteDisagreements()
        return settings
    }

    static func entry(_ tool: String, source: String, url: String) -> Entry {
        let parsed = ProxyURL.parse(url)
        return Entry(tool: tool, source: source, proxy: parsed.url, problems: parsed.errors + parsed.warnings)
    }

    /// Tools pointed at another proxy than most are.
    mutating func noteDisagreements() {
        var counts: [String: Int] = [:]
        for entry in self.entries {
            if let proxy = entry.proxy { counts[proxy.authority.lowercased(), default: 0] += 1 }
        }
        guard counts.count > 1, let common = counts.max(by: { $0.value < $1.value })?.key else { return }
        for index in self.entries.indices {
            guard let proxy = self.entries[index].proxy, proxy.authority.lowercased() != common else { continue }
            self.entries[index].problems.append("points at \(proxy.authority), while the other tools use \(common)")
        }
    }

    /// `key = value` lines (`#`/`;` comments), the value unquoted.
    static func keyValues(_ text: String, separators: String) -> [(key: String, value: String)] {
        text.split(whereSeparator: \.isNewline).compactMap { raw in
            let line = raw.trimmingCharacters(in: .whitespaces)
            guard !line.isEmpty, !line.hasPrefix("#"), !line.hasPrefix(";"),
                let split = line.firstIndex(where: { separators.contains($0) })
            else { return nil }
            let key = line[..<split].trimmingCharacters(in: .whitespaces)
            var value = line[line.index(after: split)...].trimmingCharacters(
                in: CharacterSet(charactersIn: separators + " \t")
            )
            if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") {
                value = String(value.dropFirst().dropLast()).replacingOccurrences(of: "\\\"", with: "\"")
                    .replacingOccurrences(of: "\\\\", with: "\\")
            }
            return (key, value)
        }
    }

    /// A value of an INI-like file (gitconfig, pip.conf) in `[section]`.
    static func iniValue(_ text: String, section: String, key: String) -> String? {
        var current = ""
        for raw in text.split(whereSeparator: \.isNewline) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("[") {
                current = line.trimmingCharacters(in: CharacterSet(charactersIn: "[] ")).lowercased()
                continue
            }
            guard current == section.lowercased(), let equals = line.firstIndex(of: "=") else { continue }
            guard line[..<equals].trimmingCharacters(in: .whitespaces).lowercased() == key.lowercased() else {
                continue
            }
            var value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") {
                value = String(value.dropFirst().dropLast())
            }
            return value
        }
        return nil
    }

    static func javaProperty(_ options: String, _ name: String) -> String? {
        for word in options.split(separator: " ") where word.hasPrefix("-D\(name)=") {
            return String(word.dropFirst(name.count + 3))
        }
        return nil
    }

    /// The first `<proxy>` of a Maven settings file that is active, as an entry.
    static func mavenProxy(_ text: String) -> Entry? {
        func element(_ name: String, in block: Substring) -> String? {
            guard let open = block.range(of: "<\(name)>"),
                let close = block.range(of: "</\(name)>", range: open.upperBound..<block.endIndex)
            else { return nil }
            return String(block[open.upperBound..<close.lowerBound]).trimmingCharacters(in: .whitespacesAndNewlines)
                .replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">")
                .replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&apos;", with: "'")
                .replacingOccurrences(of: "&amp;", with: "&")
        }
        var rest = text[...]
        while let open = rest.range(of: "<proxy>"),
            let close = rest.range(of: "</proxy>", range: open.upperBound..<rest.endIndex)
        {
            let block = rest[open.upperBound..<close.lowerBound]
            rest = rest[close.upperBound...]
            if element("active", in: block)?.lowercased() == "false" { continue }
            guard let host = element("host", in: block) else { continue }
            let port = element("port", in: block) ?? "80"
            var entry = Self.entry("maven", source: "~/.m2/settings.xml", url: "http://\(host):\(port)")
            entry.proxy?.user = element("username", in: block)
            entry.proxy?.password = element("password", in: block)
            return entry
        }
        return nil
    }
}
