import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import PortcullisAuth

/// Carries out ``ProbeAction``s against the proxy and records what came of each: the network
/// side of doctor, with no judgement in it. It alone keeps the password, and turns the
/// credentials a ``ProbeRequest`` names into a `Proxy-Authorization` field.
final class ProxyProbe {
    private let proxy: ProxyEndpoint
    private let password: String
    private let options: DoctorOptions
    private let group: any EventLoopGroup
    private let timeout: TimeAmount
    private var connection: ProbeConnection?

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
                    configuration: self.tlsConfiguration(for: self.proxy.host)
                )
            } catch {
                connection.close()
                throw error
            }
        }
        self.connection = connection
        return (timings, tlsMs)
    }

    /// Sends a request on the current connection while it is usable, else on a new one; a
    /// connection the proxy will not keep is closed after the response.
    /// - Parameter start: moved past the reconnection, which is no part of the exchange's time;
    ///   a connection of its own (a tunnel's) is part of it.
    private func send(_ request: ProbeRequest, timedFrom start: inout DispatchTime) throws(ProbeError) -> ProbeResponse
    {
        if request.newConnection {
            _ = try self.open()
        } else if !(self.connection?.isActive ?? false) {
            _ = try self.open()
            start = DispatchTime.now()
        }
        guard let connection = self.connection else { throw ProbeError(kind: .other, message: "no connection") }
        let response = try connection.exchange(self.text(of: request), method: request.method)
        if !response.keepAlive && !(request.method == "CONNECT" && response.status / 100 == 2) {
            self.close()
        }
        return response
    }

    private func text(of request: ProbeRequest) -> String {
        var lines = [
            "\(request.method) \(request.requestTarget) HTTP/1.1",
            "Host: \(request.hostHeader)",
            "User-Agent: portcullis-doctor/0.1",
        ]
        if request.method != "CONNECT" { lines.append("Accept: */*") }
        if let authorization = self.authorization(request) { lines.append("Proxy-Authorization: \(authorization)") }
        return lines.joined(separator: "\r\n") + "\r\n\r\n"
    }

    private func authorization(_ request: ProbeRequest) -> String? {
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
        }
    }

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
