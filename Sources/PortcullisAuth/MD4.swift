/// MD4 (RFC 1320), for one thing only: the NT hash, MD4 of the UTF-16LE password, which NTLM
/// takes as the user's secret (MS-NLMP §3.3.1). MD4 is broken as a hash; NTLM fixes the choice.
///
/// Our own because no library this project may use exposes it cleanly:
/// - swift-crypto's products (`Crypto`, `CryptoExtras`) offer MD5 and SHA-1 under `Insecure`,
///   not MD4. Its BoringSSL has MD4, but `CCryptoBoringSSL` is not a product of the package.
/// - OpenSSL 3's libcrypto has MD4 only in the legacy provider (or the deprecated low-level
///   API), and OpenSSL is not among the system libraries the project links.
/// - libxcrypt's NT-hash method (`$3$`) widens each byte of the password to 16 bits instead of
///   encoding it as UTF-16, so any non-ASCII password gets a different hash than Windows
///   computes ("pässword": `fb6e13…` against the right `f1b094…`).
///
/// Checked against every vector of RFC 1320 §A.5.
enum MD4 {
    static func hash(_ message: [UInt8]) -> [UInt8] {
        var state: (UInt32, UInt32, UInt32, UInt32) = (0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476)
        // Padding (RFC 1320 §3.1-3.2): a 1 bit, zeros to 56 mod 64, the bit length little-endian.
        var padded = message
        padded.append(0x80)
        while padded.count % 64 != 56 { padded.append(0) }
        let bits = UInt64(truncatingIfNeeded: message.count) &* 8
        for i in 0..<8 { padded.append(UInt8(truncatingIfNeeded: bits >> (8 * UInt64(i)))) }

        var x = [UInt32](repeating: 0, count: 16)
        var block = 0
        while block < padded.count {
            for i in 0..<16 {
                let j = block + 4 * i
                x[i] =
                    UInt32(padded[j]) | UInt32(padded[j + 1]) << 8 | UInt32(padded[j + 2]) << 16
                    | UInt32(padded[j + 3]) << 24
            }
            Self.compress(&state, x)
            block += 64
        }
        var out: [UInt8] = []
        out.reserveCapacity(16)
        for word in [state.0, state.1, state.2, state.3] {
            for i in 0..<4 { out.append(UInt8(truncatingIfNeeded: word >> (8 * UInt32(i)))) }
        }
        return out
    }

    /// The three rounds of RFC 1320 §3.4 over one 16-word block.
    private static func compress(_ state: inout (UInt32, UInt32, UInt32, UInt32), _ x: [UInt32]) {
        var (a, b, c, d) = state

        @inline(__always) func rotl(_ v: UInt32, _ s: UInt32) -> UInt32 { v << s | v >> (32 - s) }
        @inline(__always) func f(_ x: UInt32, _ y: UInt32, _ z: UInt32) -> UInt32 { (x & y) | (~x & z) }
        @inline(__always) func g(_ x: UInt32, _ y: UInt32, _ z: UInt32) -> UInt32 { (x & y) | (x & z) | (y & z) }
        @inline(__always) func h(_ x: UInt32, _ y: UInt32, _ z: UInt32) -> UInt32 { x ^ y ^ z }

        // Each round walks the words in its own order, rotating by four amounts in turn; the
        // roles of a, b, c, d rotate one step with each operation.
        let round1Shifts: [UInt32] = [3, 7, 11, 19]
        for i in 0..<16 {
            let t = rotl(a &+ f(b, c, d) &+ x[i], round1Shifts[i % 4])
            (a, b, c, d) = (d, t, b, c)
        }
        let round2Order = [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15]
        let round2Shifts: [UInt32] = [3, 5, 9, 13]
        for i in 0..<16 {
            let t = rotl(a &+ g(b, c, d) &+ x[round2Order[i]] &+ 0x5a82_7999, round2Shifts[i % 4])
            (a, b, c, d) = (d, t, b, c)
        }
        let round3Order = [0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15]
        let round3Shifts: [UInt32] = [3, 9, 11, 15]
        for i in 0..<16 {
            let t = rotl(a &+ h(b, c, d) &+ x[round3Order[i]] &+ 0x6ed9_eba1, round3Shifts[i % 4])
            (a, b, c, d) = (d, t, b, c)
        }

        state = (state.0 &+ a, state.1 &+ b, state.2 &+ c, state.3 &+ d)
    }
}
