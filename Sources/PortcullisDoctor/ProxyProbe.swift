import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import PortcullisAuth
import PortcullisKerberos

/// Carries out ``ProbeAction``s against the proxy and records what came of each: the network
/// side of doctor, with no judgement in it. It alone keeps the password and the Kerberos
/// handshake, and turns the credentials a ``ProbeRequest`` names into a `Proxy-Authorization` field.
final class ProxyProbe {
    private let proxy: ProxyEndpoint
    private let password: String
    private let options: DoctorOptions
    private let group: any EventLoopGroup
    private let timeout: TimeAmount
    private var connection: ProbeConnection?
    /// The proxy's TLS configuration, once its files are read.
    private var proxyTLS: TLSConfiguration?
    /// Requests sent on the current connection.
    private var exchanges = 0
    /// The Kerberos handshake in progress, and the token it made for the next request.
    private var initiator: NegotiateInitiator?
    private var negotiateToken: [UInt8]?

    init(proxy: ProxyEndpoint, password: String?, options: DoctorOptions, group: any EventLoopGroup) {
        self.proxy = proxy
        self.password = password ?? ""
        self.options = options
        self.group = group
        self.timeout = .nanoseconds(Int64(options.timeout * 1e9))
    }

    /// Performs `action` and records its outcome, a failure included, with the time it took.
    func perform(_ action: ProbeAction) -> ProbeRecord {
        var start = DispatchTime.now()
        let outcome: ProbeOutcome
        do throws(ProbeError) {
            switch action {
            case .open:
                let (timings, tlsMs) = try self.open()
                outcome = .opened(timings, tlsMs: tlsMs)
            case .send(let request):
                outcome = .response(RecordedResponse(try self.send(request, timedFrom: &start)))
            case .handshake(let serverName):
                defer { self.close() }
                guard let tunnel = self.connection, tunnel.isActive else {
                    throw ProbeError(kind: .closed, message: "the tunnel closed before the TLS handshake")
                }
                _ = try tunnel.startTLS(serverName: serverName, configuration: self.tlsConfiguration(for: serverName))
                outcome = .handshake
            case .kerberos(let host, let token):
                outcome = .kerberos(self.kerberosLeg(host: host, token: token))
            }
        } catch {
            outcome = .failed(error)
        }
        return ProbeRecord(action: action, outcome: outcome, elapsedMs: ProbeConnection.ms(since: start))
    }

    func close() {
        self.connection?.close()
        self.connection = nil
    }

    /// A new connection to the proxy (TLS for an https:// proxy); it becomes the current one.
    private func open() throws(ProbeError) -> (ProbeConnection.Timings, Double?) {
        self.close()
        let (connection, timings) = try ProbeConnection.open(
            host: self.proxy.host,
            port: self.proxy.port,
            group: self.group,
            timeout: self.timeout
        )
        var tlsMs: Double?
        if self.proxy.isTLS {
            do {
                tlsMs = try connection.startTLS(
                    serverName: self.proxy.host,
                    configuration: try self.proxyTLSConfiguration(),
                    clientCertificateOffered: self.offersClientCertificate
                )
            } catch {
                connection.close()
                throw self.withPlainAnswer(self.withPeerCertificate(error))
            }
        }
        self.connection = connection
        self.exchanges = 0
        return (timings, tlsMs)
    }

    /// Sends a request on the connection it asks for; a connection the proxy will not keep is
    /// closed after the response.
    /// - Parameter start: moved past a reconnection, which is no part of the exchange's time;
    ///   a connection of its own (a tunnel's) is part of it.
    private func send(_ request: ProbeRequest, timedFrom start: inout DispatchTime) throws(ProbeError) -> ProbeResponse
    {
        let isActive = self.connection?.isActive ?? false
        switch request.connection {
        case .new:
            _ = try self.open()
        case .reuse where !isActive:
            _ = try self.open()
            start = DispatchTime.now()
        case .same where !isActive:
            throw ProbeError(
                kind: .closed,
                message: "the connection closed before the next leg of the handshake could be sent on it"
            )
        case .reuse, .same:
            break
        }
        guard let connection = self.connection else { throw ProbeError(kind: .other, message: "no connection") }
        let fresh = self.exchanges == 0
        self.exchanges += 1
        let response: ProbeResponse
        do {
            response = try connection.exchange(
                try self.text(of: request),
                method: request.method,
                clientCertificateOffered: self.proxy.isTLS && self.offersClientCertificate
            )
        } catch {
            throw fresh && !self.proxy.isTLS ? self.withTLSAnswer(error) : error
        }
        if !response.keepAlive && !(request.method == "CONNECT" && response.status / 100 == 2) {
            self.close()
        }
        return response
    }

    /// One leg of the Kerberos handshake: a new one from the ticket cache when `token` is `nil`.
    private func kerberosLeg(host: String, token: [UInt8]?) -> KerberosOutcome {
        self.negotiateToken = nil
        if token == nil {
            self.initiator = nil
            do {
                self.initiator = try NegotiateInitiator(host: host)
            } catch {
                return .failed(error)
            }
        }
        guard let initiator = self.initiator else {
            return .failed(NegotiateInitiatorFailure(reason: .gssFailure, detail: "no Kerberos handshake in progress"))
        }
        switch initiator.step(token) {
        case .continueNeeded(let next):
            self.negotiateToken = next
            return .token(client: initiator.client, complete: false)
        case .established(let next?):
            self.negotiateToken = next
            return .token(client: initiator.client, complete: true)
        case .established(nil):
            return .established(client: initiator.client)
        case .failed(let failure):
            self.initiator = nil
            return .failed(failure)
        }
    }

    private func text(of request: ProbeRequest) throws(ProbeError) -> String {
        var lines = [
            "\(request.method) \(request.requestTarget) HTTP/1.1",
            "Host: \(request.hostHeader)",
            "User-Agent: portcullis-doctor/0.1",
        ]
        if request.method != "CONNECT" { lines.append("Accept: */*") }
        if let authorization = try self.authorization(request) {
            lines.append("Proxy-Authorization: \(authorization)")
        }
        return lines.joined(separator: "\r\n") + "\r\n\r\n"
    }

    private func authorization(_ request: ProbeRequest) throws(ProbeError) -> String? {
        switch request.credentials {
        case .none:
            return nil
        case .basic(let user):
            return "Basic " + Data("\(user):\(self.password)".utf8).base64EncodedString()
        case .digest(let user, let challenge, let nonceCount):
            var bytes = [UInt8](repeating: 0, count: 16)
            for i in bytes.indices { bytes[i] = UInt8.random(in: 0...255) }
            let cnonce = bytes.map { String(format: "%02x", $0) }.joined()
            return DigestResponder(challenge: challenge, user: user, password: self.password)?
                .authorization(
                    method: request.method,
                    uri: request.requestTarget,
                    nonceCount: nonceCount,
                    cnonce: cnonce
                )
        case .ntlmNegotiate:
            return "NTLM " + Data(self.ntlmClient(user: "", domain: "").negotiate()).base64EncodedString()
        case .ntlmAuthenticate(let user, let domain, let challenge):
            var client = self.ntlmClient(user: user, domain: domain)
            var random = SystemRandomNumberGenerator()
            client.clientChallenge = (0..<8).map { _ in UInt8.random(in: .min ... .max, using: &random) }
            client.randomSessionKey = (0..<16).map { _ in UInt8.random(in: .min ... .max, using: &random) }
            if NTLMClient.read(challenge)?.timestamp == nil {
                // MS-NLMP: the CHALLENGE's MsvAvTimestamp when it has one, else this clock.
                client.timestamp = NTLMFileTime(unixMilliseconds: UInt64(Date().timeIntervalSince1970 * 1000))
            }
            let message = client.authenticate(negotiate: client.negotiate(), challenge: challenge)
            guard !message.isEmpty else {
                throw ProbeError(kind: .protocolError, message: "the proxy's NTLM CHALLENGE cannot be read")
            }
            return "NTLM " + Data(message).base64EncodedString()
        case .negotiate:
            guard let token = self.negotiateToken else {
                throw ProbeError(kind: .other, message: "no Negotiate token to send")
            }
            self.negotiateToken = nil
            return "Negotiate " + Data(token).base64EncodedString()
        }
    }

    /// An NTLMv2 client for this user, with the password, naming this machine as Windows does
    /// (the first label of its host name, upper case, at most 15 characters).
    private func ntlmClient(user: String, domain: String) -> NTLMClient {
        var client = NTLMClient()
        client.user = user
        client.domain = domain
        client.password = self.password
        let label = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? ""
        client.workstation = String(label.uppercased().prefix(15))
        return client
    }

    private var offersClientCertificate: Bool { self.options.proxyCertificateFile != nil }

    /// TLS to the proxy: its own trust (`--proxy-cacert`), its client certificate, and the host
    /// of the proxy URL checked against the certificate, an IP address too (against its IP
    /// names: the connection's peer is the proxy itself).
    private func proxyTLSConfiguration() throws(ProbeError) -> TLSConfiguration {
        if let cached = self.proxyTLS { return cached }
        var configuration = TLSConfiguration.makeClientConfiguration()
        if self.options.insecure { configuration.certificateVerification = .none }
        if let file = self.options.proxyCACertificateFile {
            configuration.trustRoots = .certificates(try Self.certificates(file, option: "--proxy-cacert"))
        }
        if let certificateFile = self.options.proxyCertificateFile {
            let chain = try Self.certificates(certificateFile, option: "--proxy-cert")
            configuration.certificateChain = chain.map { .certificate($0) }
            let keyFile = self.options.proxyKeyFile ?? certificateFile
            do {
                configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyFile, format: .pem))
            } catch {
                // BoringSSL's words only: never the file's content.
                throw ProbeError(
                    kind: .localFile,
                    message:
                        "--proxy-key \(keyFile): no unencrypted PEM private key can be read from it (\(ProbeConnection.shortTLS("\(error)")))"
                )
            }
            do {
                _ = try NIOSSLContext(configuration: configuration)
            } catch {
                throw ProbeError(
                    kind: .localFile,
                    message:
                        "--proxy-key \(keyFile) is not the key of the certificate in --proxy-cert \(certificateFile) (\(ProbeConnection.shortTLS("\(error)")))"
                )
            }
        }
        self.proxyTLS = configuration
        return configuration
    }

    private static func certificates(_ file: String, option: String) throws(ProbeError) -> [NIOSSLCertificate] {
        guard FileManager.default.isReadableFile(atPath: file) else {
            throw ProbeError(kind: .localFile, message: "\(option) \(file): the file cannot be read")
        }
        guard let certificates = try? NIOSSLCertificate.fromPEMFile(file), !certificates.isEmpty else {
            throw ProbeError(kind: .localFile, message: "\(option) \(file): no PEM certificate in it")
        }
        return certificates
    }

    /// A verification failure with the certificate the proxy presented, read by a second
    /// connection that only looks at it: its names and dates explain the failure.
    private func withPeerCertificate(_ error: ProbeError) -> ProbeError {
        guard var evidence = error.evidence, evidence.isVerificationFailure,
            let configuration = try? self.proxyTLSConfiguration(),
            let connection = self.sideConnection()
        else { return error }
        defer { connection.close() }
        evidence.peerCertificate = connection.inspectCertificate(
            serverName: self.proxy.host,
            configuration: configuration
        )
        var explained = error
        explained.evidence = evidence
        return explained
    }

    /// A second connection to the proxy, for evidence the first one could not give.
    private func sideConnection() -> ProbeConnection? {
        let opened = try? ProbeConnection.open(
            host: self.proxy.host,
            port: self.proxy.port,
            group: self.group,
            timeout: self.timeout
        )
        return opened?.0
    }

    /// A handshake the proxy never answered, with its answer to a plain HTTP request on a new
    /// connection: a port that speaks plain HTTP waits for a request line, and may answer one.
    private func withPlainAnswer(_ error: ProbeError) -> ProbeError {
        guard var evidence = error.evidence, evidence.peerBytes.isEmpty, !evidence.isVerificationFailure,
            let connection = self.sideConnection()
        else { return error }
        defer { connection.close() }
        let request = "HEAD / HTTP/1.1\r\nHost: \(self.proxy.authority)\r\nConnection: close\r\n\r\n"
        guard let response = try? connection.exchange(request, method: "HEAD") else { return error }
        evidence.plainAnswer = "\(response.status) \(response.reason)"
        var explained = error
        explained.evidence = evidence
        return explained
    }

    /// The first request on an http:// proxy's connection with no answer at all (a TLS server
    /// resets a connection that starts with `GET`), with whether the port answers a TLS
    /// ClientHello on a new connection; the certificate is not judged there.
    private func withTLSAnswer(_ error: ProbeError) -> ProbeError {
        guard error.evidence == nil,
            let connection = self.sideConnection()
        else { return error }
        defer { connection.close() }
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.certificateVerification = .none
        var evidence = TLSEvidence()
        do {
            _ = try connection.startTLS(serverName: self.proxy.host, configuration: configuration)
            evidence.tlsAnswered = true
        } catch {
            let bytes = error.evidence?.peerBytes ?? []
            evidence.tlsAnswered = bytes.count >= 3 && bytes[0] == TLSRecordReader.handshake && bytes[1] == 3
        }
        guard evidence.tlsAnswered else { return error }
        var explained = error
        explained.evidence = evidence
        return explained
    }

    /// TLS to a target through a tunnel (`--cacert`); an IP address is not checked against the
    /// certificate, as the connection's peer is the proxy, not the target.
    private func tlsConfiguration(for host: String) -> TLSConfiguration {
        var configuration = TLSConfiguration.makeClientConfiguration()
        if let file = self.options.caCertificateFile {
            configuration.trustRoots = .file(file)
        }
        if self.options.insecure {
            configuration.certificateVerification = .none
        } else if (try? SocketAddress(ipAddress: host, port: 0)) != nil {
            // No SNI for an address; the chain is still verified.
            configuration.certificateVerification = .noHostnameVerification
        }
        return configuration
    }
}
