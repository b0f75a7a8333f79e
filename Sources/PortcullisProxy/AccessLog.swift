import Foundation
import NIOConcurrencyHelpers

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
        let hierarchy = self.upstream.map { "HIER_DIRECT/\($0)" } ?? "HIER_NONE/-"
        let duration =
            String(repeating: " ", count: max(0, 6 - String(self.durationMs).count)) + String(self.durationMs)
        return
            "\(whole).\(String(format: "%03d", millis)) \(duration) \(self.client) \(code)/\(String(format: "%03d", self.status)) \(self.bytesToClient) \(self.method) \(Self.safe(self.target)) \(Self.safe(self.user ?? "-")) \(hierarchy) \(Self.safe(self.contentType ?? "-"))"
    }

    /// One JSON object per line.
    public var jsonLine: String { self.jsonLine(dates: Self.makeISO8601Formatter()) }

    func jsonLine(dates: ISO8601DateFormatter) -> String {
        var fields: [(String, String)] = []
        func string(_ key: String, _ value: String?) {
            fields.append((key, value.map(Self.jsonString) ?? "null"))
        }
        string("time", dates.string(from: self.start))
        fields.append(("duration_ms", "\(self.durationMs)"))
        string("client", self.client)
        string("user", self.user)
        string("auth_scheme", self.authScheme)
        string("auth_result", self.authResult)
        string("method", self.method)
        string("target", self.target)
        fields.append(("status", "\(self.status)"))
        fields.append(("bytes_from_client", "\(self.bytesFromClient)"))
        fields.append(("bytes_to_client", "\(self.bytesToClient)"))
        string("upstream", self.upstream)
        string("proxy_status", self.proxyStatus)
        fields.append(("tunnel", self.isTunnel ? "true" : "false"))
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

    static func makeISO8601Formatter() -> ISO8601DateFormatter {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter
    }
}

/// Writes access-log lines off the event loops (a serial queue owns the file), and reopens the
/// file on request (logrotate: SIGHUP / SIGUSR1).
public final class AccessLog: Sendable {
    public enum Format: String, Sendable, CaseIterable {
        case squid, json
    }

    public let path: String
    public let format: Format
    private let queue = DispatchQueue(label: "portcullis.access-log")
    private let handle: NIOLockedValueBox<FileHandle?>
    /// Used on ``queue`` only (formatters are not safe to share across threads).
    private nonisolated(unsafe) let dates = AccessRecord.makeISO8601Formatter()

    /// `path` `-` is standard output.
    public init(path: String, format: Format) throws {
        self.path = path
        self.format = format
        self.handle = NIOLockedValueBox(try Self.open(path))
    }

    private static func open(_ path: String) throws -> FileHandle {
        if path == "-" { return FileHandle.standardOutput }
        if !FileManager.default.fileExists(atPath: path) {
            guard FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o640])
            else {
                throw AccessLogError(message: "cannot create access log \(path)")
            }
        }
        guard let handle = FileHandle(forWritingAtPath: path) else {
            throw AccessLogError(message: "cannot open access log \(path) for writing")
        }
        handle.seekToEndOfFile()
        return handle
    }

    /// Formats and writes on the log's own queue: the event loop only hands the record over.
    public func write(_ record: AccessRecord) {
        self.queue.async {
            let line = (self.format == .squid ? record.squidLine : record.jsonLine(dates: self.dates)) + "\n"
            self.handle.withLockedValue { $0?.write(Data(line.utf8)) }
        }
    }

    /// Closes and opens the path again (after logrotate moved the old file away).
    public func reopen() throws {
        guard self.path != "-" else { return }
        let fresh = try Self.open(self.path)
        self.queue.sync {
            self.handle.withLockedValue { old in
                try? old?.close()
                old = fresh
            }
        }
    }

    /// Waits until every line written so far is in the file.
    public func flush() {
        self.queue.sync {
            self.handle.withLockedValue { try? $0?.synchronize() }
        }
    }
}

public struct AccessLogError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var description: String { self.message }
}
