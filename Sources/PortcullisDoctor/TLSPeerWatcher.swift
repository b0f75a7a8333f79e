import Foundation
import NIOCore
import NIOSSL

/// Keeps a copy of the first bytes the peer sends, next to the socket (before any TLS
/// handler), and passes them on unchanged: the evidence that tells "the peer answered in HTTP"
/// or "the peer sent a TLS alert" from a timeout or a reset.
final class TLSPeerWatcher: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// Enough for the records before a TLS 1.2 server's ServerHelloDone with a long chain.
    static let keptBytes = 16 * 1024

    private(set) var bytes: [UInt8] = []

    /// Starts again: a tunnel's TLS begins after the proxy's CONNECT response.
    func reset() {
        self.bytes = []
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = self.unwrapInboundIn(data)
        if self.bytes.count < Self.keptBytes {
            self.bytes += buffer.readableBytesView.prefix(Self.keptBytes - self.bytes.count)
        }
        context.fireChannelRead(data)
    }
}

extension TLSEvidence {
    /// The evidence in a TLS error, with what the watcher saw on the wire.
    init(error: (any Error)?, peerBytes: [UInt8], clientCertificateOffered: Bool = false, checkedAt: Double = 0) {
        if let error {
            self.reasons = Self.reasonTokens("\(error)")
            self.hostnameMismatch = (error as? NIOSSLExtraError) == .failedToValidateHostname
        }
        self.peerBytes = Array(peerBytes.prefix(64))
        let seen = TLSRecordReader.read(peerBytes)
        self.certificateRequested = seen.certificateRequested
        self.alertSeen = seen.alert
        self.clientCertificateOffered = clientCertificateOffered
        self.checkedAt = checkedAt
    }

    /// BoringSSL's reason tokens in an error's text (`…:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED`).
    static func reasonTokens(_ text: String) -> [String] {
        var tokens: [String] = []
        var rest = text[...]
        while let range = rest.range(of: "OPENSSL_internal:") {
            let token = rest[range.upperBound...].prefix { $0.isUppercase || $0.isNumber || $0 == "_" }
            if !token.isEmpty && !tokens.contains(String(token)) { tokens.append(String(token)) }
            rest = rest[range.upperBound...]
        }
        return tokens
    }

    /// Whether the error means BoringSSL did not accept the peer's certificate (chain, dates or
    /// names): then a second look at the certificate explains which.
    var isVerificationFailure: Bool {
        self.hostnameMismatch || self.reasons.contains("CERTIFICATE_VERIFY_FAILED")
    }
}

extension PeerCertificate {
    init(_ certificate: NIOSSLCertificate) {
        func name(_ parts: [SSLCertificateName]) -> String {
            parts.first { $0.type == .commonName }?.value
                ?? parts.map(\.value).joined(separator: ", ")
        }
        var dnsNames: [String] = []
        var ipAddresses: [String] = []
        for alternative in certificate._subjectAlternativeNames() {
            switch alternative.nameType {
            case .dnsName:
                dnsNames.append(String(decoding: alternative.contents, as: UTF8.self))
            case .ipAddress:
                if let address = Self.ipAddress(Array(alternative.contents)) { ipAddresses.append(address) }
            default:
                break
            }
        }
        self.init(
            subject: name(certificate.subjectName),
            issuer: name(certificate.issuerName),
            commonName: certificate.subjectName.first { $0.type == .commonName }?.value,
            dnsNames: dnsNames,
            ipAddresses: ipAddresses,
            notBefore: Double(certificate.notValidBefore),
            notAfter: Double(certificate.notValidAfter)
        )
    }

    /// An IP address name's 4 or 16 bytes, written as `inet_ntop` does.
    static func ipAddress(_ bytes: [UInt8]) -> String? {
        switch bytes.count {
        case 4:
            return bytes.map(String.init).joined(separator: ".")
        case 16:
            var address = in6_addr()
            withUnsafeMutableBytes(of: &address) { $0.copyBytes(from: bytes) }
            var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            guard inet_ntop(AF_INET6, &address, &text, socklen_t(text.count)) != nil else { return nil }
            return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        default:
            return nil
        }
    }
}
