import NIOCore

@testable import PortcullisProxy

/// An ``UpstreamOwner`` that records what its upstream connection tells it. A test makes it act
/// like the client side where that matters (detach at a response's end, refuse reuse on a head).
final class RecordingUpstreamOwner: UpstreamOwner {
    enum Call: Equatable {
        case informational(Int)
        case head(Int, ResponseFramer.Framing)
        case body(String)
        case end
        case readComplete
        case writabilityChanged(Bool)
        /// `upstreamClosed`, with the error's description (a protocol error's reason).
        case closed(String?)
    }

    private(set) var calls: [Call] = []
    var ownerIsWritable = true
    /// Runs after each event is recorded.
    var onEvent: ((ResponseFramer.Event) -> Void)?

    /// The response as the client gets it, however the origin's bytes were split: the calls
    /// without readCompletes, adjacent body parts joined.
    var response: [Call] {
        var joined: [Call] = []
        for call in self.calls where call != .readComplete {
            if case .body(let text) = call, case .body(let previous) = joined.last {
                joined[joined.count - 1] = .body(previous + text)
            } else {
                joined.append(call)
            }
        }
        return joined
    }

    func upstreamEvent(_ event: ResponseFramer.Event) {
        self.calls.append(Self.call(for: event))
        self.onEvent?(event)
    }

    func upstreamReadComplete() {
        self.calls.append(.readComplete)
    }

    func upstreamWritabilityChanged(isWritable: Bool) {
        self.calls.append(.writabilityChanged(isWritable))
    }

    func upstreamClosed(error: (any Error)?) {
        self.calls.append(.closed(Self.describe(error)))
    }

    func forgetCalls() {
        self.calls.removeAll()
    }

    static func call(for event: ResponseFramer.Event) -> Call {
        switch event {
        case .informational(let head): return .informational(head.status)
        case .head(let head, let framing): return .head(head.status, framing)
        case .body(let buffer): return .body(String(buffer: buffer))
        case .end: return .end
        }
    }

    static func describe(_ error: (any Error)?) -> String? {
        guard let error else { return nil }
        if let protocolError = error as? ResponseFramer.ProtocolError { return protocolError.reason }
        return String(describing: error)
    }
}

/// An error with a recognizable description.
struct UpstreamTestError: Error, CustomStringConvertible {
    var description: String
}
