import CoreMetrics
import Foundation
import Logging
import NIOCore

/// One line of the access log: a request or a tunnel, when it ended. Holds no credential: the
/// user name (after authentication) and the scheme's name are all that is kept of one.
public struct AccessRecord: Sendable {
    public var start: Date
    public var durationMs: Int
    public var client: String
    public var user: String?
    /// `basic`, `digest`, … or `nil` when none was presented.
    public var authScheme: String?
    /// `ok`, `none` (authentication off) or a reason token (`invalid-credentials`, …).
    public var authResult: String
    public var method: String
    public var target: String
    public var status: Int
    public var bytesFromClient: Int
    public var bytesToClient: Int
    /// The origin's address, if one was reached.
    public var upstream: String?
    public var contentType: String?
    public var proxyStatus: String?
    public var isTunnel: Bool
    /// The parent proxy (`host:port`) the request went through, if it went through one; then
    /// `upstream` is the parent's address.
    public var parent: String? = nil
    /// The listener the request came in on (JSON format only: Squid's format has no field for it).
    public var listener: ListenerKind = .tcp
    /// The label (or `id=…`) of the short-lived token the user logged in with (JSON format
    /// only; never the token).
    public var token: String? = nil

    /// Squid's native format, so existing tooling works:
    /// `%ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt`.
    public var squidLine: String {
        let seconds = self.start.timeIntervalSince1970
        let whole = Int(seconds)
        let millis = Int((seconds - Double(whole)) * 1000)
        let code: String
        if self.isTunnel {
            code = self.status == 200 ? "TCP_TUNNEL" : "TCP_DENIED"
        } else if self.upstream == nil {
            code = (self.status == 407 || self.status == 403 || self.status == 429) ? "TCP_DENIED" : "NONE_NONE"
        } else {
            code = "TCP_MISS"
        }
        // Squid's own names: FIRSTUP_PARENT for the first parent up, as its `cache_peer` logs.
        let hierarchy =
            self.upstream.map { self.parent == nil ? "HIER_DIRECT/\($0)" : "FIRSTUP_PARENT/\($0)" } ?? "HIER_NONE/-"
        let duration =
            String(repeating: " ", count: max(0, 6 - String(self.durationMs).count)) + String(self.durationMs)
        return
            "\(whole).\(String(format: "%03d", millis)) \(duration) \(self.client) \(code)/\(String(format: "%03d", self.status)) \(self.bytesToClient) \(self.method) \(Self.safe(self.target)) \(Self.safe(self.user ?? "-")) \(hierarchy) \(Self.safe(self.contentType ?? "-"))"
    }

    /// Roughly the memory the record holds while it waits to be written: its strings and a
    /// fixed part for the rest.
    var heldBytes: Int {
        var bytes = 160 + self.client.utf8.count + self.authResult.utf8.count + self.method.utf8.count
        bytes += self.target.utf8.count + (self.user?.utf8.count ?? 0) + (self.authScheme?.utf8.count ?? 0)
        bytes += (self.upstream?.utf8.count ?? 0) + (self.contentType?.utf8.count ?? 0) + (self.parent?.utf8.count ?? 0)
        bytes += self.token?.utf8.count ?? 0
        return bytes + (self.proxyStatus?.utf8.count ?? 0)
    }

    /// One JSON object per line.
    public var jsonLine: String {
        var fields: [(String, String)] = []
        func string(_ key: String, _ value: String?) {
            fields.append((key, value.map(Self.jsonString) ?? "null"))
        }
        string("time", self.start.formatted(Self.timeFormat))
        fields.append(("duration_ms", "\(self.durationMs)"))
        string("client", self.client)
        string("user", self.user)
        string("token", self.token)
        string("auth_scheme", self.authScheme)
        string("auth_result", self.authResult)
        string("method", self.method)
        string("target", self.target)
        fields.append(("status", "\(self.status)"))
        fields.append(("bytes_from_client", "\(self.bytesFromClient)"))
        fields.append(("bytes_to_client", "\(self.bytesToClient)"))
        string("upstream", self.upstream)
        string("parent", self.parent)
        string("proxy_status", self.proxyStatus)
        fields.append(("tunnel", self.isTunnel ? "true" : "false"))
        string("listener", self.listener.rawValue)
        return "{" + fields.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}"
    }

    /// Squid's fields are space-separated: spaces and control characters are escaped.
    static func safe(_ s: String) -> String {
        var out = ""
        for scalar in s.unicodeScalars {
            if scalar.value <= 0x20 || scalar.value == 0x7F || scalar == "%" {
                out += String(format: "%%%02X", scalar.value)
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out.isEmpty ? "-" : out
    }

    static func jsonString(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    out += String(format: "\\u%04x", scalar.value)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }

    /// `2026-12-05T06:27:36.123Z`.
    static let timeFormat = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
}

/// Writes access-log lines off the event loops, and reopens the file on request (logrotate:
/// SIGHUP / SIGUSR1).
///
/// Lines go through a ``LogSink``: a destination that stops reading (`-` on a pipe nobody
/// drains, a stalled disk) holds up neither an event loop nor a thread-pool thread and never
/// makes the queue grow without bound; lines beyond its capacity are dropped, counted in
/// ``countDrops(in:)``'s counter, and reported in the server log (not in the access log,
/// whose lines tools parse).
public final class AccessLog: Sendable {
    public enum Format: String, Sendable, CaseIterable {
        case squid, json
    }

    public let path: String
    public let format: Format
    private let sink: LogSink

    /// `path` `-` is standard output. `capacity`: bytes of records held while the destination
    /// does not keep up.
    public init(path: String, format: Format, capacity: Int = LogSink.defaultCapacity) throws {
        self.path = path
        self.format = format
        let logger = Logger(label: "portcullis")
        let name = path == "-" ? "stdout" : path
        self.sink = LogSink(
            fileDescriptor: try Self.open(path),
            ownsDescriptor: path != "-",
            capacity: capacity
        ) { dropped in
            logger.warning(
                "access log lines dropped: the access log's destination did not keep up",
                metadata: ["dropped_lines": "\(dropped)", "file": "\(name)"]
            )
            return nil
        }
    }

    private static func open(_ path: String) throws -> CInt {
        if path == "-" { return STDOUT_FILENO }
        // O_APPEND: lines land at the end even after logrotate's copytruncate.
        let descriptor = Foundation.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        guard descriptor >= 0 else {
            throw AccessLogError(
                message: "cannot open access log \(path) for writing: \(String(cString: strerror(errno)))"
            )
        }
        return descriptor
    }

    /// Hands the record over; the sink's writer thread formats and writes it.
    public func write(_ record: AccessRecord) {
        self.sink.write(estimate: record.heldBytes) {
            (self.format == .squid ? record.squidLine : record.jsonLine) + "\n"
        }
    }

    /// Opens the path again (after logrotate moved the old file away); lines handed over from
    /// now on go to the new file, the old one is closed once the writer is done with it.
    public func reopen() throws {
        guard self.path != "-" else { return }
        self.sink.switchDestination(to: try Self.open(self.path))
    }

    /// Waits until every line handed over so far is written, or `timeout` passes.
    @discardableResult
    public func flush(timeout: TimeAmount = .seconds(2)) -> Bool {
        self.sink.flush(timeout: timeout)
    }

    /// Lines dropped because the destination did not keep up are counted in `counter`.
    public func countDrops(in counter: Counter) {
        self.sink.countDrops(in: counter)
    }

    /// Lines dropped so far.
    public var droppedLines: Int { self.sink.droppedLines }
}

public struct AccessLogError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var description: String { self.message }
}
