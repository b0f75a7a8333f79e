/// 32 bytes that nobody without a process secret can predict — a MAC, or a nonce carrying one —
/// used as a dictionary key: compared as four words and hashed from two of them, which is
/// enough for bytes that are uniformly random to an attacker. (`SIMD32<UInt8>`'s `Hashable` feeds
/// the hasher one byte at a time: 32 calls on every cached request.)
public struct Key256: Hashable, Sendable {
    private var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)

    /// The first 32 bytes of `bytes` (which must have them).
    public init(_ bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count >= 32)
        withUnsafeMutableBytes(of: &self.words) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[0..<32])) }
    }

    /// The 32 bytes that 43 characters of base64url encode, else `nil`.
    init?(base64URL text: UnsafeBufferPointer<UInt8>) {
        guard text.count == 43 else { return nil }
        let count = withUnsafeMutableBytes(of: &self.words) { Base64URL.decode(text, into: $0) }
        guard count == 32 else { return nil }
    }

    public static func == (a: Key256, b: Key256) -> Bool {
        a.words.0 == b.words.0 && a.words.1 == b.words.1 && a.words.2 == b.words.2 && a.words.3 == b.words.3
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(self.words.1)
        hasher.combine(self.words.2)
    }

    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        withUnsafeBytes(of: self.words) { body($0) }
    }
}
