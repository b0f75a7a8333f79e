import NIOSSL

/// Where a client certificate names its user (`--cert-user-from`).
public enum CertificateUserSource: String, Sendable, Hashable, CaseIterable {
    /// The subject's common name (the last one, as TLS name checks read it).
    case commonName = "cn"
    /// The first `rfc822Name` (e-mail) subject alternative name.
    case sanEmail = "san-email"
    /// The first URI subject alternative name.
    case sanURI = "san-uri"

    /// The user `certificate` names, or nil when it has no such field (or an unusable one:
    /// empty, over 256 bytes, or with control characters, which no log or header should carry).
    public func user(in certificate: NIOSSLCertificate) -> String? {
        let name: String?
        switch self {
        case .commonName:
            name = certificate.subjectName.last { $0.type == .commonName }?.value
        case .sanEmail, .sanURI:
            let wanted: _SubjectAlternativeName.NameType = self == .sanEmail ? .email : .uri
            name = certificate._subjectAlternativeNames().first { $0.nameType == wanted }.map { alternative in
                alternative.contents.withUnsafeBufferPointer { String(decoding: $0, as: UTF8.self) }
            }
        }
        guard let name, !name.isEmpty, name.utf8.count <= 256,
            !name.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F })
        else { return nil }
        return name
    }
}
