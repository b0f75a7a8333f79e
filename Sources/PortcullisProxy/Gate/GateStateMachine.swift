/// The 407 gate of one client connection as a state machine (see ProxyConnectionHandler+Gate).
struct GateStateMachine {
    init() {}

    /// The exchange ended or the connection closed: work still in flight for it is not wanted.
    mutating func cancel() {}
}
