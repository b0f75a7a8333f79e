@testable import PortcullisAuth

/// MS-NLMP §4.2.4 (NTLMv2 authentication): user "User", domain "Domain", password "Password",
/// server challenge 0123456789abcdef, client challenge aa × 8, time 0, random session key
/// 55 × 16, and the messages of §4.2.4.3.
enum NTLMVectors {
    static let serverChallenge = hexBytes("0123456789abcdef")

    /// §4.2.4.3 CHALLENGE_MESSAGE.
    static let challenge = hexBytes(
        """
        4e544c4d53535000020000000c000c003800000033828ae20123456789abcdef00000000000000002400240044000000
        060070170000000f53006500720076006500720002000c0044006f006d00610069006e0001000c00530065007200760065
        00720000000000
        """
    )

    /// §4.2.4.3 AUTHENTICATE_MESSAGE: key exchange, a Version, no MIC, LMv2 and NTLMv2 responses.
    static let authenticate = hexBytes(
        """
        4e544c4d5353500003000000180018006c00000054005400840000000c000c00480000000800080054000000100010005c
        00000010001000d8000000358288e20501280a0000000f44006f006d00610069006e00550073006500720043004f004d00
        5000550054004500520086c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa68cd0ab851e51c96aabc927bebef6a
        1c01010000000000000000000000000000aaaaaaaaaaaaaaaa0000000002000c0044006f006d00610069006e0001000c00
        5300650072007600650072000000000000000000c5dad2544fc9799094ce1ce90bc9d03e
        """
    )

    /// `temp` of §4.2.4.1.3: the NTLMv2 response after NTProofStr.
    static let clientBlob = hexBytes(
        """
        01010000000000000000000000000000aaaaaaaaaaaaaaaa0000000002000c0044006f006d00610069006e0001000c0053
        00650072007600650072000000000000000000
        """
    )

    /// Chromium's NTLMv2 client answering the §4.2.4.3 CHALLENGE with a MIC, channel bindings and
    /// an SPN (net/ntlm/ntlm_test_data.h, kExpectedNegotiateMsg and
    /// kExpectedAuthenticateMsgSpecResponseV2): a MIC vector from a real client, no key exchange,
    /// timestamp 131400439870000000. Its MIC was checked with Python's hmac on this machine.
    static let chromiumNegotiate = hexBytes("4e544c4d53535000010000000782080000000000200000000000000020000000")
    static let chromiumTime = NTLMFileTime(ticks: 131_400_439_870_000_000)
    static let chromiumAuthenticate = hexBytes(
        """
        4e544c4d535350000300000018001800580000008a008a00700000000c000c00fa0000000800080006010000100010000e
        0100000000000058000000038208000000000000000000f7361633f0ad9bdf4a7c421bc6b824a300000000000000000000
        00000000000000000000000000008c0260dbef690662af9c42d50782d2ed0101000000000000800bc8fd00d4d201aaaaaa
        aaaaaaaaaa0000000002000c0044006f006d00610069006e0001000c005300650072007600650072000600040002000000
        0a0010006586e99d81c2fc984e47172fd4dd03100900160048005400540050002f00530065007200760065007200000000
        000000000044006f006d00610069006e00550073006500720043004f004d0050005500540045005200
        """
    )

    static func handshake(negotiate: [UInt8] = [], issuedAt: NTLMFileTime = NTLMFileTime(ticks: 0)) -> NTLMHandshake {
        NTLMHandshake(
            negotiateMessage: negotiate,
            challengeMessage: Self.challenge,
            serverChallenge: Self.serverChallenge,
            issuedAt: issuedAt
        )
    }
}
