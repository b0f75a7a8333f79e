import ArgumentParser
import Foundation

/// The value of one setting, checked once for both places it comes from: a command-line argument
/// (`init(argument:)`) and a config file's value (`init(from:)`). Both refuse with the same
/// ``requirement``.
///
/// Declare such a setting with `@Option(name: .long, help: …) var name: Type?`: argument-parser
/// then reports a bad argument as "The value 'x' is invalid for '--name <v>': must be …".
public protocol SettingValue: Codable, Sendable, OptionValue {
    /// What a valid value is, as in "must be a whole number >= 1".
    static var requirement: String { get }
    /// Reads a command-line argument; throws ``SettingValueError`` when it is not valid.
    init(argument: String) throws
}

/// A value a setting refused.
public struct SettingValueError: Error, CustomStringConvertible, Sendable {
    /// What a valid value is (``SettingValue/requirement``).
    public var requirement: String
    public init(requirement: String) { self.requirement = requirement }
    public var description: String { "must be \(self.requirement)" }
}

extension SettingValue {
    static var refusal: SettingValueError { SettingValueError(requirement: Self.requirement) }

    /// Decodes a `Raw` and checks it with `make`; any failure is a `dataCorrupted` error that
    /// carries the requirement (the config loader turns it into "'key' must be …").
    static func decode<Raw: Decodable>(
        _ raw: Raw.Type,
        from decoder: any Decoder,
        _ make: (Raw) throws -> Self
    ) throws -> Self {
        let refused = DecodingError.dataCorrupted(
            .init(codingPath: decoder.codingPath, debugDescription: Self.requirement, underlyingError: Self.refusal)
        )
        guard let value = try? decoder.singleValueContainer().decode(Raw.self) else { throw refused }
        do {
            return try make(value)
        } catch {
            throw refused
        }
    }
}

extension Option {
    /// A setting of a ``SettingValue`` type, `nil` when not given. A bad argument is refused with
    /// the type's requirement.
    public init<T: SettingValue>(name: NameSpecification = .long, help: ArgumentHelp? = nil) where Value == T? {
        self.init(name: name, help: help, transform: { try T(argument: $0) })
    }
}

/// A number with a range: one check for the command line and the file alike.
public protocol CheckedNumber: SettingValue {
    associatedtype Number: Codable & LosslessStringConvertible & Sendable
    var value: Number { get }
    /// Throws ``SettingValue/refusal`` when `value` is out of range.
    init(_ value: Number) throws
}

extension CheckedNumber {
    public init(argument: String) throws {
        guard let value = Number(argument) else { throw Self.refusal }
        try self.init(value)
    }

    public init(from decoder: any Decoder) throws {
        self = try Self.decode(Number.self, from: decoder, Self.init)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(self.value)
    }
}

/// A number of seconds: more than 0 and less than a year (a larger one overflows `TimeAmount`'s
/// nanoseconds soon after).
public struct Seconds: CheckedNumber, Hashable {
    public let value: Double
    public static let requirement = "a number of seconds > 0 and under a year"

    public init(_ value: Double) throws {
        guard value > 0, value < 365 * 24 * 3600 else { throw Self.refusal }
        self.value = value
    }
}

/// A whole number of at least 1 (connections, addresses, failed logins).
public struct Count: CheckedNumber, Hashable {
    public let value: Int
    public static let requirement = "a whole number >= 1"

    public init(_ value: Int) throws {
        guard value >= 1 else { throw Self.refusal }
        self.value = value
    }
}

/// A number of bytes, 0 or more.
public struct ByteCount: CheckedNumber, Hashable {
    public let value: Int
    public static let requirement = "a number of bytes >= 0"

    public init(_ value: Int) throws {
        guard value >= 0 else { throw Self.refusal }
        self.value = value
    }
}

/// Requests per second: more than 0.
public struct RequestRate: CheckedNumber, Hashable {
    public let value: Double
    public static let requirement = "a number of requests per second > 0"

    public init(_ value: Double) throws {
        guard value > 0, value.isFinite else { throw Self.refusal }
        self.value = value
    }
}

/// A list: `a,b` on the command line; in a file a list or one comma-separated string. Items are
/// trimmed and empty ones dropped; what the items may be is checked where they are used.
public struct CommaList: SettingValue, Hashable {
    public let items: [String]
    public static let requirement = "a list of strings or one comma-separated string"

    public init(_ items: [String]) {
        self.items = items.map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    public init(argument: String) {
        self.init(argument.split(separator: ",").map(String.init))
    }

    public init(from decoder: any Decoder) throws {
        if let items = try? decoder.singleValueContainer().decode([String].self) {
            self.init(items)
        } else {
            self = try Self.decode(String.self, from: decoder, Self.init(argument:))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(self.items)
    }
}

/// TCP ports 1–65535, given as a ``CommaList``.
public struct PortList: SettingValue, Hashable {
    public let ports: [Int]
    public static let requirement = "a list of ports 1-65535"

    public init(_ list: CommaList) throws {
        self.ports = try list.items.map { text in
            guard let port = Int(text), (1...65535).contains(port) else { throw Self.refusal }
            return port
        }
    }

    public init(argument: String) throws {
        try self.init(CommaList(argument: argument))
    }

    public init(from decoder: any Decoder) throws {
        self = try Self.decode(CommaList.self, from: decoder, Self.init)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(self.ports)
    }
}

/// A length of time written with its unit — `90s`, `30m`, `24h`, `7d` — or plain seconds:
/// more than 0 and under a year.
public struct DurationText: SettingValue, Hashable {
    public let seconds: Double
    public static let requirement = "a duration like 90s, 30m, 24h or 7d (more than 0, under a year)"

    public init(argument: String) throws {
        guard let seconds = Self.parse(argument), seconds > 0, seconds < 365 * 24 * 3600 else { throw Self.refusal }
        self.seconds = seconds
    }

    public init(from decoder: any Decoder) throws {
        // A number in a file is seconds; a string is read as on the command line.
        if (try? decoder.singleValueContainer().decode(Double.self)) != nil {
            self = try Self.decode(Double.self, from: decoder) { try Self(argument: String($0)) }
        } else {
            self = try Self.decode(String.self, from: decoder, Self.init(argument:))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(self.seconds)
    }

    /// `90s`, `30m`, `24h`, `7d` or a number of seconds.
    public static func parse(_ text: String) -> Double? {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if let last = trimmed.last, let unit = units[last], let n = Double(trimmed.dropLast()), n.isFinite, n >= 0 {
            return n * unit
        }
        if let n = Double(trimmed), n.isFinite, n >= 0 { return n }
        return nil
    }
}
