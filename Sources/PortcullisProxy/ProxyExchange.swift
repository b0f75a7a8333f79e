import NIOCore
import NIOHTTP1

/// One request and its response on a client connection.
final class ProxyExchange {
    let head: HTTPRequestHead
    var target: RequestTarget?
    var user: String?
    /// The request's `.end` was read.
    var requestEnded = false
    /// A response head was written to the client (proxy-generated or relayed).
    var responseStarted = false
    var responseEnded = false
    /// Inbound parts read while the gate or the upstream connect was pending.
    var buffered: [HTTPServerRequestPart] = []
    /// The client connection closes after this exchange.
    var closeAfter: Bool
    var discardedBodyBytes = 0
    var requestBodyBytes = 0
    /// The head sent upstream, kept to retry once on a fresh connection.
    var upstreamHead: ByteBuffer?
    /// The request body goes to the origin chunk-framed.
    var upstreamChunked = false
    var upstreamKey: UpstreamPool.Key?
    var usedPooledConnection = false
    /// When the origin's response head is due (a 504 after that).
    var responseDeadline: NIODeadline?
    /// Completes when the last response byte was handed to the socket (set when closing after).
    var responseWritten: EventLoopFuture<Void>?
    /// The origin's body is close-delimited and this HTTP/1.1 client gets it chunked.
    var rechunkBody = false

    init(head: HTTPRequestHead, quiescing: Bool) {
        self.head = head
        // HTTP/1.0 clients get one response per connection: framing by close is the only
        // framing every 1.0 client understands.
        self.closeAfter = quiescing || !head.isKeepAlive || head.version.minor == 0
    }

    var isConnect: Bool { self.head.method == .CONNECT }
    var isHead: Bool { self.head.method == .HEAD }

    /// Whether the request announced a body that may still be on its way.
    var expectsContinue: Bool {
        self.head.headers.first(name: "expect")?.lowercased() == "100-continue"
    }

    /// A request that is safe to send again on a new connection if a reused one died before
    /// answering: idempotent and without a body (RFC 9110 §9.2.2).
    var isRetriable: Bool {
        guard self.requestEnded, self.requestBodyBytes == 0 else { return false }
        switch self.head.method {
        case .GET, .HEAD, .OPTIONS, .TRACE, .PUT, .DELETE: return true
        default: return false
        }
    }
}
