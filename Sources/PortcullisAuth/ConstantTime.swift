/// Comparison whose time depends only on the lengths, not on where the inputs differ: for
/// password hashes, HA1 values and Digest answers. Concrete types on purpose: a generic version
/// over `Collection` was a fifth of a Digest request's CPU time (unspecialised `zip` iteration
/// across modules).
public enum ConstantTime {
    public static func equal(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        a.withUnsafeBufferPointer { x in b.withUnsafeBufferPointer { y in Self.equal(x, y) } }
    }

    /// The UTF-8 bytes of two strings (hex digests), without copying them into arrays.
    public static func equal(_ a: String, _ b: String) -> Bool {
        var a = a
        var b = b
        return a.withUTF8 { x in b.withUTF8 { y in Self.equal(x, y) } }
    }

    public static func equal(_ a: UnsafeBufferPointer<UInt8>, _ b: UnsafeBufferPointer<UInt8>) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for i in 0..<a.count { difference |= a[i] ^ b[i] }
        return difference == 0
    }
}
