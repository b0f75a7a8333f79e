import Foundation
import Logging

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A swift-log handler that formats each line where it is logged and hands it to a
/// ``LogSink``, so logging never waits for the destination (see ``LogSink``).
///
/// Lines look like swift-log's `StreamLogHandler`'s, so what reads them today still does:
/// `2025-01-31T12:00:00+0000 info portcullis: client=10.0.0.1 reason=invalid-credentials [PortcullisProxy] authentication failed`.
public struct SinkLogHandler: LogHandler {
    public let label: String
    public var logLevel: Logger.Level = .info
    public var metadataProvider: Logger.MetadataProvider?
    public var metadata: Logger.Metadata = [:] {
        didSet { self.prettyMetadata = Self.prettify(self.metadata) }
    }
    private var prettyMetadata: String?
    private let sink: LogSink

    public init(
        label: String,
        sink: LogSink,
        metadataProvider: Logger.MetadataProvider? = LoggingSystem.metadataProvider
    ) {
        self.label = label
        self.sink = sink
        self.metadataProvider = metadataProvider
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let pretty: String?
        if let merged = self.merged(event) {
            pretty = Self.prettify(merged)
        } else {
            pretty = self.prettyMetadata
        }
        self.sink.write(
            Self.line(
                timestamp: Self.timestamp(),
                level: event.level,
                label: self.label,
                metadata: pretty,
                source: event.source,
                message: "\(event.message)"
            )
        )
    }

    /// The handler's metadata with the provider's and the statement's over it (as
    /// `StreamLogHandler` merges them); `nil` when the statement adds nothing.
    private func merged(_ event: LogEvent) -> Logger.Metadata? {
        let provided = self.metadataProvider?.get() ?? [:]
        guard !provided.isEmpty || !(event.metadata ?? [:]).isEmpty || event.error != nil else { return nil }
        var metadata = self.metadata
        metadata.merge(provided) { $1 }
        if let explicit = event.metadata { metadata.merge(explicit) { $1 } }
        if let error = event.error {
            metadata["error.message"] = "\(error)"
            metadata["error.type"] = "\(String(reflecting: type(of: error)))"
        }
        return metadata
    }

    /// The report a ``LogSink`` writes after dropping lines, as a warning line of `label`.
    public static func dropReport(label: String) -> @Sendable (Int) -> String? {
        { dropped in
            Self.line(
                timestamp: Self.timestamp(),
                level: .warning,
                label: label,
                metadata: "dropped_lines=\(dropped)",
                source: "PortcullisProxy",
                message: "\(dropped) log lines dropped: the log destination did not keep up"
            )
        }
    }

    static func line(
        timestamp: String,
        level: Logger.Level,
        label: String,
        metadata: String?,
        source: String,
        message: String
    ) -> String {
        "\(timestamp) \(level)\(label.isEmpty ? "" : " ")\(label):\(metadata.map { " \($0)" } ?? "") [\(source)] \(message)\n"
    }

    static func prettify(_ metadata: Logger.Metadata) -> String? {
        guard !metadata.isEmpty else { return nil }
        return metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
    }

    /// Local time to the second with the zone offset, as `StreamLogHandler` writes it;
    /// `localtime_r`, as lines are formatted on many threads at once.
    static func timestamp() -> String {
        var now = time(nil)
        var local = tm()
        guard localtime_r(&now, &local) != nil else { return "<unknown>" }
        var buffer = [Int8](repeating: 0, count: 64)
        let count = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%S%z", &local)
        return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
