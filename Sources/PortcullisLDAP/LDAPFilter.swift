import Foundation

/// Values put into LDAP search filters and DNs. Hand-written because they are the proxy's own
/// defence: a user name is client input, and an unescaped `*` or `)(` in a filter widens the
/// search (an authentication bypass in more than one proxy's LDAP module).
public enum LDAPEscaping {
    /// A value for an assertion in a search filter (RFC 4515 §3): `*`, `(`, `)`, `\` and NUL as
    /// `\2a`, `\28`, `\29`, `\5c`, `\00`; every other byte below 0x20 and 0x7F escaped too (legal,
    /// but invisible in logs). UTF-8 passes as is.
    public static func filterValue(_ value: String) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(value.utf8.count)
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "*"), UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "\\"), 0x00...0x1F, 0x7F:
                out += Self.escaped(byte)
            default:
                out.append(byte)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// `template` with every `%s` replaced by the escaped `user` (`(&(objectClass=person)(uid=%s))`).
    public static func filter(_ template: String, user: String) -> String {
        template.replacingOccurrences(of: "%s", with: Self.filterValue(user))
    }

    /// An attribute value for a DN (RFC 4514 §2.4): `,` `+` `"` `\` `<` `>` `;` `=` escaped with a
    /// backslash, a leading `#` or space and a trailing space too, NUL as `\00`.
    public static func dnValue(_ value: String) -> String {
        let bytes = Array(value.utf8)
        var out: [UInt8] = []
        for (index, byte) in bytes.enumerated() {
            switch byte {
            case UInt8(ascii: ","), UInt8(ascii: "+"), UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "<"),
                UInt8(ascii: ">"), UInt8(ascii: ";"), UInt8(ascii: "="):
                out += [UInt8(ascii: "\\"), byte]
            case 0:
                out += Self.escaped(0)
            case UInt8(ascii: "#") where index == 0, UInt8(ascii: " ") where index == 0 || index == bytes.count - 1:
                out += [UInt8(ascii: "\\"), byte]
            default:
                out.append(byte)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func escaped(_ byte: UInt8) -> [UInt8] {
        let digits = Array("0123456789abcdef".utf8)
        return [UInt8(ascii: "\\"), digits[Int(byte >> 4)], digits[Int(byte & 0x0F)]]
    }
}
