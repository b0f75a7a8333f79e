import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import PortcullisAuth

/// A response the proxy generates itself, with its RFC 9209 `Proxy-Status`.
struct ProxyResponse {
    var status: HTTPResponseStatus
    /// RFC 9209 error type (`dns_error`, `connection_refused`, …), if any.
    var proxyError: String?
    /// A short machine-readable detail for `Proxy-Status` (`details=`).
    var details: String?
    /// One line for the client. Never a secret.
    var message: String
    var extraHeaders: [(String, String)] = []
    /// A served file (``ServedDocument``) instead of the one-line message.
    var document: Document?

    struct Document {
        var bytes: [UInt8]
        var contentType: String
        /// False for HEAD and 304: the headers describe the body, which is not sent.
        var sendsBody: Bool
    }

    /// A duration as a message says it: "30 s", "0.5 s".
    static func seconds(_ amount: TimeAmount) -> String {
        let value = Double(amount.nanoseconds) / 1e9
        return value == value.rounded() ? "\(Int(value)) s" : "\(value) s"
    }

    static func badRequest(_ message: String) -> ProxyResponse {
        ProxyResponse(status: .badRequest, proxyError: nil, details: "bad-request", message: message)
    }

    static func bodyTooLarge(limit: Int) -> ProxyResponse {
        ProxyResponse(
            status: .payloadTooLarge,
            proxyError: nil,
            details: "request body too large",
            message: "request bodies larger than \(limit) bytes are not accepted here (see --max-request-body)."
        )
    }

    /// Too many failed logins from this address (issue 6): 429 with `Retry-After`.
    static func lockedOut(retryAfter: TimeAmount) -> ProxyResponse {
        let seconds = max(1, Int((retryAfter.nanoseconds + 999_999_999) / 1_000_000_000))
        return ProxyResponse(
            status: .tooManyRequests,
            proxyError: nil,
            details: AuthFailureReason.lockedOut.token,
            message: "too many failed logins from this address; try again in \(seconds) s.",
            extraHeaders: [("Retry-After", "\(seconds)")]
        )
    }

    static func tooManyLoginsInFlight(retryAfter: TimeAmount) -> ProxyResponse {
        let seconds = max(1, Int((retryAfter.nanoseconds + 999_999_999) / 1_000_000_000))
        return ProxyResponse(
            status: .tooManyRequests,
            proxyError: nil,
            details: "too-many-logins-in-flight",
            message: "too many logins from this address are being checked at once; try again in \(seconds) s.",
            extraHeaders: [("Retry-After", "\(seconds)")]
        )
    }

    static func proxyAuthenticationRequired(_ failure: AuthFailure, challenges: [String]) -> ProxyResponse {
        ProxyResponse(
            status: .proxyAuthenticationRequired,
            proxyError: nil,
            details: failure.reason.token,
            message: failure.explanation.prefix(1).uppercased() + failure.explanation.dropFirst() + ".",
            extraHeaders: challenges.map { ("Proxy-Authenticate", $0) }
        )
    }

    /// The `Proxy-Status` field value (an RFC 8941 list member: `portcullis; error=…; details="…"`).
    var proxyStatus: String {
        var value = "portcullis"
        if let proxyError { value += "; error=\(proxyError)" }
        if let details { value += "; details=\(Self.sfString(details))" }
        return value
    }

    /// The whole response, head and body, as it goes on the wire.
    func serialized(httpMinorVersion: Int, close: Bool, allocator: ByteBufferAllocator) -> ByteBuffer {
        if let document = self.document {
            return self.serialized(document, httpMinorVersion: httpMinorVersion, close: close, allocator: allocator)
        }
        let body = self.body
        var out = allocator.buffer(capacity: 256 + body.utf8.count)
        out.writeString("HTTP/1.\(httpMinorVersion) \(self.status.code) \(self.status.reasonPhrase)\r\n")
        for (name, value) in self.extraHeaders { out.writeString("\(name): \(value)\r\n") }
        out.writeString("Proxy-Status: \(self.proxyStatus)\r\n")
        out.writeString("Content-Type: text/plain; charset=utf-8\r\n")
        out.writeString("Content-Length: \(body.utf8.count)\r\n")
        out.writeString("Cache-Control: no-store\r\n")
        if close { out.writeString("Connection: close\r\n") }
        out.writeString("\r\n")
        out.writeString(body)
        return out
    }

    var body: String { "\(self.status.code) \(self.status.reasonPhrase): \(self.message)\n" }

    private func serialized(
        _ document: Document,
        httpMinorVersion: Int,
        close: Bool,
        allocator: ByteBufferAllocator
    ) -> ByteBuffer {
        var out = allocator.buffer(capacity: 256 + (document.sendsBody ? document.bytes.count : 0))
        out.writeString("HTTP/1.\(httpMinorVersion) \(self.status.code) \(self.status.reasonPhrase)\r\n")
        for (name, value) in self.extraHeaders { out.writeString("\(name): \(value)\r\n") }
        if self.status != .notModified {
            out.writeString("Content-Type: \(document.contentType)\r\n")
            out.writeString("Content-Length: \(document.bytes.count)\r\n")
        }
        // Kept, but asked again each time: a changed file reaches clients at their next fetch.
        out.writeString("Cache-Control: no-cache\r\n")
        if close { out.writeString("Connection: close\r\n") }
        out.writeString("\r\n")
        if document.sendsBody { out.writeBytes(document.bytes) }
        return out
    }

    /// An RFC 8941 sf-string: printable ASCII with `"` and `\` escaped; anything else replaced.
    static func sfString(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars.prefix(200) {
            switch scalar.value {
            case 0x22, 0x5C:
                out.append("\\")
                out.unicodeScalars.append(scalar)
            case 0x20...0x7E:
                out.unicodeScalars.append(scalar)
            default:
                out.append("?")
            }
        }
        out.append("\"")
        return out
    }
}

extension ProxyResponse {
    /// Maps a failure to reach an origin to the response the client gets.
    static func upstreamConnectFailure(_ error: any Error, target: OriginAuthority) -> ProxyResponse {
        let name = "\(target.host):\(target.port)"
        if let parent = error as? ParentError { return Self.parentFailure(parent) }
        if let resolution = Self.resolutionError(in: error) {
            switch resolution {
            case .destinationDenied:
                return ProxyResponse(
                    status: .forbidden,
                    proxyError: "destination_ip_prohibited",
                    details: "internal destinations are not allowed",
                    message:
                        "\(target.host) resolves only to loopback/private/link-local addresses, which this proxy does not reach (see --allow-private-destinations)."
                )
            case .policyDenied(let rule):
                // The same details as a denial decided on the target alone; the address is
                // logged, not told: the client asked for a name, not for the internal network.
                let why = rule.map { "rule \($0)" } ?? "no rule allows this request"
                return ProxyResponse(
                    status: .forbidden,
                    proxyError: "destination_ip_prohibited",
                    details: "policy: \(why)",
                    message: "\(target.host) resolves only to addresses the access rules do not allow here (\(why))."
                )
            case .nameNotResolved(let why):
                return ProxyResponse(
                    status: .badGateway,
                    proxyError: "dns_error",
                    details: why,
                    message: "the name \(target.host) could not be resolved (\(why))."
                )
            }
        }
        if Self.isTimeout(error) {
            return ProxyResponse(
                status: .gatewayTimeout,
                proxyError: "connection_timeout",
                details: "connect timed out",
                message: "connecting to \(name) timed out."
            )
        }
        if Self.isRefused(error) {
            return ProxyResponse(
                status: .badGateway,
                proxyError: "connection_refused",
                details: "connection refused",
                message: "\(name) refused the connection."
            )
        }
        return ProxyResponse(
            status: .badGateway,
            proxyError: "destination_unavailable",
            details: "connect failed",
            message: "could not connect to \(name)."
        )
    }

    /// A request through the parents failed: a 502 (a 403 when the parent forbids the tunnel)
    /// whose `Proxy-Status` names the parent and its answer — never the parent's own 407, which
    /// would make the client send its secret for the wrong hop.
    static func parentFailure(_ error: ParentError) -> ProxyResponse {
        switch error {
        case .loop:
            return ProxyResponse(
                status: .loopDetected,
                proxyError: "proxy_loop_detected",
                details: "request came back through this proxy",
                message:
                    "this request already went through this proxy: its parent proxies route back to it (check --parent and the parents' own parents)."
            )
        case .unreachable(let parent, let underlying):
            let timeout = Self.isTimeout(underlying)
            return ProxyResponse(
                status: .badGateway,
                proxyError: timeout ? "connection_timeout" : "connection_refused",
                details: "parent \(parent) unreachable",
                message:
                    "no parent proxy could be reached (the last one tried, \(parent), \(timeout ? "timed out" : "refused or failed the connection"))."
            )
        case .authentication(let parent, let failure):
            return ProxyResponse(
                status: .badGateway,
                proxyError: "proxy_configuration_error",
                details: "parent \(parent): \(failure.details)",
                message:
                    "the parent proxy \(parent) did not let this proxy through: \(failure.details). Check --parent's user and password and --parent-auth."
            )
        case .refusedTunnel(let parent, let status):
            return ProxyResponse(
                status: status == 403 ? .forbidden : .badGateway,
                proxyError: status == 403 ? "http_request_denied" : "destination_unavailable",
                details: "parent \(parent) answered \(status)",
                message: "the parent proxy \(parent) answered the CONNECT with \(status)."
            )
        case .tls(let parent, let underlying):
            return Self.parentTLSFailure(parent: parent, underlying)
        case .brokenAnswer(let parent, let reason):
            return ProxyResponse(
                status: .badGateway,
                proxyError: "http_protocol_error",
                details: "parent \(parent): \(reason)",
                message: "the parent proxy \(parent) did not answer properly: \(reason)."
            )
        }
    }

    /// TLS to an `https://` parent failed: its certificate (`tls_certificate_error`: not from
    /// a trusted CA, or not for that name) or the handshake itself.
    static func parentTLSFailure(parent: String, _ error: any Error) -> ProxyResponse {
        let text = "\(error)"
        let certificate =
            text.contains("CERTIFICATE_VERIFY_FAILED") || text.contains("unableToValidateCertificate")
            || text.contains("failedToValidateHostname")
        return ProxyResponse(
            status: .badGateway,
            proxyError: certificate ? "tls_certificate_error" : "tls_protocol_error",
            details: "parent \(parent): TLS \(certificate ? "certificate not trusted" : "handshake failed")",
            message: certificate
                ? "the parent proxy \(parent)'s certificate is not trusted for that name (give its CA with --parent-cacert)."
                : "TLS to the parent proxy \(parent) failed."
        )
    }

    /// Whether `error` is a TLS failure (NIOSSL's or BoringSSL's).
    static func isTLSError(_ error: any Error) -> Bool {
        error is NIOSSLError || error is NIOSSLExtraError || error is BoringSSLError
    }

    private static func resolutionError(in error: any Error) -> ResolutionError? {
        if let r = error as? ResolutionError { return r }
        if let connection = error as? NIOConnectionError {
            // Both queries share one lookup, so either error tells the story.
            if let r = connection.dnsAError as? ResolutionError { return r }
            if let r = connection.dnsAAAAError as? ResolutionError { return r }
        }
        return nil
    }

    private static func isTimeout(_ error: any Error) -> Bool {
        if let channelError = error as? ChannelError, case .connectTimeout = channelError { return true }
        if let connection = error as? NIOConnectionError {
            return connection.connectionErrors.contains { isTimeout($0.error) }
        }
        return false
    }

    private static func isRefused(_ error: any Error) -> Bool {
        if let io = error as? IOError, io.errnoCode == ECONNREFUSED { return true }
        if let connection = error as? NIOConnectionError {
            return !connection.connectionErrors.isEmpty
                && connection.connectionErrors.allSatisfy { isRefused($0.error) }
        }
        return false
    }
}
