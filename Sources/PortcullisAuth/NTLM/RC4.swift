/// RC4, for one thing only: NTLM's key exchange, where the client sends its random session key
/// encrypted under the key exchange key (MS-NLMP §3.4.5.2 `RC4K`), which the MIC is keyed by.
///
/// Our own for the same reason as ``MD4``: swift-crypto's products do not expose RC4 (its
/// BoringSSL has it, but not as a product), and OpenSSL 3 keeps it in the legacy provider.
/// Checked against RFC 6229's vectors and MS-NLMP §4.2.4.2.3's encrypted session key.
enum RC4 {
    /// `data` encrypted (or decrypted: the same operation) under `key`, which must not be empty.
    static func apply(key: [UInt8], to data: [UInt8]) -> [UInt8] {
        precondition(!key.isEmpty && key.count <= 256, "RC4 keys are 1 to 256 bytes")
        var s = [UInt8](repeating: 0, count: 256)
        for i in 0..<256 { s[i] = UInt8(i) }
        var j = 0
        for i in 0..<256 {
            j = (j + Int(s[i]) + Int(key[i % key.count])) & 0xff
            s.swapAt(i, j)
        }
        var out = data
        var i = 0
        j = 0
        for n in 0..<out.count {
            i = (i + 1) & 0xff
            j = (j + Int(s[i])) & 0xff
            s.swapAt(i, j)
            out[n] ^= s[(Int(s[i]) + Int(s[j])) & 0xff]
        }
        return out
    }
}
