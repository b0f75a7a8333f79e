import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL

/// The files a TLS listener serves with: `--tls-cert` (PEM, the leaf first, then its chain)
/// and `--tls-key` (PEM, not encrypted).
public struct TLSFiles: Sendable, Hashable {
    public var certificate: String
    public var key: String
    /// `--tls-client-ca`: the CA certificates (PEM) client certificates are verified against.
    public var clientCA: String?
    /// Whether a client without a certificate is refused by the handshake (no scheme but
    /// `certificate` is offered, or none at all); otherwise a certificate is verified when sent.
    public var requireClientCertificate: Bool
    /// Whether ALPN offers `h2` (before `http/1.1`).
    public var http2: Bool

    public init(
        certificate: String,
        key: String,
        clientCA: String? = nil,
        requireClientCertificate: Bool = false,
        http2: Bool = true
    ) {
        self.certificate = certificate
        self.key = key
        self.clientCA = clientCA
        self.requireClientCertificate = requireClientCertificate
        self.http2 = http2
    }

    public var paths: [String] { [self.certificate, self.key] + (self.clientCA.map { [$0] } ?? []) }
}

/// A certificate and key that cannot be served, with what to fix.
public struct TLSSetupError: Error, Sendable, CustomStringConvertible {
    public var description: String
}

/// The TLS listeners' server context: made from ``TLSFiles`` at start-up and replaced by
/// ``reload()`` when the files change. A connection takes the context in force when it is
/// accepted and keeps it; a pair that does not load leaves the previous one in force.
public final class ProxyTLS: Sendable {
    /// One loaded certificate and key.
    public struct Loaded: Sendable {
        public var context: NIOSSLContext
        /// The leaf's subject, serial and expiry, for the log (no key material).
        public var summary: String
        /// The leaf's serial number in hex.
        public var serial: String
    }

    public let files: TLSFiles
    private let loaded: NIOLockedValueBox<Loaded>

    /// Loads the pair. Blocking (file reads, key checks): call it off the event loops.
    public init(files: TLSFiles) throws(TLSSetupError) {
        self.files = files
        self.loaded = NIOLockedValueBox(try Self.load(files))
    }

    /// The context for a new connection.
    public var context: NIOSSLContext { self.loaded.withLockedValue { $0.context } }

    public var current: Loaded { self.loaded.withLockedValue { $0 } }

    /// Reads the files again and puts the new pair in force for new connections. Blocking.
    /// Throws, keeping the pair in force, when the new one cannot be served.
    @discardableResult
    public func reload() throws(TLSSetupError) -> Loaded {
        let fresh = try Self.load(self.files)
        self.loaded.withLockedValue { $0 = fresh }
        return fresh
    }

    /// TLS 1.2 and 1.3; for 1.2 only forward-secret AEAD suites (1.3's are all of that kind).
    /// How long a closing connection waits for the client's close_notify.
    static let shutdownTimeout: TimeAmount = .seconds(1)

    static let cipherSuites: [NIOTLSCipher] = [
        .TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, .TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        .TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, .TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        .TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, .TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]

    /// Protocols offered by ALPN, in preference order.
    static func applicationProtocols(http2: Bool) -> [String] { http2 ? ["h2", "http/1.1"] : ["http/1.1"] }

    static func load(_ files: TLSFiles) throws(TLSSetupError) -> Loaded {
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(files.certificate)
        } catch {
            throw TLSSetupError(
                description: "--tls-cert \(files.certificate): \(Self.reason(error, file: files.certificate))"
            )
        }
        guard let leaf = chain.first else {
            throw TLSSetupError(description: "--tls-cert \(files.certificate): no PEM certificate in it")
        }
        let key: NIOSSLPrivateKey
        do {
            // An encrypted key would ask for a passphrase: none is configured, so it fails here.
            key = try NIOSSLPrivateKey(file: files.key, format: .pem) { (_: NIOSSLPassphraseSetter<[UInt8]>) in }
        } catch {
            throw TLSSetupError(
                description:
                    "--tls-key \(files.key): \(Self.reason(error, file: files.key)) (a PEM private key, not encrypted)"
            )
        }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) },
            privateKey: .privateKey(key)
        )
        configuration.minimumTLSVersion = .tlsv12
        configuration.cipherSuiteValues = Self.cipherSuites
        configuration.applicationProtocols = Self.applicationProtocols(http2: files.http2)
        // After its close_notify the proxy waits this long for the client's before closing the
        // socket (TLS does not require the wait; NIOSSL's default is 5 s). A client that dropped
        // its connection never sends one: its HTTP/2 tunnels would stay open that long.
        configuration.shutdownTimeout = Self.shutdownTimeout
        if let clientCA = files.clientCA {
            let authorities: [NIOSSLCertificate]
            do {
                authorities = try NIOSSLCertificate.fromPEMFile(clientCA)
            } catch {
                throw TLSSetupError(description: "--tls-client-ca \(clientCA): \(Self.reason(error, file: clientCA))")
            }
            guard !authorities.isEmpty else {
                throw TLSSetupError(description: "--tls-client-ca \(clientCA): no PEM certificate in it")
            }
            configuration.trustRoots = .certificates(authorities)
            configuration.certificateVerification =
                files.requireClientCertificate ? .noHostnameVerification : .optionalVerification
            // Clients with several certificates pick the one these CAs issued.
            configuration.sendCANameList = true
        }
        let context: NIOSSLContext
        do {
            // BoringSSL refuses a key that is not the leaf's.
            context = try NIOSSLContext(configuration: configuration)
        } catch {
            throw TLSSetupError(
                description:
                    "--tls-key \(files.key) does not go with --tls-cert \(files.certificate) (the key must be the first certificate's): \(error)"
            )
        }
        let serial = leaf.serialNumber.map { String(format: "%02x", $0) }.joined()
        let subject = leaf.subjectName.first { $0.type == .commonName }.map { "CN=\($0.value)" } ?? ""
        let expiry = Date(timeIntervalSince1970: TimeInterval(leaf.notValidAfter))
        return Loaded(
            context: context,
            summary:
                "subject \(subject.isEmpty ? "-" : subject), serial \(serial), expires \(expiry.formatted(.iso8601))",
            serial: serial
        )
    }

    private static func reason(_ error: any Error, file: String) -> String {
        if !FileManager.default.isReadableFile(atPath: file) {
            return FileManager.default.fileExists(atPath: file) ? "cannot read it" : "no such file"
        }
        return "not usable (\(error))"
    }
}
