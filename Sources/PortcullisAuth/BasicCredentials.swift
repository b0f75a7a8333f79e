import Foundation

/// A user name and password from a `Basic` credential (RFC 7617).
///
/// Deliberately not `CustomStringConvertible`: printing one must not leak the password.
public struct BasicCredentials: Sendable, Hashable {
    public var user: String
    public var password: String

    public init(user: String, password: String) {
        self.user = user
        self.password = password
    }

    /// Decodes the token68 of a `Basic` credential.
    ///
    /// Base64 is strict: padding required, no whitespace, and the encoding must be canonical
    /// (re-encoding gives the same text), so one secret has exactly one accepted spelling.
    /// The decoded octets are UTF-8 (we advertise `charset="UTF-8"`); octets that are not valid
    /// UTF-8 are read as ISO-8859-1, which is what clients that ignore the charset parameter
    /// send (Python `requests` encodes proxy credentials as Latin-1).
    public static func decode(token68: Substring) -> Result<BasicCredentials, AuthFailure> {
        guard HTTPGrammar.isToken68(token68), token68.utf8.count % 4 == 0,
            let data = Data(base64Encoded: String(token68)),
            data.base64EncodedString() == token68
        else {
            return .failure(
                AuthFailure(
                    reason: .malformedCredentials,
                    explanation:
                        "the Basic credentials are not valid base64 (RFC 7617 needs base64 of \"user:password\")",
                    presentedScheme: AuthScheme.basic.rawValue
                )
            )
        }
        let bytes = [UInt8](data)
        guard let colon = bytes.firstIndex(of: UInt8(ascii: ":")) else {
            return .failure(
                AuthFailure(
                    reason: .malformedCredentials,
                    explanation: "the decoded Basic credentials have no ':' between user name and password",
                    presentedScheme: AuthScheme.basic.rawValue
                )
            )
        }
        let user = Self.text(bytes[..<colon])
        let password = Self.text(bytes[(colon + 1)...])
        guard !user.isEmpty else {
            return .failure(
                AuthFailure(
                    reason: .malformedCredentials,
                    explanation: "the decoded Basic credentials have an empty user name",
                    presentedScheme: AuthScheme.basic.rawValue
                )
            )
        }
        // RFC 7617 §2: user-id and password must not contain control characters.
        if bytes.contains(where: { $0 < 0x20 || $0 == 0x7F }) {
            return .failure(
                AuthFailure(
                    reason: .malformedCredentials,
                    explanation: "the decoded Basic credentials contain control characters",
                    presentedScheme: AuthScheme.basic.rawValue
                )
            )
        }
        return .success(BasicCredentials(user: user, password: password))
    }

    private static func text(_ bytes: ArraySlice<UInt8>) -> String {
        if let utf8 = String(validating: bytes, as: UTF8.self) {
            return utf8
        }
        return String(bytes.map { Character(Unicode.Scalar($0)) })
    }
}
