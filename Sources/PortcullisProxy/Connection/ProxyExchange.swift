import Foundation
import NIOCore

/// One request and its response on a client connection: what is known about them, for the
/// gate, the access log and the metrics. Where the exchange stands is the
/// ``ProxyConnectionStateMachine``'s to say.
final class ProxyExchange {
    let head: RequestHead
    var target: RequestTarget?
    var user: String?
    /// The label (or `id=…`) of the short-lived token the user logged in with.
    var token: String?
    /// Seconds until the user's credential ends, when that is within the expiry warning.
    var credentialExpiresIn: Int?
    /// The user's other spelling for the access rules (a Kerberos principal's local name).
    var otherName: String?
    var requestBodyBytes = 0
    /// The head sent upstream, kept to retry once on a fresh connection.
    var upstreamHead: ByteBuffer?
    var upstreamKey: UpstreamPool.Key?
    /// The origin's body is close-delimited and this HTTP/1.1 client gets it chunked.
    var rechunkBody = false
    /// The origin authenticates this exchange's upstream connection itself (NTLM or Negotiate
    /// in `Authorization` or `WWW-Authenticate`): the connection stays with this client
    /// connection and never goes to the shared pool, where another user could get it.
    var pinsUpstream = false
    /// The parent proxy the request goes through, and the state of its 407 (nil: straight to
    /// the origin).
    var parent: ParentRequest?

    // For the access log and metrics. The clock is read three times per forwarded request (here,
    // when it goes upstream, when it ends), not at every step: `started` also serves the gate's
    // cache expiry.
    let started: NIODeadline
    /// Wall-clock start, for the access log only (a Date per request costs a clock read).
    func startDate(now: NIODeadline) -> Date {
        Date(timeIntervalSinceNow: -Double((now - self.started).nanoseconds) / 1e9)
    }
    var authScheme: String?
    /// A header for the response that let the request through (Digest: rspauth, nextnonce;
    /// Negotiate: the acceptor's final token).
    var authenticationInfo: SuccessHeader?

    /// Writes that header, if this exchange has one (forwarded responses and the CONNECT 200
    /// alike).
    func writeAuthenticationInfo(into out: inout ByteBuffer) {
        switch self.authenticationInfo {
        case .none:
            return
        case .authenticationInfo(let info):
            out.writeStaticString("Proxy-Authentication-Info: ")
            out.writeBytes(info)
        case .negotiate(let token):
            out.writeStaticString("Proxy-Authenticate: Negotiate ")
            out.writeString(Data(token).base64EncodedString())
        }
        out.writeStaticString("\r\n")
    }
    /// `Proxy-Status` on a response the proxy relays (RFC 9209): through a parent, the parent as
    /// the next hop (§2.1.2), so a client (`portcullis doctor`) can tell which parent carried the
    /// request; for a credential that ends soon, `details="credential-expires-in=SECONDS"`, so a
    /// runner's start-up check warns days before its 407.
    func writeProxyStatus(into out: inout ByteBuffer) {
        guard self.parentName != nil || self.credentialExpiresIn != nil else { return }
        out.writeStaticString("Proxy-Status: portcullis")
        if let parent = self.parentName {
            out.writeStaticString("; next-hop=\"")
            out.writeString(parent)
            out.writeStaticString("\"")
        }
        if let seconds = self.credentialExpiresIn {
            out.writeStaticString("; details=\"credential-expires-in=")
            out.writeString(String(seconds))
            out.writeStaticString("\"")
        }
        out.writeStaticString("\r\n")
    }

    /// `ok`, `none` or a reason token.
    var authResult = "none"
    var status = 0
    var bytesToClient = 0
    var contentType: String?
    var proxyStatus: String?
    var upstreamAddress: String?
    /// The parent proxy it went through (`host:port`), for the access log.
    var parentName: String?
    var logged = false

    init(head: RequestHead, started: NIODeadline) {
        self.head = head
        self.started = started
    }

    var isConnect: Bool { self.head.method == .connect }
    var isHead: Bool { self.head.method == .head }
    var isHTTP10: Bool { self.head.minorVersion == 0 }

    /// Whether the client waits for `100 Continue` before sending its body.
    var expectsContinue: Bool { self.head.expectsContinue }

    /// A request that is safe to send again on a new connection if a reused one died before
    /// answering: idempotent and without a body (RFC 9110 §9.2.2).
    var isRetriable: Bool {
        guard self.requestBodyBytes == 0 else { return false }
        switch self.head.method {
        case .get, .head, .options, .trace, .put, .delete: return true
        default: return false
        }
    }
}
