import ArgumentParser
import Foundation
import PortcullisDoctor

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "One screen of a running proxy's live figures, read from its --admin listener."
    )

    @Option(name: .long, help: ArgumentHelp("The admin listener: http://HOST:PORT or HOST:PORT.", valueName: "url"))
    var admin: String = "http://127.0.0.1:9090"

    @Option(name: .long, help: ArgumentHelp("Seconds to wait for the answer.", valueName: "seconds"))
    var timeout: Double = 5

    func run() throws {
        var text = self.admin
        if let range = text.range(of: "://") { text = String(text[range.upperBound...]) }
        text = String(text.prefix { $0 != "/" })
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]) else {
            throw ValidationError("--admin needs HOST:PORT (for example http://127.0.0.1:9090)")
        }
        let host = String(text[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        let fetched: (status: Int, body: String)
        do {
            fetched = try MetricsFetch.get(host: host, port: port, path: "/metrics", timeout: self.timeout)
        } catch {
            print("portcullis status: cannot read \(self.admin)/metrics: \(error)")
            throw ExitCode(1)
        }
        guard fetched.status == 200 else {
            print("portcullis status: \(self.admin)/metrics answered \(fetched.status)")
            throw ExitCode(1)
        }
        print(Self.summary(MetricSamples(text: fetched.body), source: self.admin))
    }

    static func summary(_ m: MetricSamples, source: String) -> String {
        func n(_ value: Double) -> String { String(Int(value.rounded())) }
        func ms(_ seconds: Double?) -> String {
            guard let seconds else { return "-" }
            return seconds.isInfinite ? "> 30 s" : String(format: "≤ %.1f ms", seconds * 1000)
        }
        func bytes(_ value: Double) -> String {
            let units = ["B", "KiB", "MiB", "GiB", "TiB"]
            var v = value
            var i = 0
            while v >= 1024, i < units.count - 1 {
                v /= 1024
                i += 1
            }
            return i == 0 ? "\(Int(v)) B" : String(format: "%.1f %@", v, units[i])
        }
        var lines = ["portcullis status — \(source)"]
        lines.append(
            "connections  \(n(m.sum("portcullis_client_connections_active"))) open, \(n(m.sum("portcullis_tunnels_active"))) tunnels"
        )
        var requests: [String] = []
        for kind in ["http", "connect"] {
            let parts = ["1xx", "2xx", "3xx", "4xx", "5xx"].compactMap { status -> String? in
                let v = m.sum("portcullis_requests_total", ["kind": kind, "status_class": status])
                return v > 0 ? "\(status) \(n(v))" : nil
            }
            if !parts.isEmpty { requests.append("\(kind): " + parts.joined(separator: ", ")) }
        }
        lines.append("requests     " + (requests.isEmpty ? "none yet" : requests.joined(separator: "; ")))
        let accepted = m.sum("portcullis_auth_outcomes_total", ["outcome": "accepted"])
        let reasons = m.values(of: "reason", in: "portcullis_auth_outcomes_total").filter { $0 != "ok" }
            .map { "\($0) \(n(m.sum("portcullis_auth_outcomes_total", ["reason": $0])))" }
        lines.append(
            "auth         accepted \(n(accepted)); refused: \(reasons.isEmpty ? "none" : reasons.joined(separator: ", "))"
        )
        lines.append(
            "             407s sent \(n(m.sum("portcullis_proxy_auth_challenges_total"))), challenge loops \(n(m.sum("portcullis_challenge_loops_total"))), lockouts \(n(m.sum("portcullis_lockouts_total")))"
        )
        let hits = m.sum("portcullis_credential_cache_total", ["result": "hit"])
        let misses = m.sum("portcullis_credential_cache_total", ["result": "miss"])
        let ratio = hits + misses > 0 ? String(format: "%.0f %%", 100 * hits / (hits + misses)) : "-"
        lines.append("cache        \(ratio) hits (\(n(hits)) hits, \(n(misses)) misses)")
        let errors = ["dns", "refused", "timeout", "denied", "other"].map {
            "\($0) \(n(m.sum("portcullis_upstream_connect_errors_total", ["kind": $0])))"
        }
        lines.append("upstream     connect errors: " + errors.joined(separator: ", "))
        lines.append(
            "latency      request p50 \(ms(m.quantile(0.5, histogram: "portcullis_request_duration_seconds"))), p99 \(ms(m.quantile(0.99, histogram: "portcullis_request_duration_seconds"))); added p99 \(ms(m.quantile(0.99, histogram: "portcullis_added_latency_seconds")))"
        )
        lines.append(
            "bytes        from clients \(bytes(m.sum("portcullis_bytes_total", ["direction": "from_clients"]))), to clients \(bytes(m.sum("portcullis_bytes_total", ["direction": "to_clients"])))"
        )
        let refusals = m.values(of: "reason", in: "portcullis_refusals_total")
            .map { "\($0) \(n(m.sum("portcullis_refusals_total", ["reason": $0])))" }
        lines.append("refused      " + (refusals.isEmpty ? "none" : refusals.joined(separator: ", ")))
        lines.append(
            "reloads      ok \(n(m.sum("portcullis_reloads_total", ["result": "ok"]))), failed \(n(m.sum("portcullis_reloads_total", ["result": "failed"])))"
        )
        return lines.joined(separator: "\n")
    }
}
