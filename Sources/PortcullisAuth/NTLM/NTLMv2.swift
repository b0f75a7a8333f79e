import Crypto

/// A user's NT hash, MD4 of the UTF-16LE password (MS-NLMP §3.3.1 NTOWFv1): the secret a store
/// keeps for NTLM, since NTLMv2 answers are keyed by it and not by the password.
public struct NTHash: Sendable, Hashable, CustomStringConvertible {
    /// 16 bytes.
    public let bytes: [UInt8]

    public init(password: String) {
        self.bytes = MD4.hash(NTLMText.utf16LittleEndian(password))
    }

    public init?(bytes: [UInt8]) {
        guard bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    /// 32 hex digits, either case.
    public init?(hex: String) {
        let digits = Array(hex.utf8)
        guard digits.count == 32 else { return nil }
        var bytes: [UInt8] = []
        for i in stride(from: 0, to: 32, by: 2) {
            guard let high = Self.nibble(digits[i]), let low = Self.nibble(digits[i + 1]) else { return nil }
            bytes.append(high << 4 | low)
        }
        self.bytes = bytes
    }

    /// 32 lower-case hex digits, for a store to keep.
    public var hex: String {
        let alphabet = Array("0123456789abcdef".utf8)
        return String(
            decoding: self.bytes.flatMap { [alphabet[Int($0 >> 4)], alphabet[Int($0 & 0xf)]] },
            as: UTF8.self
        )
    }

    /// Never the hash itself: it is as good as the password against NTLM.
    public var description: String { "NTHash(…)" }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}

/// What the acceptor remembers of a handshake between its CHALLENGE and the AUTHENTICATE:
/// the messages the MIC covers, the server challenge the answer must be keyed by, and when.
public struct NTLMHandshake: Sendable, Hashable {
    public var negotiateMessage: [UInt8]
    public var challengeMessage: [UInt8]
    /// 8 bytes.
    public var serverChallenge: [UInt8]
    public var issuedAt: NTLMFileTime

    public init(negotiateMessage: [UInt8], challengeMessage: [UInt8], serverChallenge: [UInt8], issuedAt: NTLMFileTime)
    {
        self.negotiateMessage = negotiateMessage
        self.challengeMessage = challengeMessage
        self.serverChallenge = serverChallenge
        self.issuedAt = issuedAt
    }
}

/// An AUTHENTICATE message that passed every check needing no secret (``NTLMv2/screen(_:now:maximumSkew:)``):
/// an NTLMv2 response from a named user, with a timestamp near the proxy's clock. What is left
/// needs the user's NT hash (``NTLMv2/verify(_:handshake:ntHash:)``).
public struct NTLMv2Answer: Sendable, Hashable {
    public let message: NTLMAuthenticateMessage
    public let identity: NTLMIdentity
    public let timestamp: NTLMFileTime
    /// The client's AV pairs: the server's TargetInfo plus its own (flags, channel bindings, SPN).
    public let clientAVPairs: [NTLMAVPair]
    /// Whether MsvAvFlags has the MIC bit: then the MIC must be there and right.
    public var announcesMIC: Bool { self.clientAVPairs.avFlags & NTLMAVPair.micPresentFlag != 0 }
    /// NTProofStr: the first 16 bytes of the NT response.
    let ntProofString: [UInt8]
    /// The rest of the NT response (`temp` in MS-NLMP §3.3.2), which NTProofStr covers.
    let clientBlob: [UInt8]
}

/// NTLMv2 as the server computes it (MS-NLMP §3.3.2, §3.2.5.1.2), as pure functions: the
/// acceptor calls them, and a caller that wants the HMACs off the event loop can too.
public enum NTLMv2 {
    /// NTProofStr, then RespType, HiRespType, Reserved1, Reserved2, TimeStamp, ClientChallenge,
    /// Reserved3 (MS-NLMP §2.2.2.7); the AV pairs follow.
    static let minimumResponseSize = 16 + 28

    /// NTOWFv2: HMAC_MD5(NT hash, UTF-16LE(Uppercase(user) + domain)). Only the user is
    /// upper-cased; the domain is taken as the client typed it.
    public static func responseKey(ntHash: NTHash, user: String, domain: String) -> [UInt8] {
        let identity = NTLMText.bytes(ofUTF16: user.utf16.map(NTLMText.uppercase) + Array(domain.utf16))
        return Self.hmacMD5(ntHash.bytes, identity)
    }

    /// NTOWFv2 over the names exactly as the message carries them, so no decoding can change
    /// the bytes the client hashed.
    static func responseKey(ntHash: NTHash, message: NTLMAuthenticateMessage) -> [UInt8] {
        var identity: [UInt8] = []
        if message.isUnicode {
            let user = NTLMText.utf16Units(message.userNameBytes).map(NTLMText.uppercase)
            identity = NTLMText.bytes(ofUTF16: user) + message.domainNameBytes
        } else {
            // OEM names: widened byte by byte, and only ASCII upper-cased, as curl does (its
            // NTLM client never asks for Unicode), since the code page is not known here.
            for byte in message.userNameBytes { identity += [(0x61...0x7a).contains(byte) ? byte - 0x20 : byte, 0] }
            for byte in message.domainNameBytes { identity += [byte, 0] }
        }
        return Self.hmacMD5(ntHash.bytes, identity)
    }

    /// HMAC_MD5(ResponseKeyNT, ServerChallenge + temp).
    public static func ntProofString(responseKey: [UInt8], serverChallenge: [UInt8], clientBlob: [UInt8]) -> [UInt8] {
        Self.hmacMD5(responseKey, serverChallenge, clientBlob)
    }

    /// HMAC_MD5(ResponseKeyNT, NTProofStr); for NTLMv2 it is also the key exchange key.
    public static func sessionBaseKey(responseKey: [UInt8], ntProofString: [UInt8]) -> [UInt8] {
        Self.hmacMD5(responseKey, ntProofString)
    }

    /// The key the MIC is computed with (MS-NLMP §3.2.5.1.2): the client's random session key,
    /// decrypted with RC4 under the key exchange key, when key exchange and signing or sealing
    /// are negotiated; else the key exchange key itself. `nil` when a key is due but is not 16
    /// bytes. (pyspnego, for one, sends a 1-byte placeholder when it negotiates key exchange
    /// without signing or sealing, which this rule ignores, as the specification says.)
    static func exportedSessionKey(keyExchangeKey: [UInt8], message: NTLMAuthenticateMessage) -> [UInt8]? {
        guard message.flags.contains(.keyExchange), !message.flags.isDisjoint(with: [.sign, .seal]) else {
            return keyExchangeKey
        }
        guard message.encryptedRandomSessionKey.count == 16 else { return nil }
        return RC4.apply(key: keyExchangeKey, to: message.encryptedRandomSessionKey)
    }

    /// HMAC_MD5(ExportedSessionKey, NEGOTIATE + CHALLENGE + AUTHENTICATE with its MIC zeroed).
    public static func mic(
        exportedSessionKey: [UInt8],
        negotiate: [UInt8],
        challenge: [UInt8],
        authenticateWithMICZeroed: [UInt8]
    ) -> [UInt8] {
        Self.hmacMD5(exportedSessionKey, negotiate, challenge, authenticateWithMICZeroed)
    }

    /// Every check that needs no secret, in this order: an answer at all (else anonymous), not
    /// NTLMv1 or LM alone, a well-formed NTLMv2 response, its timestamp within `maximumSkew`
    /// seconds of `now`. Run before a store is asked, so none of these costs a look-up.
    public static func screen(
        _ message: NTLMAuthenticateMessage,
        now: NTLMFileTime,
        maximumSkew: Int
    ) -> Result<NTLMv2Answer, NTLMRefusal> {
        let identity = NTLMIdentity(
            user: message.userName,
            domain: message.domainName,
            workstation: message.workstation
        )
        let nt = message.ntChallengeResponse
        let lm = message.lmChallengeResponse
        // Anonymous (MS-NLMP §3.2.5.1.2): no user, no NT response, and an LM response that is
        // empty or one zero byte. An LM response alone from a named user is LM authentication.
        if nt.isEmpty {
            if !message.userNameBytes.isEmpty && !(lm.isEmpty || lm == [0]) {
                return .failure(Self.v1Refusal(identity, what: "an LM response only"))
            }
            return .failure(
                NTLMRefusal(.anonymousRefused, "anonymous NTLM logon is refused; send a user name and password")
            )
        }
        guard !message.userNameBytes.isEmpty else {
            return .failure(
                NTLMRefusal(.anonymousRefused, "an NTLM answer without a user name is refused; send a user name")
            )
        }
        guard nt.count != 24 else { return .failure(Self.v1Refusal(identity, what: "an NTLMv1 response")) }
        guard nt.count >= Self.minimumResponseSize else {
            return .failure(
                NTLMRefusal(.malformedCredentials, "the NT response is neither NTLMv1 nor NTLMv2", claimed: identity)
            )
        }
        let blob = Array(nt[16...])
        // RespType and HiRespType MUST be 1 (MS-NLMP §2.2.2.7).
        guard blob[0] == 1, blob[1] == 1, let ticks = blob.littleEndianUInt64(at: 8) else {
            return .failure(NTLMRefusal(.malformedCredentials, "unknown NTLMv2 response version", claimed: identity))
        }
        let pairs: [NTLMAVPair]
        switch NTLMAVPair.decode(blob[28...]) {
        case .success(let decoded): pairs = decoded
        case .failure(let error): return .failure(NTLMRefusal(.malformedCredentials, error.message, claimed: identity))
        }
        let timestamp = NTLMFileTime(ticks: ticks)
        guard timestamp.distance(to: now) <= NTLMFileTime.ticks(seconds: maximumSkew) else {
            return .failure(
                NTLMRefusal(
                    .clockSkew,
                    "the NTLMv2 answer's time is more than \(maximumSkew) seconds from the proxy's; check the client's clock",
                    claimed: identity
                )
            )
        }
        return .success(
            NTLMv2Answer(
                message: message,
                identity: identity,
                timestamp: timestamp,
                clientAVPairs: pairs,
                ntProofString: Array(nt[0..<16]),
                clientBlob: blob
            )
        )
    }

    /// The checks that need the user's NT hash: NTProofStr (compared in constant time), then
    /// the MIC when the client announced one. The handshake is the one this connection's
    /// acceptor issued: its server challenge keys the proof, its messages are under the MIC.
    public static func verify(
        _ answer: NTLMv2Answer,
        handshake: NTLMHandshake,
        ntHash: NTHash
    ) -> Result<NTLMIdentity, NTLMRefusal> {
        let identity = answer.identity
        let key = Self.responseKey(ntHash: ntHash, message: answer.message)
        let proof = Self.ntProofString(
            responseKey: key,
            serverChallenge: handshake.serverChallenge,
            clientBlob: answer.clientBlob
        )
        guard ConstantTime.equal(proof, answer.ntProofString) else { return .failure(.invalidCredentials(identity)) }
        // The announcement is under NTProofStr, so a MIC cannot be stripped without the proof
        // failing; a client that does not announce one (curl) is not asked for one.
        guard answer.announcesMIC else { return .success(identity) }
        guard let sent = answer.message.mic else {
            return .failure(NTLMRefusal(.badMIC, "the client announced a MIC but sent no MIC field", claimed: identity))
        }
        let keyExchangeKey = Self.sessionBaseKey(responseKey: key, ntProofString: proof)
        guard let exported = Self.exportedSessionKey(keyExchangeKey: keyExchangeKey, message: answer.message) else {
            return .failure(
                NTLMRefusal(.malformedCredentials, "the encrypted session key is not 16 bytes long", claimed: identity)
            )
        }
        let expected = Self.mic(
            exportedSessionKey: exported,
            negotiate: handshake.negotiateMessage,
            challenge: handshake.challengeMessage,
            authenticateWithMICZeroed: answer.message.bytesWithMICZeroed
        )
        guard ConstantTime.equal(expected, sent) else {
            return .failure(
                NTLMRefusal(.badMIC, "the NTLM message integrity code does not match the handshake", claimed: identity)
            )
        }
        return .success(identity)
    }

    private static func v1Refusal(_ identity: NTLMIdentity, what: String) -> NTLMRefusal {
        NTLMRefusal(
            .ntlmV1Refused,
            "the client sent \(what); this proxy accepts NTLMv2 only (on Windows: LmCompatibilityLevel 3 or higher)",
            claimed: identity
        )
    }

    static func hmacMD5(_ key: [UInt8], _ parts: [UInt8]...) -> [UInt8] {
        var hmac = HMAC<Insecure.MD5>(key: SymmetricKey(data: key))
        for part in parts { hmac.update(data: part) }
        return Array(hmac.finalize())
    }
}
