import Crypto

/// A short-lived credential minted for one user (`portcullis tokens issue`): sent as the Basic
/// password (`NAME:TOKEN`, so every client that does Basic can use it) or as
/// `Proxy-Authorization: Bearer TOKEN`.
///
/// `pct_` then base64url of: a version byte, a 12-byte random id, the expiry (seconds since
/// 1970, 8 bytes big-endian), the user name in UTF-8, and an HMAC-SHA256 over all of that under
/// the store's token key. Verifying needs the key and nothing else: every proxy sharing a store
/// accepts a token another one issued, without asking the database. The id names the token for
/// `tokens list` and revocation; the user and expiry are readable by whoever holds the token,
/// which is the user it was issued to.
public struct AccessToken: Sendable, Hashable {
    public static let prefix = "pct_"
    static let version: UInt8 = 1
    static let idLength = 12
    static let macLength = 32
    /// User names longer than this do not fit a token (a header stays short).
    public static let maximumUserBytes = 256

    public var id: [UInt8]
    public var user: String
    /// Seconds since 1970.
    public var expires: UInt64

    public init(id: [UInt8], user: String, expires: UInt64) {
        self.id = id
        self.user = user
        self.expires = expires
    }

    /// A new token with a random id.
    public static func random(user: String, expires: UInt64) -> AccessToken {
        var generator = SystemRandomNumberGenerator()
        return AccessToken(
            id: (0..<Self.idLength).map { _ in UInt8.random(in: 0...255, using: &generator) },
            user: user,
            expires: expires
        )
    }

    /// The id as `tokens list` shows it: 24 hex digits.
    public var idText: String { self.id.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }

    private var payload: [UInt8] {
        var bytes: [UInt8] = [Self.version]
        bytes += self.id
        bytes += (0..<8).map { UInt8(truncatingIfNeeded: self.expires >> (8 * (7 - UInt64($0)))) }
        bytes += Array(self.user.utf8)
        return bytes
    }

    /// The token as the client sends it.
    public func encoded(key: [UInt8]) -> String {
        let payload = self.payload
        let mac = HMAC<SHA256>.authenticationCode(for: payload, using: SymmetricKey(data: key))
        return Self.prefix + Base64URL.encode(payload + Array(mac))
    }

    /// The token's fields if `text` is one, without checking its MAC (the Bearer scheme reads the
    /// user this way; the store checks the rest).
    public static func peek(_ text: some StringProtocol) -> AccessToken? {
        guard text.hasPrefix(Self.prefix), text.utf8.count <= 1024,
            let bytes = Base64URL.decode(String(text.dropFirst(Self.prefix.count))),
            bytes.count > 1 + Self.idLength + 8 + Self.macLength, bytes[0] == Self.version
        else { return nil }
        let userBytes = bytes[(1 + Self.idLength + 8)..<(bytes.count - Self.macLength)]
        guard userBytes.count <= Self.maximumUserBytes, let user = String(validating: userBytes, as: UTF8.self) else {
            return nil
        }
        var expires: UInt64 = 0
        for byte in bytes[(1 + Self.idLength)..<(1 + Self.idLength + 8)] { expires = expires << 8 | UInt64(byte) }
        return AccessToken(id: Array(bytes[1..<(1 + Self.idLength)]), user: user, expires: expires)
    }

    /// The token `text` carries if its MAC is right under `key` (compared in constant time).
    public static func verified(_ text: some StringProtocol, key: [UInt8]) -> AccessToken? {
        guard let token = Self.peek(text), let bytes = Base64URL.decode(String(text.dropFirst(Self.prefix.count)))
        else { return nil }
        let payload = Array(bytes[..<(bytes.count - Self.macLength)])
        let mac = HMAC<SHA256>.authenticationCode(for: payload, using: SymmetricKey(data: key))
        guard ConstantTime.equal(Array(mac), Array(bytes[(bytes.count - Self.macLength)...])) else { return nil }
        return token
    }
}
