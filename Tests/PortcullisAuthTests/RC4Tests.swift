import Testing

@testable import PortcullisAuth

@Suite struct RC4Tests {
    /// RFC 6229 §2: the key stream (RC4 of zeros) at offsets 0, 16, 240 and 256.
    @Test(arguments: [
        (
            "0102030405",
            [
                (0, "b2396305f03dc027ccc3524a0a1118a8"), (16, "6982944f18fc82d589c403a47a0d0919"),
                (240, "28cb1132c96ce286421dcaadb8b69eae"), (256, "1cfcf62b03eddb641d77dfcf7f8d8c93"),
            ]
        ),
        (
            "0102030405060708090a0b0c0d0e0f10",
            [(0, "9ac7cc9a609d1ef7b2932899cde41b97"), (16, "5248c4959014126a6e8a84f11d1a9e1c")]
        ),
    ])
    func rfc6229KeyStreams(key: String, expected: [(Int, String)]) {
        let stream = RC4.apply(key: hexBytes(key), to: [UInt8](repeating: 0, count: 272))
        for (offset, bytes) in expected {
            #expect(hexString(Array(stream[offset..<(offset + 16)])) == bytes, "offset \(offset)")
        }
    }

    /// MS-NLMP §4.2.4.2.3: the random session key (0x55 × 16) encrypted under the NTLMv2 session
    /// base key; and back.
    @Test func msNLMPEncryptedSessionKey() {
        let sessionBaseKey = hexBytes("8de40ccadbc14a82f15cb0ad0de95ca3")
        let encrypted = RC4.apply(key: sessionBaseKey, to: [UInt8](repeating: 0x55, count: 16))
        #expect(hexString(encrypted) == "c5dad2544fc9799094ce1ce90bc9d03e")
        #expect(RC4.apply(key: sessionBaseKey, to: encrypted) == [UInt8](repeating: 0x55, count: 16))
    }
}
