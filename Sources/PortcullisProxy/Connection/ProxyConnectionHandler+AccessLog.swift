import Foundation
import NIOCore

// The access-log line and the request metrics of each exchange.
extension ProxyConnectionHandler {
    /// One access-log line and the request metrics for an exchange that ended (or was cut off).
    func logExchange(_ exchange: ProxyExchange, now: NIODeadline? = nil) {
        let now = now ?? self.currentTime
        guard !exchange.logged else { return }
        exchange.logged = true
        let metrics = self.shared.metrics
        let elapsed = now - exchange.started
        metrics.request(connect: exchange.isConnect, status: exchange.status)
        metrics.requestDuration.recordNanoseconds(elapsed.nanoseconds)
        metrics.bytesFromClients.increment(by: Int64(exchange.head.bytes.readableBytes + exchange.requestBodyBytes))
        metrics.bytesToClients.increment(by: Int64(exchange.bytesToClient))
        guard let log = self.shared.accessLog else { return }
        let method = String(decoding: exchange.head.methodBytes, as: UTF8.self)
        log.write(
            AccessRecord(
                start: exchange.startDate(now: now),
                durationMs: Int(elapsed.nanoseconds / 1_000_000),
                client: self.clientAddress,
                user: exchange.user,
                authScheme: exchange.authScheme,
                authResult: exchange.authResult,
                method: method.isEmpty ? "-" : method,
                target: Self.redactedTarget(exchange.head.target),
                status: exchange.status,
                bytesFromClient: exchange.head.bytes.readableBytes + exchange.requestBodyBytes,
                bytesToClient: exchange.bytesToClient,
                upstream: exchange.upstreamAddress,
                contentType: exchange.contentType,
                proxyStatus: exchange.proxyStatus,
                isTunnel: false,
                parent: exchange.parentName,
                listener: self.listener,
                token: exchange.token
            )
        )
    }

    /// A target with any user info (`http://user:pw@host/`, refused with 400 but still logged)
    /// replaced, so no password reaches the log.
    static func redactedTarget(_ target: String) -> String {
        guard let at = target.firstIndex(of: "@") else { return target }
        let schemeEnd = target.range(of: "://")?.upperBound ?? target.startIndex
        let authorityEnd =
            target[schemeEnd...].firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) ?? target.endIndex
        guard at > schemeEnd, at < authorityEnd else { return target }
        return String(target[..<schemeEnd]) + "***" + String(target[at...])
    }
}
