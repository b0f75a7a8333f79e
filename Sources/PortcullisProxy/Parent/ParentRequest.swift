import NIOCore
import PortcullisAuth

/// A plain (absolute-form) request on its way through a parent proxy: which parent, and where
/// the answer to its 407 stands.
final class ParentRequest {
    let parents: ParentSet
    /// The parents its route allows, in order.
    let allowed: [Int]
    /// The parent in use (the first one up; another after a failover).
    var index: Int
    /// The request target as the parent gets it (`http://host:port/path?query`).
    let absoluteURI: String
    var handshake: ParentHandshake?
    /// The next send's `Proxy-Authorization` (nil inside: none), decided by the handshake
    /// after a 407; nil before the first send.
    var nextAuthorization: String??
    /// The parent closes after its 407, or the handshake asked for a new connection.
    var sendOnNewConnection = false
    /// A Negotiate token being made for the next send (the 407's body is read meanwhile).
    var pendingToken: EventLoopFuture<ParentHandshake.NegotiateResult>?
    /// The Kerberos context of this request's Negotiate.
    var negotiation: ParentNegotiation?

    init(parents: ParentSet, allowed: [Int], index: Int, absoluteURI: String) {
        self.parents = parents
        self.allowed = allowed
        self.index = index
        self.absoluteURI = absoluteURI
    }

    var parent: ParentProxy { self.parents.parents[self.index] }

    var poolKey: UpstreamPool.Key {
        UpstreamPool.Key(host: self.parent.host, port: self.parent.port, viaParent: true)
    }
}
