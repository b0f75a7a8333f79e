import ArgumentParser
import Foundation
import Yams

/// Settings declared once, as argument-parser properties, and read from that one declaration on
/// the command line (`parse(_:)`), from a YAML file (``parse(yaml:source:)``, keys are the long
/// option names), layered (``layered(over:)``) and compared on reload (``changedKeys(_:_:)``).
///
/// Every property is an `@Option` or `@Flag` with `name: .long` whose value shows when it was not
/// given: an `Optional` (a `Bool?` flag with `inversion: .prefixedNo`) or a list that is empty.
/// Values are compared and merged in their encoded form, so a value type needs only `Codable`.
public protocol DeclaredSettings: ParsableArguments, Codable, Sendable {
    /// The settings (as config keys) a reloaded file may change while the server runs; the
    /// others need a restart.
    static var reloadableKeys: Set<String> { get }
}

// The encoded form is the wrapped value; a wrapper that was never parsed has none (reading it
// traps), so encode only values from `parse`, `parse(yaml:)` or `layered(over:)`.
extension Option: @retroactive Encodable where Value: Encodable {
    public func encode(to encoder: any Encoder) throws {
        try self.wrappedValue.encode(to: encoder)
    }
}

extension Flag: @retroactive Encodable where Value: Encodable {
    public func encode(to encoder: any Encoder) throws {
        try self.wrappedValue.encode(to: encoder)
    }
}

extension DeclaredSettings {
    /// Nothing given: what an empty command line yields.
    public static func unset() throws -> Self {
        try Self.parse([])
    }

    /// Every setting's config key (the long option name), sorted.
    public static func settingKeys() throws -> [String] {
        try Self.encoded(Self.unset()).keys.map(Self.settingKey).sorted()
    }

    /// `credentialCacheTTL` → `credential-cache-ttl`: how argument-parser spells a property as a
    /// long option name (words split before a capital, and before the last capital of a run of
    /// them when a lower-case letter follows: `myURLThing` → `my-url-thing`).
    static func settingKey(_ property: String) -> String {
        let characters = Array(property)
        var key = ""
        var splitOnCapital = true
        for (index, character) in characters.enumerated() {
            if character.isUppercase {
                if splitOnCapital, !key.isEmpty { key += "-" }
                splitOnCapital =
                    index + 2 < characters.count && characters[index + 1].isUppercase
                    && characters[index + 2].isLowercase
            } else {
                splitOnCapital = character != "-"
            }
            key += character.lowercased()
        }
        return key
    }

    /// Reads a YAML config file. Unknown keys are an error: a typo must not silently fall back
    /// to a default (for example an open proxy).
    public static func load(yamlFile path: String) throws -> Self {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ServeError("cannot read config file \(path): \((error as NSError).localizedDescription)")
        }
        return try Self.parse(yaml: text, source: path)
    }

    /// Reads YAML text whose keys are the long option names; `source` names it in messages.
    /// A list setting also takes one comma-separated string.
    public static func parse(yaml text: String, source: String = "config") throws -> Self {
        let document: Node?
        do {
            document = try Yams.compose(yaml: text)
        } catch {
            throw ServeError("\(source) is not valid YAML: \(error)")
        }
        var settings = try Self.encoded(Self.unset())
        guard let document else { return try Self.decoded(settings, source: source) }
        guard let mapping = document.mapping else {
            throw ServeError("\(source): expected a mapping of setting: value")
        }
        let properties = Dictionary(settings.keys.map { (Self.settingKey($0), $0) }, uniquingKeysWith: { a, _ in a })
        for (keyNode, value) in mapping {
            guard let key = keyNode.string else { throw ServeError("\(source): keys must be strings") }
            guard let property = properties[key] else {
                throw ServeError(
                    "\(source): unknown setting '\(key)' (known: \(properties.keys.sorted().joined(separator: ", ")))"
                )
            }
            if settings[property]?.sequence != nil, let text = value.scalar, value.null == nil {
                let items = text.string.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
                settings[property] = Node(items.map { Node($0) })
            } else {
                settings[property] = value
            }
        }
        return try Self.decoded(settings, source: source)
    }

    /// `self` where given, else `other`: flags over the file.
    public func layered(over other: Self) throws -> Self {
        let unset = try Self.encoded(Self.unset())
        var merged = try Self.encoded(other)
        for (property, value) in try Self.encoded(self) where value != unset[property] {
            merged[property] = value
        }
        return try Self.decoded(merged, source: "settings")
    }

    /// The settings (as config keys, sorted) whose values differ between `a` and `b`.
    public static func changedKeys(_ a: Self, _ b: Self) throws -> [String] {
        let (x, y) = (try Self.encoded(a), try Self.encoded(b))
        return x.keys.filter { x[$0] != y[$0] }.map(Self.settingKey).sorted()
    }

    /// What a reloaded file does: `applied` are the reloadable settings that differ from those in
    /// force; `needsRestart` the others that differ from those the server started with (they
    /// stay named until the file matches the start again).
    public static func reload(startup: Self, inForce: Self, fresh: Self) throws -> SettingsReload {
        SettingsReload(
            applied: try Self.changedKeys(inForce, fresh).filter(Self.reloadableKeys.contains),
            needsRestart: try Self.changedKeys(startup, fresh).filter { !Self.reloadableKeys.contains($0) }
        )
    }

    /// Each setting's encoded value, keyed by its property name.
    static func encoded(_ settings: Self) throws -> [String: Node] {
        guard let mapping = try Yams.compose(yaml: YAMLEncoder().encode(settings))?.mapping else {
            throw ServeError("settings did not encode as a mapping")
        }
        var values: [String: Node] = [:]
        for (key, value) in mapping {
            guard let property = key.string else { continue }
            values[property] = value
        }
        return values
    }

    /// `settings` (every property present) decoded, failures as "<source>: 'key' must be …".
    static func decoded(_ settings: [String: Node], source: String) throws -> Self {
        do {
            return try Self(from: SettingsDecoder(values: settings))
        } catch let failure as SettingsDecoder.PropertyError {
            throw ServeError(
                "\(source): '\(Self.settingKey(failure.property))' must be \(Self.requirement(failure.error))"
            )
        }
    }

    private static func requirement(_ error: DecodingError) -> String {
        switch error {
        case .dataCorrupted(let context):
            return (context.underlyingError as? SettingValueError)?.requirement ?? context.debugDescription
        case .typeMismatch(let type, _), .valueNotFound(let type, _):
            return Self.requirement(of: type)
        case .keyNotFound:
            return "given"
        @unknown default:
            return "valid (\(error))"
        }
    }

    /// What the decoder wanted, for a value of a standard type (``SettingValue`` types say it
    /// themselves).
    private static func requirement(of type: Any.Type) -> String {
        switch type {
        case is Bool.Type: return "true or false"
        case is String.Type: return "a string"
        case is Node.Scalar.Type: return "a single value, not a list or mapping"
        case is Node.Sequence.Type: return "a list"
        case is Node.Mapping.Type: return "a mapping"
        default: return "a value of type \(type)"
        }
    }
}

/// What a reloaded config file changes (config keys, sorted).
public struct SettingsReload: Equatable, Sendable {
    /// Reloadable settings that now differ from those in force: applied to new connections.
    public var applied: [String]
    /// Other settings that differ from those the server started with: they wait for a restart.
    public var needsRestart: [String]
}
