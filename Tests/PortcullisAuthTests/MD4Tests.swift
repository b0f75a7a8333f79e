import Testing

@testable import PortcullisAuth

@Suite struct MD4Tests {
    /// RFC 1320 §A.5, every vector.
    @Test(arguments: [
        ("", "31d6cfe0d16ae931b73c59d7e0c089c0"),
        ("a", "bde52cb31de33e46245e05fbdbd6fb24"),
        ("abc", "a448017aaf21d8525fc10ae87aa6729d"),
        ("message digest", "d9130a8164549fe818874806e1c7014b"),
        ("abcdefghijklmnopqrstuvwxyz", "d79e1c308aa5bbcdeea8ed63df412da9"),
        ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", "043f8582f241db351ce627e153e7f0e4"),
        (
            "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
            "e33b4ddc9c38f2199c3e7b164fcc0536"
        ),
    ])
    func rfc1320Vectors(message: String, digest: String) {
        #expect(hexString(MD4.hash(Array(message.utf8))) == digest)
    }

    /// Padding edges: 55 bytes fit one block with the length, 56 need a second; 64, 119 and 120
    /// likewise. Expected values from OpenSSL's MD4 (legacy provider) on this machine.
    @Test(arguments: [
        (55, "c889c81dd86c4d2e025778944ea02881"),
        (56, "d5f9a9e9257077a5f08b0b92f348b0ad"),
        (64, "52f5076fabd22680234a3fa9f9dc5732"),
        (119, "e65dd227ccef97fa1d34d70189120f76"),
        (120, "b03ddbd470b47c013e0c7ab2ddd763db"),
    ])
    func paddingBoundaries(length: Int, digest: String) {
        #expect(hexString(MD4.hash([UInt8](repeating: UInt8(ascii: "a"), count: length))) == digest)
    }
}
