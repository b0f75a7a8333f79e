import Testing

@testable import PortcullisProxy

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

@Suite struct CanonicalHostTests {
    /// Every spelling getaddrinfo reads as 127.0.0.1 (through inet_aton) is written one way.
    @Test(arguments: [
        "127.0.0.1", "127.1", "127.0.1", "2130706433", "0x7f000001", "0X7F000001", "0177.0.0.1", "017700000001",
        "0x7f.1", "0x7F.0.0.0x1", "00000177.0.0.01", "127.0.0.1.", "0x7f.0x000001",
    ])
    func everyInetAtonSpellingOfAnAddressIsTheDottedQuad(spelling: String) throws {
        let host = try #require(CanonicalHost(spelling))
        #expect(host == .ipv4(0x7F00_0001))
        #expect(host.description == "127.0.0.1")
    }

    @Test(
        arguments: [
            ("0", 0), ("4294967295", 0xFFFF_FFFF), ("0xffffffff", 0xFFFF_FFFF), ("1.16777215", 0x01FF_FFFF),
            ("1.2.65535", 0x0102_FFFF), ("10.0x10.0377.0", 0x0A10_FF00),
        ] as [(String, UInt32)]
    )
    func partsTakeTheRemainingBits(text: String, value: UInt32) {
        #expect(CanonicalHost(text) == .ipv4(value))
    }

    /// The parser reads exactly what glibc's inet_aton reads: table and random strings over
    /// the alphabet of numeric spellings.
    @Test func agreesWithInetAton() {
        var cases = [
            "0x", "0x.1", "1.0x", "08", "09.1", "1.2.3.4.5", "256.0.0.1", "1.16777216", "1.2.65536", "4294967296",
            "0x100000000", "00", "1..2", ".1", "1.", "0xg", "1.2.3.0400", "99999999999999999999", "0x0000000000001",
            "0000000000000000000000000000017", "1.0xffffff", "1.2.0xffff", "1.2.3.0xff", "1.2.3.0x100",
        ]
        var random = SplitMix64(seed: 0x5EED)
        let alphabet = Array("0123456789abcdefxX.".utf8)
        for _ in 0..<20_000 {
            let length = Int(random.next() % 12) + 1
            cases.append(String(decoding: (0..<length).map { _ in alphabet[Int(random.next() % 19)] }, as: UTF8.self))
        }
        for text in cases {
            var address = in_addr()
            let expected = inet_aton(text, &address) == 1 ? UInt32(bigEndian: address.s_addr) : nil
            let actual = Array(text.utf8).withUnsafeBufferPointer { CanonicalHost.ipv4($0) }
            #expect(actual == expected, "\(text)")
        }
    }

    @Test(arguments: [
        ("Denied.Example.", "denied.example"), ("denied.example", "denied.example"), ("A_B-c.EXAMPLE", "a_b-c.example"),
        ("1e100.net", "1e100.net"), ("0x.example", "0x.example"), ("localhost", "localhost"),
    ])
    func namesAreLowerCaseWithoutTheTrailingDot(text: String, name: String) {
        #expect(CanonicalHost(text) == .name(name))
    }

    /// A last label that is a number makes an address or nothing (WHATWG URL): getaddrinfo
    /// would send `1.2.3.4.5` to DNS, where any answer could come back.
    @Test(arguments: [
        "", ".", "..", "a..b", ".a", "a..", "1.2.3.4.5", "08.1", "256.1.1.1", "host.0x", "host.123", "bücher.example",
        "a b", "a/b", "[127.0.0.1]", "[::1", "[]", "::g",
    ])
    func ambiguousOrMalformedHostsAreNotHosts(text: String) {
        #expect(CanonicalHost(text) == nil)
    }

    @Test(arguments: [
        ("[::FFFF:127.0.0.1]", "::ffff:127.0.0.1"), ("0:0:0:0:0:0:0:1", "::1"), ("[2001:DB8:0::1]", "2001:db8::1"),
    ])
    func ipv6LiteralsTakeTheirCompressedForm(text: String, canonical: String) throws {
        let host = try #require(CanonicalHost(text))
        #expect(host.description == canonical)
        #expect(host.addressBytes?.count == 16)
    }
}

/// A small deterministic generator for the random cases (no dependency on the system's).
private struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { self.state = seed }
    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
