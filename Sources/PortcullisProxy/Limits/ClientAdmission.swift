import NIOConcurrencyHelpers
import NIOCore

/// Who may connect, and how many at once (issue 6): a client-address allow-list and
/// connection limits in total and per client address. Decided at accept time, before a byte
/// is read.
public final class ClientAdmission: Sendable {
    public struct Settings: Sendable, Equatable {
        /// `nil` admits every address.
        public var allowedClients: [IPNetwork]?
        public var maximumConnections: Int = 10_000
        public var maximumConnectionsPerClient: Int = 512

        public init() {}
    }

    public enum Decision: Equatable, Sendable {
        case admitted
        case notAllowed
        case tooManyConnections
        case tooManyFromClient
    }

    private struct Counts {
        var total = 0
        var perClient: [String: Int] = [:]
    }

    public let settings: Settings
    private let counts = NIOLockedValueBox(Counts())

    public init(settings: Settings) {
        self.settings = settings
    }

    /// Admits a connection from `address` (counting it) or says why not.
    public func admit(_ address: String) -> Decision {
        if let allowed = self.settings.allowedClients, !allowed.contains(where: { $0.contains(address) }) {
            return .notAllowed
        }
        return self.counts.withLockedValue { counts in
            if counts.total >= self.settings.maximumConnections { return .tooManyConnections }
            let mine = counts.perClient[address, default: 0]
            if mine >= self.settings.maximumConnectionsPerClient { return .tooManyFromClient }
            counts.total += 1
            counts.perClient[address] = mine + 1
            return .admitted
        }
    }

    /// A connection admitted earlier has closed.
    public func release(_ address: String) {
        self.counts.withLockedValue { counts in
            counts.total -= 1
            let mine = counts.perClient[address, default: 1] - 1
            counts.perClient[address] = mine > 0 ? mine : nil
        }
    }

    var openConnections: Int { self.counts.withLockedValue { $0.total } }

    /// The answer for a refused connection, serialized.
    static func refusal(_ decision: Decision, allocator: ByteBufferAllocator) -> ByteBuffer {
        let response: ProxyResponse
        switch decision {
        case .notAllowed:
            response = ProxyResponse(
                status: .forbidden,
                proxyError: "http_request_denied",
                details: "client address not allowed",
                message: "this proxy does not accept connections from your address (see --allow-clients)."
            )
        case .tooManyConnections:
            response = ProxyResponse(
                status: .serviceUnavailable,
                proxyError: nil,
                details: "connection limit reached",
                message: "the proxy has as many connections as it takes; try again shortly."
            )
        case .tooManyFromClient:
            response = ProxyResponse(
                status: .tooManyRequests,
                proxyError: nil,
                details: "too many connections from this address",
                message: "too many connections from your address; close some (reuse keep-alive connections)."
            )
        case .admitted:
            preconditionFailure("an admitted connection is not refused")
        }
        return response.serialized(httpMinorVersion: 1, close: true, allocator: allocator)
    }
}

/// Answers a connection that was not admitted, then closes it.
final class RefusalHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let decision: ClientAdmission.Decision

    init(_ decision: ClientAdmission.Decision) {
        self.decision = decision
    }

    func channelActive(context: ChannelHandlerContext) {
        let bytes = ClientAdmission.refusal(self.decision, allocator: context.channel.allocator)
        context.writeAndFlush(self.wrapOutboundOut(bytes)).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}
