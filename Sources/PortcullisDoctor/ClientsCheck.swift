import Foundation
import NIOCore
import NIOPosix

/// `doctor --clients`: one line per tool — the proxy it would use, whether it has credentials,
/// what is wrong in how they are written — and, for each proxy that can be reached, whether
/// those credentials are accepted now. Exit 2 when a tool's credentials (or their absence) get
/// a 407, 1 when a tool's proxy cannot be reached, else 0.
public struct ClientsCheck: Sendable {
    public struct Line: Encodable, Sendable {
        public var tool: String
        public var source: String?
        /// The proxy URL, password shown as `***`.
        public var proxy: String?
        public var credentials: Bool
        /// `accepted`, `refused`, `unreachable`, `untested` (no proxy, or a problem that stops
        /// the URL being read), or `none` (nothing configured).
        public var check: String
        public var detail: String?
        public var problems: [String]
        public var notes: [String]
    }

    public var lines: [Line] = []

    public var exitCode: Int32 {
        if self.lines.contains(where: { $0.check == "refused" }) { return 2 }
        if self.lines.contains(where: { $0.check == "unreachable" }) { return 1 }
        return 0
    }

    /// Reads the settings under `home` and probes each distinct proxy and credential once,
    /// with a request for `target` (an `http://` URL: a GET; an `https://` one: a CONNECT).
    public static func run(
        home: String,
        environment: [String: String],
        target: String,
        timeout: Double,
        aptDirectory: String = "/etc/apt"
    ) -> ClientsCheck {
        let settings = ClientSettings.read(home: home, environment: environment, aptDirectory: aptDirectory)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        var results: [String: (check: String, detail: String)] = [:]
        var check = ClientsCheck()
        for entry in settings.entries {
            guard let proxy = entry.proxy else {
                check.lines.append(
                    Line(
                        tool: entry.tool,
                        source: entry.source,
                        proxy: nil,
                        credentials: false,
                        check: entry.problems.isEmpty ? "none" : "untested",
                        detail: entry.problems.isEmpty ? "no proxy configured" : nil,
                        problems: entry.problems,
                        notes: entry.notes
                    )
                )
                continue
            }
            let key = "\(proxy.isTLS) \(proxy.authority) \(proxy.user ?? "") \(proxy.password ?? "")"
            let result =
                results[key]
                ?? Self.probe(proxy, target: target, group: group, timeout: timeout)
            results[key] = result
            check.lines.append(
                Line(
                    tool: entry.tool,
                    source: entry.source,
                    proxy: proxy.redacted,
                    credentials: proxy.user != nil,
                    check: result.check,
                    detail: result.detail,
                    problems: entry.problems,
                    notes: entry.notes
                )
            )
        }
        return check
    }

    /// One request through `proxy` with its credentials (if any): 407 is `refused`, a failure
    /// to connect `unreachable`, any other answer `accepted`.
    static func probe(
        _ proxy: ProxyURL,
        target: String,
        group: any EventLoopGroup,
        timeout: Double
    ) -> (check: String, detail: String) {
        guard !proxy.isTLS else { return ("untested", "an https:// proxy: run portcullis doctor --proxy for it") }
        guard let components = URLComponents(string: target), let host = components.host else {
            return ("untested", "no usable --target")
        }
        let isTLS = components.scheme == "https"
        let port = components.port ?? (isTLS ? 443 : 80)
        let authority = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        var request =
            isTLS
            ? "CONNECT \(authority) HTTP/1.1\r\nHost: \(authority)\r\n"
            : "GET \(target) HTTP/1.1\r\nHost: \(authority)\r\n"
        if let user = proxy.user {
            let token = Data("\(user):\(proxy.password ?? "")".utf8).base64EncodedString()
            request += "Proxy-Authorization: Basic \(token)\r\n"
        }
        request += "User-Agent: portcullis-doctor\r\nConnection: close\r\n\r\n"
        do {
            let (connection, _) = try ProbeConnection.open(
                host: proxy.host,
                port: proxy.port,
                group: group,
                timeout: .nanoseconds(Int64(timeout * 1e9))
            )
            defer { connection.close() }
            let response = try connection.exchange(request, method: isTLS ? "CONNECT" : "GET")
            if response.status == 407 {
                let reason = response.values("Proxy-Status").first.flatMap { value -> String? in
                    guard let range = value.range(of: "details=\"") else { return nil }
                    return value[range.upperBound...].split(separator: "\"").first.map(String.init)
                }
                let why = proxy.user == nil ? "no credentials" : "credentials refused"
                return ("refused", "407: \(why)\(reason.map { " (\($0))" } ?? "")")
            }
            return ("accepted", "\(response.status) \(response.reason)")
        } catch {
            return ("unreachable", error.message)
        }
    }

    public func text() -> String {
        let refused = self.lines.filter { $0.check == "refused" }.count
        let unreachable = self.lines.filter { $0.check == "unreachable" }.count
        var out = [
            "portcullis doctor --clients: \(refused) of \(self.lines.count) tools would get a 407, \(unreachable) would not reach their proxy"
        ]
        func column(_ text: String, _ width: Int) -> String {
            text.padding(toLength: max(width, text.count), withPad: " ", startingAt: 0)
        }
        for line in self.lines {
            var row = "  " + column(line.tool, 7) + " " + column(line.source ?? "-", 28) + " "
            if let proxy = line.proxy {
                row += column(proxy, 34) + " credentials: " + (line.credentials ? "yes" : "no ") + "  " + line.check
                if let detail = line.detail { row += " (\(detail))" }
            } else {
                row += line.detail ?? "no usable proxy URL"
            }
            out.append(row)
            for problem in line.problems { out.append("          problem: \(problem)") }
            for note in line.notes { out.append("          note: \(note)") }
        }
        return out.joined(separator: "\n")
    }

    public func json() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        struct Document: Encodable {
            var clients: [Line]
            var exitCode: Int32
            enum CodingKeys: String, CodingKey {
                case clients
                case exitCode = "exit_code"
            }
        }
        let data = (try? encoder.encode(Document(clients: self.lines, exitCode: self.exitCode))) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}
