import NIOCore
import NIOPosix
import PortcullisKerberos

/// The Kerberos side of one request's Negotiate with a parent: the GSSAPI initiator for
/// `HTTP@<parent host>`, from the process's ticket cache or, with `--parent-keytab`, from a
/// client keytab (MIT gets and renews the ticket itself, into a `MEMORY:` cache). GSSAPI blocks
/// (it may ask the KDC for a service ticket): every step runs on the thread pool.
///
/// Unchecked `Sendable`: the initiator is used by one thread at a time — each step is awaited
/// before the next is asked for.
final class ParentNegotiation: @unchecked Sendable {
    private let host: String
    private let clientKeytab: String?
    private var initiator: NegotiateInitiator?

    init(host: String, clientKeytab: String?) {
        self.host = host
        self.clientKeytab = clientKeytab
    }

    /// The cache tickets from a client keytab go to (the process's own, never the user's).
    static let keytabCache = "MEMORY:portcullis-parent"

    func step(
        _ input: [UInt8]?,
        threadPool: NIOThreadPool,
        on eventLoop: any EventLoop
    ) -> EventLoopFuture<ParentHandshake.NegotiateResult> {
        threadPool.runIfActive(eventLoop: eventLoop) { () -> ParentHandshake.NegotiateResult in
            do {
                if self.initiator == nil {
                    self.initiator = try NegotiateInitiator(
                        host: self.host,
                        credentialCache: self.clientKeytab == nil ? nil : Self.keytabCache,
                        clientKeytab: self.clientKeytab
                    )
                }
                switch self.initiator!.step(input) {
                case .continueNeeded(let token):
                    return .token(token)
                case .established(let token):
                    return token.map { .token($0) } ?? .failed(reason: "GSSAPI made no token")
                case .failed(let failure):
                    return .failed(reason: failure.reason.rawValue)
                }
            } catch let failure as NegotiateInitiatorFailure {
                return .failed(reason: failure.reason.rawValue)
            } catch {
                return .failed(reason: "\(error)")
            }
        }
        .flatMapErrorThrowing { _ in .failed(reason: "the thread pool is shutting down") }
    }
}
