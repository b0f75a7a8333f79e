import Foundation
import NIOCore
import NIOPosix

/// A plain HTTP GET for `portcullis status` (the admin listener's /metrics), over the same
/// probe connection doctor uses.
public enum MetricsFetch {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public static func get(host: String, port: Int, path: String, timeout: Double = 5) throws -> (
        status: Int, body: String
    ) {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        do {
            let (connection, _) = try ProbeConnection.open(
                host: host,
                port: port,
                group: group,
                timeout: .nanoseconds(Int64(timeout * 1e9))
            )
            defer { connection.close() }
            let hostHeader = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            let response = try connection.exchange(
                "GET \(path) HTTP/1.1\r\nHost: \(hostHeader)\r\nUser-Agent: portcullis-status\r\nConnection: close\r\n\r\n",
                method: "GET"
            )
            return (response.status, response.bodyText)
        } catch {
            throw Failure(description: error.message)
        }
    }
}

/// Prometheus text exposition, read just enough for a summary: samples by name and labels.
public struct MetricSamples: Sendable {
    public struct Sample: Sendable {
        public var name: String
        public var labels: [String: String]
        public var value: Double
    }

    public var samples: [Sample] = []

    public init(text: String) {
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else {
                continue
            }
            let series = line[..<space]
            var name = String(series)
            var labels: [String: String] = [:]
            if let brace = series.firstIndex(of: "{"), series.hasSuffix("}") {
                name = String(series[..<brace])
                let inner = series[series.index(after: brace)..<series.index(before: series.endIndex)]
                for pair in inner.split(separator: ",") {
                    let parts = pair.split(separator: "=", maxSplits: 1)
                    guard parts.count == 2 else { continue }
                    labels[String(parts[0])] = String(parts[1]).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
                }
            }
            self.samples.append(Sample(name: name, labels: labels, value: value))
        }
    }

    /// The sum of every sample of `name` whose labels include `matching`.
    public func sum(_ name: String, _ matching: [String: String] = [:]) -> Double {
        self.samples.filter { sample in
            sample.name == name && matching.allSatisfy { key, value in sample.labels[key] == value }
        }
        .reduce(0) { $0 + $1.value }
    }

    /// Distinct values of `label` among samples of `name`.
    public func values(of label: String, in name: String) -> [String] {
        Array(Set(self.samples.filter { $0.name == name }.compactMap { $0.labels[label] })).sorted()
    }

    /// A quantile estimated from a histogram's cumulative buckets (upper bound of the bucket).
    public func quantile(_ q: Double, histogram name: String) -> Double? {
        let buckets = self.samples.filter { $0.name == name + "_bucket" }
            .compactMap { s -> (Double, Double)? in
                guard let le = s.labels["le"] else { return nil }
                return (le == "+Inf" ? .infinity : Double(le) ?? .infinity, s.value)
            }
            .sorted { $0.0 < $1.0 }
        guard let total = buckets.last?.1, total > 0 else { return nil }
        return buckets.first { $0.1 >= q * total }?.0
    }
}
