import Crypto
import Foundation
import NIOConcurrencyHelpers

/// A Digest `Proxy-Authorization` (RFC 7616 §3.4), parsed and checked for shape only: no
/// secret is involved yet.
public struct DigestAuthorization: Sendable, Hashable {
    /// The user name as sent: the name itself, or its hex hash when ``userhash`` is set.
    public var username: String
    public var userhash: Bool
    public var realm: String
    public var nonce: String
    public var uri: String
    /// Lower-case hex.
    public var response: String
    public var algorithm: DigestAlgorithm
    public var cnonce: String
    /// `nc` as sent (8 hex digits) and its value.
    public var nonceCountText: String
    public var nonceCount: UInt32
    public var opaque: String?

    /// Longest parameter value accepted: a nonce, a URI or a name longer than this is not from
    /// a real client, and hashing it would only cost time.
    public static let maximumValueLength = 4096

    /// Parses one field value whose scheme is Digest.
    public static func parse(_ fieldValue: String) -> Result<DigestAuthorization, AuthFailure> {
        func malformed(_ why: String) -> Result<DigestAuthorization, AuthFailure> {
            .failure(
                AuthFailure(
                    reason: .malformedCredentials,
                    explanation: "the Digest credentials are malformed: \(why)",
                    presentedScheme: "digest"
                )
            )
        }
        let parsed: [Challenge]
        do {
            parsed = try ChallengeParser.parse(fieldValue: fieldValue)
        } catch {
            // The parser's message names offsets and grammar, never the text itself.
            return malformed("\(error)")
        }
        guard parsed.count == 1, let credentials = parsed.first, credentials.schemeIs("Digest"),
            credentials.token68 == nil
        else { return malformed("expected one Digest credential made of name=value parameters") }
        var values = Fields()
        var unknown: Set<String> = []
        for parameter in credentials.parameters {
            guard parameter.value.utf8.count <= Self.maximumValueLength else {
                return malformed("the parameter \(Self.safeName(parameter.name)) is too long")
            }
            guard let index = Fields.index(of: parameter.name) else {
                // Unknown parameters are ignored (RFC 7616 §3.4), but not twice.
                guard unknown.insert(parameter.name.lowercased()).inserted else {
                    return malformed("the parameter \(Self.safeName(parameter.name)) appears twice")
                }
                continue
            }
            guard values.values[index] == nil else {
                return malformed("the parameter \(Fields.names[index]) appears twice")
            }
            values.values[index] = parameter.value
        }
        let userhash: Bool
        switch values["userhash"]?.lowercased() {
        case nil, "false": userhash = false
        case "true": userhash = true
        default: return malformed("userhash must be true or false")
        }
        let username: String
        switch (values["username"], values["username*"]) {
        case (let plain?, nil):
            username = plain
        case (nil, let extended?):
            guard !userhash else { return malformed("username* cannot be used with userhash=true") }
            guard let decoded = Self.decodeExtValue(extended) else {
                return malformed("username* is not a UTF-8 extended value (UTF-8''name)")
            }
            username = decoded
        case (.some, .some):
            return malformed("both username and username* were sent")
        case (nil, nil):
            return malformed("the username parameter is missing")
        }
        for required in ["realm", "nonce", "uri", "response"] where values[required] == nil {
            return malformed("the \(required) parameter is missing")
        }
        guard let algorithm = DigestAlgorithm(token: values["algorithm"]) else {
            return malformed("the algorithm \(Self.safeName(values["algorithm"] ?? "")) is unknown")
        }
        guard let qop = values["qop"] else {
            // RFC 2069 answers (no qop, nc, cnonce) have no replay protection: never offered here.
            return malformed("qop=auth is required (this proxy offers qop=\"auth\")")
        }
        guard qop.lowercased() == "auth" else {
            return .failure(
                AuthFailure(
                    reason: .malformedCredentials,
                    explanation: "qop=\(Self.safeName(qop)) is not offered here; answer with qop=auth",
                    presentedScheme: "digest"
                )
            )
        }
        guard let cnonce = values["cnonce"], !cnonce.isEmpty else {
            return malformed("the cnonce parameter is missing")
        }
        guard let ncText = values["nc"] else { return malformed("the nc parameter is missing") }
        guard ncText.utf8.count == 8, ncText.utf8.allSatisfy(HTTPGrammar.isHexDigit),
            let nc = UInt32(ncText, radix: 16), nc > 0
        else { return malformed("nc must be 8 hex digits, from 00000001") }
        var response = values["response"]!
        if response.utf8.contains(where: { $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "F") }) {
            response = response.lowercased()
        }
        guard response.utf8.count == algorithm.hexLength, response.utf8.allSatisfy(HTTPGrammar.isHexDigit) else {
            return malformed("response is not a \(algorithm) hash in hex")
        }
        return .success(
            DigestAuthorization(
                username: username,
                userhash: userhash,
                realm: values["realm"]!,
                nonce: values["nonce"]!,
                uri: values["uri"]!,
                response: response,
                algorithm: algorithm,
                cnonce: cnonce,
                nonceCountText: ncText.lowercased(),
                nonceCount: nc,
                opaque: values["opaque"]
            )
        )
    }

    /// The parameters of a Digest answer, by position: a dictionary cost more than the hashing.
    private struct Fields {
        static let names = [
            "username", "username*", "realm", "nonce", "uri", "response", "algorithm", "cnonce", "nc", "qop",
            "opaque", "userhash",
        ]
        var values = [String?](repeating: nil, count: Self.names.count)

        /// Case-insensitive (RFC 9110 §11.2: parameter names are).
        static func index(of name: String) -> Int? {
            Self.names.firstIndex { known in
                known.utf8.count == name.utf8.count
                    && zip(known.utf8, name.utf8).allSatisfy { $0 == HTTPGrammar.asciiLower($1) }
            }
        }

        subscript(_ name: String) -> String? {
            guard let index = Self.names.firstIndex(of: name) else { preconditionFailure("unknown field \(name)") }
            return self.values[index]
        }
    }

    /// A parameter name or token short and plain enough to repeat in a message.
    private static func safeName(_ s: String) -> String {
        s.utf8.count <= 32 && s.allSatisfy(HTTPGrammar.isTokenCharacter) ? s : "(unprintable)"
    }

    /// RFC 8187 `ext-value` with the UTF-8 charset: `UTF-8'[language]'percent-encoded`.
    static func decodeExtValue(_ value: String) -> String? {
        let parts = value.split(separator: "'", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0].uppercased() == "UTF-8" else { return nil }
        var bytes: [UInt8] = []
        var iterator = parts[2].utf8.makeIterator()
        while let c = iterator.next() {
            if c == UInt8(ascii: "%") {
                guard let h = iterator.next(), let l = iterator.next(), HTTPGrammar.isHexDigit(h),
                    HTTPGrammar.isHexDigit(l), let byte = UInt8(String(decoding: [h, l], as: UTF8.self), radix: 16)
                else { return nil }
                bytes.append(byte)
            } else {
                bytes.append(c)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }
}

extension DigestAlgorithm {
    /// Length of the algorithm's hashes in hex.
    public var hexLength: Int { self.hash == .md5 ? 32 : 64 }
}

/// The proxy's side of Digest (RFC 7616): challenges, stateless nonces, the expected response,
/// replay protection and `Proxy-Authentication-Info`.
///
/// Nonces carry their mint time and an HMAC under a key that instances sharing a store (or a
/// configured secret) share, so any of them can check any nonce without shared state. What is
/// per instance is the `nc` record against replay: a bounded table, see ``NonceCounts``.
public final class DigestAuthority: Sendable {
    public struct Settings: Sendable, Hashable {
        public var realm: String
        /// Offered in this order, each as its own challenge.
        public var algorithms: [DigestAlgorithm]
        /// How long a nonce may be used; after that a right answer gets `stale=true`.
        public var nonceLifetime: Int
        public var userhash: Bool
        /// Nonces whose `nc` values are remembered at once (memory bound: ~100 bytes each).
        public var maximumTrackedNonces: Int
        /// All Digest challenges in one `Proxy-Authenticate` field (the default) or one field each.
        ///
        /// One field, because of the clients people actually run: Python's urllib reads only the
        /// first `Proxy-Authenticate` field and knows only MD5, and curl (7.88) answers only the
        /// first field with Digest in it. Both read a field's parameters into one table where the
        /// last value wins, so with every challenge in one field, strongest first and MD5 last,
        /// they both answer MD5 and succeed, while clients that parse the list as RFC 9110 says
        /// take the first challenge they support (SHA-256). With one field per challenge, curl
        /// would use SHA-256 but urllib would fail on it. Measured with curl 7.88.1 and Python
        /// 3.11; see docs/ARCHITECTURE.md "Digest challenge layout".
        public var oneField: Bool

        public init(
            realm: String,
            algorithms: [DigestAlgorithm] = [DigestAlgorithm(hash: .sha256), DigestAlgorithm(hash: .md5)],
            nonceLifetime: Int = 600,
            userhash: Bool = true,
            maximumTrackedNonces: Int = 100_000,
            oneField: Bool = true
        ) {
            self.oneField = oneField
            self.realm = realm
            self.algorithms = algorithms
            self.nonceLifetime = nonceLifetime
            self.userhash = userhash
            self.maximumTrackedNonces = maximumTrackedNonces
        }
    }

    public enum NonceVerdict: Sendable, Hashable {
        /// Minted here (or by a sibling), in its lifetime, this `nc` not seen before. `age` in seconds.
        case valid(age: Int)
        /// Not one of ours, expired, or a replayed `nc`: a right answer gets a new nonce with `stale=true`.
        case stale(String)
    }

    public let settings: Settings
    private let key: SymmetricKey
    /// HMAC with the key already absorbed: copied for each nonce (a value type), which saves
    /// the key schedule that was a third of checking one.
    private let keyedHMAC: HMAC<SHA256>
    /// Also sent back unchanged by clients (RFC 7616 §3.3): derived from the key, so it is the
    /// same on every instance.
    public let opaque: String
    private let counts: NonceCounts
    private let realmBytes: [UInt8]
    private let clock: @Sendable () -> UInt64

    /// - Parameters:
    ///   - key: the nonce-signing key (at least 16 bytes).
    ///   - clock: milliseconds since 1970 (wall clock: nonces travel between instances).
    public init(
        settings: Settings,
        key: [UInt8],
        clock: @escaping @Sendable () -> UInt64 = { UInt64(Date().timeIntervalSince1970 * 1000) }
    ) {
        self.settings = settings
        self.key = SymmetricKey(data: key)
        self.keyedHMAC = HMAC<SHA256>(key: self.key)
        self.clock = clock
        self.realmBytes = Array(settings.realm.utf8)
        let opaqueMAC = HMAC<SHA256>.authenticationCode(for: Array("opaque:\(settings.realm)".utf8), using: self.key)
        self.opaque = DigestAlgorithm.hex(Array(opaqueMAC).prefix(12))
        self.counts = NonceCounts(maximum: settings.maximumTrackedNonces, floor: clock())
    }

    // MARK: Challenges

    /// `Proxy-Authenticate` field values: one challenge per offered algorithm, sharing one
    /// fresh nonce, in one field or one field each (``Settings/oneField``).
    public func challenges(stale: Bool = false) -> [String] {
        let nonce = self.mintNonce()
        let each = self.settings.algorithms.map { self.challenge(algorithm: $0, nonce: nonce, stale: stale) }
        return self.settings.oneField ? [each.joined(separator: ", ")] : each
    }

    func challenge(algorithm: DigestAlgorithm, nonce: String, stale: Bool) -> String {
        var text = "Digest realm=\(ProxyAuthGate.quoted(self.settings.realm)), qop=\"auth\", algorithm=\(algorithm)"
        text += ", nonce=\"\(nonce)\", opaque=\"\(self.opaque)\""
        if stale { text += ", stale=true" }
        text += ", charset=UTF-8"
        if self.settings.userhash { text += ", userhash=true" }
        return text
    }

    // MARK: Nonces

    /// base64url of: mint time (8 bytes, ms, big-endian) · 8 random bytes · first 16 bytes of
    /// HMAC-SHA256(key, the 16 bytes before · realm).
    public func mintNonce() -> String {
        var bytes = [UInt8](repeating: 0, count: 16)
        var time = self.clock().bigEndian
        withUnsafeBytes(of: &time) { bytes.replaceSubrange(0..<8, with: $0) }
        var generator = SystemRandomNumberGenerator()
        var random = generator.next() as UInt64
        withUnsafeBytes(of: &random) { bytes.replaceSubrange(8..<16, with: $0) }
        bytes += self.tag(bytes)
        return Base64URL.encode(bytes)
    }

    private func tag(_ body: [UInt8]) -> [UInt8] {
        var hmac = self.keyedHMAC
        hmac.update(data: body)
        hmac.update(data: self.realmBytes)
        return hmac.finalize().withUnsafeBytes { Array($0.prefix(16)) }
    }

    /// The mint time of a nonce this authority (or one sharing its key) made, else `nil`.
    func mintTime(of nonce: String) -> UInt64? {
        guard nonce.utf8.count == 43, let bytes = Base64URL.decode(nonce), bytes.count == 32 else { return nil }
        guard ConstantTime.equal(self.tag(Array(bytes[0..<16])), Array(bytes[16..<32])) else { return nil }
        return bytes[0..<8].reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// Checks a nonce and records its `nc`. Call only once the response proved right: a wrong
    /// answer must not use up a count.
    /// A nonce already in the replay record was verified when it entered it (its signature
    /// cannot change), so only a nonce seen for the first time pays the MAC.
    public func checkNonce(_ nonce: String, nonceCount: UInt32) -> NonceVerdict {
        guard let minted = self.counts.mintTime(of: nonce) ?? self.mintTime(of: nonce) else {
            return .stale("nonce not issued by this proxy")
        }
        let now = self.clock()
        let lifetime = UInt64(self.settings.nonceLifetime) * 1000
        guard minted <= now + 5_000 else { return .stale("nonce from the future") }
        guard now <= minted + lifetime else { return .stale("nonce expired") }
        switch self.counts.record(nonce: nonce, count: nonceCount, minted: minted, now: now, lifetime: lifetime) {
        case .fresh: return .valid(age: Int((now - min(now, minted)) / 1000))
        case .replayed: return .stale("nonce count replayed")
        case .forgotten: return .stale("nonce older than this proxy's replay record")
        }
    }

    // MARK: Responses

    /// The `response` a client that knows `ha1` must send (RFC 7616 §3.4.1, qop=auth).
    public func expectedResponse(_ authorization: DigestAuthorization, ha1: String, method: String) -> String {
        self.expectedResponse(authorization, ha1: ha1, ha2: self.requestHashes(authorization, method: method).ha2)
    }

    /// H(A2) of the request and of `rspauth` (RFC 7616 §3.4.3, §3.5): they depend only on the
    /// method, the uri and the algorithm, so a connection repeating a request reuses them.
    public struct RequestHashes: Sendable, Hashable {
        public var algorithm: DigestAlgorithm
        public var method: String
        public var uri: String
        public var ha2: String
        public var rspauthHA2: String
    }

    public func requestHashes(_ authorization: DigestAuthorization, method: String) -> RequestHashes {
        let a = authorization.algorithm
        return RequestHashes(
            algorithm: a,
            method: method,
            uri: authorization.uri,
            ha2: a.hex("\(method):\(authorization.uri)"),
            rspauthHA2: a.hex(":\(authorization.uri)")
        )
    }

    public func expectedResponse(_ authorization: DigestAuthorization, ha1: String, ha2: String) -> String {
        let a = authorization.algorithm
        return a.hex(
            "\(self.sessionKey(authorization, ha1: ha1)):\(authorization.nonce):\(authorization.nonceCountText):\(authorization.cnonce):auth:\(ha2)"
        )
    }

    /// `Proxy-Authentication-Info` for an accepted request (RFC 7616 §3.5): `rspauth` proves the
    /// proxy knows the secret too; `nextnonce` once the nonce is past half its lifetime.
    public func authenticationInfo(_ authorization: DigestAuthorization, ha1: String, nonceAge: Int) -> String {
        self.authenticationInfo(
            authorization,
            ha1: ha1,
            nonceAge: nonceAge,
            rspauthHA2: authorization.algorithm.hex(":\(authorization.uri)")
        )
    }

    public func authenticationInfo(
        _ authorization: DigestAuthorization,
        ha1: String,
        nonceAge: Int,
        rspauthHA2 ha2: String
    ) -> String {
        let a = authorization.algorithm
        let rspauth = a.hex(
            "\(self.sessionKey(authorization, ha1: ha1)):\(authorization.nonce):\(authorization.nonceCountText):\(authorization.cnonce):auth:\(ha2)"
        )
        var text = "qop=auth, rspauth=\"\(rspauth)\", cnonce=\(ProxyAuthGate.quoted(authorization.cnonce))"
        text += ", nc=\(authorization.nonceCountText)"
        if nonceAge * 2 >= self.settings.nonceLifetime { text = "nextnonce=\"\(self.mintNonce())\", " + text }
        return text
    }

    private func sessionKey(_ authorization: DigestAuthorization, ha1: String) -> String {
        guard authorization.algorithm.session else { return ha1 }
        return authorization.algorithm.hex("\(ha1):\(authorization.nonce):\(authorization.cnonce)")
    }

    /// Whether the `uri` parameter names this request (RFC 7616 §3.4.6): the authority for
    /// CONNECT; for an absolute-form request the absolute URI or its path and query (what curl
    /// sends).
    public static func uriMatches(_ uri: String, requestTarget: String, isConnect: Bool) -> Bool {
        if uri == requestTarget { return true }
        if isConnect { return uri.lowercased() == requestTarget.lowercased() }
        // The path and query of `scheme://authority[/path][?query]`.
        let target = requestTarget.utf8
        guard let colon = target.firstIndex(of: UInt8(ascii: ":")),
            target[colon...].starts(with: "://".utf8)
        else { return false }
        let authorityStart = target.index(colon, offsetBy: 3)
        guard
            let pathStart = target[authorityStart...].firstIndex(where: {
                $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?")
            })
        else { return uri == "/" }
        let path = target[pathStart...]
        if path.first == UInt8(ascii: "?") {
            return uri.utf8.first == UInt8(ascii: "/") && uri.utf8.dropFirst().elementsEqual(path)
        }
        return uri.utf8.elementsEqual(path)
    }
}

/// base64url without padding (RFC 4648 §5), for nonces: by hand because Foundation's base64 plus
/// three `replacingOccurrences` cost more than the rest of a Digest check.
enum Base64URL {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
    private static let values: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (i, c) in alphabet.enumerated() { table[Int(c)] = UInt8(i) }
        return table
    }()

    static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count * 4 + 2) / 3)
        var i = 0
        while i < bytes.count {
            let b0 = bytes[i]
            let b1 = i + 1 < bytes.count ? bytes[i + 1] : 0
            let b2 = i + 2 < bytes.count ? bytes[i + 2] : 0
            out.append(alphabet[Int(b0 >> 2)])
            out.append(alphabet[Int((b0 & 0x03) << 4 | b1 >> 4)])
            if i + 1 < bytes.count { out.append(alphabet[Int((b1 & 0x0F) << 2 | b2 >> 6)]) }
            if i + 2 < bytes.count { out.append(alphabet[Int(b2 & 0x3F)]) }
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func decode(_ text: String) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count * 3 / 4)
        var buffer: UInt32 = 0
        var bits = 0
        for c in text.utf8 {
            let v = values[Int(c)]
            guard v != 0xFF else { return nil }
            buffer = buffer << 6 | UInt32(v)
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: buffer >> UInt32(bits)))
            }
        }
        // Leftover bits must be zero padding (a canonical encoding), else it is not one of ours.
        guard bits < 6, buffer & ((1 << UInt32(bits)) - 1) == 0 else { return nil }
        return out
    }
}

/// Which `nc` values each live nonce has used, so a captured request cannot be replayed.
///
/// Per nonce: the highest count and a 64-bit window below it (counts may arrive out of order
/// when a client runs requests in parallel). Bounded: when the table is full, nonces past their
/// lifetime go; if it is still full, everything goes and the `floor` moves to now. A nonce minted
/// before the floor and not in the table is refused as stale — the client simply takes a new
/// one — so forgetting never lets a replay through. The floor starts at process start, so
/// after a restart old nonces are renewed once, not replayed.
final class NonceCounts: Sendable {
    enum Outcome { case fresh, replayed, forgotten }

    private struct Window {
        var highest: UInt32
        var seen: UInt64
        var minted: UInt64
    }

    private struct State {
        var windows: [String: Window] = [:]
        var floor: UInt64
    }

    private let maximum: Int
    private let state: NIOLockedValueBox<State>

    init(maximum: Int, floor: UInt64) {
        self.maximum = max(1, maximum)
        self.state = NIOLockedValueBox(State(floor: floor))
    }

    /// The mint time of a nonce in the record (verified when it entered), else `nil`.
    func mintTime(of nonce: String) -> UInt64? {
        self.state.withLockedValue { $0.windows[nonce]?.minted }
    }

    func record(nonce: String, count: UInt32, minted: UInt64, now: UInt64, lifetime: UInt64) -> Outcome {
        self.state.withLockedValue { state in
            guard var window = state.windows[nonce] else {
                guard minted >= state.floor else { return .forgotten }
                if state.windows.count >= self.maximum {
                    state.windows = state.windows.filter { $0.value.minted + lifetime >= now }
                    if state.windows.count >= self.maximum {
                        state.windows.removeAll(keepingCapacity: true)
                        state.floor = now
                        return .forgotten
                    }
                }
                state.windows[nonce] = Window(highest: count, seen: 1, minted: minted)
                return .fresh
            }
            if count > window.highest {
                let shift = count - window.highest
                window.seen = shift >= 64 ? 1 : (window.seen << UInt64(shift)) | 1
                window.highest = count
            } else {
                let offset = window.highest - count
                guard offset < 64 else { return .replayed }
                let bit: UInt64 = 1 << UInt64(offset)
                guard window.seen & bit == 0 else { return .replayed }
                window.seen |= bit
            }
            state.windows[nonce] = window
            return .fresh
        }
    }

    var count: Int { self.state.withLockedValue { $0.windows.count } }
}
