import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL

extension ProbeConnection {
    /// Starts TLS on this connection (to an https:// proxy, or to a target through a tunnel).
    /// A failure carries its ``TLSEvidence``.
    /// - Parameters:
    ///   - serverName: the host of the URL: sent as SNI and checked against the certificate (an
    ///     IP address is not sent; the configuration says whether it is checked).
    ///   - clientCertificateOffered: whether `configuration` holds a certificate for this client.
    /// - Returns: the handshake's duration in milliseconds.
    func startTLS(
        serverName: String,
        configuration: TLSConfiguration,
        clientCertificateOffered: Bool = false
    ) throws(ProbeError) -> Double {
        let start = DispatchTime.now()
        do {
            let context = try NIOSSLContext(configuration: configuration)
            let promise = self.channel.eventLoop.makePromise(of: Void.self)
            try self.addTLSHandler(promise: promise) {
                try NIOSSLClientHandler(context: context, serverHostname: Self.sniName(serverName))
            }
            try promise.futureResult.wait()
        } catch var error as ProbeError {
            // A close or a timeout: what the peer sent before it is the evidence.
            if error.evidence == nil {
                error.evidence = TLSEvidence(
                    error: nil,
                    peerBytes: self.peerBytes,
                    clientCertificateOffered: clientCertificateOffered
                )
            }
            throw error
        } catch {
            throw self.tlsError(error, serverName: serverName, clientCertificateOffered: clientCertificateOffered)
        }
        return Self.ms(since: start)
    }

    /// A handshake that only reads the certificate the peer presents and then gives up, so that
    /// a verification failure can be explained; nothing is sent inside TLS.
    func inspectCertificate(serverName: String, configuration: TLSConfiguration) -> PeerCertificate? {
        let seen = NIOLockedValueBox<PeerCertificate?>(nil)
        do {
            let context = try NIOSSLContext(configuration: configuration)
            let promise = self.channel.eventLoop.makePromise(of: Void.self)
            try self.addTLSHandler(promise: promise) {
                try NIOSSLClientHandler(context: context, serverHostname: Self.sniName(serverName)) {
                    certificates,
                    verification in
                    seen.withLockedValue { $0 = certificates.first.map(PeerCertificate.init) }
                    verification.succeed(NIOSSLVerificationResult.failed)
                }
            }
            try promise.futureResult.wait()
        } catch {
            // Expected: the callback refuses every certificate.
        }
        return seen.withLockedValue { $0 }
    }

    private static func sniName(_ serverName: String) -> String? {
        (try? SocketAddress(ipAddress: serverName, port: 0)) != nil ? nil : serverName
    }

    /// Adds the TLS handler next to the socket watcher (which starts counting again) and waits
    /// for the handshake in `promise`.
    private func addTLSHandler(
        promise: EventLoopPromise<Void>,
        _ make: @escaping @Sendable () throws -> NIOSSLClientHandler
    ) throws {
        let channel = self.channel
        let handler = self.handler
        let watcher = self.watcher
        let timeout = self.timeout
        try channel.eventLoop.submit {
            // Made on the channel's loop: the handler is not Sendable.
            let tls = try make()
            watcher.value.reset()
            handler.value.expectHandshake(promise, timeout: timeout)
            try channel.pipeline.syncOperations.addHandler(tls, position: .before(handler.value))
        }.wait()
    }

    /// The bytes the peer sent so far (since the last TLS handler was added).
    var peerBytes: [UInt8] {
        let watcher = self.watcher
        return (try? self.channel.eventLoop.submit { watcher.value.bytes }.wait()) ?? []
    }

    func tlsError(_ error: any Error, serverName: String, clientCertificateOffered: Bool) -> ProbeError {
        let evidence = TLSEvidence(
            error: error,
            peerBytes: self.peerBytes,
            clientCertificateOffered: clientCertificateOffered,
            checkedAt: Date().timeIntervalSince1970
        )
        let text = "\(error)"
        if evidence.hostnameMismatch {
            return ProbeError(
                kind: .tlsUntrusted,
                message: "the certificate of \(serverName) does not name \(serverName)",
                evidence: evidence
            )
        }
        if evidence.isVerificationFailure || text.contains("certificate") {
            return ProbeError(
                kind: .tlsUntrusted,
                message: "the certificate of \(serverName) is not trusted here (\(Self.shortTLS(text)))",
                evidence: evidence
            )
        }
        return ProbeError(
            kind: .tls,
            message: "TLS handshake with \(serverName) failed: \(Self.shortTLS(text))",
            evidence: evidence
        )
    }

    /// BoringSSL's reason (`CERTIFICATE_VERIFY_FAILED`) without the error stack around it.
    static func shortTLS(_ text: String) -> String {
        if let reason = TLSEvidence.reasonTokens(text).first {
            return reason.lowercased().replacingOccurrences(of: "_", with: " ")
        }
        return String(text.prefix(120))
    }
}
