/// One `Proxy-Authorization` field value split per RFC 9110 §11.4:
/// `credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ]`.
public struct Credentials: Sendable, Hashable {
    /// The scheme as sent; compare with ``schemeIs(_:)``, which is case-insensitive.
    public var scheme: Substring
    /// Everything after the spaces that follow the scheme, with trailing whitespace removed.
    public var parameters: Substring

    /// Parses a field value; `nil` when it does not start with a valid token.
    public init?(fieldValue: String) {
        let value = fieldValue.trimmingOWS()
        let schemeEnd = value.firstIndex(where: { !HTTPGrammar.isTokenCharacter($0) }) ?? value.endIndex
        guard schemeEnd > value.startIndex else { return nil }
        let scheme = value[value.startIndex..<schemeEnd]
        var rest = value[schemeEnd...]
        if !rest.isEmpty {
            // The scheme must be separated from what follows by at least one SP.
            guard rest.first == " " else { return nil }
            rest = rest.drop(while: { $0 == " " })
        }
        self.scheme = scheme
        self.parameters = rest
    }

    /// Case-insensitive scheme comparison (RFC 9110 §11.1).
    public func schemeIs(_ name: String) -> Bool {
        self.scheme.utf8.count == name.utf8.count
            && zip(self.scheme.utf8, name.utf8).allSatisfy { HTTPGrammar.asciiLower($0) == HTTPGrammar.asciiLower($1) }
    }
}

/// Character classes of RFC 9110 §5.6 used by the auth grammar.
public enum HTTPGrammar {
    /// tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
    public static func isTokenCharacter(_ c: Character) -> Bool {
        guard let a = c.asciiValue else { return false }
        return isTokenByte(a)
    }

    /// A bit per ASCII byte, in two words: inlinable, because the request framer (another
    /// module) calls it for every byte of every field name.
    @inlinable
    public static func isTokenByte(_ a: UInt8) -> Bool {
        // Bits set for tchar: see the list above (computed from it; a unit test checks them).
        let low: UInt64 = 0x03FF_6CFA_0000_0000
        let high: UInt64 = 0x57FF_FFFF_C7FF_FFFE
        if a < 64 { return (low >> UInt64(a)) & 1 == 1 }
        if a < 128 { return (high >> UInt64(a - 64)) & 1 == 1 }
        return false
    }

    /// HEXDIG (RFC 5234), as in chunk sizes and IPv6 literals.
    public static func isHexDigit(_ c: UInt8) -> Bool {
        (c >= 48 && c <= 57) || (c >= 97 && c <= 102) || (c >= 65 && c <= 70)
    }

    /// The value of a hex digit, else `nil`.
    @inline(__always)
    static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    /// token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    public static func isToken68(_ s: Substring) -> Bool {
        var sawPadding = false
        var count = 0
        for a in s.utf8 {
            if a == UInt8(ascii: "=") {
                sawPadding = true
                continue
            }
            if sawPadding { return false }
            switch a {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
                UInt8(ascii: "~"), UInt8(ascii: "+"), UInt8(ascii: "/"):
                count += 1
            default:
                return false
            }
        }
        return count > 0
    }

    @inline(__always)
    static func asciiLower(_ a: UInt8) -> UInt8 {
        (a >= UInt8(ascii: "A") && a <= UInt8(ascii: "Z")) ? a | 0x20 : a
    }
}

extension Substring {
    /// Removes optional whitespace (SP / HTAB) at both ends, as field values allow.
    func trimmingOWS() -> Substring {
        let isOWS: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let start = self.firstIndex(where: { !isOWS($0) }), let end = self.lastIndex(where: { !isOWS($0) })
        else { return self[self.endIndex...] }
        return self[start...end]
    }
}

extension String {
    func trimmingOWS() -> Substring { self[...].trimmingOWS() }
}
