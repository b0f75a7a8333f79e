import Crypto

/// Apache's `$apr1$` password hash: MD5-crypt (Poul-Henning Kamp's algorithm) with the magic
/// string `$apr1$` mixed in, which is why libxcrypt's `$1$` cannot verify it.
enum APR1 {
    private static let magic = Array("$apr1$".utf8)
    private static let itoa64 = Array("./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz".utf8)

    /// Splits `$apr1$salt$hash` into its salt (at most 8 characters) and hash.
    static func split(_ encoded: String) -> (salt: [UInt8], hash: Substring)? {
        let rest = encoded.dropFirst(magic.count)
        guard let dollar = rest.firstIndex(of: "$") else { return nil }
        let salt = Array(rest[..<dollar].utf8)
        let hash = rest[rest.index(after: dollar)...]
        guard salt.count <= 8, hash.utf8.count == 22 else { return nil }
        return (salt, hash)
    }

    /// The full `$apr1$salt$hash` string for `password` with the salt of `encoded`.
    static func hash(password: [UInt8], encoded: String) -> String? {
        guard let (salt, _) = split(encoded) else { return nil }
        return "$apr1$" + String(decoding: salt, as: UTF8.self) + "$" + digest(password: password, salt: salt)
    }

    static func digest(password pw: [UInt8], salt: [UInt8]) -> String {
        var alternate = Insecure.MD5()
        alternate.update(data: pw)
        alternate.update(data: salt)
        alternate.update(data: pw)
        let alt = Array(alternate.finalize())

        var context = Insecure.MD5()
        context.update(data: pw)
        context.update(data: magic)
        context.update(data: salt)
        var remaining = pw.count
        while remaining > 0 {
            context.update(data: alt[0..<min(16, remaining)])
            remaining -= 16
        }
        var i = pw.count
        while i != 0 {
            if i & 1 != 0 {
                context.update(data: [0])
            } else {
                context.update(data: pw.prefix(1))
            }
            i >>= 1
        }
        var final = Array(context.finalize())

        for round in 0..<1000 {
            var step = Insecure.MD5()
            if round & 1 != 0 { step.update(data: pw) } else { step.update(data: final) }
            if round % 3 != 0 { step.update(data: salt) }
            if round % 7 != 0 { step.update(data: pw) }
            if round & 1 != 0 { step.update(data: final) } else { step.update(data: pw) }
            final = Array(step.finalize())
        }

        var out: [UInt8] = []
        out.reserveCapacity(22)
        func to64(_ value: UInt32, _ count: Int) {
            var v = value
            for _ in 0..<count {
                out.append(itoa64[Int(v & 0x3f)])
                v >>= 6
            }
        }
        let groups: [(Int, Int, Int)] = [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)]
        for (a, b, c) in groups {
            to64(UInt32(final[a]) << 16 | UInt32(final[b]) << 8 | UInt32(final[c]), 4)
        }
        to64(UInt32(final[11]), 2)
        return String(decoding: out, as: UTF8.self)
    }
}
