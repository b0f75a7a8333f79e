@testable import PortcullisProxy

/// Requests and responses as bytes on the wire, for the socket-free connection tests.
enum Wire {
    static let alice = "Proxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\n"  // alice:secret
    static let wrong = "Proxy-Authorization: Basic dTpw\r\n"  // u:p

    static func get(_ path: String = "/a", host: String = "o.test", _ fields: String = "") -> String {
        "GET http://\(host)\(path) HTTP/1.1\r\nHost: \(host)\r\n\(fields)\r\n"
    }

    /// The head the origin gets for ``get(_:host:_:)`` (origin-form, `Via` added).
    static func upstreamGet(_ path: String = "/a", host: String = "o.test", _ fields: String = "") -> String {
        "GET \(path) HTTP/1.1\r\nHost: \(host)\r\n\(fields)Via: 1.1 portcullis\r\n\r\n"
    }

    static func connect(_ authority: String = "o.test:443", _ fields: String = "") -> String {
        "CONNECT \(authority) HTTP/1.1\r\nHost: \(authority)\r\n\(fields)\r\n"
    }

    static let established = "HTTP/1.1 200 Connection established\r\n\r\n"

    /// An origin's `200` with a two-byte body, and the same as the client gets it.
    static let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    static let okRelayed = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nVia: 1.1 portcullis\r\n\r\nok"

    /// A response the proxy makes itself, byte for byte (see ``ProxyResponse/serialized``).
    static func local(
        _ status: Int,
        _ reason: String,
        proxyStatus: String,
        message: String,
        close: Bool = false,
        http10: Bool = false
    ) -> String {
        let body = "\(status) \(reason): \(message)\n"
        return "HTTP/1.\(http10 ? 0 : 1) \(status) \(reason)\r\n"
            + "Proxy-Status: portcullis; \(proxyStatus)\r\n"
            + "Content-Type: text/plain; charset=utf-8\r\n"
            + "Content-Length: \(body.utf8.count)\r\n"
            + "Cache-Control: no-store\r\n"
            + (close ? "Connection: close\r\n" : "")
            + "\r\n" + body
    }
}

extension ConnectionHarness {
    /// A connection whose requests are allowed through to scripted origins; without the 407 gate
    /// unless `authenticates`.
    static func forwarding(
        authenticates: Bool = false,
        configure: @escaping (inout ProxyConfiguration) -> Void = { _ in }
    ) throws -> ConnectionHarness {
        try ConnectionHarness(shared: .init(options: .forwarding(authenticates: authenticates, configure: configure)))
    }

}
