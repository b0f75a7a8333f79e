/// A JavaScript value crossing between a PAC script and the helpers written in Swift.
public enum PACValue: Equatable, Sendable {
    case undefined
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    /// An object, function or anything else, by its `String()` conversion.
    case other(String)

    /// The value as JavaScript source would write it: how `pac explain` shows a call.
    public var literal: String {
        switch self {
        case .undefined: return "undefined"
        case .null: return "null"
        case .bool(let value): return value ? "true" : "false"
        case .number(let value): return Self.format(value)
        case .string(let value): return Self.quote(value)
        case .other(let value): return Self.quote(value)
        }
    }

    /// ECMAScript ToString for the values helpers take (what `String(x)` gives).
    public var string: String {
        switch self {
        case .undefined: return "undefined"
        case .null: return "null"
        case .bool(let value): return value ? "true" : "false"
        case .number(let value): return Self.format(value)
        case .string(let value), .other(let value): return value
        }
    }

    /// ECMAScript ToNumber for strings and the other primitives (`parseInt` is not this).
    public var number: Double {
        switch self {
        case .undefined: return .nan
        case .null: return 0
        case .bool(let value): return value ? 1 : 0
        case .number(let value): return value
        case .string(let value), .other(let value):
            let trimmed = value.trimmingJavaScriptWhitespace()
            if trimmed.isEmpty { return 0 }
            return Double(trimmed) ?? .nan
        }
    }

    static func format(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value < 0 ? "-Infinity" : "Infinity" }
        if value == value.rounded(), abs(value) < 1e21 { return String(Int64(value)) }
        return "\(value)"
    }

    static func quote(_ value: String) -> String {
        var out = "\""
        for scalar in value.unicodeScalars.prefix(200) {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    out += "\\u" + String(scalar.value, radix: 16).leftPadded(to: 4)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        if value.unicodeScalars.count > 200 { out += "…" }
        return out + "\""
    }
}

extension String {
    func leftPadded(to width: Int) -> String {
        self.count >= width ? self : String(repeating: "0", count: width - self.count) + self
    }

    /// Trims what ECMAScript's `StrWhiteSpaceChar` trims (the ASCII part and NBSP, enough here).
    func trimmingJavaScriptWhitespace() -> Substring {
        let isSpace: (Character) -> Bool = { " \t\n\r\u{0B}\u{0C}\u{A0}\u{FEFF}".contains($0) }
        guard let first = self.firstIndex(where: { !isSpace($0) }) else { return "" }
        let last = self.lastIndex(where: { !isSpace($0) })!
        return self[first...last]
    }
}
