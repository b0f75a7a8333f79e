/// The proxy's side of NTLM (MS-NLMP, NTLMv2 only) on one client connection, as a state
/// machine: events in (a message from the client, a store's answer), actions out. No I/O and
/// no clock of its own: time and randomness come with the events.
///
/// ```
/// idle ──NEGOTIATE──▶ challenged(handshake) ──AUTHENTICATE──▶ lookingUp(pending) ──NT hash──▶ authenticated
///          sendChallenge                      lookUpNTHash                         accept / refuse
/// ```
/// Every refusal returns to `idle`, where the client may start again with a NEGOTIATE; a
/// NEGOTIATE starts a new handshake from any state. A look-up answer for another look-up than
/// the one pending (the handshake restarted meanwhile) is ignored, by its ``LookupID``.
public struct NTLMAcceptor: Sendable {
    public struct Settings: Sendable, Hashable {
        /// MsvAvNbDomainName and MsvAvNbComputerName (MS-NLMP requires both); the computer name
        /// is also the CHALLENGE's TargetName.
        public var netbiosDomainName: String
        public var netbiosComputerName: String
        /// MsvAvDnsDomainName and MsvAvDnsComputerName; left out when empty.
        public var dnsDomainName: String
        public var dnsComputerName: String
        /// Seconds an AUTHENTICATE may come after its CHALLENGE. Clients answer at once (a
        /// browser asks for the password before its NEGOTIATE, not after the CHALLENGE).
        public var handshakeLifetime: Int
        /// Seconds the NTLMv2 timestamp may be from the proxy's clock. Clients copy the
        /// CHALLENGE's MsvAvTimestamp, so theirs is normally the proxy's own time; older ones
        /// use their clock.
        public var maximumClockSkew: Int
        /// Longer messages are refused unread.
        public var maximumMessageSize: Int

        /// Names longer than 255 UTF-16 code units are cut to that.
        public init(
            netbiosDomainName: String,
            netbiosComputerName: String,
            dnsDomainName: String = "",
            dnsComputerName: String = "",
            handshakeLifetime: Int = 120,
            maximumClockSkew: Int = 300,
            maximumMessageSize: Int = NTLMAuthenticateMessage.maximumSize
        ) {
            func bounded(_ name: String) -> String { String(decoding: Array(name.utf16.prefix(255)), as: UTF16.self) }
            self.netbiosDomainName = bounded(netbiosDomainName)
            self.netbiosComputerName = bounded(netbiosComputerName)
            self.dnsDomainName = bounded(dnsDomainName)
            self.dnsComputerName = bounded(dnsComputerName)
            self.handshakeLifetime = handshakeLifetime
            self.maximumClockSkew = maximumClockSkew
            self.maximumMessageSize = maximumMessageSize
        }
    }

    /// Which look-up an answer belongs to.
    public struct LookupID: Sendable, Hashable {
        let value: UInt64
    }

    /// The store must find the NT hash of this user (and domain, if the store keeps domains).
    public struct HashLookup: Sendable, Hashable {
        public let id: LookupID
        public let user: String
        public let domain: String
    }

    /// An AUTHENTICATE that passed the checks needing no secret, waiting for the user's NT hash.
    public struct PendingVerification: Sendable, Hashable {
        public let lookup: HashLookup
        public let answer: NTLMv2Answer
        public let handshake: NTLMHandshake
    }

    public enum State: Sendable, Hashable {
        case idle
        case challenged(NTLMHandshake)
        case lookingUp(PendingVerification)
        case authenticated(NTLMIdentity)
    }

    public enum Action: Sendable, Hashable {
        /// Send these CHALLENGE bytes in a 407's `Proxy-Authenticate: NTLM …`.
        case sendChallenge([UInt8])
        /// Ask the store for this user's NT hash, then call ``ntHashFound(_:for:)``.
        case lookUpNTHash(HashLookup)
        case accept(NTLMIdentity)
        /// Accepted with the secret before the last rotation: the store's rotation grace decides
        /// whether it still counts.
        case acceptPrevious(NTLMIdentity)
        case refuse(NTLMRefusal)
        /// Nothing to do: a look-up answer nobody waits for any more.
        case ignore
    }

    public let settings: Settings
    public private(set) var state: State = .idle
    private var lookups: UInt64 = 0

    public init(settings: Settings) {
        self.settings = settings
    }

    /// A message from the client's `Proxy-Authorization: NTLM …`, of whichever type it is.
    public mutating func messageReceived<R: RandomNumberGenerator>(
        _ bytes: [UInt8],
        now: NTLMFileTime,
        random: inout R
    ) -> Action {
        switch NTLMMessageType.of(bytes) {
        case .negotiate:
            return self.negotiateReceived(bytes, now: now, random: &random)
        case .authenticate:
            return self.authenticateReceived(bytes, now: now)
        case .challenge:
            self.state = .idle
            return .refuse(NTLMRefusal(.unexpectedMessage, "a client sent an NTLM CHALLENGE message"))
        case nil:
            self.state = .idle
            return .refuse(NTLMRefusal(.malformedCredentials, "not an NTLMSSP message of a known type"))
        }
    }

    /// A NEGOTIATE: answer with a CHALLENGE carrying a fresh random server challenge and the
    /// time, and remember both messages for the MIC.
    public mutating func negotiateReceived<R: RandomNumberGenerator>(
        _ bytes: [UInt8],
        now: NTLMFileTime,
        random: inout R
    ) -> Action {
        self.state = .idle
        let negotiate: NTLMNegotiateMessage
        switch NTLMNegotiateMessage.parse(bytes, maximumSize: self.settings.maximumMessageSize) {
        case .success(let message): negotiate = message
        case .failure(let error): return .refuse(.malformed(error))
        }
        let flags = Self.challengeFlags(requested: negotiate.flags)
        var serverChallenge: [UInt8] = []
        serverChallenge.appendLittleEndian(random.next() as UInt64)
        let s = self.settings
        var info: [NTLMAVPair] = [
            .text(.nbDomainName, s.netbiosDomainName), .text(.nbComputerName, s.netbiosComputerName),
        ]
        if !s.dnsDomainName.isEmpty { info.append(.text(.dnsDomainName, s.dnsDomainName)) }
        if !s.dnsComputerName.isEmpty { info.append(.text(.dnsComputerName, s.dnsComputerName)) }
        info.append(.timestamp(now))
        let challenge = NTLMChallengeMessage(
            flags: flags,
            serverChallenge: serverChallenge,
            targetName: flags.contains(.unicode)
                ? NTLMText.utf16LittleEndian(s.netbiosComputerName) : Self.oem(s.netbiosComputerName),
            targetInfo: info,
            version: flags.contains(.version) ? Self.version : [UInt8](repeating: 0, count: 8)
        ).encoded()
        self.state = .challenged(
            NTLMHandshake(
                negotiateMessage: bytes,
                challengeMessage: challenge,
                serverChallenge: serverChallenge,
                issuedAt: now
            )
        )
        return .sendChallenge(challenge)
    }

    /// An AUTHENTICATE: on this connection's own handshake, in time, then every check that
    /// needs no secret; then the store is asked for the user's NT hash.
    public mutating func authenticateReceived(_ bytes: [UInt8], now: NTLMFileTime) -> Action {
        guard case .challenged(let handshake) = self.state else {
            self.state = .idle
            return .refuse(
                NTLMRefusal(
                    .unexpectedMessage,
                    "an NTLM AUTHENTICATE came without a CHALLENGE on this connection; NTLM needs all three messages on one connection"
                )
            )
        }
        self.state = .idle
        let age = now.ticks >= handshake.issuedAt.ticks ? now.ticks - handshake.issuedAt.ticks : 0
        guard age <= NTLMFileTime.ticks(seconds: self.settings.handshakeLifetime) else {
            return .refuse(
                NTLMRefusal(
                    .staleHandshake,
                    "the NTLM handshake took longer than \(self.settings.handshakeLifetime) seconds; start again"
                )
            )
        }
        let answer: NTLMv2Answer
        switch NTLMAuthenticateMessage.parse(bytes, maximumSize: self.settings.maximumMessageSize) {
        case .failure(let error):
            return .refuse(.malformed(error))
        case .success(let message):
            switch NTLMv2.screen(message, now: now, maximumSkew: self.settings.maximumClockSkew) {
            case .failure(let refusal): return .refuse(refusal)
            case .success(let screened): answer = screened
            }
        }
        self.lookups &+= 1
        let lookup = HashLookup(
            id: LookupID(value: self.lookups),
            user: answer.identity.user,
            domain: answer.identity.domain
        )
        self.state = .lookingUp(PendingVerification(lookup: lookup, answer: answer, handshake: handshake))
        return .lookUpNTHash(lookup)
    }

    /// The store's answer: the user's NT hash, or `nil` for a user it does not know (refused
    /// like a wrong password). Verifies NTProofStr and the MIC.
    /// `previous`: the NT hash before the user's last rotation, tried when the current one
    /// fails (the answer is then ``Action/acceptPrevious(_:)``). Verifies here, at once; a server
    /// runs ``verify(_:ntHash:previous:)`` off its event loops and hands the result to
    /// ``verificationFinished(_:for:)`` instead.
    public mutating func ntHashFound(_ hash: NTHash?, previous: NTHash? = nil, for id: LookupID) -> Action {
        guard let pending = self.pendingVerification(for: id) else { return .ignore }
        return self.verificationFinished(Self.verify(pending, ntHash: hash, previous: previous), for: id)
    }

    /// What a verification found.
    public enum Verification: Sendable, Hashable {
        case current(NTLMIdentity)
        /// The previous secret matched (rotation grace decides whether it still counts).
        case previous(NTLMIdentity)
        case refused(NTLMRefusal)
    }

    /// The AUTHENTICATE waiting for the NT hash of look-up `id`, if it still waits.
    public func pendingVerification(for id: LookupID) -> PendingVerification? {
        guard case .lookingUp(let pending) = self.state, pending.lookup.id == id else { return nil }
        return pending
    }

    /// NTProofStr and MIC against the current NT hash, then the previous one. Pure and without
    /// state: for a thread pool. A `nil` hash (an unknown user) is checked against a decoy, so
    /// an unknown user costs what a wrong password costs.
    public static func verify(_ pending: PendingVerification, ntHash: NTHash?, previous: NTHash?) -> Verification {
        let current = NTLMv2.verify(pending.answer, handshake: pending.handshake, ntHash: ntHash ?? Self.decoy)
        switch current {
        case .success(let identity) where ntHash != nil:
            return .current(identity)
        case .success:
            return .refused(.invalidCredentials(pending.answer.identity))
        case .failure(let refusal):
            if let previous, case .success(let identity) = NTLMv2.verify(
                pending.answer,
                handshake: pending.handshake,
                ntHash: previous
            ) {
                return .previous(identity)
            }
            return .refused(ntHash == nil ? .invalidCredentials(pending.answer.identity) : refusal)
        }
    }

    /// The outcome of ``verify(_:ntHash:previous:)`` for look-up `id`.
    public mutating func verificationFinished(_ verification: Verification, for id: LookupID) -> Action {
        guard self.pendingVerification(for: id) != nil else { return .ignore }
        self.state = .idle
        switch verification {
        case .current(let identity):
            self.state = .authenticated(identity)
            return .accept(identity)
        case .previous(let identity):
            self.state = .authenticated(identity)
            return .acceptPrevious(identity)
        case .refused(let refusal):
            return .refuse(refusal)
        }
    }

    /// Random per process: what an unknown user's answer is checked against.
    private static let decoy: NTHash = {
        var generator = SystemRandomNumberGenerator()
        return NTHash(bytes: (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) })!
    }()

    /// The CHALLENGE's flags: what every NTLMv2 acceptor sets, the client's choice of Unicode
    /// (else OEM), and the session-security flags the client asked for, echoed as pyspnego's
    /// acceptor does. The proxy never signs or seals, so echoing them costs nothing; key
    /// exchange with signing decides which key the client's MIC is computed with.
    static func challengeFlags(requested: NTLMFlags) -> NTLMFlags {
        var flags = requested.intersection([
            .sign, .seal, .extendedSessionSecurity, .version, .key128, .key56, .keyExchange,
        ])
        flags.insert(requested.contains(.unicode) ? .unicode : .oem)
        flags.formUnion([.requestTarget, .ntlm, .alwaysSign, .targetTypeServer, .targetInfo])
        return flags
    }

    /// The Version field when asked for: no Windows version to report, only the NTLMSSP
    /// revision (15, MS-NLMP §2.2.2.10).
    static let version: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0x0f]

    /// A name in the OEM encoding for a client that did not ask for Unicode: ASCII, '?' else.
    static func oem(_ text: String) -> [UInt8] {
        text.unicodeScalars.map { $0.isASCII ? UInt8($0.value) : UInt8(ascii: "?") }
    }
}
