/// A small NTLMv2 client (MS-NLMP §3.1.5): NEGOTIATE and AUTHENTICATE messages, for the
/// package's tests and doctor's NTLM probe (not part of the public API). It can be told to
/// misbehave (NTLMv1, no user, another clock, no MIC field) to test acceptors. It shares the
/// acceptor's HMAC helpers but not its message code: every byte of the messages is laid out here.
package struct NTLMClient: Sendable {
    package init() {}

    package enum NTResponse: Sendable { case v2, v1, none }
    package enum LMResponse: Sendable { case zeros, lmv2, none, v1 }

    package var user = "User"
    package var domain = "Domain"
    package var password = "Password"
    package var workstation = "COMPUTER"
    package var negotiateFlags: NTLMFlags = [
        .unicode, .oem, .requestTarget, .sign, .seal, .ntlm, .alwaysSign, .extendedSessionSecurity, .version,
        .key128, .keyExchange, .key56,
    ]
    /// The AUTHENTICATE's flags; `nil`: the CHALLENGE's.
    package var authenticateFlags: NTLMFlags? = nil
    package var clientChallenge = [UInt8](repeating: 0xaa, count: 8)
    package var randomSessionKey = [UInt8](repeating: 0x55, count: 16)
    /// Announce a MIC in MsvAvFlags and send it.
    package var sendMIC = true
    /// Leave room for the MIC field (false with `sendMIC`: announced but absent).
    package var micField = true
    package var includeVersion = true
    /// `nil`: the CHALLENGE's MsvAvTimestamp, as MS-NLMP says clients should.
    package var timestamp: NTLMFileTime? = nil
    package var ntResponse = NTResponse.v2
    package var lmResponse = LMResponse.zeros

    package static let windowsVersion: [UInt8] = [0x05, 0x01, 0x28, 0x0a, 0x00, 0x00, 0x00, 0x0f]

    package func negotiate() -> [UInt8] {
        var out = Array("NTLMSSP".utf8) + [0, 1, 0, 0, 0]
        out.appendLittleEndian(self.negotiateFlags.rawValue)
        out.appendField(length: 0, offset: 40)
        out.appendField(length: 0, offset: 40)
        out += Self.windowsVersion
        return out
    }

    /// What a client reads from a CHALLENGE, by fixed offsets (MS-NLMP §2.2.1.2).
    package struct Challenge {
        package var flags: NTLMFlags
        package var serverChallenge: [UInt8]
        package var targetInfo: [NTLMAVPair]
        package var timestamp: NTLMFileTime?
    }

    package static func read(_ challenge: [UInt8]) -> Challenge? {
        guard NTLMMessageType.of(challenge) == .challenge, challenge.count >= 48,
            let rawFlags = challenge.littleEndianUInt32(at: 20),
            let length = challenge.littleEndianUInt16(at: 40),
            let offset = challenge.littleEndianUInt32(at: 44),
            Int(offset) + Int(length) <= challenge.count,
            case .success(let pairs) = NTLMAVPair.decode(challenge[Int(offset)..<(Int(offset) + Int(length))])
        else { return nil }
        let time = pairs.first(.timestamp).flatMap { $0.value.littleEndianUInt64(at: 0) }.map(NTLMFileTime.init(ticks:))
        return Challenge(
            flags: NTLMFlags(rawValue: rawFlags),
            serverChallenge: Array(challenge[24..<32]),
            targetInfo: pairs,
            timestamp: time
        )
    }

    /// NTOWFv2. With Unicode through the code under test's public function; OEM computed here
    /// the way curl does (ASCII upper-cased, every byte widened), as an independent check.
    package func responseKey(unicode: Bool) -> [UInt8] {
        let hash = NTHash(password: self.password)
        if unicode { return NTLMv2.responseKey(ntHash: hash, user: self.user, domain: self.domain) }
        var identity: [UInt8] = []
        for byte in self.user.utf8 { identity += [(0x61...0x7a).contains(byte) ? byte - 0x20 : byte, 0] }
        for byte in self.domain.utf8 { identity += [byte, 0] }
        return NTLMv2.hmacMD5(hash.bytes, identity)
    }

    package func authenticate(negotiate: [UInt8], challenge challengeBytes: [UInt8]) -> [UInt8] {
        guard let challenge = Self.read(challengeBytes) else { return [] }
        let flags = self.authenticateFlags ?? challenge.flags
        let unicode = flags.contains(.unicode)
        func text(_ s: String) -> [UInt8] { unicode ? NTLMText.utf16LittleEndian(s) : Array(s.utf8) }
        let key = self.responseKey(unicode: unicode)

        var pairs = challenge.targetInfo
        if self.sendMIC { pairs.append(NTLMAVPair(id: .flags, value: [0x02, 0, 0, 0])) }
        var blob: [UInt8] = [1, 1, 0, 0, 0, 0, 0, 0]
        blob.appendLittleEndian((self.timestamp ?? challenge.timestamp ?? NTLMFileTime(ticks: 0)).ticks)
        blob += self.clientChallenge + [0, 0, 0, 0] + NTLMAVPair.encode(pairs) + [0, 0, 0, 0]
        let proof = NTLMv2.ntProofString(responseKey: key, serverChallenge: challenge.serverChallenge, clientBlob: blob)

        let nt: [UInt8]
        switch self.ntResponse {
        case .v2: nt = proof + blob
        case .v1: nt = [UInt8](repeating: 0x42, count: 24)
        case .none: nt = []
        }
        let lm: [UInt8]
        switch self.lmResponse {
        case .zeros: lm = [UInt8](repeating: 0, count: 24)
        case .lmv2:
            lm = NTLMv2.hmacMD5(key, challenge.serverChallenge, self.clientChallenge) + self.clientChallenge
        case .none: lm = []
        case .v1: lm = [UInt8](repeating: 0x17, count: 24)
        }
        let keyExchangeKey = NTLMv2.sessionBaseKey(responseKey: key, ntProofString: proof)
        var exported = keyExchangeKey
        var encryptedKey: [UInt8] = []
        if flags.contains(.keyExchange), !flags.isDisjoint(with: [.sign, .seal]) {
            exported = self.randomSessionKey
            encryptedKey = RC4.apply(key: keyExchangeKey, to: self.randomSessionKey)
        }

        let payload = [text(self.domain), text(self.user), text(self.workstation), lm, nt, encryptedKey]
        let headerSize = 64 + (self.includeVersion || self.micField ? 8 : 0) + (self.micField ? 16 : 0)
        var out = Array("NTLMSSP".utf8) + [0, 3, 0, 0, 0]
        var offset = headerSize
        // Payload in the order of the spec's example: domain, user, workstation, LM, NT, key;
        // the field descriptions in the order of the message: LM, NT, domain, user, workstation, key.
        var offsets: [Int] = []
        for field in payload {
            offsets.append(offset)
            offset += field.count
        }
        for index in [3, 4, 0, 1, 2, 5] { out.appendField(length: payload[index].count, offset: offsets[index]) }
        out.appendLittleEndian(flags.rawValue)
        if self.includeVersion || self.micField { out += Self.windowsVersion }
        if self.micField { out += [UInt8](repeating: 0, count: 16) }
        for field in payload { out += field }
        if self.sendMIC && self.micField {
            let mic = NTLMv2.mic(
                exportedSessionKey: exported,
                negotiate: negotiate,
                challenge: challengeBytes,
                authenticateWithMICZeroed: out
            )
            out.replaceSubrange(72..<88, with: mic)
        }
        return out
    }
}
