/// What a failed TLS exchange left behind, as the probe saw it: BoringSSL's reasons, the first
/// bytes the peer sent, and the peer's certificate. Diagnosis explains a failure from this
/// evidence alone (``Diagnosis/proxyTLSFinding(_:)``); the probe draws no conclusion from it.
struct TLSEvidence: Sendable, Equatable {
    /// BoringSSL's reason tokens, in order (`CERTIFICATE_VERIFY_FAILED`,
    /// `TLSV1_ALERT_CERTIFICATE_REQUIRED`, `WRONG_VERSION_NUMBER`, …).
    var reasons: [String] = []
    /// The chain verified but none of the certificate's names is the host of the URL (NIOSSL
    /// checks the name after BoringSSL has verified the chain).
    var hostnameMismatch = false
    /// The first bytes the peer sent on this connection (or since the tunnel opened), at most
    /// ``TLSPeerWatcher/keptBytes``.
    var peerBytes: [UInt8] = []
    /// The peer's plaintext handshake (TLS 1.2) held a CertificateRequest. TLS 1.3 encrypts it:
    /// there the proxy's `certificate_required` alert is the evidence.
    var certificateRequested = false
    /// A plaintext alert the peer sent (its description code), when one was seen on the wire.
    var alertSeen: UInt8?
    /// This client had a certificate to send (`--proxy-cert`).
    var clientCertificateOffered = false
    /// The certificate the peer presented, read by a second handshake that only looks at it
    /// (made when verification failed).
    var peerCertificate: PeerCertificate?
    /// When the probe looked, seconds since 1970: the reference for the certificate's dates.
    var checkedAt: Double = 0
    /// When the peer answered the handshake with nothing at all (a timeout, or a close): its
    /// answer (`400 Bad Request`) to a plain HTTP request on a new connection, if it gave one.
    var plainAnswer: String?
    /// When a plain HTTP request got no answer at all (a reset, a close): the port answered a
    /// TLS ClientHello on a new connection with a TLS handshake.
    var tlsAnswered = false

    /// Whether a reason names an alert the peer sent (BoringSSL spells those `…_ALERT_…`).
    func receivedAlert(_ names: String...) -> String? {
        self.receivedAlert(anyOf: names)
    }

    func receivedAlert(anyOf names: [String]) -> String? {
        self.reasons.first { reason in names.contains { reason.hasSuffix("ALERT_" + $0) } }
    }

    /// Whether the peer's first bytes are HTTP rather than a TLS record.
    var peerSpokeHTTP: Bool {
        let text = String(decoding: self.peerBytes.prefix(5), as: UTF8.self)
        return text == "HTTP/"
    }
}

/// The names and dates of a certificate, as far as diagnosis explains them.
struct PeerCertificate: Sendable, Equatable {
    /// The subject's and the issuer's common names (or whole names when they have none).
    var subject: String
    var issuer: String
    var commonName: String?
    var dnsNames: [String]
    var ipAddresses: [String]
    /// Seconds since 1970.
    var notBefore: Double
    var notAfter: Double

    /// The names a client can reach it by: DNS and IP subject alternative names, or the common
    /// name when there are none (as old clients do).
    var names: [String] {
        let alternative = self.dnsNames + self.ipAddresses
        return alternative.isEmpty ? [self.commonName].compactMap { $0 } : alternative
    }
}

/// Reads the start of what a TLS peer sends: the first bytes (to tell HTTP text from a TLS
/// record), a plaintext alert, and whether a TLS 1.2 server asked for a client certificate.
/// It sits next to the socket and passes every byte on unchanged.
enum TLSRecordReader {
    static let handshake: UInt8 = 22
    static let alert: UInt8 = 21
    static let changeCipherSpec: UInt8 = 20
    static let certificateRequest: UInt8 = 13

    struct Seen: Sendable, Equatable {
        var certificateRequested = false
        var alert: UInt8?
    }

    /// Walks the plaintext records at the start of `bytes` (stopping at the first encrypted or
    /// incomplete one) and reports a CertificateRequest among the handshake messages, or an alert.
    static func read(_ bytes: [UInt8]) -> Seen {
        var seen = Seen()
        var handshakeBytes: [UInt8] = []
        var i = 0
        while i + 5 <= bytes.count, bytes[i + 1] == 3 {
            let type = bytes[i]
            let length = Int(bytes[i + 3]) << 8 | Int(bytes[i + 4])
            guard i + 5 + length <= bytes.count else { break }
            let payload = bytes[(i + 5)..<(i + 5 + length)]
            if type == Self.handshake {
                handshakeBytes += payload
            } else if type == Self.alert, payload.count >= 2 {
                seen.alert = payload[payload.startIndex + 1]
                break
            } else {
                // ChangeCipherSpec or application data: what follows is encrypted.
                break
            }
            i += 5 + length
        }
        var j = 0
        while j + 4 <= handshakeBytes.count {
            if handshakeBytes[j] == Self.certificateRequest { seen.certificateRequested = true }
            let length = Int(handshakeBytes[j + 1]) << 16 | Int(handshakeBytes[j + 2]) << 8 | Int(handshakeBytes[j + 3])
            j += 4 + length
        }
        return seen
    }
}
