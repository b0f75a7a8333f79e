/// Why a PAC file could not answer.
public enum PACError: Error, Equatable, Codable, Sendable, CustomStringConvertible {
    /// The file does not compile. Line and column are 1-based.
    case syntax(message: String, line: Int, column: Int?)
    /// The script threw, while loading or in `FindProxyForURL`.
    case exception(message: String, line: Int?)
    /// No function `FindProxyForURL` (or `FindProxyForURLEx`) after loading.
    case noFindProxyForURL
    /// `FindProxyForURL` returned something else than a string.
    case notAString(type: String)
    /// The evaluation used more CPU time than allowed.
    case timeLimit(seconds: Double)
    /// The evaluation asked for more memory than allowed.
    case memoryLimit(bytes: Int)
    /// The file is larger than a PAC file may be.
    case tooLarge(limit: Int)
    /// The file could not be read or fetched.
    case unreadable(String)
    /// The isolated evaluator failed for another reason (it crashed, or could not start).
    case engine(String)

    public var description: String {
        switch self {
        case .syntax(let message, let line, let column):
            return "syntax error at line \(line)\(column.map { ", column \($0)" } ?? ""): \(message)"
        case .exception(let message, let line):
            return "the script threw \(message)\(line.map { " (line \($0))" } ?? "")"
        case .noFindProxyForURL:
            return "the file defines no function FindProxyForURL(url, host)"
        case .notAString(let type):
            return "FindProxyForURL returned \(type), not a string"
        case .timeLimit(let seconds):
            return "the script ran longer than its CPU-time limit (\(PACValue.format(seconds)) s): an endless loop?"
        case .memoryLimit(let bytes):
            return "the script used more memory than its limit (\(bytes / (1024 * 1024)) MiB)"
        case .tooLarge(let limit):
            return "the file is larger than the \(limit) bytes a PAC file may have"
        case .unreadable(let why):
            return why
        case .engine(let why):
            return "the PAC evaluator failed: \(why)"
        }
    }

    /// A short stable token for JSON output and logs.
    public var kind: String {
        switch self {
        case .syntax: return "syntax-error"
        case .exception: return "exception"
        case .noFindProxyForURL: return "no-FindProxyForURL"
        case .notAString: return "not-a-string"
        case .timeLimit: return "time-limit"
        case .memoryLimit: return "memory-limit"
        case .tooLarge: return "too-large"
        case .unreadable: return "unreadable"
        case .engine: return "engine"
        }
    }
}

/// One helper call a PAC made, as `pac explain` prints it.
public struct PACCall: Codable, Equatable, Sendable, CustomStringConvertible {
    public var helper: String
    public var arguments: [String]
    public var answer: String

    public var description: String { "\(self.helper)(\(self.arguments.joined(separator: ", "))) → \(self.answer)" }
}

/// What one `FindProxyForURL` call gave, and how.
public struct PACEvaluation: Codable, Equatable, Sendable {
    /// The string `FindProxyForURL` returned, as it returned it.
    public var result: String
    /// Helper calls in order (only when traced), at most `PACScript.maximumTracedCalls`.
    public var calls: [PACCall]
    /// Calls past the traced maximum.
    public var untracedCalls: Int
    /// `alert()` messages.
    public var alerts: [String]
}
