import NIOCore

/// What a listener speaks to its clients: plain HTTP (`--listen`) or HTTP inside TLS
/// (`--listen-tls`). Named in the JSON access log and the metrics.
public enum ListenerKind: String, Sendable, Hashable, CaseIterable {
    case tcp
    case tls
    /// A stream of an HTTP/2 connection on a TLS listener (requests only; the connection
    /// itself was accepted on a `tls` listener).
    case h2
}

/// One address to listen on, and how.
public struct Listener: Sendable, Hashable {
    public var address: SocketAddress
    public var kind: ListenerKind
    /// A socket already bound and listening (handed over at start): served as it is, `address`
    /// is where it is bound.
    public var socket: CInt?

    public init(address: SocketAddress, kind: ListenerKind, socket: CInt? = nil) {
        self.address = address
        self.kind = kind
        self.socket = socket
    }
}
