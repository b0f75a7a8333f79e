import Crypto
import CryptoExtras
import Foundation

/// The hash algorithms of HTTP Digest (RFC 7616 §3.2 and the IANA registry), each with its
/// `-sess` variant.
public struct DigestAlgorithm: Sendable, Hashable, CustomStringConvertible {
    public enum Hash: String, Sendable, Hashable, CaseIterable {
        case md5 = "MD5"
        case sha256 = "SHA-256"
        case sha512_256 = "SHA-512-256"
    }

    public var hash: Hash
    public var session: Bool

    public init(hash: Hash, session: Bool = false) {
        self.hash = hash
        self.session = session
    }

    /// The token as it appears in `algorithm=` (case-insensitive on input). An absent parameter
    /// means MD5 (RFC 7616 §3.3).
    public init?(token: String?) {
        guard let token else {
            self.init(hash: .md5)
            return
        }
        var name = token.uppercased()
        var session = false
        if name.hasSuffix("-SESS") {
            session = true
            name.removeLast(5)
        }
        guard let hash = Hash(rawValue: name) else { return nil }
        self.init(hash: hash, session: session)
    }

    public var description: String { self.hash.rawValue + (self.session ? "-sess" : "") }

    /// Length of the algorithm's hashes in hex.
    public var hexLength: Int { self.hash == .md5 ? 32 : 64 }

    /// Lower-case hex of the hash of `text` (UTF-8).
    public func hex(_ text: String) -> String {
        var text = text
        return text.withUTF8 { bytes in
            String(unsafeUninitializedCapacity: self.hexLength) { self.hex(of: bytes, into: $0) }
        }
    }

    /// Lower-case hex of the hash of `bytes`.
    public func hex(bytes: [UInt8]) -> String {
        bytes.withUnsafeBufferPointer { bytes in
            String(unsafeUninitializedCapacity: self.hexLength) { self.hex(of: bytes, into: $0) }
        }
    }

    static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        let bytes = Array(digest)
        return String(unsafeUninitializedCapacity: bytes.count * 2) { out in
            bytes.withUnsafeBytes { Self.writeHex($0, into: out) }
        }
    }
}

/// The hashing itself, over bytes: the proxy's hot path (a Digest answer costs two of these)
/// builds no String and no `Data`.
extension DigestAlgorithm {
    /// Lower-case hex of the hash of `input` into `out` (at least ``hexLength`` bytes); returns
    /// ``hexLength``.
    func hex(of input: UnsafeBufferPointer<UInt8>, into out: UnsafeMutableBufferPointer<UInt8>) -> Int {
        let raw = UnsafeRawBufferPointer(input)
        switch self.hash {
        case .md5:
            var hasher = Insecure.MD5()
            hasher.update(bufferPointer: raw)
            return hasher.finalize().withUnsafeBytes { Self.writeHex($0, into: out) }
        case .sha256:
            var hasher = SHA256()
            hasher.update(bufferPointer: raw)
            return hasher.finalize().withUnsafeBytes { Self.writeHex($0, into: out) }
        case .sha512_256:
            var hasher = SHA512256()
            hasher.update(bufferPointer: raw)
            return hasher.finalize().withUnsafeBytes { Self.writeHex($0, into: out) }
        }
    }

    /// ``hex(of:into:)`` of the parts joined by ":".
    func hex(
        colonJoining p0: UnsafeBufferPointer<UInt8>,
        _ p1: UnsafeBufferPointer<UInt8>,
        _ p2: UnsafeBufferPointer<UInt8>,
        _ p3: UnsafeBufferPointer<UInt8> = .init(start: nil, count: 0),
        _ p4: UnsafeBufferPointer<UInt8> = .init(start: nil, count: 0),
        _ p5: UnsafeBufferPointer<UInt8> = .init(start: nil, count: 0),
        into out: UnsafeMutableBufferPointer<UInt8>
    ) -> Int {
        let parts = p3.baseAddress == nil ? 3 : 6
        let total = p0.count + p1.count + p2.count + p3.count + p4.count + p5.count + parts - 1
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: total) { joined in
            var w = 0
            func put(_ part: UnsafeBufferPointer<UInt8>, colon: Bool) {
                if colon {
                    joined[w] = UInt8(ascii: ":")
                    w += 1
                }
                if let source = part.baseAddress, part.count > 0 {
                    (joined.baseAddress! + w).update(from: source, count: part.count)
                    w += part.count
                }
            }
            put(p0, colon: false)
            put(p1, colon: true)
            put(p2, colon: true)
            if parts == 6 {
                put(p3, colon: true)
                put(p4, colon: true)
                put(p5, colon: true)
            }
            return self.hex(of: UnsafeBufferPointer(rebasing: joined[0..<w]), into: out)
        }
    }

    /// Lower-case hex of `bytes`, as bytes.
    func hexBytes(_ bytes: [UInt8]) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: self.hexLength) { out, count in
            count = bytes.withUnsafeBufferPointer { self.hex(of: $0, into: out) }
        }
    }

    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    static func writeHex(_ digest: UnsafeRawBufferPointer, into out: UnsafeMutableBufferPointer<UInt8>) -> Int {
        Self.hexDigits.withUnsafeBufferPointer { digits in
            for (i, byte) in digest.enumerated() {
                out[2 * i] = digits[Int(byte >> 4)]
                out[2 * i + 1] = digits[Int(byte & 0x0F)]
            }
        }
        return digest.count * 2
    }
}

/// A Digest challenge (RFC 7616 §3.3) read from a parsed ``Challenge``.
public struct DigestChallenge: Sendable, Hashable {
    public var realm: String
    public var nonce: String
    public var opaque: String?
    /// `nil` when the token is not a known algorithm.
    public var algorithm: DigestAlgorithm?
    public var algorithmToken: String?
    /// qop options offered (`auth`, `auth-int`), lower-cased; empty for an RFC 2069 challenge.
    public var qop: [String]
    public var stale: Bool
    public var userhash: Bool
    public var charsetUTF8: Bool

    /// Reads a Digest challenge; `nil` when it is not one or lacks realm or nonce.
    public init?(_ challenge: Challenge) {
        guard challenge.schemeIs("Digest"), let realm = challenge.parameter("realm"),
            let nonce = challenge.parameter("nonce")
        else { return nil }
        self.realm = realm
        self.nonce = nonce
        self.opaque = challenge.parameter("opaque")
        self.algorithmToken = challenge.parameter("algorithm")
        self.algorithm = DigestAlgorithm(token: self.algorithmToken)
        self.qop =
            challenge.parameter("qop")?.split(separator: ",")
            .map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
            .filter { !$0.isEmpty } ?? []
        self.stale = challenge.parameter("stale")?.lowercased() == "true"
        self.userhash = challenge.parameter("userhash")?.lowercased() == "true"
        self.charsetUTF8 = challenge.parameter("charset")?.uppercased() == "UTF-8"
    }
}

/// Computes the answer to a Digest challenge (RFC 7616 §3.4), the client's side.
public struct DigestResponder: Sendable {
    public var challenge: DigestChallenge
    public var algorithm: DigestAlgorithm
    public var user: String
    public var password: String

    public init?(challenge: DigestChallenge, user: String, password: String) {
        guard let algorithm = challenge.algorithm else { return nil }
        // Only qop=auth is answered; auth-int needs the body, and a proxy challenge for a
        // CONNECT or GET has none worth hashing.
        guard challenge.qop.isEmpty || challenge.qop.contains("auth") else { return nil }
        self.challenge = challenge
        self.algorithm = algorithm
        self.user = user
        self.password = password
    }

    /// The `response=` value for one request.
    public func response(method: String, uri: String, nonceCount: Int, cnonce: String) -> String {
        let c = self.challenge
        var ha1 = self.algorithm.hex("\(self.user):\(c.realm):\(self.password)")
        if self.algorithm.session {
            ha1 = self.algorithm.hex("\(ha1):\(c.nonce):\(cnonce)")
        }
        let ha2 = self.algorithm.hex("\(method):\(uri)")
        if c.qop.isEmpty {
            // RFC 2069 compatibility: no qop, no nc, no cnonce.
            return self.algorithm.hex("\(ha1):\(c.nonce):\(ha2)")
        }
        return self.algorithm.hex("\(ha1):\(c.nonce):\(Self.nc(nonceCount)):\(cnonce):auth:\(ha2)")
    }

    /// The whole `Proxy-Authorization` value for one request.
    public func authorization(method: String, uri: String, nonceCount: Int, cnonce: String) -> String {
        let c = self.challenge
        var parts: [String] = []
        if c.userhash {
            parts.append("username=\(ProxyAuthGate.quoted(self.algorithm.hex("\(self.user):\(c.realm)")))")
        } else if self.user.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) {
            parts.append("username=\(ProxyAuthGate.quoted(self.user))")
        } else {
            // RFC 7616 §3.4.4: a name that is not ASCII goes in username* (RFC 8187 encoding).
            parts.append("username*=UTF-8''\(Self.rfc8187(self.user))")
        }
        parts.append("realm=\(ProxyAuthGate.quoted(c.realm))")
        parts.append("uri=\(ProxyAuthGate.quoted(uri))")
        parts.append("algorithm=\(c.algorithmToken ?? self.algorithm.description)")
        parts.append("nonce=\(ProxyAuthGate.quoted(c.nonce))")
        if !c.qop.isEmpty {
            parts.append("nc=\(Self.nc(nonceCount))")
            parts.append("cnonce=\(ProxyAuthGate.quoted(cnonce))")
            parts.append("qop=auth")
        }
        parts.append(
            "response=\(ProxyAuthGate.quoted(self.response(method: method, uri: uri, nonceCount: nonceCount, cnonce: cnonce)))"
        )
        if let opaque = c.opaque { parts.append("opaque=\(ProxyAuthGate.quoted(opaque))") }
        if c.userhash { parts.append("userhash=true") }
        return "Digest " + parts.joined(separator: ", ")
    }

    static func nc(_ count: Int) -> String {
        let hex = String(count, radix: 16)
        return String(repeating: "0", count: max(0, 8 - hex.count)) + hex
    }

    static func rfc8187(_ s: String) -> String {
        var out = ""
        for byte in s.utf8 {
            let c = Character(Unicode.Scalar(byte))
            if byte < 0x80, c.isLetter || c.isNumber || "!#$&+-.^_`|~".contains(c) {
                out.append(c)
            } else {
                out += String(format: "%%%02X", byte)
            }
        }
        return out
    }
}
