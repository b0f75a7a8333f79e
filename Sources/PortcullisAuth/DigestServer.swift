import Crypto
import Foundation
import NIOConcurrencyHelpers

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
    /// The realm's and the opaque's bytes, to compare answers with.
    public let realmBytes: [UInt8]
    public let opaqueBytes: [UInt8]
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
        self.opaqueBytes = Array(self.opaque.utf8)
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
        bytes.withUnsafeBytes { body in
            self.withTag(body) { bytes += $0 }
        }
        return Base64URL.encode(bytes)
    }

    private func withTag<R>(_ body: UnsafeRawBufferPointer, _ use: (UnsafeRawBufferPointer) -> R) -> R {
        var hmac = self.keyedHMAC
        hmac.update(data: body)
        hmac.update(data: self.realmBytes)
        return hmac.finalize().withUnsafeBytes { use(UnsafeRawBufferPointer(rebasing: $0.prefix(16))) }
    }

    /// Whether a decoded nonce carries this authority's signature.
    private func isSigned(_ nonce: NonceKey) -> Bool {
        nonce.withBytes { bytes in
            self.withTag(UnsafeRawBufferPointer(rebasing: bytes[0..<16])) { tag in
                ConstantTime.equal(
                    tag.assumingMemoryBound(to: UInt8.self),
                    UnsafeRawBufferPointer(rebasing: bytes[16..<32]).assumingMemoryBound(to: UInt8.self)
                )
            }
        }
    }

    /// Checks a nonce and records its `nc`. Call only once the response proved right: a wrong
    /// answer must not use up a count.
    public func checkNonce(_ nonce: String, nonceCount: UInt32) -> NonceVerdict {
        var nonce = nonce
        return nonce.withUTF8 { self.checkNonce(text: $0, nonceCount: nonceCount) }
    }

    /// ``checkNonce(_:nonceCount:)`` for the nonce of an answer.
    public func checkNonce(of authorization: DigestAuthorization) -> NonceVerdict {
        authorization.withBytes(authorization.spans.nonce) {
            self.checkNonce(text: $0, nonceCount: authorization.nonceCount)
        }
    }

    /// A nonce already in the replay record was verified when it entered it (its signature
    /// cannot change), so only a nonce seen for the first time pays the MAC, and a known one
    /// costs one lock.
    func checkNonce(text: UnsafeBufferPointer<UInt8>, nonceCount: UInt32) -> NonceVerdict {
        guard let key = NonceKey(base64URL: text) else { return .stale("nonce not issued by this proxy") }
        let now = self.clock()
        let lifetime = UInt64(self.settings.nonceLifetime) * 1000
        let minted = key.mintTime
        let untimely: String? =
            minted > now + 5_000 ? "nonce from the future" : now > minted + lifetime ? "nonce expired" : nil
        var outcome = self.counts.recordIfKnown(key, count: nonceCount, record: untimely == nil)
        if outcome == nil {
            guard self.isSigned(key) else { return .stale("nonce not issued by this proxy") }
            if untimely == nil {
                outcome = self.counts.record(key, count: nonceCount, now: now, lifetime: lifetime)
            }
        }
        if let untimely { return .stale(untimely) }
        switch outcome! {
        case .fresh: return .valid(age: Int((now - min(now, minted)) / 1000))
        case .replayed: return .stale("nonce count replayed")
        case .forgotten: return .stale("nonce older than this proxy's replay record")
        }
    }

    // MARK: Responses

    /// The `response` a client that knows `ha1` must send (RFC 7616 §3.4.1, qop=auth).
    public func expectedResponse(_ authorization: DigestAuthorization, ha1: String, method: String) -> String {
        let ha2 = self.requestHashes(authorization, method: Array(method.utf8)).ha2
        return String(unsafeUninitializedCapacity: 64) { self.answer(authorization, ha1: ha1, ha2: ha2, into: $0) }
    }

    /// H(A2) of the request and of `rspauth` (RFC 7616 §3.4.3, §3.5), in hex: they depend only
    /// on the method, the uri and the algorithm, so a connection repeating a request reuses them.
    public struct RequestHashes: Sendable, Hashable {
        public let algorithm: DigestAlgorithm
        let method: [UInt8]
        let uri: [UInt8]
        let ha2: [UInt8]
        let rspauthHA2: [UInt8]

        /// Whether these are the hashes of `authorization` on a request with this method.
        public func matches(_ authorization: DigestAuthorization, method: UnsafeBufferPointer<UInt8>) -> Bool {
            self.algorithm == authorization.algorithm && authorization.equals(authorization.spans.uri, self.uri)
                && self.method.withUnsafeBufferPointer { $0.elementsEqual(method) }
        }
    }

    public func requestHashes(_ authorization: DigestAuthorization, method: [UInt8]) -> RequestHashes {
        let a = authorization.algorithm
        let uri = authorization.array(authorization.spans.uri)
        return RequestHashes(
            algorithm: a,
            method: method,
            uri: uri,
            ha2: a.hexBytes(method + [UInt8(ascii: ":")] + uri),
            rspauthHA2: a.hexBytes([UInt8(ascii: ":")] + uri)
        )
    }

    /// Whether the answer is the one a client knowing `ha1` computes, in constant time.
    public func responseMatches(_ authorization: DigestAuthorization, ha1: String, hashes: RequestHashes) -> Bool {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 64) { out in
            let count = self.answer(authorization, ha1: ha1, ha2: hashes.ha2, into: out)
            return authorization.withBytes(authorization.spans.response) { sent in
                ConstantTime.equal(UnsafeBufferPointer(rebasing: out[0..<count]), sent)
            }
        }
    }

    /// H(key:nonce:nc:cnonce:auth:ha2) in hex into `out` (64 bytes); returns its length. The key
    /// is HA1, or for `-sess` H(HA1:nonce:cnonce) (RFC 7616 §3.4.2).
    private func answer(
        _ authorization: DigestAuthorization,
        ha1: String,
        ha2: [UInt8],
        into out: UnsafeMutableBufferPointer<UInt8>
    ) -> Int {
        let a = authorization.algorithm
        var ha1 = ha1
        return ha1.withUTF8 { ha1 in
            authorization.bytes.withUnsafeBufferPointer { field in
                let nonce = UnsafeBufferPointer(
                    rebasing: field[authorization.spans.nonce.start..<authorization.spans.nonce.end]
                )
                let cnonce = UnsafeBufferPointer(
                    rebasing: field[authorization.spans.cnonce.start..<authorization.spans.cnonce.end]
                )
                let nc = UnsafeBufferPointer(
                    rebasing: field[authorization.spans.nc.start..<authorization.spans.nc.end]
                )
                return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 64) { sessionKey in
                    var key = ha1
                    if a.session {
                        let count = a.hex(colonJoining: ha1, nonce, cnonce, into: sessionKey)
                        key = UnsafeBufferPointer(rebasing: sessionKey[0..<count])
                    }
                    return ha2.withUnsafeBufferPointer { ha2 in
                        Self.qopAuth.withUnsafeBufferPointer { auth in
                            a.hex(colonJoining: key, nonce, nc, cnonce, auth, ha2, into: out)
                        }
                    }
                }
            }
        }
    }

    /// "auth", between the colons that surround it in the answer's hash input.
    private static let qopAuth: [UInt8] = Array("auth".utf8)

    /// `Proxy-Authentication-Info` for an accepted request (RFC 7616 §3.5): `rspauth` proves the
    /// proxy knows the secret too; `nextnonce` once the nonce is past half its lifetime.
    public func authenticationInfo(_ authorization: DigestAuthorization, ha1: String, nonceAge: Int) -> String {
        let info = self.authenticationInfoBytes(
            authorization,
            ha1: ha1,
            nonceAge: nonceAge,
            hashes: self.requestHashes(authorization, method: [])
        )
        return String(decoding: info, as: UTF8.self)
    }

    /// ``authenticationInfo(_:ha1:nonceAge:)`` as the bytes of the field value, with the
    /// request's hashes (a connection keeps them).
    public func authenticationInfoBytes(
        _ authorization: DigestAuthorization,
        ha1: String,
        nonceAge: Int,
        hashes: RequestHashes
    ) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(120 + authorization.spans.cnonce.count)
        if nonceAge * 2 >= self.settings.nonceLifetime {
            out += "nextnonce=\"".utf8
            out += self.mintNonce().utf8
            out += "\", ".utf8
        }
        out += "qop=auth, rspauth=\"".utf8
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 64) { hex in
            let count = self.answer(authorization, ha1: ha1, ha2: hashes.rspauthHA2, into: hex)
            out += UnsafeBufferPointer(rebasing: hex[0..<count])
        }
        out += "\", cnonce=".utf8
        authorization.withBytes(authorization.spans.cnonce) { ProxyAuthGate.appendQuoted($0, to: &out) }
        out += ", nc=".utf8
        authorization.withBytes(authorization.spans.nc) { out += $0 }
        return out
    }

    /// Whether the `uri` parameter names this request (RFC 7616 §3.4.6): the authority for
    /// CONNECT; for an absolute-form request the absolute URI or its path and query (what curl
    /// sends).
    public static func uriMatches(_ uri: String, requestTarget: String, isConnect: Bool) -> Bool {
        var uri = uri
        return uri.withUTF8 { Self.uriMatches($0, requestTarget: requestTarget, isConnect: isConnect) }
    }

    /// ``uriMatches(_:requestTarget:isConnect:)`` for the `uri` of an answer.
    public static func uriMatches(_ authorization: DigestAuthorization, requestTarget: String, isConnect: Bool) -> Bool
    {
        authorization.withBytes(authorization.spans.uri) {
            Self.uriMatches($0, requestTarget: requestTarget, isConnect: isConnect)
        }
    }

    static func uriMatches(_ uri: UnsafeBufferPointer<UInt8>, requestTarget: String, isConnect: Bool) -> Bool {
        var requestTarget = requestTarget
        return requestTarget.withUTF8 { target in
            if uri.elementsEqual(target) { return true }
            if isConnect {
                return uri.count == target.count
                    && zip(uri, target).allSatisfy { HTTPGrammar.asciiLower($0) == HTTPGrammar.asciiLower($1) }
            }
            // The path and query of `scheme://authority[/path][?query]`.
            guard let colon = target.firstIndex(of: UInt8(ascii: ":")),
                target[colon...].starts(with: "://".utf8)
            else { return false }
            let authorityStart = colon + 3
            guard
                let pathStart = target[authorityStart...].firstIndex(where: {
                    $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?")
                })
            else { return uri.count == 1 && uri[0] == UInt8(ascii: "/") }
            let path = target[pathStart...]
            if path.first == UInt8(ascii: "?") {
                return uri.first == UInt8(ascii: "/") && uri.dropFirst().elementsEqual(path)
            }
            return uri.elementsEqual(path)
        }
    }
}

/// base64url without padding (RFC 4648 §5), for nonces: by hand because Foundation's base64 plus
/// three `replacingOccurrences` cost more than the rest of a Digest check.
enum Base64URL {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

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

    @inline(__always)
    /// The 6-bit value of a base64url character, else 0xFF (by ranges: no table to load per
    /// character of every nonce checked).
    static func value(of c: UInt8) -> UInt8 {
        switch c {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): return c - UInt8(ascii: "A")
        case UInt8(ascii: "a")...UInt8(ascii: "z"): return c - UInt8(ascii: "a") + 26
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0") + 52
        case UInt8(ascii: "-"): return 62
        case UInt8(ascii: "_"): return 63
        default: return 0xFF
        }
    }

    static func decode(_ text: String) -> [UInt8]? {
        var text = text
        return text.withUTF8 { text in
            var out = [UInt8](repeating: 0, count: text.count * 3 / 4)
            guard let count = out.withUnsafeMutableBytes({ Self.decode(text, into: $0) }) else { return nil }
            out.removeLast(out.count - count)
            return out
        }
    }

    /// Decodes into `out` (room for `text.count * 3 / 4` bytes); returns the byte count, or
    /// `nil` for a character outside the alphabet or non-zero leftover bits (not a canonical
    /// encoding, so not one of ours).
    static func decode(_ text: UnsafeBufferPointer<UInt8>, into out: UnsafeMutableRawBufferPointer) -> Int? {
        precondition(out.count >= text.count * 3 / 4)
        var buffer: UInt32 = 0
        var bits = 0
        var count = 0
        for c in text {
            let v = Self.value(of: c)
            guard v != 0xFF else { return nil }
            buffer = buffer << 6 | UInt32(v)
            bits += 6
            if bits >= 8 {
                bits -= 8
                out[count] = UInt8(truncatingIfNeeded: buffer >> UInt32(bits))
                count += 1
            }
        }
        guard bits < 6, buffer & ((1 << UInt32(bits)) - 1) == 0 else { return nil }
        return count
    }
}

/// A nonce of ours, decoded: mint time · random · tag (see ``DigestAuthority/mintNonce()``).
typealias NonceKey = Key256

extension Key256 {
    /// Milliseconds since 1970, as minted (only meaningful once the tag is checked).
    var mintTime: UInt64 {
        self.withBytes { bytes in bytes[0..<8].reduce(0) { $0 << 8 | UInt64($1) } }
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
    }

    private struct State {
        var windows: [NonceKey: Window] = [:]
        var floor: UInt64
    }

    private let maximum: Int
    private let state: NIOLockedValueBox<State>

    init(maximum: Int, floor: UInt64) {
        self.maximum = max(1, maximum)
        self.state = NIOLockedValueBox(State(floor: floor))
    }

    /// For a nonce in the record (its signature was checked when it entered): its count's
    /// outcome, recorded when `record` is set. `nil` for a nonce not in the record.
    func recordIfKnown(_ nonce: NonceKey, count: UInt32, record: Bool) -> Outcome? {
        self.state.withLockedValue { state in
            guard var window = state.windows[nonce] else { return nil }
            let outcome = Self.note(count, in: &window)
            if record, outcome == .fresh { state.windows[nonce] = window }
            return outcome
        }
    }

    /// Records a count of a nonce whose signature was checked.
    func record(_ nonce: NonceKey, count: UInt32, now: UInt64, lifetime: UInt64) -> Outcome {
        self.state.withLockedValue { state in
            if var window = state.windows[nonce] {
                // Another connection entered it meanwhile.
                let outcome = Self.note(count, in: &window)
                state.windows[nonce] = window
                return outcome
            }
            guard nonce.mintTime >= state.floor else { return .forgotten }
            if state.windows.count >= self.maximum {
                state.windows = state.windows.filter { $0.key.mintTime + lifetime >= now }
                if state.windows.count >= self.maximum {
                    state.windows.removeAll(keepingCapacity: true)
                    state.floor = now
                    return .forgotten
                }
            }
            state.windows[nonce] = Window(highest: count, seen: 1)
            return .fresh
        }
    }

    private static func note(_ count: UInt32, in window: inout Window) -> Outcome {
        if count > window.highest {
            let shift = count - window.highest
            window.seen = shift >= 64 ? 1 : (window.seen << UInt64(shift)) | 1
            window.highest = count
            return .fresh
        }
        let offset = window.highest - count
        guard offset < 64 else { return .replayed }
        let bit: UInt64 = 1 << UInt64(offset)
        guard window.seen & bit == 0 else { return .replayed }
        window.seen |= bit
        return .fresh
    }

    var count: Int { self.state.withLockedValue { $0.windows.count } }
}
