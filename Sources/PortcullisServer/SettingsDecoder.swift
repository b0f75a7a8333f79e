import ArgumentParser
import Yams

/// Runs a settings type's synthesized `init(from:)` over one YAML node per property, so a
/// config file fills the very properties the command line does.
///
/// Needed because argument-parser's wrappers decode only from its own command-line decoder
/// (`Option.init(from:)` throws `invalidState` for any other): this decoder builds each
/// `@Option`/`@Flag` from its value, which Yams decodes.
struct SettingsDecoder: Decoder {
    /// Every property's value, keyed by property name.
    let values: [String: Node]

    var codingPath: [any CodingKey] { [] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        KeyedDecodingContainer(Container(values: self.values))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        throw DecodingError.typeMismatch([Any].self, .init(codingPath: [], debugDescription: "settings are a mapping"))
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        throw DecodingError.typeMismatch(Any.self, .init(codingPath: [], debugDescription: "settings are a mapping"))
    }

    /// A property's value that did not decode.
    struct PropertyError: Error {
        var property: String
        var error: DecodingError
    }

    private struct Container<Key: CodingKey>: KeyedDecodingContainerProtocol {
        let values: [String: Node]

        var codingPath: [any CodingKey] { [] }
        var allKeys: [Key] { self.values.keys.compactMap(Key.init(stringValue:)) }

        func contains(_ key: Key) -> Bool { self.values[key.stringValue] != nil }

        func decodeNil(forKey key: Key) throws -> Bool { try self.node(key).null != nil }

        func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
            let node = try self.node(key)
            do {
                if let wrapper = T.self as? any YAMLDecodedWrapper.Type {
                    guard let value = try wrapper.decoded(from: node) as? T else {
                        throw DecodingError.typeMismatch(T.self, .init(codingPath: [], debugDescription: "\(T.self)"))
                    }
                    return value
                }
                return try YAMLDecoder().decode(T.self, from: node)
            } catch let error as DecodingError {
                throw PropertyError(property: key.stringValue, error: error)
            }
        }

        private func node(_ key: Key) throws -> Node {
            guard let node = self.values[key.stringValue] else {
                throw PropertyError(
                    property: key.stringValue,
                    error: .keyNotFound(key, .init(codingPath: [], debugDescription: "no value"))
                )
            }
            return node
        }

        func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try self.decode(type, key) }
        func decode(_ type: String.Type, forKey key: Key) throws -> String { try self.decode(type, key) }
        func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try self.decode(type, key) }
        func decode(_ type: Float.Type, forKey key: Key) throws -> Float { try self.decode(type, key) }
        func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try self.decode(type, key) }
        func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try self.decode(type, key) }
        func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try self.decode(type, key) }
        func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try self.decode(type, key) }
        func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try self.decode(type, key) }
        func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try self.decode(type, key) }
        func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try self.decode(type, key) }
        func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try self.decode(type, key) }
        func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try self.decode(type, key) }
        func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try self.decode(type, key) }

        /// The primitive overloads, through the generic one.
        private func decode<T: Decodable>(_ type: T.Type, _ key: Key) throws -> T {
            try self.decode(type, forKey: key)
        }

        func nestedContainer<NestedKey: CodingKey>(
            keyedBy type: NestedKey.Type,
            forKey key: Key
        ) throws -> KeyedDecodingContainer<NestedKey> {
            throw self.notFlat(key)
        }

        func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
            throw self.notFlat(key)
        }

        func superDecoder() throws -> any Decoder {
            throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "settings are flat"))
        }

        func superDecoder(forKey key: Key) throws -> any Decoder {
            throw self.notFlat(key)
        }

        private func notFlat(_ key: Key) -> PropertyError {
            PropertyError(
                property: key.stringValue,
                error: .dataCorrupted(.init(codingPath: [], debugDescription: "settings are flat"))
            )
        }
    }
}

/// An argument-parser property wrapper that can be made from its value in a YAML node.
protocol YAMLDecodedWrapper {
    static func decoded(from node: Node) throws -> Self
}

/// A value type an `@Option` setting may have. Its metatype is Sendable, which the option's
/// transform closure needs (a bare generic `Value` would not be).
public protocol OptionValue: Decodable, SendableMetatype {}
extension String: OptionValue {}
extension Array: OptionValue where Element: OptionValue {}
extension Optional: OptionValue where Wrapped: OptionValue {}

extension Option: YAMLDecodedWrapper where Value: OptionValue {
    static func decoded(from node: Node) throws -> Self {
        // Any initializer gives a wrapper; setting the value makes it a parsed one.
        var option = Self(transform: { _ in throw SettingValueError(requirement: "a value from the config file") })
        option.wrappedValue = try YAMLDecoder().decode(Value.self, from: node)
        return option
    }
}

// Only the optional flag: a plain `Bool` flag could not tell "not given" from `false`.
extension Flag: YAMLDecodedWrapper where Value == Bool? {
    static func decoded(from node: Node) throws -> Self {
        var flag = Self(inversion: .prefixedNo)
        flag.wrappedValue = try YAMLDecoder().decode(Bool?.self, from: node)
        return flag
    }
}
